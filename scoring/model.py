"""The transaction model: validation of stream entries into transactions or invalid entries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from scoring.addresses import canonical_ip
from scoring.amounts import parse_amount

REQUIRED_FIELDS = ("tx_id", "user_id", "amount", "ip")

# Hash fields that scoring writes. An entry may not carry them: an extra field `status=Approved`
# would otherwise survive in the hash of a flagged transaction.
RESERVED_FIELDS = frozenset(
    {
        "status", "outcome", "risk_score", "ip_risk", "amount_risk", "reasons", "detail", "quantile",
        "threshold", "history_count", "ip_checked", "ip_blocklist_match", "ip_allowlist_match",
        "list_version", "stream_id", "scored_at", "duplicates", "last_duplicate_id", "learned",
    }
)  # fmt: skip


class Reason:
    """Machine-readable reasons recorded in hashes and in the dead-letter stream."""

    MISSING_FIELD = "missing_field"
    INVALID_ENCODING = "invalid_encoding"
    RESERVED_FIELD = "reserved_field"
    TOO_MANY_FIELDS = "too_many_fields"
    FIELD_TOO_LONG = "field_too_long"
    INVALID_TX_ID = "invalid_tx_id"
    INVALID_USER_ID = "invalid_user_id"
    INVALID_AMOUNT = "invalid_amount"
    INVALID_IP = "invalid_ip"
    DUPLICATE = "duplicate_tx_id"


@dataclass(frozen=True)
class Transaction:
    """A valid stream entry, with its IP in canonical form and its amount parsed."""

    stream_id: str
    tx_id: str
    user_id: str
    amount: float
    ip: str | None
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class InvalidEntry:
    """A stream entry that cannot be scored.

    `fields` are the original fields; values that were not valid UTF-8 hold lone surrogates
    (`surrogateescape`), so `encode_text` restores their exact bytes. `tx_id` is set when the
    entry's tx_id is usable as a key, so that its hash can be marked invalid.
    """

    stream_id: str
    reason: str
    detail: str
    fields: Mapping[str, str]
    tx_id: str | None = None


def decode_text(raw: bytes) -> str:
    """Decode bytes from Redis without losing any: invalid UTF-8 becomes lone surrogates."""
    return raw.decode("utf-8", errors="surrogateescape")


def encode_text(text: str) -> bytes:
    """Encode text from `decode_text` back into its original bytes."""
    return text.encode("utf-8", errors="surrogateescape")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _identifier_problem(value: str, max_length: int) -> str | None:
    """Return why `value` cannot be an identifier, or None when it can."""
    if not value.strip():
        return "is empty"
    if value != value.strip():
        return "has surrounding whitespace"
    if len(value.encode("utf-8")) > max_length:
        return f"is longer than {max_length} bytes"
    # isprintable() is false for control, format, surrogate, private-use and unassigned characters
    # and for separators other than the ASCII space.
    if not value.isprintable():
        return "contains a control, separator or unassigned character"
    return None


def parse_entry(
    stream_id: str,
    fields: Mapping[str, str],
    *,
    max_id_length: int,
    max_field_bytes: int,
    max_fields: int,
) -> Transaction | InvalidEntry:
    """Validate one stream entry. Never raises for bad content: it returns an InvalidEntry."""

    def invalid(reason: str, detail: str, tx_id: str | None = None) -> InvalidEntry:
        return InvalidEntry(stream_id, reason, detail, dict(fields), tx_id)

    raw_tx_id = fields.get("tx_id")
    usable_tx_id: str | None = None
    if raw_tx_id is not None and _is_utf8(raw_tx_id) and _identifier_problem(raw_tx_id, max_id_length) is None:
        usable_tx_id = raw_tx_id

    if len(fields) > max_fields:
        return invalid(Reason.TOO_MANY_FIELDS, f"entry has {len(fields)} fields, more than {max_fields}", usable_tx_id)
    for name, value in fields.items():
        if not _is_utf8(name) or not _is_utf8(value):
            return invalid(Reason.INVALID_ENCODING, f"field {name!r} is not valid UTF-8", usable_tx_id)
        if len(value.encode("utf-8")) > max_field_bytes:
            return invalid(Reason.FIELD_TOO_LONG, f"field {name!r} is longer than {max_field_bytes} bytes", usable_tx_id)

    reserved = sorted(RESERVED_FIELDS.intersection(fields))
    if reserved:
        return invalid(Reason.RESERVED_FIELD, "field(s) reserved for scoring results: " + ", ".join(reserved), usable_tx_id)

    missing = [name for name in REQUIRED_FIELDS if name not in fields]
    if missing:
        return invalid(Reason.MISSING_FIELD, "missing field(s): " + ", ".join(missing), usable_tx_id)

    tx_id = fields["tx_id"]
    problem = _identifier_problem(tx_id, max_id_length)
    if problem:
        return invalid(Reason.INVALID_TX_ID, f"tx_id {problem}")

    user_id = fields["user_id"]
    problem = _identifier_problem(user_id, max_id_length)
    if problem:
        return invalid(Reason.INVALID_USER_ID, f"user_id {problem}", tx_id)

    try:
        amount = parse_amount(fields["amount"])
    except ValueError as error:
        return invalid(Reason.INVALID_AMOUNT, str(error), tx_id)

    # An empty ip field means the IP is unknown (a card-present payment, say): the IP rule abstains.
    ip: str | None = None
    if fields["ip"].strip():
        try:
            ip = canonical_ip(fields["ip"])
        except ValueError as error:
            return invalid(Reason.INVALID_IP, str(error), tx_id)

    extra = {name: value for name, value in fields.items() if name not in REQUIRED_FIELDS}
    return Transaction(stream_id, tx_id, user_id, amount, ip, extra)
