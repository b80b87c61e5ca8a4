"""The deployment files (Dockerfile, compose.yaml, deploy/nginx.conf) name only commands, flags,
settings and URLs that exist: each command is parsed by the very parser that runs it, each
variable is read by the code and documented in the README. (The commands themselves run in
their plain-process form in tests/deploy: migrate, serve --workers, the llama.cpp server.)"""

from __future__ import annotations

import re
import shlex

import pytest
import yaml
from django.core.management import get_commands
from django.urls import resolve

from chat.engine.llamacpp_server import build_parser
from chat.management.commands.serve import Command as Serve
from chat.routing import websocket_urlpatterns
from tests.server import ROOT

COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
NGINX = (ROOT / "deploy" / "nginx.conf").read_text()
README = (ROOT / "README.md").read_text()
SOURCE = "\n".join(p.read_text() for folder in ("chat", "chatglm_site") for p in (ROOT / folder).rglob("*.py"))


def defaults(value: str) -> str:
    """compose's ${NAME:-default} / ${NAME:?message} as the value a default run gets."""
    value = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{\w+:\?[^}]*\}", "set-by-operator", value)


def serve_args(args: list[str]):
    parser = Serve().create_parser("manage.py", "serve")
    return parser.parse_args([defaults(a) for a in args])


def test_the_web_service_runs_serve_with_existing_flags():
    options = serve_args(COMPOSE["services"]["web"]["command"])
    assert options.workers >= 2 and options.upstream_url == "http://engine:8080/v1"


def test_the_dockerfile_entrypoint_runs_existing_commands():
    entrypoint = re.search(r'^ENTRYPOINT (\[.*\])$', DOCKERFILE, re.M)[1]
    script = yaml.safe_load(entrypoint)[2]  # ["sh", "-c", SCRIPT, "$0"]
    for command in script.split("&&"):
        words = shlex.split(command.replace('"$@"', ""))
        words = words[1:] if words[0] == "exec" else words
        assert words[:2] == ["python", "manage.py"]
        assert words[2] in get_commands(), words
        if words[2] == "serve":
            options = serve_args(words[3:])
            assert (options.host, options.port) == ("0.0.0.0", 8800)
    assert "USER chatglm" in DOCKERFILE and re.search(r"^FROM python:3\.11-slim$", DOCKERFILE, re.M)
    assert 'VOLUME ["/data"]' in DOCKERFILE and "CHATGLM_DATA_DIR=/data" in DOCKERFILE


def test_the_cpu_engine_runs_the_llamacpp_server_with_existing_flags():
    service = COMPOSE["services"]["engine-cpu"]
    assert service["entrypoint"] == ["python", "-m", "chat.engine.llamacpp_server"]
    args = build_parser().parse_args([defaults(a) for a in service["command"]])
    assert (args.host, args.port) == ("0.0.0.0", 8080)
    assert "CHATGLM_LLAMACPP_API_KEY" in service["environment"]


def environment_names():
    names = set(COMPOSE["x-web-env"]) | set(COMPOSE["services"]["engine-cpu"]["environment"])
    names |= set(re.findall(r"\b(CHATGLM_\w+|DJANGO_\w+)=", DOCKERFILE))
    return sorted(names)


@pytest.mark.parametrize("name", environment_names())
def test_every_variable_is_read_by_the_code_and_documented(name):
    assert f'"{name}"' in SOURCE, f"{name} is read nowhere"
    assert f"`{name}`" in README, f"{name} is not in the README"


def test_health_checks_use_the_health_endpoints():
    for name in ("web", "engine-cpu"):
        check = " ".join(COMPOSE["services"][name]["healthcheck"]["test"])
        url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", check)
        if name == "web":
            assert url[1] == "8800" and resolve(url[2]).url_name == "healthz"
        else:
            assert url[1] == "8080" and url[2] == "/health"  # llama.cpp's (tests/deploy/llamacpp.py waits on it)
    assert "/healthz" in DOCKERFILE


def test_nginx_streams_and_upgrades_websockets():
    assert "server web:8800;" in NGINX and "web" in COMPOSE["services"]
    ws_prefix = re.search(r"location (/\w+/) \{", NGINX)[1]
    assert any(str(p.pattern).lstrip("^").startswith(ws_prefix.lstrip("/")) for p in websocket_urlpatterns)
    assert "proxy_buffering off;" in NGINX
    assert "proxy_set_header Upgrade $http_upgrade;" in NGINX
    assert "proxy_set_header Connection $connection_upgrade;" in NGINX
    for timeout in re.findall(r"proxy_read_timeout (\S+);", NGINX):
        assert timeout in ("1h", "1d")
    assert "X-Request-ID" in NGINX  # the site keeps a sane proxy request id (chat/metrics.py)
