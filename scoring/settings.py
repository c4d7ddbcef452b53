"""Settings, read from `RISK_*` environment variables and an optional `.env` file.

Every value is validated when the settings are first loaded, so a bad value stops a command at
start-up with a message that names the environment variable.
"""

from __future__ import annotations

import functools
from enum import Enum
from pathlib import Path

import click
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from scoring.errors import ConfigurationError

ENV_PREFIX = "RISK_"


class ColdStartPolicy(str, Enum):
    """What the amount rule does for a user with too little history."""

    ABSTAIN = "abstain"
    FLAG = "flag"


def default_data_dir() -> Path:
    """Return the per-user folder for the embedded server's data and state."""
    return Path(click.get_app_dir("riskscore", force_posix=True))


class Settings(BaseSettings):
    """All riskscore settings. Each field is read from `RISK_<FIELD NAME IN UPPER CASE>`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    # Connections. With no redis_url, commands use the embedded server.
    redis_url: SecretStr | None = Field(
        default=None,
        description="Data Redis URL (redis:// or rediss://). Unset: use the embedded server.",
    )
    broker_url: SecretStr | None = Field(
        default=None,
        description="Celery broker URL. Unset: the data server, database number broker_db.",
    )
    broker_db: int = Field(default=1, ge=0, le=15, description="Broker database when broker_url is unset.")
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Folder for the embedded server's data, password and state file.",
    )
    embedded_persistence: bool = Field(
        default=True, description="Embedded server writes an append-only file (AOF) in data_dir."
    )

    # Key names. Every key riskscore writes is built from these in scoring.keys.
    key_prefix: str = Field(default="riskscore", min_length=1, description="Prefix of every internal key.")
    stream: str = Field(default="transactions", min_length=1, description="Input stream of transactions.")
    consumer_group: str = Field(default="riskscore", min_length=1, description="Consumer group on the stream.")

    # Scoring rules.
    quantile: float = Field(default=0.8, gt=0.0, lt=1.0, description="Quantile of the user's amounts.")
    multiplier: float = Field(default=2.0, gt=0.0, description="Amount is flagged at multiplier x quantile.")
    min_history: int = Field(
        default=5, ge=2, description="Observations a user's digest needs before the amount rule votes."
    )
    cold_start_policy: ColdStartPolicy = Field(
        default=ColdStartPolicy.ABSTAIN,
        description="Amount rule for users below min_history: abstain (0) or flag (1).",
    )
    learn_from_approved: bool = Field(
        default=True, description="Add each approved transaction's amount to its user's digest."
    )
    tdigest_compression: int = Field(default=100, ge=10, le=10_000, description="Compression of new digests.")
    bloom_error_rate: float = Field(default=0.01, gt=0.0, lt=1.0, description="Bloom filter error rate.")
    bloom_capacity: int = Field(default=100_000, ge=1, description="Minimum capacity of a new Bloom filter.")

    # Input limits. Longer values make an entry invalid instead of creating huge keys.
    max_id_length: int = Field(default=128, ge=1, description="Maximum length of tx_id and user_id, in bytes.")
    max_field_bytes: int = Field(default=4096, ge=16, description="Maximum size of any other field, in bytes.")
    max_fields: int = Field(default=64, ge=4, le=1000, description="Maximum number of fields in one entry.")

    # Drain and fan-out.
    drain_interval_s: float = Field(default=1.0, gt=0.0, description="Beat interval of the drain task.")
    drain_budget_s: float = Field(
        default=0.9,
        gt=0.0,
        le=20.0,
        description="Seconds one drain run waits on the stream; below the client's 30 s socket timeout.",
    )
    batch_size: int = Field(default=100, ge=1, le=10_000, description="Entries per scoring task.")
    stream_retention_s: int = Field(
        default=86_400,
        ge=0,
        description="Acknowledged entries older than this are trimmed from the stream; pending ones never are.",
    )
    reclaim_idle_s: float = Field(
        default=60.0, gt=0.0, description="Pending entries idle this long are reclaimed and scored again."
    )

    # Flower.
    flower_user: str = Field(default="admin", min_length=1, description="Flower basic-auth user.")
    flower_password: SecretStr | None = Field(
        default=None, description="Flower basic-auth password. Unset: `riskscore run` generates one."
    )
    flower_allow_no_auth: bool = Field(
        default=False, description="Let `celery -A tasks flower` start without authentication."
    )
    flower_port: int = Field(default=5555, ge=1, le=65535, description="Flower port on 127.0.0.1.")

    @field_validator("key_prefix", "stream", "consumer_group")
    @classmethod
    def _no_whitespace(cls, value: str) -> str:
        if value != value.strip() or any(ch.isspace() for ch in value):
            raise ValueError("must not contain whitespace")
        return value

    @field_validator("redis_url", "broker_url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        scheme = value.get_secret_value().split("://", 1)[0].lower()
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("flower_password")
    @classmethod
    def _empty_password_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None
        return value


# Fields whose input is never echoed in an error message.
_SECRET_FIELDS = frozenset({"redis_url", "broker_url", "flower_password"})


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "?"
        line = f"{ENV_PREFIX}{field.upper()}: {item['msg']}"
        if field not in _SECRET_FIELDS:
            line += f" (input: {item.get('input')!r})"
        lines.append(line)
    return "invalid settings:\n  " + "\n  ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Load and validate settings; raise ConfigurationError naming each invalid variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise ConfigurationError(_describe(error)) from None


@functools.cache
def get_settings() -> Settings:
    """Return the process-wide settings, loaded once."""
    return load_settings()
