"""Unit tests of blocklist and history parsing, and counts on the real public lists."""

from pathlib import Path

import pytest

from scoring.errors import InputFormatError
from scoring.lists import (
    MAX_INVALID_EXAMPLES,
    BlocklistParse,
    ListFormat,
    guess_format,
    parse_blocklist,
    parse_history,
    read_blocklist,
    read_history,
)


def accounted_lines(parsed: BlocklistParse) -> int:
    """Return the number of lines that the parse result puts in some category."""
    return (
        len(parsed.addresses)
        + len(parsed.networks)
        + parsed.comments
        + parsed.blank
        + parsed.below_min_count
        + parsed.duplicates
        + parsed.invalid
    )


# Plain and netset lists


def test_plain_list_tolerates_messy_lines():
    lines = [
        "\ufeff# header with a BOM before it\r\n",
        "1.2.3.4\r\n",
        "5.6.7.8   \n",
        "\n",
        "   \r\n",
        "9.9.9.9 # inline comment\n",
        "  10.0.0.1\t\n",
        "11.11.11.11",
    ]
    parsed = parse_blocklist(lines, ListFormat.plain)
    assert parsed.addresses == ["1.2.3.4", "5.6.7.8", "9.9.9.9", "10.0.0.1", "11.11.11.11"]
    assert parsed.networks == []
    assert parsed.lines == 8
    assert parsed.comments == 1
    assert parsed.blank == 2
    assert parsed.invalid == 0
    assert accounted_lines(parsed) == parsed.lines


def test_bom_on_first_data_line():
    parsed = parse_blocklist(["\ufeff1.2.3.4\n", "5.6.7.8\n"], ListFormat.plain)
    assert parsed.addresses == ["1.2.3.4", "5.6.7.8"]
    assert parsed.invalid == 0


def test_bom_after_first_line_invalid():
    parsed = parse_blocklist(["1.2.3.4\n", "\ufeff5.6.7.8\n"], ListFormat.plain)
    assert parsed.addresses == ["1.2.3.4"]
    assert parsed.invalid == 1


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("::FFFF:102:304", "1.2.3.4"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("2001:db8:0000::0001", "2001:db8::1"),
        ("1.2.3.4/32", "1.2.3.4"),
        ("2001:db8::1/128", "2001:db8::1"),
        ("::ffff:1.2.3.4/128", "1.2.3.4"),
    ],
)
def test_address_spellings_canonicalised(spelling, canonical):
    parsed = parse_blocklist([spelling + "\n"], ListFormat.plain)
    assert parsed.addresses == [canonical]
    assert parsed.networks == []


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.0.0.0/255.0.0.0", "10.0.0.0/8"),
        ("2001:DB8:0:0::/32", "2001:db8::/32"),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("192.0.2.0/31", "192.0.2.0/31"),
        ("224.0.0.0/3", "224.0.0.0/3"),
    ],
)
def test_network_spellings_canonicalised(spelling, canonical):
    parsed = parse_blocklist([spelling + "\n"], ListFormat.netset)
    assert parsed.networks == [canonical]
    assert parsed.addresses == []


def test_duplicates_counted_across_spellings():
    lines = ["1.2.3.4\n", "::ffff:1.2.3.4\n", "1.2.3.4/32\n", "10.0.0.0/8\n", "10.0.0.0/255.0.0.0\n", "2001:db8::1\n", "2001:DB8::0:1\n"]
    parsed = parse_blocklist(lines, ListFormat.netset)
    assert parsed.addresses == ["1.2.3.4", "2001:db8::1"]
    assert parsed.networks == ["10.0.0.0/8"]
    assert parsed.duplicates == 4
    assert accounted_lines(parsed) == parsed.lines


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("10.0.0.1/8", "has host bits set"),
        ("10.0.0.0/33", "invalid CIDR"),
        ("999.1.1.1", "not an IP address"),
        ("010.1.1.1", "not an IP address"),
        ("010.0.0.0/8", "invalid CIDR"),
        ("fe80::1%eth0", "zone id"),
        ("fe80::%eth0/64", "zone id"),
        ("example.com", "not an IP address"),
        ("1.2.3.4 5.6.7.8", "found 2 fields"),
        ("1.2.3.4 ; SBL1", "found 3 fields"),
        ("1.2.3.0 /24", "found 2 fields"),
    ],
)
def test_invalid_line_reported(line, reason):
    parsed = parse_blocklist(["# header\n", "1.1.1.1\n", line + "\n", "2.2.2.2\n"], ListFormat.netset)
    assert parsed.addresses == ["1.1.1.1", "2.2.2.2"]
    assert parsed.invalid == 1
    [(line_number, text, message)] = parsed.invalid_examples
    assert line_number == 3
    assert text == line
    assert reason in message


def test_invalid_examples_capped():
    lines = [f"bad{i}\n" for i in range(25)] + ["1.2.3.4\n"]
    parsed = parse_blocklist(lines, ListFormat.plain)
    assert parsed.invalid == 25
    assert len(parsed.invalid_examples) == MAX_INVALID_EXAMPLES
    assert [number for number, _, _ in parsed.invalid_examples] == list(range(1, MAX_INVALID_EXAMPLES + 1))
    assert parsed.addresses == ["1.2.3.4"]


def test_invalid_example_line_shortened():
    parsed = parse_blocklist(["x" * 10_000 + "\n"], ListFormat.plain)
    [(_, text, _)] = parsed.invalid_examples
    assert len(text) == 200
    assert text.endswith("...")


def test_summary_lists_counts_and_examples():
    lines = [f"bad{i}\n" for i in range(12)] + ["# c\n", "1.2.3.4\n", "10.0.0.0/8\n"]
    summary = parse_blocklist(lines, ListFormat.netset).summary()
    assert summary.startswith("1 address and 1 network from 15 lines")
    assert "1 comment" in summary
    assert "12 invalid" in summary
    assert "line 1: not an IP address: 'bad0'" in summary
    assert "... and 2 more invalid lines" in summary


def test_format_given_as_text():
    parsed = parse_blocklist(["1.2.3.4\n"], "plain")
    assert parsed.addresses == ["1.2.3.4"]


def test_unknown_format_rejected():
    with pytest.raises(ValueError, match="csv"):
        parse_blocklist(["1.2.3.4\n"], "csv")


# Spamhaus DROP


def test_spamhaus_lines_parsed():
    lines = [
        "; Spamhaus DROP List 2025/01/17\r\n",
        "; Last-Modified: Fri, 17 Jan 2025 17:03:47 GMT\r\n",
        "1.10.16.0/20 ; SBL256894\r\n",
        "2.56.192.0/22 ; SBL459831 \r\n",
        "\r\n",
        "2C0F:6C0::/28 ; SBL668932\r\n",
        "3.3.3.3/32 ; SBL1\r\n",
        "4.4.4.1/24 ; SBL2\r\n",
        "; EOF\r\n",
    ]
    parsed = parse_blocklist(lines, ListFormat.spamhaus)
    assert parsed.networks == ["1.10.16.0/20", "2.56.192.0/22", "2c0f:6c0::/28"]
    assert parsed.addresses == ["3.3.3.3"]
    assert parsed.comments == 3
    assert parsed.blank == 1
    assert parsed.invalid == 1
    assert parsed.invalid_examples[0][0] == 8
    assert accounted_lines(parsed) == parsed.lines == 9


def test_spamhaus_hash_line_invalid():
    parsed = parse_blocklist(["# not a Spamhaus comment\n"], ListFormat.spamhaus)
    assert parsed.invalid == 1
    assert parsed.comments == 0


# ipsum


IPSUM_LINES = [
    "# IPsum Threat Intelligence Feed\n",
    "# IP\tnumber of (black)lists\n",
    "77.90.185.20\t10\n",
    "1.2.3.4\t3\n",
    "5.6.7.8\t2\n",
    "9.9.9.9 \t 1 \r\n",
    "\n",
]


def test_ipsum_all_counts():
    parsed = parse_blocklist(IPSUM_LINES, ListFormat.ipsum)
    assert parsed.addresses == ["77.90.185.20", "1.2.3.4", "5.6.7.8", "9.9.9.9"]
    assert parsed.comments == 2
    assert parsed.blank == 1
    assert parsed.below_min_count == 0
    assert parsed.invalid == 0


def test_ipsum_min_count_skips_low_counts():
    parsed = parse_blocklist(IPSUM_LINES, ListFormat.ipsum, min_count=3)
    assert parsed.addresses == ["77.90.185.20", "1.2.3.4"]
    assert parsed.below_min_count == 2
    assert accounted_lines(parsed) == parsed.lines


def test_min_count_ignored_outside_ipsum():
    parsed = parse_blocklist(["1.2.3.4\n"], ListFormat.plain, min_count=5)
    assert parsed.addresses == ["1.2.3.4"]
    assert parsed.below_min_count == 0


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("1.2.3.4\n", "found 1 fields"),
        ("1.2.3.4\t2\t3\n", "found 3 fields"),
        ("1.2.3.4\tmany\n", "count is not a whole number"),
        ("1.2.3.4\t-1\n", "count is not a whole number"),
        ("1.2.3.4\t٣\n", "count is not a whole number"),
        ("1.2.3.999\t1\n", "not an IP address"),
    ],
)
def test_ipsum_invalid_line(line, reason):
    parsed = parse_blocklist(["# header\n", line], ListFormat.ipsum, min_count=3)
    assert parsed.invalid == 1
    assert parsed.invalid_examples[0][0] == 2
    assert reason in parsed.invalid_examples[0][2]


# Files and format guessing


def test_read_blocklist_crlf_bom_file(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(b"\xef\xbb\xbf# list\r\n1.2.3.4\r\n10.0.0.0/8 # range\r\n\r\n5.6.7.8")
    parsed = read_blocklist(path, ListFormat.netset)
    assert parsed.addresses == ["1.2.3.4", "5.6.7.8"]
    assert parsed.networks == ["10.0.0.0/8"]
    assert parsed.lines == 5
    assert parsed.comments == 1
    assert parsed.blank == 1


def test_read_blocklist_invalid_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"1.2.3.4\n# caf\xe9\n")
    with pytest.raises(InputFormatError, match=r"latin1\.txt: line 2 is not valid UTF-8"):
        read_blocklist(path, ListFormat.plain)


def test_read_blocklist_missing_file(tmp_path):
    path = tmp_path / "absent.txt"
    with pytest.raises(InputFormatError, match=r"cannot read .*absent\.txt"):
        read_blocklist(path, ListFormat.plain)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("; Spamhaus DROP\n1.10.16.0/20 ; SBL1\n; EOF\n", ListFormat.spamhaus),
        ("\ufeff; Spamhaus DROP\n1.10.16.0/20 ; SBL1\n", ListFormat.spamhaus),
        ("\n\n; Spamhaus DROP\n", ListFormat.spamhaus),
        ("# IPsum\n# IP\tcount\n1.2.3.4\t3\n", ListFormat.ipsum),
        ("1.2.3.4\t3\n", ListFormat.ipsum),
        ("# netset\n1.2.3.4\n10.0.0.0/8\n", ListFormat.netset),
        ("# see https://example.org/list\n1.2.3.4\n", ListFormat.plain),
        ("1.2.3.4\n5.6.7.8\n", ListFormat.plain),
        ("", ListFormat.plain),
    ],
)
def test_guess_format(tmp_path, content, expected):
    path = tmp_path / "list.txt"
    path.write_text(content, encoding="utf-8")
    assert guess_format(path) is expected


# History CSV


def test_history_quoted_fields_and_crlf():
    lines = [
        "\ufefftx,user_id,merchant,amount\r\n",
        't1,u1,"fraud_Shop, Inc",12.50\r\n',
        't2,u2,"two\r\n',
        'lines",3\r\n',
        "t3,u1,plain,007\r\n",
        "\r\n",
        "t4, u2 ,x,\" 4 \"",
    ]
    parsed = parse_history(lines)
    assert parsed.amounts_by_user == {"u1": [12.5, 7.0], "u2": [3.0, 4.0]}
    assert parsed.rows == 4
    assert parsed.invalid == 0


def test_history_invalid_rows_reported():
    lines = [
        "user_id,amount\n",
        "u1,10\n",
        ",5\n",
        "  ,5\n",
        "u2,1,200.50\n",
        "u2,NaN\n",
        "u3\n",
        "u3,-1\n",
        'u4,"1,200.50"\n',
        "u5,20\n",
    ]
    parsed = parse_history(lines)
    assert parsed.amounts_by_user == {"u1": [10.0], "u5": [20.0]}
    assert parsed.rows == 9
    assert parsed.invalid == 7
    numbers_and_reasons = [(number, reason) for number, _, reason in parsed.invalid_examples]
    assert numbers_and_reasons[0] == (3, "user id is empty")
    assert numbers_and_reasons[1] == (4, "user id is empty")
    assert numbers_and_reasons[2] == (5, "row has 3 fields, but the header has 2")
    assert numbers_and_reasons[3][0] == 6
    assert "not a finite number" in numbers_and_reasons[3][1]
    assert numbers_and_reasons[4] == (7, "row has 1 fields, but the header has 2")
    assert "negative" in numbers_and_reasons[5][1]
    assert "comma" in numbers_and_reasons[6][1]
    assert parsed.invalid_examples[6][1] == 'u4,"1,200.50"'


def test_history_multiline_row_example():
    parsed = parse_history(["user_id,note,amount\n", 'u1,"a\n', 'b",x\n', "u2,c,1\n"])
    assert parsed.invalid_examples == [(3, 'u1,"a\nb",x', "amount is not a plain decimal number: 'x'")]
    assert parsed.amounts_by_user == {"u2": [1.0]}


def test_history_custom_columns_with_spaces():
    parsed = parse_history(["Account ID , IP Address,Amt\n", "AC1,1.2.3.4,5\n"], user_column="Account ID", amount_column="Amt")
    assert parsed.amounts_by_user == {"AC1": [5.0]}


def test_history_missing_columns_named():
    with pytest.raises(InputFormatError) as caught:
        parse_history(["cc_num,amt\n", "1,2\n"], source="cards.csv")
    message = str(caught.value)
    assert message.startswith("cards.csv: missing column(s) 'user_id', 'amount'")
    assert "The header has 'cc_num', 'amt'" in message


def test_history_one_missing_column_named():
    with pytest.raises(InputFormatError, match=r"missing column\(s\) 'amount'. The header has 'user_id', 'amt'"):
        parse_history(["user_id,amt\n"])


def test_history_duplicate_column_rejected():
    with pytest.raises(InputFormatError, match="2 columns named 'amount'"):
        parse_history(["user_id,amount,amount\n"])


def test_history_empty_input_rejected():
    with pytest.raises(InputFormatError, match="header row is expected"):
        parse_history([])


def test_history_summary():
    parsed = parse_history(["user_id,amount\n", "u1,1\n", "u1,2\n", "u2,x\n"])
    summary = parsed.summary()
    assert summary.startswith("2 amounts for 1 user from 3 rows (1 invalid)")
    assert "line 4: amount is not a plain decimal number: 'x': 'u2,x'" in summary


def test_read_history_file_without_final_newline(tmp_path):
    path = tmp_path / "history.csv"
    path.write_bytes(b'user_id,amount,note\r\nu1,1.5,"a,b"\r\nu1,2.5,c')
    parsed = read_history(path)
    assert parsed.amounts_by_user == {"u1": [1.5, 2.5]}
    assert parsed.rows == 2


def test_read_history_names_file_on_error(tmp_path):
    path = tmp_path / "history.csv"
    path.write_bytes(b"user_id,amount\nu\xff,1\n")
    with pytest.raises(InputFormatError, match=r"history\.csv: line 2 is not valid UTF-8"):
        read_history(path)
    path.write_text("uid,amount\n", encoding="utf-8")
    with pytest.raises(InputFormatError, match=r"history\.csv: missing column\(s\) 'user_id'"):
        read_history(path)


# Real public lists. Expected counts are those in the data folder's SOURCES.md.


REAL_LISTS = [
    # file, format, min_count, addresses, networks, comments, lines
    ("firehol_level1.netset", ListFormat.netset, 1, 403, 2_341, 33, 2_777),
    ("spamhaus_drop.txt", ListFormat.spamhaus, 1, 0, 1_385, 5, 1_390),
    ("spamhaus_dropv6.txt", ListFormat.spamhaus, 1, 0, 78, 5, 83),
    ("ipsum.txt", ListFormat.ipsum, 1, 120_430, 0, 7, 120_437),
    ("ipsum.txt", ListFormat.ipsum, 3, 14_217, 0, 7, 120_437),
    ("et_compromised-ips.txt", ListFormat.plain, 1, 539, 0, 0, 539),
]


@pytest.mark.parametrize(("name", "fmt", "min_count", "addresses", "networks", "comments", "lines"), REAL_LISTS)
def test_real_list_counts(shared_data: Path, name, fmt, min_count, addresses, networks, comments, lines):
    parsed = read_blocklist(shared_data / name, fmt, min_count=min_count)
    assert parsed.invalid == 0, parsed.invalid_examples
    assert len(parsed.addresses) == addresses
    assert len(parsed.networks) == networks
    assert parsed.comments == comments
    assert parsed.lines == lines
    assert parsed.blank == 0
    assert parsed.duplicates == 0
    assert accounted_lines(parsed) == lines


@pytest.mark.parametrize(("name", "fmt"), sorted({(name, fmt) for name, fmt, *_ in REAL_LISTS}))
def test_real_list_format_guessed(shared_data: Path, name, fmt):
    assert guess_format(shared_data / name) is fmt


def test_real_ipv6_drop_is_ipv6(shared_data: Path):
    parsed = read_blocklist(shared_data / "spamhaus_dropv6.txt", ListFormat.spamhaus)
    assert all(":" in network for network in parsed.networks)
    assert "2c0f:6c0::/28" in parsed.networks


def test_real_ipsum_below_min_count(shared_data: Path):
    parsed = read_blocklist(shared_data / "ipsum.txt", ListFormat.ipsum, min_count=3)
    # Counts 1 and 2 cover 89,657 + 16,556 addresses.
    assert parsed.below_min_count == 106_213


@pytest.mark.parametrize(
    ("name", "user_column", "amount_column", "rows", "users", "low", "high"),
    [
        ("sparkov_fraudTrain_first5039.csv", "cc_num", "amt", 5_039, 878, 1.03, 3_178.51),
        ("sparkov_credit_card_transactions_sample14500.csv", "cc_num", "amt", 14_500, 913, 1.00, 5_470.67),
        ("bank_transactions_data_2.csv", "AccountID", "TransactionAmount", 2_512, 495, 0.26, 1_919.11),
    ],
)
def test_real_history_counts(shared_data: Path, name, user_column, amount_column, rows, users, low, high):
    parsed = read_history(shared_data / name, user_column=user_column, amount_column=amount_column)
    amounts = [amount for values in parsed.amounts_by_user.values() for amount in values]
    assert parsed.invalid == 0, parsed.invalid_examples
    assert parsed.rows == rows
    assert len(amounts) == rows
    assert len(parsed.amounts_by_user) == users
    assert min(amounts) == low
    assert max(amounts) == high
