"""An upstream stream cut before its end (no finish_reason, no [DONE]) is an error, never a
complete-looking answer; a complete one (finish_reason, usage after it) takes the upstream's counts."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chat.engine import GenerationParams, GenerationResult


def chunk(body: dict) -> bytes:
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def text(content: str, finish: str | None = None) -> bytes:
    return chunk({"choices": [{"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}]})


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps({"data": [{"id": "cutter", "meta": {"n_ctx": 1234}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        mode = body["messages"][-1]["content"]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        if mode == "cut-chunked":  # the connection drops inside a chunked body
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            part = text("partial ")
            self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.send_header("Connection", "close")
        self.end_headers()
        if mode == "cut-clean":  # the body ends cleanly, but before the last chunk
            self.wfile.write(text("partial "))
            return
        # complete: three chunks, the finish chunk, then usage after it (as llama.cpp and vLLM do)
        self.wfile.write(text("a") + text("b") + text("c") + text("", "length")
                         + chunk({"choices": [], "usage": {"prompt_tokens": 31, "completion_tokens": 3}}) + b"data: [DONE]\n\n")


@pytest.fixture
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


async def run(engine, query: str, **params) -> GenerationResult:
    result = None
    async for event in engine.stream([{"role": "user", "content": query}], GenerationParams(**params)):
        if isinstance(event, GenerationResult):
            result = event
    return result


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["cut-clean", "cut-chunked"])
async def test_a_cut_stream_is_an_error(engine_env, upstream, mode):
    engine = engine_env(CHATGLM_MODEL="", CHATGLM_BACKEND="openai", CHATGLM_UPSTREAM_URL=upstream)
    result = await run(engine, mode)
    assert result.finish_reason == "error"
    assert result.error  # typed for clients by chat.errors


@pytest.mark.asyncio
async def test_usage_after_the_last_chunk_is_read(engine_env, upstream):
    engine = engine_env(CHATGLM_MODEL="", CHATGLM_BACKEND="openai", CHATGLM_UPSTREAM_URL=upstream)
    assert engine.info.context_length == 1234  # llama.cpp's meta.n_ctx
    result = await run(engine, "complete", max_new_tokens=3)  # the budget is used up exactly
    assert (result.text, result.finish_reason) == ("abc", "length")
    assert (result.prompt_tokens, result.completion_tokens) == (31, 3)  # the upstream's, not estimates
