"""Every Redis key riskscore reads or writes, in one place.

Internal keys are `<prefix>:<kind>:...`. Identifiers from the outside (tx_id, user_id) only ever
appear after a kind segment (`tx:` or `history:`), so no identifier can spell the name of another
key: a transaction whose id is `riskscore:blocklist:ip` writes the hash
`riskscore:tx:riskscore:blocklist:ip` and never touches the Bloom filter.

| key | Redis type | contents | expiry |
|---|---|---|---|
| `<stream>` (default `transactions`) | stream | input entries: tx_id, user_id, amount, ip, extra fields | trimmed by the producer |
| `<prefix>:tx:<tx_id>` | hash | one transaction: its fields, outcome, status, score, reasons | none |
| `<prefix>:history:<user_id>` | T-Digest | the user's amounts | none |
| `<prefix>:blocklist:ip` | Bloom filter | canonical texts of listed IP addresses | none |
| `<prefix>:dead_letter` | stream | invalid and duplicate entries: reason, stream id, original fields | none |
| `<prefix>:drain:heartbeat` | hash | last drain run: time, entries read, reclaimed, lost, tasks sent, trimmed | none |
| `<prefix>:stats` | hash | outcome writes by status (scored, invalid, duplicate, redelivered), last write time | none |
"""

from __future__ import annotations

from dataclasses import dataclass

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
