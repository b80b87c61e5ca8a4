"""llama.cpp's own HTTP server (OpenAI-compatible `/v1`), through the `xllamacpp` wheel.

`serve --workers N` starts this once, as a process of its own on a private loopback port, for
a GGUF model, and points every worker's `openai` backend at it: the model is loaded once per
machine, and llama.cpp does the batching (continuous, `--slots` sequences at once) for all
workers. The same command is the llama.cpp service of compose.yaml on CPU hosts:

    python -m chat.engine.llamacpp_server --model model.gguf --host 127.0.0.1 --port 8081

An API key (CHATGLM_LLAMACPP_API_KEY, never a flag: flags show in `ps`) protects it when
it listens beyond loopback.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from .backends.llamacpp import gguf_context_length
from .config import EngineConfig, embedded_gguf


def start(model: Path, host: str, port: int, slots: int, context: int | None, api_key: str = "", alias: str = "",
          device: int = -1):
    """llama.cpp's server listening on host:port (it serves until the object is dropped)."""
    import xllamacpp

    trained = gguf_context_length(model)
    per_slot = min(trained, context) if context else trained
    params = xllamacpp.CommonParams()
    params.model.path = str(model)
    params.model_alias = {alias or model.stem}  # a set of names; the id /v1/models reports: not the file's path
    params.n_parallel = slots
    # A KV-cache region of the whole context per slot (llama.cpp splits n_ctx evenly): an answer
    # never runs out of cache because other sequences are long, and the context length the
    # workers read from /v1/models is what one conversation really gets.
    params.kv_unified = False
    params.n_ctx = per_slot * slots
    params.fit_params = False
    params.n_gpu_layers = 0 if device < 0 else 999  # -1: CPU, as --device says
    params.hostnames = [host]
    params.port = port
    params.endpoint_metrics = True
    params.endpoint_slots = True
    params.ui = False
    params.verbosity = 0
    if api_key:
        params.api_keys = [api_key]
    return xllamacpp.Server(params), per_slot


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chat.engine.llamacpp_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a .gguf file (default: the embedded SmolLM2)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slots", type=int, default=None,
                        help="sequences decoded together (default CHATGLM_MAX_BATCH, 8)")
    parser.add_argument("--context", type=int, default=0, help="context per sequence (default: the model's)")
    parser.add_argument("--alias", default="", help="the model id it reports (default: the file's)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = EngineConfig.from_env()
    slots = args.slots or config.max_batch_size

    model = Path(args.model) if args.model else embedded_gguf()
    if not model.is_file() or model.suffix != ".gguf":
        parser.error(f"--model must be a .gguf file: {model}")
    server, per_slot = start(model, args.host, args.port, slots, args.context or None,
                             config.llamacpp_api_key, args.alias, config.device)
    print(f"llama.cpp serves {model.name} on {server.listening_address}/v1: {slots} slots of {per_slot} tokens",
          flush=True)
    stopped = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stopped.set())
    stopped.wait()
    del server  # ~Server ends llama.cpp's loop and joins its threads


if __name__ == "__main__":
    main()
