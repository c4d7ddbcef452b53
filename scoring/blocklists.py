"""Versioned refresh of the IP blocklist and allowlist from their sources, with an atomic swap.

A refresh fetches every source, parses it and checks it against the guards (missing file, HTTP
error or timeout, body too large, no entries, too many invalid lines, too large a drop in entries).
A source that fails keeps the entries it last had accepted, so one bad download never removes a
list. The new version is built under temporary keys: a Bloom filter of single addresses, sized for
their count, and sorted sets of merged ranges (see scoring.ranges). One script call then renames
them over the live keys and writes the version number, so a scoring read, itself one script call,
reads either the whole old version or the whole new one. Renaming over a key deletes the old
value; with `lazyfree-lazy-server-del` the server frees it in the background.

A refresh in which no source's entries changed (HTTP 304, the same file, or the same entries)
builds nothing and keeps the version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import redis

from scoring.errors import InputFormatError
from scoring.keys import Keys
from scoring.lists import BlocklistParse, ListFormat, decode_lines, guess_format_of_lines, parse_blocklist
from scoring.locks import SingleFlightLock, lock_holder
from scoring.ranges import IntervalIndex, address_interval, merge_intervals, network_interval, range_member
from scoring.settings import Settings
from scoring.sources import FetchError, FetchLimits, ListSource, SourceKind, fetch
from scoring.store import utc_now_iso

log = logging.getLogger(__name__)

LOCK_TTL_S = 60.0
BUILD_TTL_MS = 3_600_000
"""Temporary build keys expire after an hour, so a build killed before its swap leaves nothing behind."""
VERSIONS_KEPT = 100
_ADD_CHUNK = 5_000

# Swaps a built version in. KEYS: lock, version, versions, then (temporary, live) pairs.
# ARGV: lock token, version, manifest JSON, versions kept. A missing temporary key (an empty range
# set) deletes its live key. The lock check fences off a refresh whose lock expired meanwhile.
_SWAP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('LOCKLOST the refresh lock expired or is held by another refresh')
end
for i = 4, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('RENAME', KEYS[i], KEYS[i + 1])
    redis.call('PERSIST', KEYS[i + 1])
  else
    redis.call('DEL', KEYS[i + 1])
  end
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[3])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[4]) - 1)
return 1
"""


class SourceResult(str, Enum):
    """The result of one source in one refresh."""

    updated = "updated"
    unchanged = "unchanged"
    failed = "failed"


@dataclass(frozen=True)
class SourceData:
    """The canonical entries accepted from one source: single addresses and CIDR networks."""

    addresses: tuple[str, ...]
    networks: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join((*self.addresses, *self.networks))

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    @property
    def entries(self) -> int:
        return len(self.addresses) + len(self.networks)

    def encode(self) -> bytes:
        return zlib.compress(self.text.encode(), 6)

    @classmethod
    def decode(cls, blob: bytes) -> SourceData:
        lines = zlib.decompress(blob).decode().split("\n") if blob else []
        return cls(
            addresses=tuple(line for line in lines if line and "/" not in line),
            networks=tuple(line for line in lines if "/" in line),
        )


@dataclass
class SourceOutcome:
    """One source's part in a refresh: its result, and the entries it contributes to the build."""

    source: ListSource
    result: SourceResult
    data: SourceData | None = None
    data_is_new: bool = False
    error: str | None = None
    parsed: BlocklistParse | None = None
    list_format: ListFormat | None = None
    etag: str | None = None
    last_modified: str | None = None
    body_sha256: str | None = None
    duration_ms: int = 0


@dataclass
class RefreshReport:
    """The result of a refresh: per-source outcomes, and the live version afterwards."""

    outcomes: list[SourceOutcome] = field(default_factory=list)
    version: str | None = None
    swapped: bool = False
    skipped: str | None = None
    """The reason the refresh did not run at all (another refresh has the lock, no sources), or None."""
    message: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def failed(self) -> list[SourceOutcome]:
        return [outcome for outcome in self.outcomes if outcome.result is SourceResult.failed]


@dataclass(frozen=True)
class Guards:
    """Limits a fetched list must pass before it replaces the source's accepted entries."""

    fetch: FetchLimits
    max_invalid_share: float
    max_drop: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Guards:
        return cls(
            fetch=FetchLimits(
                connect_timeout_s=settings.blocklist_connect_timeout_s,
                read_timeout_s=settings.blocklist_read_timeout_s,
                total_timeout_s=settings.blocklist_total_timeout_s,
                max_bytes=settings.blocklist_max_bytes,
            ),
            max_invalid_share=settings.blocklist_max_invalid_share,
            max_drop=settings.blocklist_max_drop,
        )


# --- one source -----------------------------------------------------------------------------------


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _decode_hash(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def read_source_status(client: redis.Redis, keys: Keys, name: str) -> dict[str, str]:
    """Return the status hash of the source called `name` (empty when it never ran)."""
    return _decode_hash(client.hgetall(keys.list_source_status(name)))


def _previous_data(client: redis.Redis, keys: Keys, name: str) -> SourceData | None:
    blob = client.get(keys.list_source_data(name))
    return None if blob is None else SourceData.decode(blob)


def _check_guards(source: ListSource, parsed: BlocklistParse, previous: dict[str, str], guards: Guards, force: bool) -> None:
    """Raise ValueError when the parsed list must not replace the source's accepted entries."""
    accepted = len(parsed.addresses) + len(parsed.networks)
    if accepted == 0:
        raise ValueError(f"the list has no entries: {parsed.summary()}")

    data_lines = parsed.lines - parsed.comments - parsed.blank
    max_invalid = guards.max_invalid_share if source.max_invalid_share is None else source.max_invalid_share
    if data_lines and parsed.invalid / data_lines > max_invalid:
        raise ValueError(
            f"{parsed.invalid} of {data_lines} data lines are invalid ({parsed.invalid / data_lines:.1%}), "
            f"more than the limit of {max_invalid:.1%} (RISK_BLOCKLIST_MAX_INVALID_SHARE): {parsed.summary()}"
        )

    same_config = previous.get("fingerprint") == source.fingerprint()
    before = int(previous.get("entries") or 0)
    max_drop = guards.max_drop if source.max_drop is None else source.max_drop
    if same_config and not force and before and accepted < before * (1 - max_drop):
        raise ValueError(
            f"entries dropped from {before:,} to {accepted:,} ({1 - accepted / before:.1%}), more than the "
            f"limit of {max_drop:.1%} (RISK_BLOCKLIST_MAX_DROP); run the refresh with --force to accept it"
        )


def process_source(client: redis.Redis, keys: Keys, source: ListSource, guards: Guards, *, force: bool = False) -> SourceOutcome:
    """Fetch, parse and check one source; never raise for a bad source.

    A source that fails or did not change contributes the entries it last had accepted, if any.
    """
    started = time.monotonic()
    previous = read_source_status(client, keys, source.name)
    previous_data = _previous_data(client, keys, source.name)
    conditional = previous_data is not None and previous.get("fingerprint") == source.fingerprint() and not force

    def finish(outcome: SourceOutcome) -> SourceOutcome:
        outcome.duration_ms = int((time.monotonic() - started) * 1000)
        if outcome.result is SourceResult.failed:
            log.warning("list source %s (%s) failed: %s", source.name, source.location, outcome.error)
        return outcome

    def failed(error: str, **details: Any) -> SourceOutcome:
        return finish(SourceOutcome(source, SourceResult.failed, data=previous_data, error=error, **details))

    def unchanged(**details: Any) -> SourceOutcome:
        return finish(SourceOutcome(source, SourceResult.unchanged, data=previous_data, **details))

    try:
        fetched = fetch(
            source,
            guards.fetch,
            etag=previous.get("etag") if conditional else None,
            last_modified=previous.get("last_modified") if conditional else None,
        )
    except FetchError as error:
        return failed(str(error))
    if fetched.not_modified:
        return unchanged(etag=fetched.etag, last_modified=fetched.last_modified, body_sha256=previous.get("body_sha256"))

    assert fetched.body is not None
    body_sha256 = hashlib.sha256(fetched.body).hexdigest()
    validators = {"etag": fetched.etag, "last_modified": fetched.last_modified, "body_sha256": body_sha256}
    if conditional and body_sha256 == previous.get("body_sha256"):
        return unchanged(**validators)

    try:
        lines = decode_lines(fetched.body, source.location)
    except InputFormatError as error:
        return failed(str(error))
    list_format = source.format or guess_format_of_lines(lines)
    parsed = parse_blocklist(lines, list_format, min_count=source.min_count)
    try:
        _check_guards(source, parsed, previous, guards, force)
    except ValueError as error:
        return failed(str(error), parsed=parsed, list_format=list_format)

    data = SourceData(tuple(parsed.addresses), tuple(parsed.networks))
    if previous_data is not None and data.digest == previous_data.digest and previous.get("fingerprint") == source.fingerprint():
        return unchanged(parsed=parsed, list_format=list_format, **validators)
    return finish(
        SourceOutcome(source, SourceResult.updated, data=data, data_is_new=True, parsed=parsed, list_format=list_format, **validators)
    )


# --- building and swapping a version --------------------------------------------------------------


@dataclass(frozen=True)
class BuiltLists:
    """The contents of one list version, ready to write."""

    bloom_addresses: list[str]
    blocklist_members: list[str]
    allowlist_members: list[str]
    addresses_in_ranges: int
    """Single blocklisted addresses left out of the Bloom filter because a blocklisted range holds them."""


def build_lists(outcomes: Iterable[SourceOutcome]) -> BuiltLists:
    """Merge the entries of every source into the Bloom filter's addresses and the two range sets."""
    singles: set[str] = set()
    blocked = []
    allowed = []
    for outcome in outcomes:
        if outcome.data is None:
            continue
        if outcome.source.kind is SourceKind.allowlist:
            allowed.extend(address_interval(address) for address in outcome.data.addresses)
            allowed.extend(network_interval(network) for network in outcome.data.networks)
        else:
            singles.update(outcome.data.addresses)
            blocked.extend(network_interval(network) for network in outcome.data.networks)

    blocked_index = IntervalIndex.of(blocked)
    bloom_addresses = sorted(address for address in singles if not blocked_index.contains(address))
    return BuiltLists(
        bloom_addresses=bloom_addresses,
        blocklist_members=[range_member(interval) for interval in blocked_index.intervals],
        allowlist_members=[range_member(interval) for interval in merge_intervals(allowed)],
        addresses_in_ranges=len(singles) - len(bloom_addresses),
    )


def _write_build(
    client: redis.Redis, keys: Keys, build_id: str, built: BuiltLists, *, error_rate: float, capacity: int
) -> dict[str, str]:
    """Write the build's Bloom filter and range sets under temporary keys; return {live key: temporary key}."""
    bloom = keys.list_build(build_id, "bloom")
    block = keys.list_build(build_id, "blocklist_ranges")
    allow = keys.list_build(build_id, "allowlist_ranges")

    pipe = client.pipeline(transaction=False)
    pipe.execute_command("BF.RESERVE", bloom, error_rate, max(capacity, len(built.bloom_addresses), 1))
    pipe.pexpire(bloom, BUILD_TTL_MS)
    for start in range(0, len(built.bloom_addresses), _ADD_CHUNK):
        pipe.execute_command("BF.MADD", bloom, *built.bloom_addresses[start : start + _ADD_CHUNK])
    for key, members in ((block, built.blocklist_members), (allow, built.allowlist_members)):
        for start in range(0, len(members), _ADD_CHUNK):
            pipe.zadd(key, dict.fromkeys(members[start : start + _ADD_CHUNK], 0))
        pipe.pexpire(key, BUILD_TTL_MS)
    pipe.execute()
    return {keys.blocklist: bloom, keys.blocklist_ranges: block, keys.allowlist_ranges: allow}


def _manifest(version: str, outcomes: Sequence[SourceOutcome], built: BuiltLists, error_rate: float) -> dict[str, Any]:
    return {
        "version": version,
        "built_at": utc_now_iso(),
        "sources": [
            {
                "name": outcome.source.name,
                "kind": outcome.source.kind.value,
                "location": outcome.source.location,
                "data_digest": outcome.data.digest,
                "addresses": len(outcome.data.addresses),
                "networks": len(outcome.data.networks),
            }
            for outcome in outcomes
            if outcome.data is not None
        ],
        "bloom_addresses": len(built.bloom_addresses),
        "bloom_error_rate": error_rate,
        "blocklist_ranges": len(built.blocklist_members),
        "allowlist_ranges": len(built.allowlist_members),
        "addresses_in_ranges": built.addresses_in_ranges,
    }


def swap_in(
    client: redis.Redis,
    keys: Keys,
    lock: SingleFlightLock,
    outcomes: Sequence[SourceOutcome],
    *,
    error_rate: float,
    capacity: int,
) -> tuple[str, dict[str, Any]]:
    """Build a new version from the outcomes' entries and make it live in one atomic step.

    Return the new version and its manifest. The build's temporary keys are deleted when the swap
    fails, for example because the refresh lost its lock.
    """
    built = build_lists(outcomes)
    build_id = secrets.token_hex(6)
    pairs = _write_build(client, keys, build_id, built, error_rate=error_rate, capacity=capacity)
    for outcome in outcomes:
        if outcome.data_is_new and outcome.data is not None:
            temporary = keys.list_build(build_id, f"source_data:{outcome.source.name}")
            client.set(temporary, outcome.data.encode(), px=BUILD_TTL_MS)
            pairs[keys.list_source_data(outcome.source.name)] = temporary

    version = str(client.incr(keys.list_counter))
    manifest = _manifest(version, outcomes, built, error_rate)
    swap_keys = [lock.key, keys.list_version, keys.list_versions]
    for live, temporary in pairs.items():
        swap_keys += [temporary, live]
    try:
        client.eval(_SWAP, len(swap_keys), *swap_keys, lock.token, version, json.dumps(manifest), VERSIONS_KEPT)
    except redis.ResponseError:
        client.delete(*pairs.values())
        raise
    log.info(
        "list version %s is live: %d addresses in the Bloom filter, %d blocklisted ranges, %d allowlisted ranges",
        version, manifest["bloom_addresses"], manifest["blocklist_ranges"], manifest["allowlist_ranges"],
    )
    return version, manifest


# --- status ---------------------------------------------------------------------------------------


def live_manifest(client: redis.Redis, keys: Keys) -> dict[str, Any] | None:
    """Return the manifest of the live version, or None when no refresh has made one live."""
    pipe = client.pipeline(transaction=True)
    pipe.get(keys.list_version)
    pipe.lrange(keys.list_versions, 0, VERSIONS_KEPT - 1)
    version, manifests = pipe.execute()
    if version is None:
        return None
    for raw in manifests:
        manifest = json.loads(raw)
        if manifest.get("version") == _text(version):
            return manifest
    return {"version": _text(version)}


def _composition(sources: Iterable[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return sorted((item["name"], item["kind"], item["data_digest"]) for item in sources)


def _record_outcome(
    pipe: redis.client.Pipeline, keys: Keys, outcome: SourceOutcome, now: str, version: str | None
) -> None:
    source = outcome.source
    key = keys.list_source_status(source.name)
    fields: dict[str, str | int] = {
        "name": source.name,
        "kind": source.kind.value,
        "location": source.location,
        "last_attempt_at": now,
        "last_result": outcome.result.value,
        "last_duration_ms": outcome.duration_ms,
    }
    if outcome.result is SourceResult.failed:
        fields.update(last_error=outcome.error or "", last_error_at=now)
        pipe.hset(key, mapping=fields)
        pipe.hincrby(key, "consecutive_failures", 1)
        return

    fields.update(last_success_at=now, consecutive_failures=0, fingerprint=source.fingerprint())
    for name in ("etag", "last_modified", "body_sha256"):
        value = getattr(outcome, name)
        if value:
            fields[name] = value
        else:
            pipe.hdel(key, name)
    if outcome.list_format is not None:
        fields["format"] = outcome.list_format.value
    if outcome.data is not None:
        fields.update(
            addresses=len(outcome.data.addresses),
            networks=len(outcome.data.networks),
            entries=outcome.data.entries,
            data_digest=outcome.data.digest,
        )
    if outcome.parsed is not None:
        fields.update(lines=outcome.parsed.lines, invalid=outcome.parsed.invalid)
    if outcome.result is SourceResult.updated:
        fields["last_change_at"] = now
    if version is not None and outcome.data is not None:
        fields["version"] = version
    pipe.hset(key, mapping=fields)


def _record_run(client: redis.Redis, keys: Keys, report: RefreshReport, now: str) -> None:
    pipe = client.pipeline(transaction=True)
    for outcome in report.outcomes:
        _record_outcome(pipe, keys, outcome, now, report.version if report.swapped else None)
    pipe.delete(keys.list_last_run)
    pipe.hset(
        keys.list_last_run,
        mapping={
            "at": now,
            "result": "swapped" if report.swapped else "kept",
            "version": report.version or "",
            "message": report.message,
            "sources": ",".join(outcome.source.name for outcome in report.outcomes),
            "failed": ",".join(outcome.source.name for outcome in report.failed),
            "duration_ms": int(report.duration_s * 1000),
        },
    )
    pipe.execute()


# --- the refresh ----------------------------------------------------------------------------------


def refresh_lists(
    client: redis.Redis,
    keys: Keys,
    settings: Settings,
    sources: Sequence[ListSource] | None = None,
    *,
    force: bool = False,
) -> RefreshReport:
    """Refresh the lists from `sources` (default: RISK_BLOCKLIST_SOURCES), unless another refresh runs.

    The new version contains exactly these sources. With `force`, HTTP validators are not sent, so
    every list is downloaded again, and the count-drop guard is off. Never raises for a bad source;
    Redis errors propagate.
    """
    started = time.monotonic()
    chosen = list(settings.blocklist_sources if sources is None else sources)
    report = RefreshReport()
    if not chosen:
        report.skipped = "no list sources are configured (RISK_BLOCKLIST_SOURCES)"
        log.debug("list refresh skipped: %s", report.skipped)
        return report

    lock = SingleFlightLock(client, keys.list_lock, ttl_s=LOCK_TTL_S)
    if not lock.acquire():
        holder = client.get(keys.list_lock)
        report.skipped = f"another list refresh is running ({_text(holder) if holder else 'it just finished'})"
        log.info("list refresh skipped: %s", report.skipped)
        return report

    with lock:
        guards = Guards.from_settings(settings)
        report.outcomes = [process_source(client, keys, source, guards, force=force) for source in chosen]
        live = live_manifest(client, keys)
        report.version = None if live is None else live["version"]
        contributing = [outcome for outcome in report.outcomes if outcome.data is not None]
        new_composition = _composition(
            {"name": o.source.name, "kind": o.source.kind.value, "data_digest": o.data.digest}  # type: ignore[union-attr]
            for o in contributing
        )

        if not contributing:
            report.message = "no source has accepted entries, so the live lists stay as they are"
        elif live is not None and "sources" in live and _composition(live["sources"]) == new_composition:
            report.message = "no source changed, so the live lists stay as they are"
        else:
            report.version, manifest = swap_in(
                client, keys, lock, report.outcomes, error_rate=settings.bloom_error_rate, capacity=settings.bloom_capacity
            )
            report.swapped = True
            report.counts = {
                name: manifest[name] for name in ("bloom_addresses", "blocklist_ranges", "allowlist_ranges", "addresses_in_ranges")
            }
            report.message = f"version {report.version} is live"
        report.duration_s = time.monotonic() - started
        _record_run(client, keys, report, utc_now_iso())

    log.info(
        "list refresh: %s (%d sources, %d failed, %.1f s)",
        report.message, len(report.outcomes), len(report.failed), report.duration_s,
    )
    return report


def list_status(client: redis.Redis, keys: Keys, settings: Settings) -> dict[str, Any]:
    """Gather the live version, the last run, the running refresh and every known source's status."""
    live = live_manifest(client, keys)
    names = [source.name for source in settings.blocklist_sources]
    for item in (live or {}).get("sources", []):
        if item["name"] not in names:
            names.append(item["name"])
    configured = {source.name for source in settings.blocklist_sources}
    sources = []
    for name in names:
        status: dict[str, Any] = read_source_status(client, keys, name)
        status.setdefault("name", name)
        status["configured"] = name in configured
        status.pop("fingerprint", None)
        sources.append(status)
    running = lock_holder(client, keys.list_lock)
    return {
        "live": live,
        "last_run": _decode_hash(client.hgetall(keys.list_last_run)) or None,
        "running": None if running is None else {"holder": running[0], "lock_expires_in_s": running[1]},
        "sources": sources,
    }


def report_as_dict(report: RefreshReport) -> dict[str, Any]:
    """Return a refresh report as plain data, for JSON output and task results."""
    return {
        "swapped": report.swapped,
        "version": report.version,
        "skipped": report.skipped,
        "message": report.message,
        "counts": report.counts,
        "duration_s": round(report.duration_s, 3),
        "sources": [
            {
                "name": outcome.source.name,
                "kind": outcome.source.kind.value,
                "location": outcome.source.location,
                "result": outcome.result.value,
                "error": outcome.error,
                "entries_used": None if outcome.data is None else outcome.data.entries,
                "summary": None if outcome.parsed is None else outcome.parsed.summary(),
                "duration_ms": outcome.duration_ms,
            }
            for outcome in report.outcomes
        ],
    }
