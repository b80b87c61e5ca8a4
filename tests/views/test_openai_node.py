"""The official `openai` Node SDK, unmodified, against a live server (fake model): plain chat,
streaming, a tool call and `response_format`. Skipped where node/npm are missing or the package
cannot be installed (offline); the install is cached under data/ (not in git)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.server import ROOT, ServerFactory

VERSION = "4.104.0"  # pinned: the SDK's behaviour under test, not whatever npm has today
SCRIPT = ROOT / "tests" / "node" / "openai_sdk_check.mjs"


@pytest.fixture(scope="module")
def sdk() -> Path:
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm are not installed")
    prefix = ROOT / "data" / "npm" / f"openai-{VERSION}"
    if not (prefix / "node_modules" / "openai" / "package.json").is_file():
        try:
            subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix), f"openai@{VERSION}"],
                           check=True, capture_output=True, timeout=300)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"cannot install the openai npm package (offline?): {exc}")
    return prefix


def test_the_node_sdk(sdk, tmp_path):
    factory = ServerFactory(tmp_path)
    server = factory.start(env={"CHATGLM_FAKE_DELAY_MS": "1"})
    try:
        # Node resolves "openai" from the script's folder upwards: the script runs from the install.
        script = sdk / SCRIPT.name
        shutil.copy(SCRIPT, script)
        run = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=120,
                             env={"PATH": os.environ["PATH"], "BASE_URL": f"{server.url}/v1"})
    finally:
        factory.stop_all()
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["plain"]["finish"] == "stop" and out["plain"]["content"]
    assert out["streamed"] == out["plain"]["content"]
    assert out["call"]["finish"] == "tool_calls"
    [call] = out["call"]["calls"]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert isinstance(out["structured"]["name"], str)
