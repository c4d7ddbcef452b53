"""Scoring of a batch of stream entries: validate, read state, apply the rules, write outcomes."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis

from scoring.keys import Keys
from scoring.model import InvalidEntry, Transaction, parse_entry
from scoring.ranges import is_reserved
from scoring.rules import RuleParams, Verdict, score
from scoring.settings import Settings
from scoring.store import Entry, IpListing, OutcomeRecord, OutcomeWriter, read_batch, utc_now_iso

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """Counts of what happened to each entry of a batch, by write status and by outcome."""

    statuses: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, int]:
        return {**self.statuses, **{f"outcome_{k}": v for k, v in self.outcomes.items()}}


def _number_text(value: float | None) -> str:
    return "" if value is None else f"{value:.10g}"


NOT_LISTED = IpListing(blocklisted=False, allowlisted=False)


def _computed_fields(
    tx: Transaction, verdict: Verdict, history_count: int, scored_at: str, listing: IpListing, list_version: str | None
) -> dict[str, str]:
    fields = {
        "outcome": "approved" if verdict.approved else "flagged",
        "risk_score": str(verdict.risk_score),
        "ip_risk": str(verdict.ip_risk),
        "amount_risk": str(verdict.amount_risk),
        "reasons": ",".join(verdict.reasons),
        "quantile": _number_text(verdict.quantile),
        "threshold": _number_text(verdict.threshold),
        "history_count": str(history_count),
        "ip_checked": tx.ip or "",
        "ip_blocklist_match": listing.match,
        "ip_allowlist_match": listing.allow_match,
        "list_version": list_version or "none",
        "stream_id": tx.stream_id,
        "scored_at": scored_at,
    }
    if verdict.approved:
        fields["status"] = "Approved"
    return fields


class BatchScorer:
    """Scores batches against one Redis server with one settings object.

    Each batch costs two round trips. One pipeline reads the list version and the Bloom and range
    membership of every IP (one script call) and the history of every distinct user, and one
    script call writes all outcomes and acknowledgements.
    """

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.keys = Keys.from_settings(settings)
        self.params = RuleParams(
            quantile=settings.quantile,
            multiplier=settings.multiplier,
            min_history=settings.min_history,
            cold_start_policy=settings.cold_start_policy,
        )
        self.writer = OutcomeWriter(client, self.keys, settings.tdigest_compression, settings.history_window_count)

    def score(self, entries: Sequence[Entry]) -> BatchResult:
        """Score `entries`, write their outcomes and acknowledge them."""
        settings = self.settings
        parsed = [
            parse_entry(
                entry_id,
                fields,
                max_id_length=settings.max_id_length,
                max_field_bytes=settings.max_field_bytes,
                max_fields=settings.max_fields,
            )
            for entry_id, fields in entries
        ]
        transactions = [item for item in parsed if isinstance(item, Transaction)]
        checked_ips = [tx.ip for tx in transactions if tx.ip is not None]
        # NOTE: histories are read once per batch, so a user's approved amount learned earlier in
        # the same batch does not count for their later transactions in it.
        state = read_batch(self.client, self.keys, checked_ips, (tx.user_id for tx in transactions), settings.quantile)

        scored_at = utc_now_iso()
        result = BatchResult()
        records: list[OutcomeRecord] = []
        for item, (_entry_id, original) in zip(parsed, entries):
            if isinstance(item, InvalidEntry):
                log.info("invalid entry %s: %s (%s)", item.stream_id, item.reason, item.detail)
                records.append(
                    OutcomeRecord(
                        stream_id=item.stream_id,
                        kind="invalid",
                        tx_key=self.keys.transaction(item.tx_id) if item.tx_id else None,
                        history_key=None,
                        approved=False,
                        amount="",
                        reason=item.reason,
                        detail=item.detail,
                        original=original,
                        computed={},
                    )
                )
                continue
            history = state.histories[item.user_id]
            listing = self._listing(state.listings.get(item.ip, NOT_LISTED) if item.ip else NOT_LISTED, item.ip)
            verdict = score(
                item.amount, item.ip, listing.blocklisted, history, self.params, ip_allowlisted=listing.allowlisted
            )
            records.append(
                OutcomeRecord(
                    stream_id=item.stream_id,
                    kind="score",
                    tx_key=self.keys.transaction(item.tx_id),
                    history_key=self.keys.history(item.user_id) if settings.learn_from_approved else None,
                    window_key=self.keys.approved(item.user_id) if settings.learn_from_approved else None,
                    approved=verdict.approved,
                    amount=repr(item.amount),
                    reason="",
                    detail="",
                    original=original,
                    computed=_computed_fields(item, verdict, history.count, scored_at, listing, state.list_version),
                )
            )

        for record, status in zip(records, self.writer.write(records)):
            result.statuses[status] += 1
            if status == "scored":
                result.outcomes["approved" if record.approved else "flagged"] += 1
        return result

    def _listing(self, listing: IpListing, ip: str | None) -> IpListing:
        """Add the RISK_ALLOWLIST_RESERVED allowlist, checked here because it needs no list refresh."""
        if ip is None or listing.allowlisted or not self.settings.allowlist_reserved or not is_reserved(ip):
            return listing
        return IpListing(listing.blocklisted, allowlisted=True, match=listing.match, allow_match="reserved")
