"""Request bodies past CHATGLM_MAX_BODY_BYTES are refused without being read into memory, on a
real `serve` process: its resident memory does not grow by the size of the body."""

from __future__ import annotations

import json
import socket
import time

import psutil
import pytest

LIMIT = 1_000_000
BIG = 100 * 1024 * 1024
MiB = 1024 * 1024


@pytest.fixture
def server(server_factory):
    return server_factory.start(env={"CHATGLM_MAX_BODY_BYTES": str(LIMIT), "CHATGLM_BODY_TIMEOUT": "3"})


def rss(server) -> int:
    return psutil.Process(server.process.pid).memory_info().rss


def exchange(server, head: bytes, body_chunks, pause: float = 0.0) -> bytes:
    """Send a request's head and as much of its body as the server takes; return its answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
                if pause:
                    time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused and closed: read what it said
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:
            pass
    return answer


def status_and_json(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def head(path: str, extra: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n{extra}\r\n").encode()


def test_a_declared_large_body_is_refused_before_it_is_read(server):
    before = rss(server)
    answer = exchange(server, head("/chat", f"Content-Length: {BIG}\r\n"), (b"x" * MiB for _ in range(100)))
    status, body = status_and_json(answer)
    assert status == 413 and body["error"]["code"] == "too_large"
    assert rss(server) - before < 20 * MiB
    # Nothing is stuck: the server still answers.
    status, body = status_and_json(exchange(server, head("/chat", "Content-Length: 15\r\n"), [b'{"query": "hi"}']))
    assert status == 200 and body["response"] == "You said: hi"


def test_a_chunked_body_is_counted_as_it_arrives(server):
    before = rss(server)

    def chunks():
        for _ in range(100):
            yield b"%x\r\n" % MiB + b"x" * MiB + b"\r\n"
        yield b"0\r\n\r\n"

    answer = exchange(server, head("/api/conversations", "Transfer-Encoding: chunked\r\n"), chunks())
    status, body = status_and_json(answer)
    assert status == 413 and body["error"]["code"] == "too_large"
    assert rss(server) - before < 20 * MiB


def test_a_body_under_the_limit_still_reaches_the_view(server):
    data = json.dumps({"query": "y" * 100}).encode()  # the view's own checks answer
    status, body = status_and_json(exchange(server, head("/chat", f"Content-Length: {len(data)}\r\n"), [data]))
    assert status == 200 and body["response"] == "You said: " + "y" * 100


def test_a_trickling_request_is_cut_off(server):
    # 20 bytes of a 100-byte body, a byte every 0.25 s: Twisted's idle timeout would never fire.
    answer = exchange(server, head("/chat", "Content-Length: 100\r\n"), [b"x"] * 20, pause=0.25)
    status, body = status_and_json(answer)
    assert status == 408 and body["error"]["code"] == "request_timeout"
