"""Bulk loads into Redis: blocklist addresses into the Bloom filter, amounts into user digests."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence

import redis

from scoring.keys import Keys

Progress = Callable[[int], None]
"""Called with the number of items just written."""

CHUNK = 5_000


def _ignore(_count: int) -> None:
    return None


def load_blocklist(
    client: redis.Redis,
    keys: Keys,
    addresses: Sequence[str],
    *,
    error_rate: float,
    capacity: int,
    progress: Progress = _ignore,
) -> int:
    """Add canonical addresses to the Bloom filter; return how many were not in it before.

    A missing filter is reserved for max(capacity, len(addresses)) entries at `error_rate`. An
    existing filter keeps its size and grows by RedisBloom's expansion when it fills, at the cost of
    a higher error rate for the added layers.
    """
    if not client.exists(keys.blocklist):
        client.execute_command("BF.RESERVE", keys.blocklist, error_rate, max(capacity, len(addresses)))
    added = 0
    for start in range(0, len(addresses), CHUNK):
        chunk = addresses[start : start + CHUNK]
        flags = client.execute_command("BF.MADD", keys.blocklist, *chunk)
        added += sum(1 for flag in flags if int(flag))
        progress(len(chunk))
    return added


def load_history(
    client: redis.Redis,
    keys: Keys,
    amounts_by_user: Mapping[str, Sequence[float]],
    *,
    compression: int,
    replace: bool = False,
    window_count: int | None = None,
    progress: Progress = _ignore,
) -> int:
    """Add each user's amounts to their digest, created when missing; return amounts added.

    With `replace`, existing digests of these users are deleted first, inside the same MULTI block
    as the new amounts, so a reader sees either the old digest or the new one. With `window_count`,
    the amounts also join each user's window of approved amounts (see scoring.histories), as if
    approved now in file order, and the window keeps its newest `window_count`. A history rebuild
    then keeps imported amounts instead of dropping them. `replace` replaces the window too.
    """
    users = list(amounts_by_user)
    total = 0
    import_id = f"import-{secrets.token_hex(4)}"
    now_ms = time.time() * 1000
    for start in range(0, len(users), CHUNK // 10):
        chunk = users[start : start + CHUNK // 10]
        pipe = client.pipeline(transaction=True)
        for user in chunk:
            key = keys.history(user)
            if replace:
                pipe.delete(key)
            pipe.execute_command("TDIGEST.CREATE", key, "COMPRESSION", compression)
            amounts = amounts_by_user[user]
            for offset in range(0, len(amounts), CHUNK):
                pipe.execute_command("TDIGEST.ADD", key, *amounts[offset : offset + CHUNK])
            if window_count is not None:
                _add_to_window(pipe, keys.approved(user), amounts, import_id, now_ms, window_count, replace)
        for reply in pipe.execute(raise_on_error=False):
            # TDIGEST.CREATE on an existing digest fails with "key already exists": that is fine.
            if isinstance(reply, redis.ResponseError) and "already exists" not in str(reply):
                raise reply
        written = sum(len(amounts_by_user[user]) for user in chunk)
        total += written
        progress(written)
    return total


def _add_to_window(
    pipe: redis.client.Pipeline,
    key: str,
    amounts: Sequence[float],
    import_id: str,
    now_ms: float,
    window_count: int,
    replace: bool,
) -> None:
    """Queue the commands that add imported amounts to a user's window of approved amounts."""
    if replace:
        pipe.delete(key)
    # Scores one microsecond apart keep file order, and stay below now_ms: later approvals are newer.
    first = now_ms - len(amounts) / 1000
    members = {f"{import_id}:{index}|{amount!r}": first + index / 1000 for index, amount in enumerate(amounts)}
    items = list(members.items())
    for offset in range(0, len(items), CHUNK):
        pipe.zadd(key, dict(items[offset : offset + CHUNK]))
    pipe.zremrangebyrank(key, 0, -(window_count + 1))
