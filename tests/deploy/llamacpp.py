"""llama.cpp's own HTTP server (chat.engine.llamacpp_server) in a subprocess, for tests."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.server import ROOT, free_port


class LlamaServer:
    def __init__(self, log_path: Path, slots: int = 4):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "chat.engine.llamacpp_server", "--port", str(self.port), "--slots", str(slots)],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama.cpp's server exited:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama.cpp's server did not start:\n{log_path.read_text()}")

    def processing(self) -> float:
        """Slots llama.cpp is generating in right now."""
        return sum(bool(slot["is_processing"]) for slot in httpx.get(f"{self.url}/slots", timeout=5).json())

    def predicted(self) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return float(re.search(r"^llamacpp:tokens_predicted_total (\S+)", text, re.M)[1])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
