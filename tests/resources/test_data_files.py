"""The data folder is private to the server's user, and the secret key is made once even when
several processes start at the same moment."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import httpx

from tests.server import ROOT

PRINT_KEY = "from django.conf import settings; print(settings.SECRET_KEY)"


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_processes_starting_at_once_agree_on_one_secret_key(tmp_path):
    data = tmp_path / "data"
    env = {**os.environ, "CHATGLM_DATA_DIR": str(data), "DJANGO_SETTINGS_MODULE": "chatglm_site.settings",
           "DATABASE_URL": f"sqlite:///{data / 'db.sqlite3'}"}
    env.pop("DJANGO_SECRET_KEY", None)
    processes = [subprocess.Popen([sys.executable, "-c", PRINT_KEY], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(8)]
    results = [p.communicate(timeout=120) for p in processes]
    assert all(p.returncode == 0 for p in processes), [err for _, err in results]
    keys = {out.strip() for out, _ in results}
    assert len(keys) == 1 and len(keys.pop()) >= 50
    assert sorted(os.listdir(data)) == ["db.sqlite3", "secret_key"]  # no temporary file left behind
    assert mode(data) == 0o700 and mode(data / "secret_key") == 0o600


def test_the_database_and_its_wal_files_are_private(server_factory, tmp_path):
    old = os.umask(0o022)  # a usual umask: files would be 0644
    try:
        server = server_factory.start(data_dir=tmp_path / "served")
    finally:
        os.umask(old)
    assert httpx.post(f"{server.url}/chat", json={"query": "write something"}, timeout=30).status_code == 200
    data = tmp_path / "served"
    assert mode(data) == 0o700
    files = [name for name in os.listdir(data) if name.startswith("db.sqlite3")]
    assert {"db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm"} <= set(files)
    assert {name: mode(data / name) for name in files} == {name: 0o600 for name in files}


def test_an_existing_readable_database_is_made_private(tmp_path):
    data = tmp_path / "old"
    data.mkdir(mode=0o755)
    (data / "db.sqlite3").touch(mode=0o644)
    os.chmod(data / "db.sqlite3", 0o644)
    env = {**os.environ, "CHATGLM_DATA_DIR": str(data), "DJANGO_SETTINGS_MODULE": "chatglm_site.settings",
           "DATABASE_URL": f"sqlite:///{data / 'db.sqlite3'}"}
    subprocess.run([sys.executable, "-c", PRINT_KEY], cwd=ROOT, env=env, check=True, capture_output=True)
    assert mode(data) == 0o700 and mode(data / "db.sqlite3") == 0o600
