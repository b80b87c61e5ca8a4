"""Shared fixtures: the fake model by default, a fresh engine per test that asks for one,
and real servers (`manage.py serve`) on 127.0.0.1 for end-to-end tests."""

from __future__ import annotations

import os

import pytest

# Tests run against the fake backend unless a test says otherwise (before any engine exists).
os.environ["CHATGLM_MODEL"] = "fake"
os.environ.pop("CHATGLM_BACKEND", None)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from chat.engine import get_engine, reset_engine  # noqa: E402

from .server import ServerFactory  # noqa: E402


@pytest.fixture
def engine_env(monkeypatch):
    """Set engine environment variables, then get a fresh engine: `engine_env(CHATGLM_FAKE_DELAY_MS="5")`."""

    def configure(**env):
        for name, value in env.items():
            monkeypatch.setenv(name, str(value))
        reset_engine()
        engine = get_engine()
        engine.wait_ready(timeout=600)
        return engine

    yield configure
    reset_engine()


@pytest.fixture
def engine(engine_env):
    """A fresh fake engine with no delay."""
    return engine_env(CHATGLM_MODEL="fake", CHATGLM_FAKE_DELAY_MS="0")


@pytest.fixture(autouse=True)
def _api_settings(settings):
    """Each test starts with the default service settings (no API keys, short pings)."""
    settings.CHATGLM = {**settings.CHATGLM, "API_KEYS": [], "PING_SECONDS": 15.0}
    return settings


@pytest.fixture
def server_factory(tmp_path):
    """Start real `manage.py serve` processes on free ports; all are stopped after the test."""
    factory = ServerFactory(tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture
def fake_server(server_factory):
    """One server with the fake model and a small per-token delay."""
    return server_factory.start(env={"CHATGLM_FAKE_DELAY_MS": "2"})
