"""Unit tests of amount parsing."""

import pytest

from scoring.amounts import MAX_AMOUNT_LENGTH, parse_amount


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12", 12.0),
        (" 12 ", 12.0),
        ("\t12.50\r\n", 12.5),
        ("007", 7.0),
        ("0", 0.0),
        ("0.00", 0.0),
        ("4.97", 4.97),
        ("12.", 12.0),
        (".5", 0.5),
        ("1e3", 1000.0),
        ("1E-2", 0.01),
        ("2.5e+2", 250.0),
        ("1.7976931348623157e308", 1.7976931348623157e308),
        ("9" * MAX_AMOUNT_LENGTH, float("9" * MAX_AMOUNT_LENGTH)),
    ],
)
def test_parse_amount_accepts(text, expected):
    assert parse_amount(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("1,200.50", "comma"),
        ("1,5", "comma"),
        ("$99", "currency symbol"),
        ("99€", "currency symbol"),
        ("NaN", "not a finite number"),
        ("nan", "not a finite number"),
        ("inf", "not a finite number"),
        ("-Infinity", "not a finite number"),
        ("1e309", "too large"),
        ("-5", "negative"),
        ("-0", "negative"),
        ("+5", "sign"),
        ("0x10", "not a plain decimal number"),
        ("1_000", "underscore"),
        ("1" * (MAX_AMOUNT_LENGTH + 1), "longer than 64 characters"),
        (" " * 40 + "1" + " " * 40, "longer than 64 characters"),
        ("١٢", "not a plain decimal number"),
        ("１２", "not a plain decimal number"),
        ("12 50", "not a plain decimal number"),
        ("1e", "not a plain decimal number"),
        (".", "not a plain decimal number"),
        ("e5", "not a plain decimal number"),
        ("12\x00", "not a plain decimal number"),
        ("\u00a012", "not a plain decimal number"),
    ],
)
def test_parse_amount_rejects(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_amount(text)


def test_parse_amount_message_shows_value():
    with pytest.raises(ValueError, match=r"'\$99'"):
        parse_amount("$99")
