"""`manage.py serve`: the seed's flags, the model loaded and warmed up, then Daphne.

Daphne has no lifespan events (docs/pitfalls.md#no-lifespan), so the model is loaded here, before the
server accepts its first connection, instead of on the first request.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from chat.engine import EngineUnavailable, get_engine
from chat.engine.backends import check_model_exists
from chat.engine.config import QUANTIZE_BITS, ConfigError, EngineConfig

log = logging.getLogger("chat.serve")

# Flag -> environment variable: the flags are a way to set the same configuration.
FLAG_ENV = {
    "model": "CHATGLM_MODEL",
    "backend": "CHATGLM_BACKEND",
    "device": "CHATGLM_DEVICE",
    "quantize": "CHATGLM_QUANTIZE",
    "upstream_url": "CHATGLM_UPSTREAM_URL",
}


class Command(BaseCommand):
    help = "Load the model and serve the site (HTTP, SSE, WebSocket) with Daphne."

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        argparse_error = parser.error

        def one_line_error(message):
            """A bad flag value gets one line, not the whole usage block."""
            if not parser.called_from_command_line:
                argparse_error(message)  # call_command(): Django raises CommandError
            parser.exit(2, f"{parser.prog}: error: {message} (see --help)\n")

        parser.error = one_line_error
        return parser

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8800, help="port (default 8800)")
        parser.add_argument("--quantize", type=int, choices=QUANTIZE_BITS,
                            help="weight bits: 16 (none), 8 or 4 (env CHATGLM_QUANTIZE)")
        parser.add_argument("--device", type=int, help="-1 = CPU, N = GPU N (env CHATGLM_DEVICE)")
        parser.add_argument("--model", help="model directory, .gguf file, 'fake', or unset for the embedded default")
        parser.add_argument("--backend", help="auto, transformers, chatglm, openai or fake (env CHATGLM_BACKEND)")
        parser.add_argument("--upstream-url", dest="upstream_url", help="an OpenAI-compatible server to forward to")
        # Several processes behind one address (chat/workers.py; README "Deployment").
        parser.add_argument("--workers", type=int, default=1, help="web processes sharing the port (default 1)")
        parser.add_argument("--listen-fd", dest="listen_fd", type=int, help=argparse.SUPPRESS)  # a worker's socket

    def handle(self, *args, **options):
        for flag, env in FLAG_ENV.items():
            if options.get(flag) is not None:
                os.environ[env] = str(options[flag])
        try:
            config = EngineConfig.from_env()
            check_model_exists(config)
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
        if not 1 <= options["port"] <= 65535:
            raise CommandError(f"--port must be between 1 and 65535, not {options['port']}")

        if options["workers"] < 1:
            raise CommandError(f"--workers must be at least 1, not {options['workers']}")
        if options["workers"] > 1:
            from chat.workers import supervise

            try:
                return supervise(self.stdout, options["host"], options["port"], options["workers"], config)
            except RuntimeError as exc:
                raise CommandError(str(exc)) from None
        self.listen_fd = options["listen_fd"]

        from chat.services import mark_interrupted_answers

        # A worker starts while its siblings generate: only a whole start marks leftovers.
        interrupted = mark_interrupted_answers() if self.listen_fd is None else 0
        if interrupted:
            self.stdout.write(f"Marked {interrupted} interrupted answer(s) from a previous run as errors.")

        self.stdout.write(f"Loading model {config.model!r} (backend {config.backend}, device {config.device})…")
        started = time.monotonic()
        try:
            info = get_engine().wait_ready()
        except EngineUnavailable as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"Model {info.model_id} ready in {time.monotonic() - started:.1f} s: backend {info.backend}, "
            f"device {info.device}, {info.dtype or 'n/a'}; weights from {info.source}"
        )
        self._run_daphne(options["host"], options["port"])

    def _run_daphne(self, host: str, port: int) -> None:
        from daphne.server import Server

        from chat import daphne_limits
        from chatglm_site.asgi import application

        from chat.workers import worker_endpoints
        daphne_limits.install()  # bodies and slow requests refused at the socket

        shown = f"[{host}]" if ":" in host else host
        self.stdout.write(f"Open http://{shown}:{port}/ in a browser (Ctrl+C stops the server).")
        self.stdout.flush()
        from twisted.internet import reactor

        class ServerWithPorts(Server):
            """Keeps its listening ports, so that a stopping server can close them first."""

            ports: list = []

            def listen_success(self, port):
                self.ports.append(port)
                super().listen_success(port)

        reactor.callWhenRunning(_stop_gracefully_on_signals, reactor, ServerWithPorts.ports)
        ServerWithPorts(
            signal_handlers=False,  # SIGTERM/SIGINT: _stop_gracefully_on_signals, not an abrupt stop
            application=application,
            endpoints=worker_endpoints(self.listen_fd) or _tcp_endpoints(host, port),
            http_timeout=None,  # streams last as long as the answer
            # A socket lives as long as its client answers pings: a dead peer is dropped after
            # ping_interval + ping_timeout, a live one after a day at most (the page reconnects).
            websocket_timeout=86400,
            ping_interval=20,
            ping_timeout=30,
            websocket_connect_timeout=20,  # the consumer must accept (or refuse) this fast
            websocket_handshake_timeout=5,  # a client that trickles its handshake is dropped
            application_close_timeout=10,
            verbosity=0,
            server_name="chatglm-django",
        ).run()


LISTEN_BACKLOG = 2048  # as `serve --workers` gives its shared socket (chat.workers)


def _tcp_endpoints(host: str, port: int) -> list[str]:
    """Daphne's endpoint for host:port with a deep accept queue: Twisted's default backlog of
    50 overflows when a few hundred clients connect at once, and the kernel then drops their
    SYNs (each retried after a second: a second added to those clients' first delta)."""
    from daphne.endpoints import build_endpoint_description_strings

    return [f"{endpoint}:backlog={LISTEN_BACKLOG}" for endpoint in build_endpoint_description_strings(host=host, port=port)]


SHUTDOWN_GRACE_SECONDS = 5.0  # for running answers to be saved and their streams told


def _stop_gracefully_on_signals(reactor, ports: list) -> None:
    """On SIGTERM or SIGINT, stop accepting connections (under `serve --workers` the siblings
    keep accepting on the shared socket), refuse new turns, give running answers
    CHATGLM_SHUTDOWN_GRACE seconds to finish, end the rest as errors (saved as such, and each
    open stream or socket gets its `error` event or frame), then stop. A second signal stops at once.
    (Twisted's own handler would stop the reactor at once: streams cut mid-answer, answers
    left "generating" until the next start.)"""
    import asyncio
    import signal

    from chat.turns import shut_down

    loop = asyncio.get_event_loop()  # Daphne's reactor runs on this asyncio loop
    stopping = []

    async def stop() -> None:
        try:
            for port in ports:
                port.stopListening()
            await shut_down(SHUTDOWN_GRACE_SECONDS, grace=settings.CHATGLM["SHUTDOWN_GRACE"])
            await asyncio.sleep(0.3)  # the streams write their last event
        finally:
            reactor.stop()

    def on_signal(number: int) -> None:
        if stopping:
            reactor.stop()
            return
        log.info("signal %s: ending running answers, then stopping", signal.Signals(number).name)
        stopping.append(loop.create_task(stop()))

    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, on_signal, number)
