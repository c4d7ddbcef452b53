"""Tests of settings: validation messages, secrets, the .env file and defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scoring.errors import ConfigurationError
from scoring.settings import ColdStartPolicy, load_settings

REDIS_PASSWORD = "redis-secret-7c1e"
FLOWER_PASSWORD = "flower-secret-93ab"


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Remove RISK_* variables and work in an empty folder, so that no developer's .env is read."""
    for name in list(os.environ):
        if name.startswith("RISK_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load_error(monkeypatch: pytest.MonkeyPatch, **variables: str) -> str:
    """Set the RISK_* variables, load the settings and return the error message."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    return str(caught.value)


INVALID_VALUES = [
    ("RISK_QUANTILE", "0"),
    ("RISK_QUANTILE", "1"),
    ("RISK_QUANTILE", "2"),
    ("RISK_QUANTILE", "high"),
    ("RISK_MULTIPLIER", "0"),
    ("RISK_MULTIPLIER", "-1.5"),
    ("RISK_MIN_HISTORY", "1"),
    ("RISK_MIN_HISTORY", "2.5"),
    ("RISK_COLD_START_POLICY", "maybe"),
    ("RISK_LEARN_FROM_APPROVED", "sometimes"),
    ("RISK_TDIGEST_COMPRESSION", "5"),
    ("RISK_BLOOM_ERROR_RATE", "1"),
    ("RISK_BLOOM_CAPACITY", "0"),
    ("RISK_MAX_ID_LENGTH", "0"),
    ("RISK_MAX_FIELD_BYTES", "8"),
    ("RISK_MAX_FIELDS", "2000"),
    ("RISK_DRAIN_INTERVAL_S", "0"),
    ("RISK_DRAIN_BUDGET_S", "0"),
    ("RISK_BATCH_SIZE", "0"),
    ("RISK_RECLAIM_IDLE_S", "-1"),
    ("RISK_BROKER_DB", "16"),
    ("RISK_FLOWER_PORT", "70000"),
    ("RISK_FLOWER_USER", ""),
    ("RISK_KEY_PREFIX", "risk score"),
    ("RISK_KEY_PREFIX", ""),
    ("RISK_STREAM", " transactions"),
    ("RISK_CONSUMER_GROUP", "group\t1"),
    ("RISK_EMBEDDED_PERSISTENCE", "perhaps"),
    ("RISK_REDIS_URL", "http://127.0.0.1:6379/0"),
    ("RISK_BROKER_URL", "amqp://127.0.0.1:5672//"),
]


@pytest.mark.parametrize(("variable", "value"), INVALID_VALUES, ids=[f"{v}={x!r}" for v, x in INVALID_VALUES])
def test_invalid_value_names_variable(monkeypatch, variable, value):
    message = load_error(monkeypatch, **{variable: value})

    assert f"{variable}:" in message


def test_each_invalid_variable_named(monkeypatch):
    message = load_error(monkeypatch, RISK_QUANTILE="2", RISK_BATCH_SIZE="0")

    assert "RISK_QUANTILE:" in message
    assert "RISK_BATCH_SIZE:" in message


def test_error_shows_public_input(monkeypatch):
    message = load_error(monkeypatch, RISK_QUANTILE="1.5")

    assert "'1.5'" in message


# --- secrets --------------------------------------------------------------------------------------


def test_invalid_redis_url_hides_secret(monkeypatch):
    message = load_error(monkeypatch, RISK_REDIS_URL=f"http://user:{REDIS_PASSWORD}@127.0.0.1:6379/0")

    assert "RISK_REDIS_URL:" in message
    assert REDIS_PASSWORD not in message


def test_invalid_broker_url_hides_secret(monkeypatch):
    message = load_error(monkeypatch, RISK_BROKER_URL=f"amqp://user:{REDIS_PASSWORD}@127.0.0.1:5672//")

    assert "RISK_BROKER_URL:" in message
    assert REDIS_PASSWORD not in message


def test_invalid_flower_password_hides_secret():
    # Environment values are always text, so a wrong type only comes from a caller's override.
    with pytest.raises(ConfigurationError) as caught:
        load_settings(flower_password=["flower", FLOWER_PASSWORD])

    assert "RISK_FLOWER_PASSWORD:" in str(caught.value)
    assert FLOWER_PASSWORD not in str(caught.value)


def test_other_error_hides_secrets(monkeypatch):
    message = load_error(
        monkeypatch,
        RISK_REDIS_URL=f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0",
        RISK_FLOWER_PASSWORD=FLOWER_PASSWORD,
        RISK_QUANTILE="2",
    )

    assert REDIS_PASSWORD not in message
    assert FLOWER_PASSWORD not in message


def test_repr_hides_secrets(monkeypatch):
    monkeypatch.setenv("RISK_REDIS_URL", f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0")
    monkeypatch.setenv("RISK_BROKER_URL", f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/1")
    monkeypatch.setenv("RISK_FLOWER_PASSWORD", FLOWER_PASSWORD)

    settings = load_settings()

    assert REDIS_PASSWORD not in repr(settings)
    assert FLOWER_PASSWORD not in repr(settings)
    assert REDIS_PASSWORD not in str(settings)
    assert FLOWER_PASSWORD not in str(settings)
    assert settings.flower_password is not None
    assert settings.flower_password.get_secret_value() == FLOWER_PASSWORD


@pytest.mark.parametrize("variable", ["RISK_REDIS_URL", "RISK_BROKER_URL", "RISK_FLOWER_PASSWORD"])
def test_empty_secret_is_unset(monkeypatch, variable):
    monkeypatch.setenv(variable, "")

    settings = load_settings()

    assert getattr(settings, variable.removeprefix("RISK_").lower()) is None


# --- the .env file --------------------------------------------------------------------------------


def test_dotenv_file_is_read(clean_environment):
    (clean_environment / ".env").write_text("RISK_QUANTILE=0.9\nRISK_KEY_PREFIX=from-dotenv\n", encoding="utf-8")

    settings = load_settings()

    assert settings.quantile == 0.9
    assert settings.key_prefix == "from-dotenv"


def test_environment_overrides_dotenv(clean_environment, monkeypatch):
    (clean_environment / ".env").write_text("RISK_QUANTILE=0.9\n", encoding="utf-8")
    monkeypatch.setenv("RISK_QUANTILE", "0.7")

    settings = load_settings()

    assert settings.quantile == 0.7


def test_invalid_dotenv_value_names_variable(clean_environment):
    (clean_environment / ".env").write_text("RISK_MULTIPLIER=zero\n", encoding="utf-8")

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    assert "RISK_MULTIPLIER:" in str(caught.value)


def test_dotenv_ignores_other_variables(clean_environment):
    (clean_environment / ".env").write_text("OTHER_TOOL_SETTING=1\nRISK_NOT_A_SETTING=2\n", encoding="utf-8")

    settings = load_settings()

    assert settings.quantile == 0.8


# --- defaults -------------------------------------------------------------------------------------


def test_default_rule_parameters():
    settings = load_settings()

    assert settings.quantile == 0.8
    assert settings.multiplier == 2.0
    assert settings.min_history == 5
    assert settings.cold_start_policy is ColdStartPolicy.ABSTAIN
    assert settings.learn_from_approved is True


def test_default_keys_and_server():
    settings = load_settings()

    assert settings.redis_url is None
    assert settings.broker_url is None
    assert settings.key_prefix == "riskscore"
    assert settings.stream == "transactions"
    assert settings.consumer_group == "riskscore"


def test_environment_sets_values(monkeypatch):
    monkeypatch.setenv("RISK_COLD_START_POLICY", "flag")
    monkeypatch.setenv("RISK_LEARN_FROM_APPROVED", "false")
    monkeypatch.setenv("RISK_MULTIPLIER", "3")

    settings = load_settings()

    assert settings.cold_start_policy is ColdStartPolicy.FLAG
    assert settings.learn_from_approved is False
    assert settings.multiplier == 3.0


@pytest.mark.parametrize("name", ["RISK_MULTIPLIER", "RISK_RECLAIM_IDLE_S", "RISK_HISTORY_WINDOW_DAYS"])
def test_infinite_value_is_invalid(monkeypatch, name):
    monkeypatch.setenv(name, "inf")
    with pytest.raises(ConfigurationError, match=name):
        load_settings()


def test_malformed_json_names_field(monkeypatch):
    monkeypatch.setenv("RISK_BLOCKLIST_SOURCES", "[{")
    with pytest.raises(ConfigurationError, match="blocklist_sources"):
        load_settings()
