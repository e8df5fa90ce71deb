"""Settings: read from the environment with the REFOLD_ prefix, explicit defaults, clear startup errors."""

from __future__ import annotations

import pytest

from refold_dispatch.config import DEFAULT_REDIS_URL, Settings
from refold_dispatch.errors import ConfigurationError


def read(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_defaults_need_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = read(monkeypatch)
    assert settings.redis_url == DEFAULT_REDIS_URL
    assert settings.base_url == "https://app.refold.ai"
    assert settings.api_key is None


def test_refold_redis_url_wins_over_the_hosted_add_on_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert read(monkeypatch, REDIS_URL="redis://addon:1/2").redis_url == "redis://addon:1/2"
    assert read(monkeypatch, REFOLD_REDIS_URL="redis://ours:3/4").redis_url == "redis://ours:3/4"


@pytest.mark.parametrize(("raw", "parsed"), [("10,60,300", (10.0, 60.0, 300.0)), ("[1, 2.5]", (1.0, 2.5))])
def test_retry_schedule_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str, parsed: tuple[float, ...]
) -> None:
    assert read(monkeypatch, REFOLD_RETRY_SCHEDULE=raw).retry_schedule == parsed


@pytest.mark.parametrize("raw", ["", "0,5", "x"])
def test_bad_retry_schedule_is_refused(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    with pytest.raises(ValueError, match="retry_schedule"):
        read(monkeypatch, REFOLD_RETRY_SCHEDULE=raw)


def test_base_url_must_be_http_and_loses_its_trailing_slash(monkeypatch: pytest.MonkeyPatch) -> None:
    assert read(monkeypatch, REFOLD_BASE_URL="http://127.0.0.1:8787/").base_url == "http://127.0.0.1:8787"
    with pytest.raises(ValueError, match="http"):
        read(monkeypatch, REFOLD_BASE_URL="ftp://x")


@pytest.mark.parametrize(("key", "environment"), [("tk_abc", "test"), ("pk_abc", "production"), ("zz", "unknown")])
def test_environment_is_told_from_the_key_prefix(monkeypatch: pytest.MonkeyPatch, key: str, environment: str) -> None:
    settings = read(monkeypatch, REFOLD_API_KEY=key)
    assert settings.environment == environment
    assert key not in repr(settings)


@pytest.mark.parametrize("key", [None, "changeme", "your-api-key", "<your key>", "  "])
def test_missing_or_placeholder_key_is_a_clear_startup_error(monkeypatch: pytest.MonkeyPatch, key: str | None) -> None:
    settings = read(monkeypatch) if key is None else read(monkeypatch, REFOLD_API_KEY=key)
    with pytest.raises(ConfigurationError, match="REFOLD_API_KEY"):
        settings.require_api_key()


def test_a_real_key_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = read(monkeypatch, REFOLD_API_KEY="tk_0123456789")
    assert settings.require_api_key().get_secret_value() == "tk_0123456789"
