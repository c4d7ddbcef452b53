"""Redis data access: the stream and its consumer group, batch reads, outcome writes, loads.

redis-py errors that callers are expected to handle are converted to riskscore errors here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import socket
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from scoring.keys import Keys
from scoring.model import decode_text
from scoring.ranges import Interval, address_interval, describe_interval, interval_contains, lookup_bound, parse_member
from scoring.rules import History

log = logging.getLogger(__name__)

Entry = tuple[str, dict[str, str]]
"""A stream entry: its id and its fields, decoded with `decode_text`."""


def connect(url: str) -> redis.Redis:
    """Return a client for `url` that retries briefly on connection errors and timeouts."""
    return redis.Redis.from_url(
        url,
        # RESP2 fixes the reply shapes this module parses across redis-py 5 to 8 (8 defaults to RESP3).
        protocol=2,
        socket_connect_timeout=5,
        socket_timeout=30,
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError, socket.timeout],
    )


def _decode_entries(raw: Iterable[tuple[bytes, Mapping[bytes, bytes] | None]]) -> list[Entry]:
    entries = []
    for entry_id, fields in raw:
        # XAUTOCLAIM and XREADGROUP on a deleted entry return it with no fields (None).
        decoded = {decode_text(k): decode_text(v) for k, v in (fields or {}).items()}
        entries.append((decode_text(entry_id), decoded))
    return entries


# --- the stream -----------------------------------------------------------------------------------


def ensure_group(client: redis.Redis, keys: Keys) -> bool:
    """Create the consumer group at the start of the stream; return False if it already existed.

    Starting at id 0 means a backlog that arrived before the group existed is scored too.
    """
    try:
        client.xgroup_create(keys.stream, keys.consumer_group, id="0", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" in str(error):
            return False
        raise
    log.info("created consumer group %r on stream %r", keys.consumer_group, keys.stream)
    return True


def read_new(client: redis.Redis, keys: Keys, consumer: str, count: int, block_ms: int | None = None) -> list[Entry]:
    """Read up to `count` entries never delivered to any consumer of the group.

    The server delivers each new entry to exactly one reader, which is why two drains running at
    the same time never read the same entry.
    """
    reply = client.xreadgroup(keys.consumer_group, consumer, {keys.stream: ">"}, count=count, block=block_ms)
    entries: list[Entry] = []
    for _stream, raw in reply or []:  # RESP2 reply: [[stream, [(id, fields), ...]]]
        entries.extend(_decode_entries(raw))
    return entries


def reclaim(client: redis.Redis, keys: Keys, consumer: str, idle_ms: int, count: int) -> tuple[list[Entry], list[str]]:
    """Claim entries pending longer than `idle_ms`; return (entries, ids of deleted entries).

    XAUTOCLAIM is called with its cursor until the cursor returns to 0-0 or `count` entries are
    claimed. Since Redis 7 its reply also lists claimed ids whose entries were deleted (trimmed):
    those are removed from the pending list by the server and returned here to be recorded.
    """
    claimed: list[Entry] = []
    deleted: list[str] = []
    cursor = "0-0"
    while len(claimed) < count:
        reply = client.xautoclaim(
            keys.stream, keys.consumer_group, consumer, min_idle_time=idle_ms, start_id=cursor, count=count - len(claimed)
        )
        cursor = decode_text(reply[0]) if isinstance(reply[0], bytes) else str(reply[0])
        for entry_id, fields in reply[1]:
            if fields is None:
                deleted.append(decode_text(entry_id))
            else:
                claimed.extend(_decode_entries([(entry_id, fields)]))
        if len(reply) > 2:
            deleted.extend(decode_text(i) for i in reply[2])
        if cursor == "0-0":
            break
    return claimed, deleted


def record_lost(client: redis.Redis, keys: Keys, entry_ids: Sequence[str]) -> None:
    """Dead-letter entries that were pending but deleted from the stream before being scored."""
    if not entry_ids:
        return
    pipe = client.pipeline(transaction=True)
    for entry_id in entry_ids:
        pipe.xadd(keys.dead_letter, {"reason": "entry_lost", "detail": "entry deleted before it was scored", "source_id": entry_id})
        pipe.xack(keys.stream, keys.consumer_group, entry_id)
    pipe.execute()
    log.warning("recorded %d pending entries deleted from stream %r as lost", len(entry_ids), keys.stream)


def _next_id(entry_id: str) -> str:
    milliseconds, _, sequence = entry_id.partition("-")
    return f"{milliseconds}-{int(sequence or 0) + 1}"


def trim_acknowledged(client: redis.Redis, keys: Keys, retention_s: int) -> int:
    """Trim stream entries that every group has acknowledged and that are older than `retention_s`.

    The cut-off is the lowest of: each group's oldest pending id, the entry after each group's
    last delivered id, and now minus the retention. So an entry that is not yet read or not yet
    acknowledged by any group is never removed. A stream without groups is not trimmed. Returns
    the number of entries removed.

    NOTE: once Redis 8.2 (XTRIM ... ACKED) is the minimum server, acknowledged-only trimming can
    be left to the server; valkey 9 does not have it.
    """
    try:
        groups = client.xinfo_groups(keys.stream)
    except redis.ResponseError:
        return 0  # no such stream yet
    if not groups:
        return 0
    cutoff = f"{int(time.time() * 1000) - retention_s * 1000}-0"
    candidates = [cutoff]
    for group in groups:
        name = group["name"]
        summary = client.xpending(keys.stream, name)
        if summary["pending"]:
            candidates.append(decode_text(summary["min"]) if isinstance(summary["min"], bytes) else str(summary["min"]))
        last = group["last-delivered-id"]
        candidates.append(_next_id(decode_text(last) if isinstance(last, bytes) else str(last)))
    min_id = min(candidates, key=_id_order)
    # Approximate trimming removes whole radix-tree nodes only, so it never passes min_id.
    return int(client.xtrim(keys.stream, minid=min_id, approximate=True))


def _id_order(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


# --- batch reads ----------------------------------------------------------------------------------


def _number(value: object) -> float:
    if isinstance(value, bytes):
        value = value.decode()
    return float(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class IpListing:
    """The entries of one list version that match one IP address."""

    blocklisted: bool
    allowlisted: bool
    match: str = ""
    """The blocklist entry that matched: `address` (the Bloom filter of single addresses), `range <first>-<last>`, or ""."""
    allow_match: str = ""
    """The allowlisted range or address that contains it, or ""."""


@dataclass(frozen=True)
class BatchState:
    """Everything a batch is scored against, read from one list version."""

    list_version: str | None
    """Version number of the live lists, or None when no list refresh has run."""
    listings: dict[str, IpListing]
    histories: dict[str, History]


def _read_lists_source() -> str:
    return resources.files("scoring").joinpath("read_lists.lua").read_text(encoding="utf-8")


_READ_LISTS = _read_lists_source()
_READ_LISTS_SHA = hashlib.sha1(_READ_LISTS.encode()).hexdigest()
_READ_HISTORIES = resources.files("scoring").joinpath("read_histories.lua").read_text(encoding="utf-8")
_READ_HISTORIES_SHA = hashlib.sha1(_READ_HISTORIES.encode()).hexdigest()


def _queue_batch_reads(
    pipe: redis.client.Pipeline,
    keys: Keys,
    addresses: list[str],
    points: list[Interval],
    users: list[str],
    quantile: float,
) -> None:
    if addresses:
        list_keys = (keys.list_version, keys.blocklist, keys.blocklist_ranges, keys.allowlist_ranges)
        bounds = [lookup_bound(point) for point in points]
        pipe.evalsha(_READ_LISTS_SHA, len(list_keys), *list_keys, *addresses, *bounds)
    else:
        pipe.get(keys.list_version)
    if users:
        pipe.evalsha(_READ_HISTORIES_SHA, len(users), *(keys.history(user) for user in users), quantile)


def _listing(point: Interval, flag: object, blocked_member: bytes, allowed_member: bytes) -> IpListing:
    match = ""
    if blocked_member:
        blocked = parse_member(blocked_member)
        if interval_contains(blocked, point):
            match = "range " + describe_interval(blocked)
    if not match and int(flag):  # type: ignore[call-overload]
        match = "address"
    allow_match = ""
    if allowed_member:
        allowed = parse_member(allowed_member)
        if interval_contains(allowed, point):
            allow_match = describe_interval(allowed)
    return IpListing(blocklisted=bool(match), allowlisted=bool(allow_match), match=match, allow_match=allow_match)


def read_batch(
    client: redis.Redis, keys: Keys, ips: Iterable[str], user_ids: Iterable[str], quantile: float
) -> BatchState:
    """Read list membership of `ips`, the list version and each user's history in one round trip.

    The list part is one call of `read_lists.lua`: the version, and per distinct IP the Bloom
    filter of single addresses and one ZRANGE BYLEX lookup each in the blocklisted and the
    allowlisted ranges (see scoring.ranges). A script runs atomically, so all of it comes from one
    list version even while a refresh swaps in a new one, and no MULTI/EXEC is needed around it.
    The histories are one call of `read_histories.lua`. A missing digest has no history; a
    quantile that is NaN (RedisBloom returns it for one observation or none) becomes None.
    """
    addresses = list(dict.fromkeys(ips))
    points = [address_interval(address) for address in addresses]
    users = list(dict.fromkeys(user_ids))
    for attempt in (1, 2):
        pipe = client.pipeline(transaction=False)
        _queue_batch_reads(pipe, keys, addresses, points, users, quantile)
        replies = pipe.execute(raise_on_error=False)
        if attempt == 1 and any(isinstance(reply, redis.exceptions.NoScriptError) for reply in replies):
            # The server restarted or flushed its script cache since the scripts were last loaded.
            client.script_load(_READ_LISTS)
            client.script_load(_READ_HISTORIES)
            continue
        break

    first = replies[0]
    if isinstance(first, Exception):
        raise first
    listings: dict[str, IpListing] = {}
    if addresses:
        version, flags, ranges = first[0], first[1], first[2:]
        for index, (address, point) in enumerate(zip(addresses, points)):
            listings[address] = _listing(point, flags[index], ranges[2 * index], ranges[2 * index + 1])
    else:
        version = first

    histories: dict[str, History] = {}
    if users:
        reply = replies[1]
        if isinstance(reply, Exception):
            raise reply
        for index, user in enumerate(users):
            value = _number(reply[2 * index + 1])
            histories[user] = History(count=int(reply[2 * index]), quantile=value if math.isfinite(value) else None)
    return BatchState(None if version is None else decode_text(version), listings, histories)


def read_batch_state(
    client: redis.Redis, keys: Keys, ips: Sequence[str], user_ids: Iterable[str], quantile: float
) -> tuple[list[bool], dict[str, History]]:
    """Return whether each of `ips` is blocklisted (Bloom filter or range), and each user's history.

    A shorthand of read_batch without the allowlist and the list version.
    """
    state = read_batch(client, keys, ips, user_ids, quantile)
    return [state.listings[ip].blocklisted for ip in ips], state.histories


# --- writes ---------------------------------------------------------------------------------------


@dataclass
class OutcomeRecord:
    """One entry's outcome, as the write script takes it."""

    stream_id: str
    kind: str  # "score" or "invalid"
    tx_key: str | None
    history_key: str | None
    approved: bool
    amount: str
    reason: str
    detail: str
    original: Mapping[str, str]
    computed: Mapping[str, str]
    window_key: str | None = None
    """The user's window of approved amounts (`<prefix>:approved:<user_id>`), or None."""


def _script_source() -> str:
    return resources.files("scoring").joinpath("write_outcomes.lua").read_text(encoding="utf-8")


class OutcomeWriter:
    """Writes batch outcomes with the `write_outcomes.lua` script (one round trip per batch).

    Valid records travel as one JSON document, so a batch costs a handful of arguments instead of
    dozens per transaction; the original fields of invalid entries travel as raw arguments because
    they may hold bytes that are not UTF-8.
    """

    # NOTE: Lua's unpack() takes about 8,000 values, so a dead-lettered entry keeps at most this many
    # original fields; the model rejects entries with more fields than settings allow well below it.
    MAX_FIELDS = 1000

    def __init__(self, client: redis.Redis, keys: Keys, compression: int, window_size: int = 1000) -> None:
        self._client = client
        self._keys = keys
        self._compression = compression
        self._window_size = window_size
        self._script = client.register_script(_script_source())

    def write(self, records: Sequence[OutcomeRecord]) -> list[str]:
        """Write outcomes and acknowledge the entries; return each record's status."""
        if not records:
            return []
        key_index: dict[str, int] = {self._keys.stream: 1, self._keys.dead_letter: 2, self._keys.stats: 3}

        def index_of(key: str | None) -> int:
            if key is None:
                return 0
            return key_index.setdefault(key, len(key_index) + 1)

        raw_pairs: list[bytes] = []
        documents: list[dict[str, object]] = []
        for record in records:
            document: dict[str, object] = {"s": record.stream_id, "t": index_of(record.tx_key)}
            if record.kind == "invalid":
                pairs = list(record.original.items())[: self.MAX_FIELDS]
                document.update(r=record.reason, d=record.detail, o=7 + len(raw_pairs), n=len(pairs))
                for name, value in pairs:
                    # Values may carry undecodable bytes as lone surrogates; restore the bytes.
                    raw_pairs += [name.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape")]
            else:
                fields = [item for pair in record.original.items() for item in pair]
                fields += [item for pair in record.computed.items() for item in pair]
                document.update(
                    h=index_of(record.history_key) if record.approved else 0,
                    w=index_of(record.window_key) if record.approved else 0,
                    a=1 if record.approved else 0,
                    m=record.amount,
                    n=len(record.original),
                    f=fields,
                )
            documents.append(document)

        approved_at_ms = int(time.time() * 1000)
        args = [
            self._keys.consumer_group,
            self._compression,
            utc_now_iso(),
            json.dumps(documents),
            self._window_size,
            approved_at_ms,
            *raw_pairs,
        ]
        keys_in_order = sorted(key_index, key=key_index.__getitem__)
        statuses = self._script(keys=keys_in_order, args=args)
        return [s.decode() if isinstance(s, bytes) else s for s in statuses]


def utc_now_iso() -> str:
    """Return the current UTC time in ISO 8601 with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def chunked(items: Sequence[object], size: int) -> Iterator[Sequence[object]]:
    """Yield consecutive slices of `items` of at most `size` elements."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
