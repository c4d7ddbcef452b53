"""Every Redis key riskscore reads or writes, in one place.

Internal keys are `<prefix>:<kind>:...`. Identifiers from the outside (tx_id, user_id) only ever
appear after a kind segment (`tx:`, `history:`, `approved:` or `history_build:`), so no identifier can spell the name of another
key: a transaction whose id is `riskscore:blocklist:ip` writes the hash
`riskscore:tx:riskscore:blocklist:ip` and never touches the Bloom filter.

| key | Redis type | contents | expiry |
|---|---|---|---|
| `<stream>` (default `transactions`) | stream | input entries: tx_id, user_id, amount, ip, extra fields | acknowledged entries older than RISK_STREAM_RETENTION_S are trimmed by the drain |
| `<prefix>:tx:<tx_id>` | hash | one transaction: its fields, outcome, status, score, reasons | none |
| `<prefix>:history:<user_id>` | T-Digest | the user's amounts | none |
| `<prefix>:blocklist:ip` | Bloom filter | canonical texts of listed IP addresses | none |
| `<prefix>:dead_letter` | stream | invalid and duplicate entries: reason, stream id, original fields | none |
| `<prefix>:drain:heartbeat` | hash | last drain run: time, entries read, reclaimed, lost, tasks sent, trimmed | none |
| `<prefix>:stats` | hash | outcome writes by status (scored, invalid, duplicate, redelivered), last write time | none |
| `<prefix>:blocklist:ranges` | sorted set | merged blocklisted ranges, members `<family><first hex>-<last hex>` (see scoring.ranges) | none |
| `<prefix>:allowlist:ranges` | sorted set | merged allowlisted ranges and addresses, same members | none |
| `<prefix>:lists:version` | string | version number of the live Bloom filter and range sets | none |
| `<prefix>:lists:versions` | list | JSON manifest of each list version, newest first, at most 100 | none |
| `<prefix>:lists:counter` | string | last version number handed out | none |
| `<prefix>:lists:lock` | string | token of the running list refresh | 60 s, extended while it runs |
| `<prefix>:lists:last_run` | hash | the last list refresh: time, result, version, failed sources, duration | none |
| `<prefix>:lists:source:<name>` | hash | one source's status: last success, counts, version, last error, ETag | none |
| `<prefix>:lists:source_data:<name>` | string | zlib-compressed entries last accepted from the source | none |
| `<prefix>:lists:build:<build id>:<part>` | Bloom filter, sorted set, string | a list version being built | 1 hour; renamed to the live keys at the swap |
| `<prefix>:approved:<user_id>` | sorted set | the user's approved amounts, scored by approval time in ms, the newest RISK_HISTORY_WINDOW_COUNT | none |
| `<prefix>:history_build:<user_id>` | T-Digest | a user's digest being rebuilt | 1 hour; renamed to `history:<user_id>` |
| `<prefix>:history_rebuild:state` | hash | the history rebuild's cursor, progress and last completed run | none |
| `<prefix>:history_rebuild:lock` | string | token of the running history rebuild | 60 s, extended while it runs |
"""

from __future__ import annotations

from dataclasses import dataclass

# Characters that SCAN MATCH patterns treat as glob syntax.
_GLOB_CHARACTERS = frozenset("*?[]\\")

from scoring.settings import Settings


@dataclass(frozen=True)
class Keys:
    """Key names derived from the settings."""

    prefix: str
    stream: str
    consumer_group: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Keys:
        return cls(prefix=settings.key_prefix, stream=settings.stream, consumer_group=settings.consumer_group)

    @property
    def blocklist(self) -> str:
        return f"{self.prefix}:blocklist:ip"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}:dead_letter"

    # Celery queues carry the key prefix too, so a replay or the demo on the same broker never
    # takes the live pipeline's tasks, nor the live workers theirs.
    @property
    def score_queue(self) -> str:
        return f"{self.prefix}.score"

    @property
    def drain_queue(self) -> str:
        return f"{self.prefix}.drain"

    @property
    def maintenance_queue(self) -> str:
        return f"{self.prefix}.maintenance"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"

    @property
    def drain_heartbeat(self) -> str:
        return f"{self.prefix}:drain:heartbeat"

    def transaction(self, tx_id: str) -> str:
        return f"{self.prefix}:tx:{tx_id}"

    def history(self, user_id: str) -> str:
        return f"{self.prefix}:history:{user_id}"

    @property
    def blocklist_ranges(self) -> str:
        return f"{self.prefix}:blocklist:ranges"

    @property
    def allowlist_ranges(self) -> str:
        return f"{self.prefix}:allowlist:ranges"

    @property
    def list_version(self) -> str:
        return f"{self.prefix}:lists:version"

    @property
    def list_versions(self) -> str:
        return f"{self.prefix}:lists:versions"

    @property
    def list_counter(self) -> str:
        return f"{self.prefix}:lists:counter"

    @property
    def list_lock(self) -> str:
        return f"{self.prefix}:lists:lock"

    @property
    def list_last_run(self) -> str:
        return f"{self.prefix}:lists:last_run"

    def list_source_status(self, name: str) -> str:
        return f"{self.prefix}:lists:source:{name}"

    def list_source_data(self, name: str) -> str:
        return f"{self.prefix}:lists:source_data:{name}"

    def list_build(self, build_id: str, part: str) -> str:
        return f"{self.prefix}:lists:build:{build_id}:{part}"

    def approved(self, user_id: str) -> str:
        return f"{self.prefix}:approved:{user_id}"

    @property
    def approved_prefix(self) -> str:
        """The part of every approved-amounts key before the user id."""
        return f"{self.prefix}:approved:"

    @property
    def approved_pattern(self) -> str:
        """SCAN MATCH pattern of every approved-amounts key: the fixed prefix, glob-escaped, then `*`."""
        escaped = "".join(f"\\{ch}" if ch in _GLOB_CHARACTERS else ch for ch in self.approved_prefix)
        return escaped + "*"

    def history_build(self, user_id: str) -> str:
        return f"{self.prefix}:history_build:{user_id}"

    @property
    def history_rebuild_state(self) -> str:
        return f"{self.prefix}:history_rebuild:state"

    @property
    def history_rebuild_lock(self) -> str:
        return f"{self.prefix}:history_rebuild:lock"
