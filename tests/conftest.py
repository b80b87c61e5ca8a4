"""Shared fixtures: the fake model by default, a fresh engine per test that asks for one,
and real servers (`manage.py serve`) on 127.0.0.1 for end-to-end tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests run against the fake backend unless a test says otherwise (before any engine exists).
os.environ["CHATGLM_MODEL"] = "fake"
os.environ.pop("CHATGLM_BACKEND", None)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from chat.engine import get_engine, reset_engine  # noqa: E402

from .server import ServerFactory  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL_CACHE = ROOT / "data" / "models"  # the project's default cache: converted once, shared with `make run`


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    """Browser tests run last, after pytest-django's own ordering: Playwright's sync API marks
    an event loop as running on the main thread, which async tests must not meet."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    """Hashing passwords at production strength would be most of the account tests' time."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", password="pw-bob-123")


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


@pytest.fixture(autouse=True)
def _fresh_rate_limits():
    """Each test starts with full rate buckets (user ids and key names recur across tests)."""
    from chat import throttle

    throttle.buckets.clear()


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


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The embedded SmolLM2 as a transformers directory (dequantized from its GGUF once)."""
    from chat.engine.backends.transformers import TransformersBackend, embedded_gguf, gguf_cache_dir
    from chat.engine.config import EngineConfig

    cache = gguf_cache_dir(embedded_gguf(), MODEL_CACHE)
    if not (cache / "config.json").exists():
        TransformersBackend(EngineConfig(model="default", cache_dir=MODEL_CACHE)).load()
    return cache


@pytest.fixture(scope="session")
def smol_tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(autouse=True)
def _close_connections_of_the_sync_thread():
    """Async tests reach the database from asgiref's sync thread, whose connections the test
    client never closes: PostgreSQL then refuses to drop the test database at the end."""
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result()
