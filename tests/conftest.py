"""Fixtures shared by the whole suite: one throwaway embedded server per session, and clients of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from scoring.embedded import EmbeddedServer, ServerInfo
from scoring.settings import Settings, load_settings


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


@pytest.fixture
def settings(redis_server: ServerInfo, tmp_path: Path) -> Settings:
    """Settings that point at the session server, with the broker in database 1.

    broker_url is set to None so that a RISK_BROKER_URL in the environment cannot leak in.
    """
    return load_settings(redis_url=redis_server.url(0), broker_url=None, data_dir=tmp_path, broker_db=1)


@pytest.fixture
def shared_data() -> Path:
    """The folder of real public data sets, which sits next to the repository."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"real public data sets not found at {path}")
    return path
