import pytest
from pydantic import ValidationError

from cdp.settings import Settings


def test_comma_separated_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDP_WRITE_KEYS", "wk_a, wk_b,,")
    assert Settings().write_keys == ["wk_a", "wk_b"]


def test_defaults_are_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CDP_CLICKHOUSE_URL", "CDP_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.embedded_clickhouse and settings.embedded_redis
    assert not Settings(clickhouse_url="http://ch:8123").embedded_clickhouse


def test_a_wrong_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDP_REDIS_URL", "mysql://x")
    with pytest.raises(ValidationError, match="CDP_REDIS_URL"):
        Settings()
