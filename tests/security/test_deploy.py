"""Security headers, and the README's production settings: `check --deploy` clean, Secure
cookies, HSTS and the HTTPS redirect on a real server behind a (simulated) TLS proxy."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from django.test import Client

ROOT = Path(__file__).resolve().parents[2]


def production_env() -> dict[str, str]:
    """The `export` lines of the README block marked <!-- production-settings -->."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- production-settings -->", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    env = {}
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            name, _, value = words[1].partition("=")
            env[name] = value
    assert "CHATGLM_HTTPS" in env and len(env) >= 5
    return env


def clean_env(tmp_path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATGLM_", "DJANGO_"))}
    return {**env, "CHATGLM_DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", **extra}


def test_check_deploy_is_clean_with_the_documented_production_settings(tmp_path):
    run = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                         cwd=ROOT, env=clean_env(tmp_path, **production_env()), capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "no issues" in run.stdout


def test_check_deploy_without_https_names_what_is_missing(tmp_path):
    """The test above can fail: without CHATGLM_HTTPS the same check lists the HTTPS warnings."""
    env = {k: v for k, v in production_env().items() if k != "CHATGLM_HTTPS"}
    run = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                         cwd=ROOT, env=clean_env(tmp_path, **env), capture_output=True, text=True)
    assert run.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in run.stderr + run.stdout


@pytest.mark.django_db
def test_the_page_has_a_csp_without_inline_script_and_its_import_map_has_the_nonce():
    r = Client().get("/")
    policy = dict(part.strip().split(" ", 1) for part in r["Content-Security-Policy"].split(";"))
    assert "'unsafe-inline'" not in r["Content-Security-Policy"]
    assert policy["default-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    nonce = re.search(r"'nonce-([^']+)'", policy["script-src"]).group(1)
    scripts = re.findall(r"<script\b([^>]*)>", r.content.decode())
    inline = [attrs for attrs in scripts if "src=" not in attrs]
    assert inline == [f' type="importmap" nonce="{nonce}"']
    assert "style=" not in r.content.decode()
    assert Client().get("/").headers["Content-Security-Policy"] != r["Content-Security-Policy"]  # a fresh nonce


@pytest.mark.django_db
def test_the_admin_and_the_api_carry_the_policy_too(admin_client):
    for url in ("/admin/", "/admin/chat/conversation/", "/healthz"):
        assert "script-src 'self'" in admin_client.get(url)["Content-Security-Policy"], url


def test_https_behind_a_proxy_on_a_real_server(server_factory, tmp_path):
    server = server_factory.start(env={
        "CHATGLM_HTTPS": "1", "CHATGLM_ALLOWED_HOSTS": "chat.example.com,127.0.0.1",
        "CHATGLM_CSRF_TRUSTED_ORIGINS": "https://chat.example.com",
    })
    proxied = {"Host": "chat.example.com", "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}
    r = httpx.get(f"{server.url}/accounts/login/", headers=proxied)
    assert r.status_code == 200
    assert r.headers["Strict-Transport-Security"] == "max-age=31536000"
    cookie = r.headers["Set-Cookie"]
    assert "csrftoken=" in cookie and "Secure" in cookie
    plain = httpx.get(f"{server.url}/accounts/login/", headers={"Host": "chat.example.com"})
    assert plain.status_code == 301 and plain.headers["Location"] == "https://chat.example.com/accounts/login/"
    assert "Strict-Transport-Security" not in plain.headers  # HSTS only over HTTPS
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # the proxy's plain-HTTP health check
