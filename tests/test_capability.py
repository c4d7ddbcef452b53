"""Tests of the start-up capability check against real servers, with and without RedisBloom."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from scoring.capability import REQUIRED_COMMANDS, check_capabilities, server_address
from scoring.embedded import EmbeddedServer, ServerInfo
from scoring.errors import CapabilityError, ServerError

# redis-py 8.2 retries connection and authentication errors 10 times with backoff by default.
NO_RETRY = Retry(NoBackoff(), 0)


@pytest.fixture(scope="module")
def plain_server() -> Iterator[ServerInfo]:
    """A valkey-server without the RedisBloom module."""
    with EmbeddedServer(None, ephemeral=True, modules=()) as info:
        yield info


@pytest.mark.parametrize("protocol", [2, 3])
def test_embedded_server_passes(redis_server: ServerInfo, protocol: int) -> None:
    client = redis.Redis.from_url(redis_server.url(0), protocol=protocol)
    try:
        check_capabilities(client)
    finally:
        client.close()


def test_redis_client_fixture_passes(redis_client: redis.Redis) -> None:
    check_capabilities(redis_client)


def test_server_without_module_fails(plain_server: ServerInfo) -> None:
    client = redis.Redis.from_url(plain_server.url(0))
    try:
        with pytest.raises(CapabilityError) as caught:
            check_capabilities(client)
    finally:
        client.close()

    message = str(caught.value)
    bloom_and_digest = [name for name in REQUIRED_COMMANDS if name.startswith(("BF.", "TDIGEST."))]
    assert f"lacks commands that riskscore needs: {', '.join(bloom_and_digest)}." in message
    assert "XAUTOCLAIM" not in message
    assert "Redis 8 or newer" in message
    assert "Redis Stack" in message
    assert "unset RISK_REDIS_URL to use the embedded default server" in message
    assert f"127.0.0.1:{plain_server.port}" in message
    assert plain_server.password not in message


def test_connection_failure_names_address() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port now that the socket is closed.
    client = redis.Redis(host="127.0.0.1", port=port, password="secret-password", retry=NO_RETRY)
    try:
        with pytest.raises(ServerError) as caught:
            check_capabilities(client)
    finally:
        client.close()

    message = str(caught.value)
    assert f"cannot connect to the Redis server at 127.0.0.1:{port}" in message
    assert "secret-password" not in message


def test_wrong_password_names_address(redis_server: ServerInfo) -> None:
    client = redis.Redis(host=redis_server.host, port=redis_server.port, password="wrong-password", retry=NO_RETRY)
    try:
        with pytest.raises(ServerError) as caught:
            check_capabilities(client)
    finally:
        client.close()

    message = str(caught.value)
    assert f"127.0.0.1:{redis_server.port} rejected the credentials" in message
    assert "wrong-password" not in message


def test_server_address_of_unix_socket() -> None:
    client = redis.Redis(unix_socket_path="/run/riskscore-test.sock")
    try:
        assert server_address(client) == "unix socket /run/riskscore-test.sock"
    finally:
        client.close()
