"""Parsing of IP blocklist files and per-user amount history files.

Parsers count and report bad lines and rows instead of stopping at the first one, so one typo in a
list of 100,000 addresses costs one entry. Only an unreadable file raises InputFormatError.
"""

from __future__ import annotations

import contextlib
import csv
import io
import ipaddress
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from scoring.addresses import canonical_ip
from scoring.amounts import parse_amount
from scoring.errors import InputFormatError

MAX_INVALID_EXAMPLES = 10
"""Maximum number of invalid lines or rows kept as examples in a parse result. The rest are only counted."""

MAX_EXAMPLE_LENGTH = 200
"""Example lines longer than this many characters are cut, and end with "..."."""

_BOM = "\ufeff"

PathLike = str | os.PathLike[str]


class ListFormat(str, Enum):
    """Text format of an IP blocklist file."""

    # One address or CIDR per line with `#` comments, such as Emerging Threats' compromised-ips.txt,
    # which has no comments at all.
    plain = "plain"
    # FireHOL .netset: a `#` comment header, then one address or CIDR per line.
    netset = "netset"
    # Spamhaus DROP: `;` comments, `CIDR ; SBLnnnnnn` lines and a final `; EOF` line.
    spamhaus = "spamhaus"
    # stamparm/ipsum: `#` comments, then `address<TAB>count`, where count is the number of
    # blacklists that carry the address.
    ipsum = "ipsum"


@dataclass
class BlocklistParse:
    """Result of parsing one blocklist.

    Every line read is counted once, in exactly one of: addresses, networks, comments, blank,
    below_min_count, duplicates or invalid.
    """

    addresses: list[str] = field(default_factory=list)
    """Canonical single addresses (see canonical_ip), without duplicates, in file order."""
    networks: list[str] = field(default_factory=list)
    """Canonical CIDR texts of ranges of two or more addresses, without duplicates, in file order."""
    lines: int = 0
    comments: int = 0
    blank: int = 0
    below_min_count: int = 0
    """ipsum lines skipped because their count is below min_count."""
    duplicates: int = 0
    """Lines whose address or network appeared on an earlier line, in any spelling."""
    invalid: int = 0
    invalid_examples: list[tuple[int, str, str]] = field(default_factory=list)
    """(line number from 1, line text, reason) of the first MAX_INVALID_EXAMPLES invalid lines."""

    def summary(self) -> str:
        """Describe the counts in one line, followed by one line per invalid example."""
        text = (
            f"{count(len(self.addresses), 'address', 'addresses')} and {count(len(self.networks), 'network')} "
            f"from {count(self.lines, 'line')} ({count(self.comments, 'comment')}, {self.blank} blank, "
            f"{count(self.duplicates, 'duplicate')}, {self.below_min_count} below the minimum count, "
            f"{self.invalid} invalid)"
        )
        return text + _describe_examples(self.invalid, self.invalid_examples, "lines")


@dataclass
class HistoryParse:
    """Result of parsing one history CSV file."""

    amounts_by_user: dict[str, list[float]] = field(default_factory=dict)
    """Each user's valid amounts, in file order."""
    rows: int = 0
    """Data rows read, valid or not. Blank lines are not rows."""
    invalid: int = 0
    invalid_examples: list[tuple[int, str, str]] = field(default_factory=list)
    """(line number from 1, row as CSV text, reason) of the first MAX_INVALID_EXAMPLES invalid rows.

    The line number is that of the row's last line, which differs from its first line only when a
    quoted field contains a line break.
    """

    def summary(self) -> str:
        """Describe the counts in one line, followed by one line per invalid example."""
        amounts = sum(len(values) for values in self.amounts_by_user.values())
        text = (
            f"{count(amounts, 'amount')} for {count(len(self.amounts_by_user), 'user')} "
            f"from {count(self.rows, 'row')} ({self.invalid} invalid)"
        )
        return text + _describe_examples(self.invalid, self.invalid_examples, "rows")


def count(number: int, singular: str, plural: str | None = None) -> str:
    """Return `number` with the singular or plural noun, such as "1 line" or "2 lines"."""
    return f"{number:,} {singular if number == 1 else plural or singular + 's'}"


def _describe_examples(invalid: int, examples: list[tuple[int, str, str]], noun: str) -> str:
    text = "".join(
        # Most reasons already quote the offending value; the whole line is added only when it tells more.
        f"\n  line {number}: {reason}" + ("" if repr(line.strip()) in reason else f": {line!r}")
        for number, line, reason in examples
    )
    if invalid > len(examples):
        text += f"\n  ... and {invalid - len(examples)} more invalid {noun}"
    return text


def _shorten(text: str) -> str:
    if len(text) <= MAX_EXAMPLE_LENGTH:
        return text
    return text[: MAX_EXAMPLE_LENGTH - 3] + "..."


# Blocklists


def parse_blocklist(lines: Iterable[str], fmt: ListFormat | str, *, min_count: int = 1) -> BlocklistParse:
    """Parse blocklist lines of format `fmt` into canonical addresses and networks.

    Lines may end in LF or CRLF or have none, and the first one may start with a BOM. Blank lines,
    trailing whitespace and comments after an entry are accepted. An invalid line is counted and
    kept as an example, and parsing goes on. A /32 or /128 CIDR counts as a single address, and a
    CIDR with host bits set (10.0.0.1/8) is invalid. `min_count` applies only to ipsum lists,
    because the other formats have no count.
    """
    list_format = ListFormat(fmt)
    comment_marker = ";" if list_format is ListFormat.spamhaus else "#"
    result = BlocklistParse()
    seen_addresses: set[str] = set()
    seen_networks: set[str] = set()

    for line_number, line in enumerate(lines, start=1):
        result.lines += 1
        if line_number == 1:
            line = line.removeprefix(_BOM)
        text = line.rstrip("\r\n")
        content = text.strip()
        if not content:
            result.blank += 1
            continue
        if content.startswith(comment_marker):
            result.comments += 1
            continue
        data = content.split(comment_marker, 1)[0].strip()

        try:
            entry = _blocklist_entry(data, list_format, min_count)
        except ValueError as error:
            result.invalid += 1
            if len(result.invalid_examples) < MAX_INVALID_EXAMPLES:
                result.invalid_examples.append((line_number, _shorten(text), str(error)))
            continue

        if entry is None:
            result.below_min_count += 1
        elif "/" in entry:
            if entry in seen_networks:
                result.duplicates += 1
            else:
                seen_networks.add(entry)
                result.networks.append(entry)
        elif entry in seen_addresses:
            result.duplicates += 1
        else:
            seen_addresses.add(entry)
            result.addresses.append(entry)
    return result


def _blocklist_entry(data: str, list_format: ListFormat, min_count: int) -> str | None:
    """Return the canonical address or CIDR of a data line, or None for an ipsum count below min_count.

    Raise ValueError with the reason when the line is invalid.
    """
    fields = data.split()
    if list_format is ListFormat.ipsum:
        if len(fields) != 2:
            raise ValueError(f"expected an IP address and a count separated by a tab, found {len(fields)} fields")
        address_text, count_text = fields
        # Checked before the count, so that an invalid address is reported even below min_count.
        entry = _canonical_entry(address_text)
        if not (count_text.isascii() and count_text.isdigit()):
            raise ValueError(f"count is not a whole number: {count_text!r}")
        if int(count_text) < min_count:
            return None
        return entry

    if len(fields) != 1:
        raise ValueError(f"expected one IP address or CIDR, found {len(fields)} fields")
    return _canonical_entry(fields[0])


def _canonical_entry(text: str) -> str:
    """Return the canonical text of an address, or of a CIDR with a prefix (/24) or netmask.

    A CIDR of one address becomes that address. An IPv4-mapped IPv6 CIDR of prefix /96 or longer
    becomes the IPv4 CIDR, as canonical_ip does for addresses.
    """
    if "/" not in text:
        return canonical_ip(text)
    if "%" in text:
        raise ValueError(f"CIDR with a zone id is not accepted: {text!r}")
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as error:
        raise ValueError(f"invalid CIDR {text!r}: {error}") from None

    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            network = ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    if network.num_addresses == 1:
        return str(network.network_address)
    return str(network)


def read_blocklist(path: PathLike, fmt: ListFormat | str, *, min_count: int = 1) -> BlocklistParse:
    """Read the UTF-8 blocklist file at `path` and parse it as parse_blocklist does.

    Raise InputFormatError naming the file when it cannot be opened or is not valid UTF-8.
    """
    with contextlib.closing(_read_lines(Path(path))) as lines:
        return parse_blocklist(lines, fmt, min_count=min_count)


def guess_format(path: PathLike) -> ListFormat:
    """Guess the format of the blocklist file at `path` from its content.

    A first non-blank line starting with `;` means spamhaus. Otherwise a first data line of two
    whitespace-separated fields ending in a whole number means ipsum. Otherwise any CIDR on a data
    line means netset, and none means plain. Raise InputFormatError like read_blocklist.
    """
    with contextlib.closing(_read_lines(Path(path))) as lines:
        return guess_format_of_lines(lines)


def guess_format_of_lines(lines: Iterable[str]) -> ListFormat:
    """Guess the format of blocklist lines as guess_format does for a file."""
    first_data_line = True
    for line_number, line in enumerate(lines, start=1):
        if line_number == 1:
            line = line.removeprefix(_BOM)
        content = line.strip()
        if not content:
            continue
        if first_data_line and content.startswith(";"):
            return ListFormat.spamhaus
        if content.startswith("#"):
            continue
        data = content.split("#", 1)[0]
        if first_data_line:
            first_data_line = False
            fields = data.split()
            if len(fields) == 2 and fields[1].isascii() and fields[1].isdigit():
                return ListFormat.ipsum
        if "/" in data:
            return ListFormat.netset
    return ListFormat.plain


def decode_lines(body: bytes, source: str) -> list[str]:
    """Split a downloaded list into lines with their line endings.

    Raise InputFormatError naming `source` and the line when the body is not valid UTF-8.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        line_number = body.count(b"\n", 0, error.start) + 1
        line_start = body.rfind(b"\n", 0, error.start) + 1
        raise InputFormatError(
            f"{source}: line {line_number} is not valid UTF-8 ({error.reason} at byte {error.start - line_start} "
            "of the line)"
        ) from None
    # Split on LF only, as reading a file in binary mode does, so line numbers match the file's.
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _read_lines(path: Path) -> Iterator[str]:
    """Yield the lines of a UTF-8 file with their line endings.

    Raise InputFormatError naming the file and line when it cannot be read or decoded.
    """
    try:
        with path.open("rb") as file:
            for line_number, raw in enumerate(file, start=1):
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise InputFormatError(
                        f"{path}: line {line_number} is not valid UTF-8 ({error.reason} at byte {error.start} "
                        "of the line). Save the file as UTF-8."
                    ) from None
    except OSError as error:
        raise InputFormatError(f"cannot read {path}: {error.strerror or error}") from error


# History files


def parse_history(
    lines: Iterable[str],
    *,
    user_column: str = "user_id",
    amount_column: str = "amount",
    source: str = "history",
) -> HistoryParse:
    """Parse CSV text with a header row into each user's amounts.

    `lines` keep their line endings (LF or CRLF), as from a file opened with newline="", so that
    quoted fields may contain line breaks. A BOM before the header is accepted. Header names and
    user ids are stripped of surrounding whitespace. A row is invalid when its user id is empty,
    its amount fails parse_amount, or its field count differs from the header's. Invalid rows are
    counted and kept as examples. Raise InputFormatError naming `source` when the header is missing
    or lacks a requested column, or the CSV is malformed.
    """
    result = HistoryParse()
    reader = csv.reader(_without_bom(lines))
    try:
        header = next(reader, None)
        if header is None:
            raise InputFormatError(f"{source}: the file is empty, but a CSV header row is expected")
        columns = [name.strip() for name in header]
        user_index = _column_index(columns, user_column, amount_column, source)
        amount_index = _column_index(columns, amount_column, user_column, source)

        for row in reader:
            if not row:
                continue
            result.rows += 1
            try:
                user, amount = _history_row(row, len(columns), user_index, amount_index)
            except ValueError as error:
                result.invalid += 1
                if len(result.invalid_examples) < MAX_INVALID_EXAMPLES:
                    result.invalid_examples.append((reader.line_num, _shorten(_csv_text(row)), str(error)))
                continue
            result.amounts_by_user.setdefault(user, []).append(amount)
    except csv.Error as error:
        raise InputFormatError(f"{source}: line {reader.line_num}: invalid CSV: {error}") from None
    return result


def _column_index(columns: list[str], name: str, other: str, source: str) -> int:
    matches = [index for index, column in enumerate(columns) if column == name]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise InputFormatError(
            f"{source}: the header has {len(matches)} columns named {name!r}, so the column is ambiguous. "
            "Rename all but one."
        )
    missing = [column for column in (name, other) if column not in columns]
    raise InputFormatError(
        f"{source}: missing column(s) {', '.join(map(repr, missing))}. The header has "
        f"{', '.join(map(repr, columns))}, so choose the user and amount columns from those."
    )


def _history_row(row: list[str], width: int, user_index: int, amount_index: int) -> tuple[str, float]:
    if len(row) != width:
        raise ValueError(f"row has {len(row)} fields, but the header has {width}")
    user = row[user_index].strip()
    if not user:
        raise ValueError("user id is empty")
    return user, parse_amount(row[amount_index])


def _csv_text(row: list[str]) -> str:
    # With lineterminator="", the writer would leave fields that contain line breaks unquoted.
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(row)
    return buffer.getvalue().removesuffix("\n")


def _without_bom(lines: Iterable[str]) -> Iterator[str]:
    iterator = iter(lines)
    first = next(iterator, None)
    if first is None:
        return
    yield first.removeprefix(_BOM)
    yield from iterator


def read_history(path: PathLike, *, user_column: str = "user_id", amount_column: str = "amount") -> HistoryParse:
    """Read the UTF-8 history CSV file at `path` and parse it as parse_history does.

    Raise InputFormatError naming the file when it cannot be read, is not valid UTF-8, is not
    valid CSV or lacks a requested column.
    """
    with contextlib.closing(_read_lines(Path(path))) as lines:
        return parse_history(lines, user_column=user_column, amount_column=amount_column, source=str(path))
