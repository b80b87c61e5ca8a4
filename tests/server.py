"""Real servers for end-to-end tests: `manage.py serve` in a subprocess, on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, process: subprocess.Popen, port: int, log_path: Path, env: dict):
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        self.log_path = log_path
        self.env = env

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class ServerFactory:
    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.servers: list[Server] = []

    def start(self, model: str = "fake", args: tuple[str, ...] = (), env: dict | None = None,
              data_dir: Path | None = None, timeout: float = 300) -> Server:
        port = free_port()
        data_dir = data_dir or self.tmp_path / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        full_env = {
            **os.environ,
            "CHATGLM_DATA_DIR": str(data_dir),
            # A server of its own database (shared by servers given the same data_dir), never the
            # suite's: the suite may run on PostgreSQL, whose test database a server must not touch.
            "DATABASE_URL": f"sqlite:///{data_dir / 'db.sqlite3'}",
            "CHATGLM_MODEL": model,
            # Weights converted once are shared by every server of the suite (the project's own
            # cache, as `make run` uses it), unless a test gives a cache of its own.
            "CHATGLM_CACHE_DIR": str(ROOT / "data" / "models"),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        full_env.pop("DJANGO_SETTINGS_MODULE", None)
        migrate = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=full_env,
                                 capture_output=True, text=True)
        assert migrate.returncode == 0, migrate.stderr
        log_path = self.tmp_path / f"server-{port}.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
                cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
            )
        server = Server(process, port, log_path, full_env)
        self.servers.append(server)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{server.log}")
            try:
                if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        server.stop()
        raise RuntimeError(f"server did not start in {timeout} s:\n{server.log}")

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()
