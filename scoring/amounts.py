"""Parsing of payment amounts, shared by stream entries and history files."""

from __future__ import annotations

import math
import re

MAX_AMOUNT_LENGTH = 64
"""Maximum length of an amount text, in characters, surrounding whitespace included."""

# ASCII digits only: Python's float() also accepts other Unicode digits ("١٢") and underscores.
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_ASCII_WHITESPACE = " \t\n\r\f\v"
_CURRENCY_SYMBOLS = frozenset("$€£¥₹₽₩¤")


def parse_amount(text: str) -> float:
    """Parse a plain decimal amount such as "12", " 12.50 " or "1e3" into a float.

    Raise ValueError with the reason when the text is empty, longer than MAX_AMOUNT_LENGTH
    characters, negative or signed. Raise it too for NaN, infinity and numbers too large for a
    float ("1e309"), and for text that is not a plain decimal number, such as "1,200.50", "$99",
    "0x10" or "1_000".
    """
    if len(text) > MAX_AMOUNT_LENGTH:
        raise ValueError(f"amount is longer than {MAX_AMOUNT_LENGTH} characters ({len(text)} characters)")
    stripped = text.strip(_ASCII_WHITESPACE)
    if not stripped:
        raise ValueError("amount is empty")

    if not _DECIMAL.fullmatch(stripped):
        raise ValueError(_describe_invalid(stripped))

    value = float(stripped)
    if not math.isfinite(value):
        raise ValueError(f"amount is too large for a float: {stripped!r}")
    return value


def _describe_invalid(stripped: str) -> str:
    """Return why `stripped`, which is not a plain decimal number, is rejected."""
    if stripped[0] == "-" and _DECIMAL.fullmatch(stripped[1:]):
        return f"amount is negative: {stripped!r}"
    if stripped[0] == "+" and _DECIMAL.fullmatch(stripped[1:]):
        return f"amount has a sign, which is not accepted: {stripped!r}"
    if stripped.lstrip("+-").lower() in ("nan", "inf", "infinity"):
        return f"amount is not a finite number: {stripped!r}"
    if "," in stripped:
        return f"amount contains a comma, which is accepted neither as a thousands nor as a decimal separator: {stripped!r}"
    if "_" in stripped:
        return f"amount contains an underscore, which is not accepted: {stripped!r}"
    if any(ch in _CURRENCY_SYMBOLS for ch in stripped):
        return f"amount contains a currency symbol, which is not accepted: {stripped!r}"
    return f"amount is not a plain decimal number: {stripped!r}"
