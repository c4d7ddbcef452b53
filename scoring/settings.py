"""Settings, read from `RISK_*` environment variables and an optional `.env` file.

Every value is validated when the settings are first loaded, so a bad value stops a command at
start-up with a message that names the environment variable.
"""

from __future__ import annotations

import functools
from enum import Enum
from pathlib import Path

import click
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from scoring.errors import ConfigurationError
from scoring.sources import ListSource, check_unique_names

ENV_PREFIX = "RISK_"


class ColdStartPolicy(str, Enum):
    """Amount rule behaviour for a user with too little history."""

    ABSTAIN = "abstain"
    FLAG = "flag"


Schedule = float | tuple[str, str, str, str, str] | None
"""A parsed schedule setting: seconds between runs, the five crontab fields, or None for off."""


def parse_schedule(text: str) -> Schedule:
    """Parse a schedule setting: a number of seconds, a five-field crontab (UTC) or `off`.

    Raise ValueError saying what is expected.
    """
    value = text.strip()
    if value.lower() in ("off", "none", ""):
        return None
    fields = value.split()
    if len(fields) == 1:
        try:
            seconds = float(value)
        except ValueError:
            raise ValueError(f"expected seconds, a five-field crontab or off, got {text!r}") from None
        if not seconds > 0 or seconds == float("inf"):
            raise ValueError(f"seconds must be a positive number, got {text!r}")
        return seconds
    if len(fields) != 5:
        raise ValueError(f"a crontab has five fields (minute hour day-of-month month day-of-week), got {len(fields)}")
    from celery.schedules import crontab  # imported here: settings load without Celery otherwise

    minute, hour, day_of_month, month, day_of_week = fields
    try:
        crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month, day_of_week=day_of_week)
    except ValueError as error:
        raise ValueError(f"invalid crontab {value!r}: {error}") from None
    return minute, hour, day_of_month, month, day_of_week


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
        # inf would switch a rule off (RISK_MULTIPLIER=inf) or overflow a timeout conversion.
        allow_inf_nan=False,
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

    # Blocklists and allowlists: where they come from, when they are refreshed, and the guards that
    # keep a bad download from replacing a good list.
    blocklist_sources: list[ListSource] = Field(
        default_factory=list,
        description="JSON list of sources: name, url or path, format, min_count, kind (blocklist or allowlist).",
    )
    blocklist_refresh_schedule: str = Field(
        default="3600", description="Seconds between scheduled list refreshes, a five-field crontab (UTC), or off."
    )
    blocklist_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Largest list a source may send, in bytes."
    )
    blocklist_connect_timeout_s: float = Field(default=10.0, gt=0.0, description="HTTP connect timeout, in seconds.")
    blocklist_read_timeout_s: float = Field(
        default=30.0, gt=0.0, description="HTTP timeout of each read from the connection, in seconds."
    )
    blocklist_total_timeout_s: float = Field(
        default=300.0, gt=0.0, description="Maximum duration of one HTTP download, in seconds."
    )
    blocklist_max_invalid_share: float = Field(
        default=0.1, ge=0.0, le=1.0, description="A list whose share of invalid data lines is above this is rejected."
    )
    blocklist_max_drop: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="A list that lost more than this share of its entries since it was last accepted is rejected.",
    )
    allowlist_reserved: bool = Field(
        default=False, description="Never flag private and reserved addresses (10.0.0.0/8, fc00::/7 and others)."
    )

    # User histories: the rolling window of approved amounts that a history rebuild keeps.
    history_window_count: int = Field(
        default=1000, ge=1, le=100_000, description="Approved amounts kept per user: the newest this many."
    )
    history_window_days: float = Field(
        default=0.0, ge=0.0, description="Approved amounts older than this many days are dropped; 0 keeps all."
    )
    history_refresh_schedule: str = Field(
        default="0 3 * * *", description="Scheduled history rebuild: seconds between runs, a crontab (UTC), or off."
    )
    history_rebuild_budget_s: float = Field(
        default=300.0, gt=0.0, description="Seconds one scheduled rebuild task runs before a new task continues it."
    )

    # Input limits. Longer values make an entry invalid instead of creating huge keys.
    max_id_length: int = Field(default=128, ge=1, description="Maximum length of tx_id and user_id, in bytes.")
    max_field_bytes: int = Field(default=4096, ge=16, description="Maximum size of any other field, in bytes.")
    max_fields: int = Field(default=64, ge=4, le=1000, description="Maximum number of fields in one entry.")

    # Drain and fan-out.
    drain_interval_s: float = Field(default=1.0, gt=0.0, description="Beat interval of the drain task.")
    drain_budget_s: float = Field(
        default=None,  # type: ignore[assignment] - set to 98 % of the interval after validation
        gt=0.0,
        le=20.0,
        description="Seconds one drain run waits on the stream; unset: 98 % of the drain interval.",
        validate_default=False,
    )
    # 500 gave the highest full-pipeline throughput on 2 cores (bench/results/tune.json: about
    # 9,300-10,200 tx/s against 8,900-9,500 at 100 and 8,800 at 1,000); the linger keeps batches
    # small at low rates, so a large maximum costs no latency there.
    batch_size: int = Field(default=500, ge=1, le=10_000, description="Maximum entries per scoring task.")
    stream_retention_s: int = Field(
        default=86_400,
        ge=0,
        description="Acknowledged entries older than this are trimmed from the stream; pending ones never are.",
    )
    batch_linger_ms: float = Field(
        default=10.0,
        ge=0.0,
        le=1000.0,
        description="Milliseconds the drain waits to fill a batch before sending a partial one.",
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

    @field_validator("blocklist_refresh_schedule", "history_refresh_schedule")
    @classmethod
    def _valid_schedule(cls, value: str) -> str:
        parse_schedule(value)
        return value.strip()

    @field_validator("blocklist_sources")
    @classmethod
    def _unique_source_names(cls, value: list[ListSource]) -> list[ListSource]:
        return check_unique_names(value)

    @model_validator(mode="after")
    def _drain_budget_below_interval(self) -> Settings:
        # A drain that waits longer than the beat interval overlaps the next ones: drains pile up
        # and hold every worker process that scoring needs.
        if self.drain_budget_s is None:
            # Entries that arrive between one drain's return and the next tick wait for that gap:
            # at 90 % of the interval the p99 latency at 3,000 tx/s was 136 ms, at 98 % 34 ms
            # (bench.run, 2 cores).
            self.drain_budget_s = min(20.0, 0.98 * self.drain_interval_s)
        elif self.drain_budget_s >= self.drain_interval_s:
            raise ValueError(
                f"{ENV_PREFIX}DRAIN_BUDGET_S ({self.drain_budget_s}) must be below "
                f"{ENV_PREFIX}DRAIN_INTERVAL_S ({self.drain_interval_s}), for example 98 % of it"
            )
        return self

    @field_validator("flower_password")
    @classmethod
    def _empty_password_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None
        return value


# Fields whose input is never echoed in an error message.
# Source URLs may carry an API key in their query, so blocklist_sources is one of them.
_SECRET_FIELDS = frozenset({"redis_url", "broker_url", "flower_password", "blocklist_sources"})


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        if not item["loc"]:  # a check across fields: its message names the variables
            lines.append(item["msg"].removeprefix("Value error, "))
            continue
        field = str(item["loc"][0])
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
    except SettingsError as error:
        # Raised for a variable that is not valid JSON where JSON is expected; its message names
        # the field and the source, not the value.
        raise ConfigurationError(f"invalid settings: {error}") from None


@functools.cache
def get_settings() -> Settings:
    """Return the process-wide settings, loaded once."""
    return load_settings()
