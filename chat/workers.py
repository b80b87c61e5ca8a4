"""`serve --workers N`: N Daphne processes behind one address, the model loaded once.

One listening socket, many processes. The supervisor binds host:port once and every worker
inherits the socket and accepts on it (Twisted's `fd:` endpoint); the kernel hands each new
connection to one waiting worker. Chosen over a small front process: no extra hop for every
streamed byte, no front to fail or to size, and a WebSocket simply stays on the worker that
accepted it. Another worker can take over a conversation at any time because everything a
turn needs is shared: the database, the Channels layer on Redis (live sync, re-attaching to
an answer that another worker generates) and the running-answer claims on Redis
(chat/claims.py). So several workers need REDIS_URL, and PostgreSQL is advised.

Every worker is a thin web process on the `openai` backend. With `--upstream-url` they all
use that engine. With a local model the supervisor first starts one engine process on a
private loopback port and points the workers at it, so a model is never loaded twice:

* a GGUF file (or the embedded default), backend `auto` or `llamacpp`: llama.cpp's own HTTP
  server (chat.engine.llamacpp_server), which batches every worker's sequences together;
* anything else (torch checkpoints, `fake`): one `serve` process that keeps only its engine
  and OpenAI API in use (its own turns are not stored).

The engine is protected by a random key that only the supervisor and its workers know.

Signals to the supervisor: SIGTERM/SIGINT stop the workers (each finishes or ends its running
answers, see serve's graceful shutdown), then the engine. SIGHUP restarts the workers one at a
time, each replacement accepting before its predecessor is told to stop (a rolling restart: the
socket never stops accepting). A worker that dies is replaced.
"""

from __future__ import annotations

import logging
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

log = logging.getLogger("chat.workers")

READY_FD_ENV = "SERVE_WORKER_READY_FD"  # internal: supervisor <-> worker, not a setting
ENGINE_START_SECONDS = 600
WORKER_START_SECONDS = 300
MANAGE_PY = Path(__file__).resolve().parent.parent / "manage.py"


def worker_endpoints(listen_fd: int | None) -> list[str] | None:
    """In a worker (`serve --listen-fd`): Daphne's endpoint on the inherited socket, after
    telling the supervisor that this worker is ready. None in a plain `serve`."""
    if listen_fd is None:
        return None
    ready = os.environ.pop(READY_FD_ENV, "")
    if ready:
        os.write(int(ready), b"1")
        os.close(int(ready))
    return [f"fd:fileno={listen_fd}"]  # Twisted's parser takes IPv4 sockets only (its domain stays a string)


def _is_gguf_model(config) -> bool:
    return config.backend in ("auto", "llamacpp") and (config.model == "default" or config.model.endswith(".gguf"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(process: subprocess.Popen, url: str, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} while starting")
        try:
            if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start in {timeout:.0f} s")


def _stop(process: subprocess.Popen, timeout: float) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Supervisor:
    def __init__(self, out, host: str, port: int, workers: int, config, grace: float):
        self.out, self.host, self.port, self.count, self.config = out, host, port, workers, config
        self.stop_timeout = grace + 15  # a worker's grace for running answers, then saving them
        self.engine: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.env = dict(os.environ)
        self.stopping = threading.Event()
        self.rolling = threading.Event()

    def say(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    # -- the engine -------------------------------------------------------------------------

    def start_engine(self) -> None:
        config = self.config
        if config.upstream_url:
            self.env.update(CHATGLM_BACKEND="openai")
            self.say(f"Workers use the upstream engine {config.upstream_url}.\n")
            return
        port, key = _free_port(), secrets.token_urlsafe(24)
        env = dict(os.environ)
        if _is_gguf_model(config):
            args = [sys.executable, "-m", "chat.engine.llamacpp_server", "--host", "127.0.0.1", "--port", str(port)]
            if config.model != "default":
                args += ["--model", config.model]
            env["CHATGLM_LLAMACPP_API_KEY"] = key
            health, what = f"http://127.0.0.1:{port}/health", "llama.cpp's server"
        else:
            args = [sys.executable, str(MANAGE_PY), "serve", "--host", "127.0.0.1", "--port", str(port)]
            env.update(CHATGLM_API_KEYS=f"workers:{key}", CHATGLM_STORE_API_TURNS="0", CHATGLM_ACCESS_LOG="0")
            env.pop("REDIS_URL", None)  # it serves the workers' API calls only: no live sync
            health, what = f"http://127.0.0.1:{port}/healthz", "the engine process"
        self.say(f"Starting {what} for model {config.model!r} on 127.0.0.1:{port}…\n")
        self.engine = subprocess.Popen(args, env=env)
        _wait_healthy(self.engine, health, ENGINE_START_SECONDS, what)
        self.env.update(CHATGLM_BACKEND="openai", CHATGLM_UPSTREAM_URL=f"http://127.0.0.1:{port}/v1",
                        CHATGLM_UPSTREAM_API_KEY=key, CHATGLM_MODEL="")
        self.env.pop("CHATGLM_UPSTREAM_MODEL", None)

    # -- the workers ------------------------------------------------------------------------

    def start_worker(self) -> subprocess.Popen:
        """A worker on the shared socket; returns once it has its model and accepts."""
        read, write = os.pipe()
        env = {**self.env, READY_FD_ENV: str(write)}
        process = subprocess.Popen(
            [sys.executable, str(MANAGE_PY), "serve", "--listen-fd", str(self.sock.fileno()),
             "--host", self.host, "--port", str(self.port)],
            env=env, pass_fds=(self.sock.fileno(), write),
        )
        os.close(write)
        deadline = time.monotonic() + WORKER_START_SECONDS
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(f"a worker exited with status {process.returncode} while starting")
                ready, _, _ = select.select([read], [], [], 0.5)
                if ready and os.read(read, 1) == b"1":
                    return process
            _stop(process, 5)
            raise RuntimeError(f"a worker did not start in {WORKER_START_SECONDS} s")
        finally:
            os.close(read)

    def rolling_restart(self) -> None:
        for index, old in enumerate(list(self.workers)):
            if self.stopping.is_set():
                return
            new = self.start_worker()
            self.workers[index] = new
            log.info("worker %d replaced by %d; stopping the old one", old.pid, new.pid)
            _stop(old, self.stop_timeout)
            self.marked_dead(old.pid)

    def marked_dead(self, pid: int) -> None:
        """A worker that ended: its live gauges stop counting in /metrics."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self.metrics_dir)

    # -- the whole ----------------------------------------------------------------------------

    def run(self) -> None:
        multiproc = self.metrics_dir = tempfile.mkdtemp(prefix="chatglm-metrics-")
        self.env["PROMETHEUS_MULTIPROC_DIR"] = multiproc  # /metrics sums every worker
        self.sock = socket.create_server((self.host, self.port), backlog=2048)
        self.sock.set_inheritable(True)
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        signal.signal(signal.SIGHUP, lambda *_: self.rolling.set())
        try:
            self.start_engine()
            self.workers = [self.start_worker() for _ in range(self.count)]
            self.say(f"{self.count} workers serve http://{self.host}:{self.port}/ "
                     f"(pids {', '.join(str(w.pid) for w in self.workers)}; SIGHUP restarts them one by one).\n")
            while not self.stopping.wait(0.5):
                if self.rolling.is_set():
                    self.rolling.clear()
                    self.rolling_restart()
                for index, worker in enumerate(self.workers):
                    if worker.poll() is not None and not self.stopping.is_set():
                        log.error("worker %d exited with status %s; starting another", worker.pid, worker.returncode)
                        self.marked_dead(worker.pid)
                        self.workers[index] = self.start_worker()
                if self.engine is not None and self.engine.poll() is not None:
                    log.error("the engine process exited with status %s; stopping", self.engine.returncode)
                    break
        finally:
            self.sock.close()  # no new connections; the workers finish what they hold
            for worker in self.workers:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGTERM)
            for worker in self.workers:
                try:
                    worker.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
            if self.engine is not None:
                _stop(self.engine, 30)
            shutil.rmtree(multiproc, ignore_errors=True)


def supervise(out, host: str, port: int, workers: int, config) -> None:
    from django.conf import settings

    if ":" in host:
        raise RuntimeError("--workers listens on an IPv4 address (--host 0.0.0.0 or 127.0.0.1)")
    if not settings.CHATGLM["REDIS_URL"]:
        raise RuntimeError(
            "--workers needs REDIS_URL: live sync, re-attaching to answers and the running-answer "
            "limits are shared between the workers through Redis")
    from chat.services import mark_interrupted_answers

    interrupted = mark_interrupted_answers()  # once, here: workers start while siblings generate
    if interrupted:
        out.write(f"Marked {interrupted} interrupted answer(s) from a previous run as errors.\n")
    Supervisor(out, host, port, workers, config, settings.CHATGLM["SHUTDOWN_GRACE"]).run()
