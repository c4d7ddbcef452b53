"""Tests of `riskscore replay`: file reading, and files pushed through real worker and beat processes.

Each replay starts its own Celery worker and beat against the session server, in a key
namespace of its own.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result

from scoring import replay as replay_mod
from scoring.cli import cli
from scoring.errors import InputFormatError
from scoring.embedded import ServerInfo
from scoring.settings import get_settings

HISTORY_CSV = "user_id,amount\n" + "".join(f"u1,{amount}\n" for amount in [500, 520, 530, 540, 560, 560, 560, 520, 200, 520])
LISTED_IP = "203.0.113.9"


@contextmanager
def replay_environment(server: ServerInfo, folder: Path) -> Iterator[dict[str, str]]:
    """Yield RISK_* variables for a replay on the session server, with `folder` as working folder.

    The server is emptied first, broker database included, so no task left over from another test
    reaches the replay's worker. No other RISK_* variable and no developer's .env file is read.
    """
    client = redis.Redis.from_url(server.url(0))
    try:
        client.flushall()
    finally:
        client.close()
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("RISK_"):
                patch.delenv(name)
        patch.chdir(folder)
        get_settings.cache_clear()
        # A drain waits on the stream for its whole budget, so the budget stays below the beat
        # interval. Otherwise waiting drains pile up and hold every worker process.
        yield {
            "RISK_REDIS_URL": server.url(0),
            "RISK_DATA_DIR": str(folder / "data"),
            "RISK_DRAIN_INTERVAL_S": "0.2",
            "RISK_DRAIN_BUDGET_S": "0.15",
        }
    get_settings.cache_clear()


# --- reading files (no server) --------------------------------------------------------------------


def test_read_csv_bom_and_crlf(tmp_path):
    source = tmp_path / "rows.csv"
    source.write_bytes(b'\xef\xbb\xbftx_id,memo\r\nt1,"two\r\nlines"\r\nt2,plain\r\n')

    rows = list(replay_mod.read_rows(source))

    assert rows == [{"tx_id": "t1", "memo": "two\r\nlines"}, {"tx_id": "t2", "memo": "plain"}]


def test_read_csv_short_row(tmp_path):
    source = tmp_path / "rows.csv"
    source.write_text("tx_id,user_id,amount\nt1,u1\n", encoding="utf-8")

    rows = list(replay_mod.read_rows(source))

    assert rows == [{"tx_id": "t1", "user_id": "u1", "amount": ""}]


def test_read_jsonl_with_bom(tmp_path):
    source = tmp_path / "rows.jsonl"
    source.write_bytes(b'\xef\xbb\xbf{"tx_id": "j1", "amount": 12.5}\r\n{"tx_id": "j2", "ip": null}\n')

    rows = list(replay_mod.read_rows(source))

    assert rows == [{"tx_id": "j1", "amount": "12.5"}, {"tx_id": "j2", "ip": ""}]


def test_read_jsonl_keeps_bad_line(tmp_path):
    source = tmp_path / "rows.ndjson"
    source.write_text('{"tx_id": "j1"}\nnot json\n\n"a string"\n', encoding="utf-8")

    rows = list(replay_mod.read_rows(source))

    assert rows == [{"tx_id": "j1"}, {"_raw_line": "not json"}, {"_raw_line": '"a string"'}]


@pytest.mark.parametrize("name", ["rows.csv", "rows.jsonl"])
def test_read_rows_rejects_latin1(tmp_path, name):
    source = tmp_path / name
    source.write_bytes(b"tx_id,user_id\nt1,Jos\xe9\n")

    with pytest.raises(InputFormatError) as caught:
        list(replay_mod.read_rows(source))

    assert str(caught.value) == f"{source}: line 2 is not valid UTF-8 (invalid continuation byte). Save the file as UTF-8."


def test_read_empty_csv(tmp_path):
    source = tmp_path / "rows.csv"
    source.write_text("", encoding="utf-8")

    with pytest.raises(InputFormatError, match="empty file"):
        list(replay_mod.read_rows(source))


def test_latin1_replay_exits_with_message(tmp_path):
    source = tmp_path / "rows.csv"
    source.write_bytes(b"tx_id,user_id,amount,ip\nt1,Jos\xe9,10,\n")
    env = {name: value for name, value in os.environ.items() if not name.startswith("RISK_")}
    riskscore = Path(sys.executable).with_name("riskscore")

    completed = subprocess.run([str(riskscore), "replay", str(source)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)

    assert completed.returncode == 1
    assert completed.stderr == f"Error: {source}: line 2 is not valid UTF-8 (invalid continuation byte). Save the file as UTF-8.\n"


@pytest.mark.parametrize("item", ["user_id", "user_id=", "account=AccountID"])
def test_parse_mapping_rejects_item(item):
    with pytest.raises(InputFormatError, match="expected FIELD=COLUMN"):
        replay_mod.parse_mapping([item])


def test_sort_rows_numeric():
    rows = [{"t": "10"}, {"t": "9"}, {"t": ""}, {"t": "1e1"}, {}]

    ordered = replay_mod.sort_rows(rows, "t")

    assert ordered == [{"t": "9"}, {"t": "10"}, {"t": "1e1"}, {"t": ""}, {}]


def test_sort_rows_text():
    rows = [{"t": "2023-04-11 16:29:14"}, {"t": "2023-01-02 08:00:00"}, {"t": "b"}]

    ordered = replay_mod.sort_rows(rows, "t")

    assert [row["t"] for row in ordered] == ["2023-01-02 08:00:00", "2023-04-11 16:29:14", "b"]


def test_sort_rows_missing_column():
    with pytest.raises(InputFormatError, match="not in the file"):
        replay_mod.sort_rows([{"a": "1"}], "t")


def test_build_entries_defaults():
    rows = [{"user_id": "u1", "amount": "5", "label": "1", "other": "x"}]

    entries = replay_mod.build_entries(rows, {}, ["label"])

    assert entries == [{"tx_id": "row-1", "user_id": "u1", "amount": "5", "ip": "", "label": "1", "replay_row": "1"}]


def test_build_entries_row_without_mapped_column():
    rows = [{"AccountID": "a1", "amt": "5"}, {"amt": "7"}]

    entries = replay_mod.build_entries(rows, {"user_id": "AccountID", "amount": "amt"}, [])

    assert entries[0]["user_id"] == "a1"
    assert "user_id" not in entries[1]


# --- replays through real processes ---------------------------------------------------------------


@pytest.fixture
def replay_env(redis_server: ServerInfo, tmp_path: Path) -> Iterator[dict[str, str]]:
    with replay_environment(redis_server, tmp_path) as env:
        yield env


def replay(env: dict[str, str], *args: str) -> Result:
    result = CliRunner(env=env).invoke(cli, ["replay", "--timeout", "120", *args])
    assert result.exit_code == 0, result.output
    return result


def read_output(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def write_small_csv(path: Path) -> None:
    rows = [
        ["tx_id", "user_id", "amount", "ip", "merchant", "is_fraud"],
        ["t1", "u1", "100", "198.51.100.7", "shop-a", "0"],
        ["t2", "u1", "abc", "198.51.100.7", "shop-a", "0"],
        ["t3", "u2", "50", LISTED_IP, "shop-b", "1"],
        ["t1", "u1", "70", "198.51.100.7", "shop-a", "0"],
        ["t4", "", "20", "198.51.100.7", "shop-c", "0"],
        ["t5", "u1", "100000", "198.51.100.8", "shop-a", "1"],
    ]
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)


@pytest.fixture(scope="module")
def small_csv_replay(redis_server: ServerInfo, tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, list[dict[str, str]]]:
    """The small CSV replayed once, for every test of its output, with no --out option.

    The replay loads a history file and a blocklist, compares a label column and carries another.
    """
    folder = tmp_path_factory.mktemp("small-replay")
    source = folder / "small.csv"
    write_small_csv(source)
    history = folder / "history.csv"
    history.write_text(HISTORY_CSV, encoding="utf-8")
    blocklist = folder / "blocklist.txt"
    blocklist.write_text(f"{LISTED_IP}\n", encoding="utf-8")

    with replay_environment(redis_server, folder) as env:
        result = replay(
            env, str(source), "--history", str(history), "--blocklist", str(blocklist),
            "--label", "is_fraud", "--carry", "merchant",
        )  # fmt: skip
    return result, read_output(folder / "small.outcomes.csv")


@pytest.mark.integration
def test_csv_replay_outcome_per_row(small_csv_replay):
    _result, rows = small_csv_replay

    assert [row["row"] for row in rows] == ["1", "2", "3", "4", "5", "6"]
    assert [row["tx_id"] for row in rows] == ["t1", "t2", "t3", "t1", "t4", "t5"]
    assert [row["outcome"] for row in rows] == ["approved", "invalid", "flagged", "duplicate", "invalid", "flagged"]


@pytest.mark.integration
def test_csv_replay_reasons(small_csv_replay):
    _result, rows = small_csv_replay

    assert rows[0]["reasons"] == ""
    assert rows[1]["reasons"] == "invalid_amount"
    assert rows[2]["reasons"] == "ip_blocklisted,insufficient_history"
    assert rows[3]["reasons"] == "duplicate_tx_id"
    assert rows[4]["reasons"] == "invalid_user_id"
    assert rows[5]["reasons"] == "amount_above_threshold"
    assert rows[5]["risk_score"] == "1"


@pytest.mark.integration
def test_csv_replay_carries_columns(small_csv_replay):
    _result, rows = small_csv_replay

    assert list(rows[0]) == ["row", "tx_id", "outcome", "risk_score", "reasons", "merchant", "is_fraud"]
    assert [row["merchant"] for row in rows] == ["shop-a", "shop-a", "shop-b", "shop-a", "shop-c", "shop-a"]
    assert [row["is_fraud"] for row in rows] == ["0", "0", "1", "0", "0", "1"]


@pytest.mark.integration
def test_csv_replay_summary(small_csv_replay):
    result, _rows = small_csv_replay

    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    assert any(line.startswith("6 rows scored in") for line in lines)
    assert "approved 1" in lines
    assert "flagged 2" in lines
    assert "invalid 2" in lines
    assert "duplicate 1" in lines
    assert "labelled fraud flagged 2 of 2" in lines
    assert "labelled legitimate flagged 0 of 1" in lines


@pytest.mark.integration
def test_csv_replay_deletes_its_keys(small_csv_replay, redis_server):
    client = redis.Redis.from_url(redis_server.url(0))
    try:
        leftover = list(client.scan_iter(match="riskscore-replay-*"))
    finally:
        client.close()

    assert leftover == []


@pytest.mark.integration
def test_jsonl_replay_tolerates_bad_lines(replay_env, tmp_path):
    lines = [
        json.dumps({"tx_id": "j1", "user_id": "u1", "amount": 10, "ip": "198.51.100.7"}),
        "this line is not JSON",
        json.dumps({"tx_id": "j2", "user_id": "u2", "amount": "5.5", "ip": None}),
        json.dumps({"tx_id": "j3", "amount": "7", "ip": "198.51.100.7"}),
        json.dumps([1, 2, 3]),
    ]
    source = tmp_path / "small.jsonl"
    source.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    out = tmp_path / "out.csv"

    result = replay(replay_env, str(source), "--out", str(out))

    rows = read_output(out)
    assert [row["tx_id"] for row in rows] == ["j1", "", "j2", "j3", ""]
    assert [row["outcome"] for row in rows] == ["approved", "invalid", "approved", "invalid", "invalid"]
    assert [row["reasons"] for row in rows][1::2] == ["missing_field", "missing_field"]
    assert rows[2]["reasons"] == "ip_unknown,insufficient_history"
    assert "5 rows scored" in result.output


# --- real public data sets ------------------------------------------------------------------------


@pytest.mark.integration
def test_bank_transactions_replay(replay_env, shared_data, tmp_path):
    out = tmp_path / "bank.outcomes.csv"

    result = replay(
        replay_env,
        str(shared_data / "bank_transactions_data_2.csv"),
        "--map", "user_id=AccountID",
        "--map", "amount=TransactionAmount",
        "--map", "ip=IP Address",
        "--map", "tx_id=TransactionID",
        "--blocklist", str(shared_data / "ipsum.txt"),
        "--min-count", "3",
        "--blocklist", str(shared_data / "et_compromised-ips.txt"),
        "--sort-by", "TransactionDate",
        "--out", str(out),
    )  # fmt: skip

    rows = read_output(out)
    outcomes = Counter(row["outcome"] for row in rows)
    assert len(rows) == 2512
    assert outcomes["missing"] == 0
    assert outcomes["approved"] + outcomes["flagged"] == 2512
    assert len({row["tx_id"] for row in rows}) == 2512
    assert "2512 rows scored" in result.output


@pytest.mark.integration
def test_sparkov_replay_carries_label(replay_env, shared_data, tmp_path):
    source = shared_data / "sparkov_credit_card_transactions_sample14500.csv"
    out = tmp_path / "sparkov.outcomes.csv"

    result = replay(
        replay_env,
        str(source),
        "--map", "user_id=cc_num",
        "--map", "amount=amt",
        "--map", "tx_id=trans_num",
        "--label", "is_fraud",
        "--sort-by", "unix_time",
        "--out", str(out),
    )  # fmt: skip

    rows = read_output(out)
    with source.open(encoding="utf-8", newline="") as handle:
        labels = {row["trans_num"]: row["is_fraud"] for row in csv.DictReader(handle)}
    outcomes = Counter(row["outcome"] for row in rows)
    assert len(rows) == 14_500
    assert outcomes["missing"] == 0
    assert outcomes["approved"] + outcomes["flagged"] == 14_500
    assert {row["tx_id"]: row["is_fraud"] for row in rows} == labels
    assert "Against the label:" in result.output
