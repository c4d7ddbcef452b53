"""A start-up check that the Redis server has every command riskscore sends.

A server without RedisBloom accepts connections and fails only on the first BF.* or TDIGEST.*
call, so commands check up front and stop with a message that says how to get the commands.
"""

from __future__ import annotations

import redis

from scoring.errors import CapabilityError, ServerError

REQUIRED_COMMANDS = (
    "BF.RESERVE",
    "BF.MADD",
    "BF.MEXISTS",
    "TDIGEST.CREATE",
    "TDIGEST.ADD",
    "TDIGEST.QUANTILE",
    "TDIGEST.INFO",
    "XAUTOCLAIM",
)


def server_address(client: redis.Redis) -> str:
    """Return the host:port (or socket path) that `client` connects to, without credentials."""
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return f"unix socket {kwargs['path']}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def check_capabilities(client: redis.Redis) -> None:
    """Raise CapabilityError naming each required command that the server lacks.

    Raises ServerError when the server cannot be reached or rejects the credentials.
    """
    address = server_address(client)
    try:
        # The subcommand goes in the command name, because redis-py 8.2's reply parser for COMMAND
        # raises TypeError on the nil that COMMAND INFO returns for an unknown command.
        replies = client.execute_command("COMMAND INFO", *REQUIRED_COMMANDS)
    except redis.AuthenticationError as error:
        raise ServerError(
            f"the Redis server at {address} rejected the credentials: {error}. "
            "Check the user name and password in RISK_REDIS_URL"
        ) from None
    except (redis.ConnectionError, redis.TimeoutError) as error:
        raise ServerError(
            f"cannot connect to the Redis server at {address}: {error}. Check that it is running and "
            "that RISK_REDIS_URL is right, or unset RISK_REDIS_URL to use the embedded default server"
        ) from None
    except redis.ResponseError as error:
        raise CapabilityError(
            f"the Redis server at {address} rejected COMMAND INFO ({error}), so riskscore cannot "
            f"check that it supports {', '.join(REQUIRED_COMMANDS)}"
        ) from None

    missing = [name for name, reply in zip(REQUIRED_COMMANDS, replies) if not reply]
    if not missing:
        return

    advice = []
    if any(name.startswith(("BF.", "TDIGEST.")) for name in missing):
        advice.append(
            "Bloom filter (BF.*) and T-Digest (TDIGEST.*) commands come with Redis 8 or newer, "
            "which bundles them, and with Redis Stack."
        )
    if "XAUTOCLAIM" in missing:
        advice.append("XAUTOCLAIM needs Redis 6.2 or newer.")
    raise CapabilityError(
        f"the Redis server at {address} lacks commands that riskscore needs: {', '.join(missing)}. "
        + " ".join(advice)
        + " Point RISK_REDIS_URL at such a server, or unset RISK_REDIS_URL to use the embedded default server."
    )
