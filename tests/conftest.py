"""Fixtures shared by the whole suite: one throwaway embedded server per session, and clients of it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from scoring.embedded import EmbeddedServer, ServerInfo
from scoring.keys import Keys
from scoring.settings import Settings, load_settings
from scoring.store import connect


@pytest.fixture(scope="session")
def redis_server() -> Iterator[ServerInfo]:
    """An ephemeral embedded server with RedisBloom, stopped and deleted at the end of the session."""
    with EmbeddedServer(None, ephemeral=True) as info:
        yield info


@pytest.fixture
def redis_client(redis_server: ServerInfo) -> Iterator[redis.Redis]:
    """A client of database 0 of the session server, after FLUSHALL empties every database."""
    client = redis.Redis.from_url(redis_server.url(0))
    client.flushall()
    try:
        yield client
    finally:
        client.close()


SettingsFactory = Callable[..., Settings]
"""Builds settings that point at the session server, with overrides."""


@pytest.fixture
def make_settings(redis_server: ServerInfo, tmp_path: Path) -> SettingsFactory:
    """A factory of settings for the session server, the broker in database 1 and tmp_path as data folder.

    broker_url is set to None so that a RISK_BROKER_URL in the environment cannot leak in.
    """

    def make(**overrides: object) -> Settings:
        return load_settings(
            **{"redis_url": redis_server.url(0), "broker_url": None, "data_dir": tmp_path, "broker_db": 1, **overrides}
        )

    return make


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    """Settings for the session server with every other value at its default."""
    return make_settings()


@pytest.fixture
def client(redis_client: redis.Redis, settings: Settings) -> Iterator[redis.Redis]:
    """A riskscore client (RESP2, as the workers use) of the emptied session server."""
    assert settings.redis_url is not None
    store_client = connect(settings.redis_url.get_secret_value())
    try:
        yield store_client
    finally:
        store_client.close()


@pytest.fixture
def keys(settings: Settings) -> Keys:
    """Key names of the `settings` fixture."""
    return Keys.from_settings(settings)


@pytest.fixture
def shared_data() -> Path:
    """The folder of real public data sets, which sits next to the repository."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"real public data sets not found at {path}")
    return path
