"""A hostile OpenAI-compatible upstream on loopback, for the `openai` backend's fault tests.

It lists one model, `hostile`, and answers `/v1/chat/completions` by the last user message:

- `emit:<json string literal>`: streams that string, one chunk per item of a JSON array when
  the literal is an array (lone surrogates and NUL pass through as `\\ud800`, `\\u0000`);
- `status:<code>`: that HTTP status, with an error page full of secrets;
- `error-chunk`: a 200 stream whose first chunk is an error object full of secrets;
- `garbage`: a 200 stream with a line that is not JSON;
- `hang`: headers, then nothing until the client goes away;
- anything else: `You said: <message>`.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# What an upstream's error output may carry; none of it may reach a client or the database.
SECRETS = ("gpu-box-7.internal", "/srv/vllm/secret_path", "dXNlcjpodW50ZXIy", "Traceback", "hunter2")
SECRET_PAGE = (
    "Traceback (most recent call last):\n  File \"/srv/vllm/secret_path/engine.py\", line 3\n"
    "ConnectionError: gpu-box-7.internal:8000 refused; Authorization: Basic dXNlcjpodW50ZXIy (hunter2)\n"
)


def chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    body = {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.endswith("/models"):
            self._send(200, json.dumps({"object": "list", "data": [{"id": "hostile", "object": "model"}]}).encode())
        else:
            self._send(404, b"{}")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        message = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        if message.startswith("status:"):
            return self._send(int(message[7:]), SECRET_PAGE.encode(), "text/plain")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        if message.startswith("emit:"):
            items = json.loads(message[5:])
            parts = [chunk(item) for item in (items if isinstance(items, list) else [items])]
        elif message == "error-chunk":
            parts = [chunk("partial "), b"data: " + json.dumps({"error": {"message": SECRET_PAGE}}).encode() + b"\n\n"]
        elif message == "garbage":
            parts = [chunk("partial "), b"data: {" + SECRET_PAGE.encode() + b"\n\n"]
        elif message == "hang":
            parts = [chunk("waiting ")]
        else:
            parts = [chunk(f"You said: {message}")]
        try:
            for part in parts:
                self.wfile.write(part)
                self.wfile.flush()
            if message == "hang":
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not self.server.stopping.is_set():
                    time.sleep(0.05)
                return
            self.wfile.write(chunk(finish="stop") + b"data: [DONE]\n\n")
        except OSError:  # the client went away
            pass


class HostileUpstream:
    def __init__(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.stopping = threading.Event()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop answering: the port then refuses connections."""
        self.server.stopping.set()
        self.server.shutdown()
        self.server.server_close()
