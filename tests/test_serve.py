"""`manage.py serve`: the seed's flags, one-line errors, and a real server on loopback."""

from __future__ import annotations

import shutil
import subprocess
import sys

import httpx
import pytest

from tests.server import ROOT
from tests.views.sse_client import parse

BAD_FLAGS = [
    (["--quantize", "3"], "invalid choice: 3"),
    (["--device", "-2"], "device must be -1"),
    (["--device", "gpu"], "invalid int value"),
    (["--backend", "magic"], "backend must be one of"),
    (["--model", "/no/such/model"], "model not found"),
    (["--port", "70000"], "--port must be between"),
    (["--quantize", "4"], "quantized already"),  # the default model is a GGUF, served by llama.cpp
]


@pytest.mark.parametrize("args,message", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flag_values_get_one_line_not_a_traceback(args, message, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "CHATGLM_DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3"}
    result = subprocess.run([sys.executable, "manage.py", "serve", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1


def test_fake_model_server_answers_in_whole_characters(fake_server):
    health = httpx.get(f"{fake_server.url}/healthz").json()
    assert health["model"] == "fake" and health["backend"] == "fake" and health["device"] == "cpu"
    assert health["queue"] == 0
    with httpx.stream("POST", f"{fake_server.url}/stream", json={"query": "你好🙂", "history": []}) as r:
        body = "".join(r.iter_text())
    events = [data for name, data in parse(body) if name == "delta"]
    assert events[-1]["response"] == "You said: 你好🙂"
    assert all("\ufffd" not in e["delta"] for e in events)
    assert httpx.post(f"{fake_server.url}/chat", json={"query": "你好🙂"}).json()["response"] == "You said: 你好🙂"
    assert "Open http://127.0.0.1:" in fake_server.log


def test_the_listening_socket_has_a_deep_accept_queue(fake_server):
    """Hundreds of clients connecting at once must not overflow the accept queue (Twisted's
    default is 50): `ss` shows a listening socket's backlog as its Send-Q."""
    from chat.management.commands.serve import LISTEN_BACKLOG

    if shutil.which("ss") is None:
        pytest.skip("needs iproute2's ss")
    port = fake_server.url.rsplit(":", 1)[1]
    listing = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    send_queues = {int(line.split()[2]) for line in listing.splitlines()}
    assert send_queues == {LISTEN_BACKLOG}


def test_flags_set_the_engine_configuration(server_factory):
    server = server_factory.start(model="default", args=("--model", "fake", "--backend", "fake", "--device", "-1", "--quantize", "16"))
    assert httpx.get(f"{server.url}/healthz").json()["backend"] == "fake"


@pytest.mark.slow
def test_restart_loads_the_cached_weights_instead_of_dequantizing(server_factory, tmp_path):
    cache = tmp_path / "models"
    env = {"CHATGLM_CACHE_DIR": str(cache)}
    first = server_factory.start(model="", args=("--backend", "transformers"), env=env)
    assert "dequantized now" in first.log
    answer = httpx.post(f"{first.url}/chat", json={"query": "What is the capital of France?", "max_new_tokens": 30}, timeout=120).json()
    assert "Paris" in answer["response"]
    first.stop()
    second = server_factory.start(model="", args=("--backend", "transformers"), env=env)
    assert "dequantized now" not in second.log and "weights from cache" in second.log
    assert httpx.get(f"{second.url}/healthz").json()["model"] == "SmolLM2-135M-Instruct"
