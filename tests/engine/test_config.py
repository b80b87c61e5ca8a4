"""EngineConfig: every engine setting read from the environment in one place, with errors that
name the variable."""

from __future__ import annotations

import pytest

from chat.engine.config import ConfigError, EngineConfig


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    for name, value in {"CHATGLM_MAX_QUEUE": "12", "CHATGLM_MAX_QUEUED_PER_CLIENT": "0",
                        "CHATGLM_FAKE_DELAY_MS": "2.5", "CHATGLM_UPSTREAM_MODEL": " m ",
                        "CHATGLM_DATA_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CHATGLM_CACHE_DIR", raising=False)
    config = EngineConfig.from_env()
    assert (config.max_queue, config.max_queued_per_client, config.fake_delay_ms) == (12, 0, 2.5)
    assert config.upstream_model == "m"
    assert config.cache_dir == tmp_path / "models"  # the model cache follows CHATGLM_DATA_DIR


@pytest.mark.parametrize("name,value,message", [
    ("CHATGLM_MAX_BATCH", "eight", "CHATGLM_MAX_BATCH must be an integer, not 'eight'"),
    ("CHATGLM_FAKE_DELAY_MS", "soon", "CHATGLM_FAKE_DELAY_MS must be a number, not 'soon'"),
    ("CHATGLM_MAX_QUEUED_PER_CLIENT", "-1", "CHATGLM_MAX_QUEUED_PER_CLIENT must be 0"),
])
def test_a_bad_value_names_its_variable(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        EngineConfig.from_env()
