"""The README's client examples ("Clients"), run as written against a live server: curl, the
official `openai` client, LangChain. Only the address changes, to the test server's port.
(The original demo page's example is run by tests/browser/test_original_demo.py.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server import ServerFactory

ROOT = Path(__file__).resolve().parent.parent
README_URL = "http://127.0.0.1:8800"
EXAMPLE = re.compile(r"<!-- example: ([\w-]+) -->\n```(\w+)\n(.*?)```", re.DOTALL)


def examples() -> dict[str, tuple[str, str]]:
    """{name: (language, code)} of the README's marked examples."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return {name: (language, code) for name, language, code in EXAMPLE.findall(readme)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    factory = ServerFactory(tmp_path_factory.mktemp("readme"))
    yield factory.start(env={"CHATGLM_SERVED_MODEL_NAMES": "chatglm3-6b"})
    factory.stop_all()


def run(name: str, server) -> str:
    language, code = examples()[name]
    assert code.count(README_URL) >= 1
    code = code.replace(README_URL, server.url)
    command = {"sh": ["bash", "-euo", "pipefail", "-c", code], "python": [sys.executable, "-c", code]}[language]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_readme_has_the_examples():
    assert {"curl", "openai", "openai-tools", "langchain", "original-demo", "structured"} <= set(examples())


def test_curl(server):
    out = run("curl", server)  # JSON answers end with no newline: read them one after the other
    decoder = json.JSONDecoder()
    whole, end = decoder.raw_decode(out)
    assert whole["choices"][0]["message"]["content"] == "You said: 你好"
    chat_stream, rest = out[end:].split("data: [DONE]", 1)
    deltas = [json.loads(line[6:])["choices"][0]["delta"].get("content", "")
              for line in chat_stream.splitlines() if line.startswith("data: {")]
    assert "".join(deltas) == "You said: 你好" and len(deltas) > 2
    completion, end = decoder.raw_decode(rest.lstrip())
    text = completion["choices"][0]
    assert text["text"] == "You said: Once upon a time" and text["finish_reason"] == "stop"
    seed_stream = rest.lstrip()[end:]
    last = json.loads(seed_stream.strip().splitlines()[-1][6:])
    assert last["finished"] is True and last["response"] == "You said: 你好"


def test_openai_sdk(server):
    lines = run("openai", server).splitlines()
    assert lines[:2] == ["You said: 你好", "You said: 你好"]
    assert re.fullmatch(r"\d+ tokens", lines[2])
    assert lines[3] == "You said: 你好 / You said: 再见"


def test_openai_tools(server):
    assert run("openai-tools", server).splitlines() == [
        "tool_calls get_weather {'city': 'Paris'}", "The tool said: 22 °C, sunny"]


def test_langchain(server):
    assert run("langchain", server).splitlines() == ["You said: 你好", "You said: 你好"]


def test_structured(server):
    # The fake model answers the schema's smallest document with its echo as the strings.
    prompt = "You said: The capital of France, as JSON."
    assert run("structured", server).strip() == f"name='{prompt}' country='{prompt}'"
