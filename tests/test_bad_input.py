"""Bad input through the real scorer and server: every entry gets its defined, recorded outcome."""

from __future__ import annotations

import pytest
import redis

from scoring.engine import BatchScorer
from scoring.keys import Keys
from scoring.settings import Settings
from scoring.store import ensure_group, read_new

GOOD = {"tx_id": "tx", "user_id": "user_1", "amount": "10.00", "ip": "1.2.3.4"}
LISTED_IP = "88.214.48.17"

# Each case: a name, the changes to a good entry (None removes a field), the expected outcome
# (approved, flagged or invalid), and the expected reason (a dead-letter reason for invalid
# entries, a reason recorded in the hash otherwise, or None for no reason).
CASES: list[tuple[str, dict[str, object], str, str | None]] = [
    # amounts
    ("amount_thousands_separator", {"amount": "1,200.50"}, "invalid", "invalid_amount"),
    ("amount_currency_symbol", {"amount": "$99"}, "invalid", "invalid_amount"),
    ("amount_nan", {"amount": "NaN"}, "invalid", "invalid_amount"),
    ("amount_inf", {"amount": "inf"}, "invalid", "invalid_amount"),
    ("amount_overflow", {"amount": "1e309"}, "invalid", "invalid_amount"),
    ("amount_negative", {"amount": "-5"}, "invalid", "invalid_amount"),
    ("amount_empty", {"amount": ""}, "invalid", "invalid_amount"),
    ("amount_zero", {"amount": "0"}, "approved", None),
    ("amount_leading_zeros", {"amount": "007"}, "approved", None),
    ("amount_long_digits", {"amount": "9" * 200}, "invalid", "invalid_amount"),
    ("amount_surrounding_spaces", {"amount": " 12 "}, "approved", None),
    ("amount_hex", {"amount": "0x10"}, "invalid", "invalid_amount"),
    ("amount_underscore", {"amount": "1_000"}, "invalid", "invalid_amount"),
    ("amount_words", {"amount": "ten"}, "invalid", "invalid_amount"),
    ("amount_above_threshold", {"amount": "100000"}, "flagged", "amount_above_threshold"),
    # IPs
    ("ip_octet_out_of_range", {"ip": "999.1.1.1"}, "invalid", "invalid_ip"),
    ("ip_v4_mapped_listed", {"ip": "::ffff:" + LISTED_IP}, "flagged", "ip_blocklisted"),
    ("ip_spaces_listed", {"ip": f" {LISTED_IP} "}, "flagged", "ip_blocklisted"),
    ("ip_v6_upper_case", {"ip": "2001:DB8::1"}, "approved", None),
    ("ip_leading_zero_octet", {"ip": "010.1.1.1"}, "invalid", "invalid_ip"),
    ("ip_zone_id", {"ip": "fe80::1%eth0"}, "invalid", "invalid_ip"),
    ("ip_hostname", {"ip": "example.com"}, "invalid", "invalid_ip"),
    ("ip_empty", {"ip": ""}, "approved", "ip_unknown"),
    ("ip_cidr", {"ip": "1.2.3.0/24"}, "invalid", "invalid_ip"),
    ("ip_listed", {"ip": LISTED_IP}, "flagged", "ip_blocklisted"),
    # ids
    ("tx_id_empty", {"tx_id": ""}, "invalid", "invalid_tx_id"),
    ("tx_id_10kb", {"tx_id": "x" * 10_240}, "invalid", "field_too_long"),
    ("tx_id_not_utf8", {"tx_id": b"tx-\xff\xfe"}, "invalid", "invalid_encoding"),
    ("tx_id_bloom_key", {"tx_id": "riskscore:blocklist:ip"}, "approved", None),
    ("tx_id_history_key", {"tx_id": "riskscore:history:user_1"}, "approved", None),
    ("tx_id_glob", {"tx_id": "tx-*?[a]"}, "approved", None),
    ("tx_id_newline", {"tx_id": "tx\nid"}, "invalid", "invalid_tx_id"),
    ("user_id_empty", {"user_id": ""}, "invalid", "invalid_user_id"),
    ("user_id_not_utf8", {"user_id": b"\xc3\x28"}, "invalid", "invalid_encoding"),
    ("user_id_stream_key", {"user_id": "transactions"}, "approved", "insufficient_history"),
    ("user_id_glob", {"user_id": "*"}, "approved", "insufficient_history"),
    ("user_id_too_long", {"user_id": "u" * 200}, "invalid", "invalid_user_id"),
    # fields
    ("missing_amount", {"amount": None}, "invalid", "missing_field"),
    ("missing_ip", {"ip": None}, "invalid", "missing_field"),
    ("missing_tx_id", {"tx_id": None}, "invalid", "missing_field"),
    ("unknown_fields_kept", {"channel": "web", "device": "d1"}, "approved", None),
    ("no_fields_that_matter", {"tx_id": None, "user_id": None, "amount": None, "ip": None, "x": "1"}, "invalid", "missing_field"),
    ("oversized_extra_field", {"note": "n" * 5000}, "invalid", "field_too_long"),
    ("too_many_fields", {f"f{i}": "1" for i in range(70)}, "invalid", "too_many_fields"),
    ("field_name_not_utf8", {b"\xff": "1"}, "invalid", "invalid_encoding"),
    ("reserved_status_field", {"status": "Approved"}, "invalid", "reserved_field"),
    ("reserved_outcome_field", {"outcome": "approved", "ip": LISTED_IP}, "invalid", "reserved_field"),
]


def _entry(number: int, name: str, changes: dict[str, object]) -> dict[bytes | str, bytes | str]:
    fields: dict[object, object] = {**GOOD, "tx_id": f"tx-{number}-{name}"}
    for field, value in changes.items():
        if value is None:
            fields.pop(field, None)
        else:
            fields[field] = value
    return fields  # type: ignore[return-value]


@pytest.fixture
def scored(redis_client: redis.Redis, settings: Settings) -> dict[str, dict[str, object]]:
    """Add every case to the stream, score them all in one batch, and return each case's record."""
    keys = Keys.from_settings(settings)
    redis_client.execute_command("BF.RESERVE", keys.blocklist, 0.01, 1000)
    redis_client.execute_command("BF.ADD", keys.blocklist, LISTED_IP)
    redis_client.execute_command("TDIGEST.CREATE", keys.history("user_1"))
    redis_client.execute_command("TDIGEST.ADD", keys.history("user_1"), *([10.0] * 20))

    ids = {}
    for number, (name, changes, _outcome, _reason) in enumerate(CASES):
        entry_id = redis_client.xadd(keys.stream, _entry(number, name, changes))
        ids[name] = entry_id.decode()
    ensure_group(redis_client, keys)
    entries = read_new(redis_client, keys, "test", count=len(CASES) + 10)
    assert len(entries) == len(CASES)

    result = BatchScorer(redis_client, settings).score(entries)
    assert sum(result.statuses.values()) == len(CASES)

    dead = {}
    for _id, fields in redis_client.xrange(keys.dead_letter):
        dead[fields[b"source_id"].decode()] = fields
    records = {}
    for number, (name, changes, _outcome, _reason) in enumerate(CASES):
        tx_id = _entry(number, name, changes).get("tx_id")
        tx_hash = {}
        if isinstance(tx_id, str):
            tx_hash = {k.decode(): v.decode(errors="replace") for k, v in redis_client.hgetall(keys.transaction(tx_id)).items()}
        records[name] = {"hash": tx_hash, "dead": dead.get(ids[name]), "id": ids[name]}
    records["_pending"] = {"count": redis_client.xpending(keys.stream, keys.consumer_group)["pending"]}
    return records


def test_bad_input_has_at_least_forty_cases():
    assert len(CASES) >= 40


def test_bad_input_batch_leaves_nothing_pending(scored):
    assert scored["_pending"]["count"] == 0


@pytest.mark.parametrize(("name", "changes", "outcome", "reason"), CASES, ids=[case[0] for case in CASES])
def test_bad_input_outcome(scored, name, changes, outcome, reason):
    record = scored[name]
    if outcome == "invalid":
        assert record["dead"] is not None, "an invalid entry is dead-lettered"
        assert record["dead"][b"reason"].decode() == reason
        if record["hash"]:
            assert record["hash"]["outcome"] == "invalid"
            assert record["hash"]["reasons"] == reason
    else:
        assert record["dead"] is None
        assert record["hash"]["outcome"] == outcome
        assert record["hash"]["stream_id"] == record["id"]
        reasons = record["hash"]["reasons"].split(",") if record["hash"]["reasons"] else []
        if reason is None:
            assert reasons == []
        else:
            assert reason in reasons


def test_dead_letter_keeps_original_bytes(scored):
    dead = scored["tx_id_not_utf8"]["dead"]
    assert dead[b"field:tx_id"] == b"tx-\xff\xfe"


def test_internal_key_ids_leave_filter_intact(scored, redis_client, settings):
    keys = Keys.from_settings(settings)
    assert redis_client.type(keys.blocklist) == b"MBbloom--"
    assert redis_client.execute_command("BF.EXISTS", keys.blocklist, LISTED_IP) == 1
    assert redis_client.type(keys.history("user_1")) == b"TDIS-TYPE"
