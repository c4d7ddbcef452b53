"""Unit tests of stream-entry validation (no Redis)."""

import pytest

from scoring.model import InvalidEntry, Reason, Transaction, decode_text, encode_text, parse_entry

LIMITS = {"max_id_length": 128, "max_field_bytes": 4096, "max_fields": 64}
GOOD = {"tx_id": "tx_1", "user_id": "user_1", "amount": "12.50", "ip": "88.214.48.17"}


def parse(**changes):
    fields = {**GOOD, **changes}
    fields = {k: v for k, v in fields.items() if v is not None}
    return parse_entry("1-0", fields, **LIMITS)


def test_valid_entry_parses():
    tx = parse(channel="web")
    assert isinstance(tx, Transaction)
    assert tx.amount == 12.5
    assert tx.extra == {"channel": "web"}


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("::ffff:88.214.48.17", "88.214.48.17"),
        (" 88.214.48.17 ", "88.214.48.17"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
    ],
)
def test_ip_spellings_canonicalised(ip, expected):
    tx = parse(ip=ip)
    assert isinstance(tx, Transaction)
    assert tx.ip == expected


def test_empty_ip_means_unknown():
    tx = parse(ip="")
    assert isinstance(tx, Transaction)
    assert tx.ip is None


@pytest.mark.parametrize(
    ("changes", "reason", "keeps_tx_id"),
    [
        ({"amount": None}, Reason.MISSING_FIELD, True),
        ({"tx_id": None}, Reason.MISSING_FIELD, False),
        ({"tx_id": ""}, Reason.INVALID_TX_ID, False),
        ({"tx_id": "x" * 10_000}, Reason.FIELD_TOO_LONG, False),
        ({"tx_id": "x" * 129}, Reason.INVALID_TX_ID, False),
        ({"tx_id": "a\nb"}, Reason.INVALID_TX_ID, False),
        ({"user_id": " "}, Reason.INVALID_USER_ID, True),
        ({"amount": "NaN"}, Reason.INVALID_AMOUNT, True),
        ({"amount": "-5"}, Reason.INVALID_AMOUNT, True),
        ({"amount": "1,200.50"}, Reason.INVALID_AMOUNT, True),
        ({"ip": "999.1.1.1"}, Reason.INVALID_IP, True),
        ({"ip": "010.1.1.1"}, Reason.INVALID_IP, True),
        ({"ip": "fe80::1%eth0"}, Reason.INVALID_IP, True),
        ({"ip": "example.com"}, Reason.INVALID_IP, True),
        ({"note": "y" * 5000}, Reason.FIELD_TOO_LONG, True),
        ({"user_id": decode_text(b"\xff\xfe")}, Reason.INVALID_ENCODING, True),
    ],
)
def test_bad_entries_are_invalid(changes, reason, keeps_tx_id):
    result = parse(**changes)
    assert isinstance(result, InvalidEntry)
    assert result.reason == reason
    assert (result.tx_id is not None) == keeps_tx_id


def test_too_many_fields_is_invalid():
    result = parse(**{f"extra_{i}": "1" for i in range(70)})
    assert isinstance(result, InvalidEntry)
    assert result.reason == Reason.TOO_MANY_FIELDS


def test_internal_key_names_are_plain_ids():
    tx = parse(tx_id="riskscore:blocklist:ip", user_id="*")
    assert isinstance(tx, Transaction)
    assert tx.tx_id == "riskscore:blocklist:ip"


def test_invalid_entry_keeps_original_bytes():
    raw = b"caf\xe9"
    result = parse(user_id=decode_text(raw))
    assert isinstance(result, InvalidEntry)
    assert encode_text(result.fields["user_id"]) == raw
