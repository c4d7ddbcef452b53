"""Tests of approved-amount windows and the history rebuild against the real session server."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from scoring.blocklists import refresh_lists
from scoring.cli import cli
from scoring.embedded import ServerInfo
from scoring.engine import BatchResult, BatchScorer
from scoring.histories import read_state, rebuild_histories
from scoring.keys import Keys
from scoring.loads import load_history
from scoring.locks import SingleFlightLock
from scoring.settings import Settings, get_settings
from scoring.sources import ListSource
from scoring.store import connect, ensure_group, read_new

USER_AMOUNTS = [500, 520, 530, 540, 560, 560, 560, 520, 200, 520]
def score_fields(client: redis.Redis, settings: Settings, entries: list[dict[str, str]]) -> BatchResult:
    """Add entries to the stream, read them through the consumer group and score them in one batch."""
    keys = Keys.from_settings(settings)
    ensure_group(client, keys)
    for fields in entries:
        client.xadd(keys.stream, fields)  # type: ignore[arg-type]
    batch = read_new(client, keys, "test", len(entries))
    return BatchScorer(client, settings).score(batch)


def observations(client: redis.Redis, keys: Keys, user: str) -> int:
    info = client.execute_command("TDIGEST.INFO", keys.history(user))
    return int(dict(zip(info[::2], info[1::2]))[b"Observations"])


def window_amounts(client: redis.Redis, keys: Keys, user: str) -> list[float]:
    return [float(member.rsplit(b"|", 1)[1]) for member in client.zrange(keys.approved(user), 0, -1)]


def fill_windows(client: redis.Redis, keys: Keys, users: list[str], amounts: list[float], at_ms: float) -> None:
    pipe = client.pipeline(transaction=False)
    for user in users:
        pipe.zadd(keys.approved(user), {f"seed-{index}|{amount!r}": at_ms + index for index, amount in enumerate(amounts)})
    pipe.execute()


# --- what feeds the window ------------------------------------------------------------------------


def test_approved_amounts_feed_window(client, keys, settings):
    result = score_fields(client, settings, [{"tx_id": f"tx_{n}", "user_id": "u1", "amount": str(n), "ip": ""} for n in (10, 20, 30)])

    assert result.outcomes["approved"] == 3
    assert window_amounts(client, keys, "u1") == [10.0, 20.0, 30.0]
    assert observations(client, keys, "u1") == 3
    members = client.zrange(keys.approved("u1"), 0, -1, withscores=True)
    assert all(abs(score / 1000 - time.time()) < 60 for _member, score in members)


def test_flagged_and_invalid_never_feed_history(client, keys, settings, tmp_path):
    load_history(client, keys, {"u1": USER_AMOUNTS}, compression=100, window_count=settings.history_window_count)
    listed = tmp_path / "list.txt"
    listed.write_text("192.0.2.1\n")
    refresh_lists(client, keys, settings, [ListSource(name="list", path=listed)])

    result = score_fields(
        client,
        settings,
        [
            {"tx_id": "tx_ok", "user_id": "u1", "amount": "510", "ip": "198.51.100.7"},
            {"tx_id": "tx_big", "user_id": "u1", "amount": "90000", "ip": ""},
            {"tx_id": "tx_listed", "user_id": "u1", "amount": "505", "ip": "192.0.2.1"},
            {"tx_id": "tx_invalid", "user_id": "u1", "amount": "12,50", "ip": ""},
        ],
    )

    assert result.outcomes == {"approved": 1, "flagged": 2}
    assert result.statuses["invalid"] == 1
    assert sorted(window_amounts(client, keys, "u1")) == sorted([*map(float, USER_AMOUNTS), 510.0])
    report = rebuild_histories(client, keys, settings)
    assert report.finished
    assert observations(client, keys, "u1") == 11
    assert float(client.execute_command("TDIGEST.MAX", keys.history("u1"))) == 560.0


def test_learning_off_records_nothing(client, keys, make_settings):
    settings = make_settings(learn_from_approved=False)
    score_fields(client, settings, [{"tx_id": "tx_1", "user_id": "u1", "amount": "10", "ip": ""}])
    assert not client.exists(keys.approved("u1"))
    assert not client.exists(keys.history("u1"))


def test_window_capped_at_count(client, keys, make_settings):
    settings = make_settings(history_window_count=5)
    entries = [{"tx_id": f"tx_{n}", "user_id": "u1", "amount": str(n), "ip": ""} for n in range(1, 9)]
    for entry in entries:
        score_fields(client, settings, [entry])
    assert window_amounts(client, keys, "u1") == [4.0, 5.0, 6.0, 7.0, 8.0]
    assert observations(client, keys, "u1") == 8

    rebuild_histories(client, keys, settings)

    assert observations(client, keys, "u1") == 5
    assert float(client.execute_command("TDIGEST.MIN", keys.history("u1"))) == 4.0


# --- the rebuild ----------------------------------------------------------------------------------


def test_rebuild_drops_amounts_older_than_window(client, keys, make_settings):
    settings = make_settings(history_window_days=7)
    now_ms = time.time() * 1000
    fill_windows(client, keys, ["u1"], [9000.0, 9100.0], now_ms - 10 * 86_400_000)
    fill_windows(client, keys, ["u1"], [10.0, 20.0, 30.0], now_ms - 86_400_000)
    fill_windows(client, keys, ["old"], [1.0], now_ms - 30 * 86_400_000)
    client.execute_command("TDIGEST.CREATE", keys.history("old"))
    client.execute_command("TDIGEST.ADD", keys.history("old"), 1.0)

    report = rebuild_histories(client, keys, settings)

    assert report.users == 2
    assert report.emptied == 1
    assert observations(client, keys, "u1") == 3
    assert float(client.execute_command("TDIGEST.MAX", keys.history("u1"))) == 30.0
    assert window_amounts(client, keys, "u1") == [10.0, 20.0, 30.0]
    assert not client.exists(keys.history("old"))
    assert not client.exists(keys.approved("old"))


def test_rebuild_replaces_digest(client, keys, settings):
    load_history(client, keys, {"u1": [1.0] * 50}, compression=100)
    fill_windows(client, keys, ["u1"], [100.0, 200.0], time.time() * 1000)

    rebuild_histories(client, keys, settings)

    assert observations(client, keys, "u1") == 2
    assert client.pttl(keys.history("u1")) == -1
    assert not client.exists(keys.history_build("u1"))


def test_imported_history_survives_rebuild(client, keys, settings):
    load_history(client, keys, {"u1": USER_AMOUNTS}, compression=100, window_count=settings.history_window_count)
    score_fields(client, settings, [{"tx_id": "tx_1", "user_id": "u1", "amount": "515", "ip": ""}])

    rebuild_histories(client, keys, settings)

    assert observations(client, keys, "u1") == 11
    amounts = window_amounts(client, keys, "u1")
    assert amounts[-1] == 515.0
    assert amounts[:-1] == list(map(float, USER_AMOUNTS))


def test_import_replace_replaces_window(client, keys, settings):
    load_history(client, keys, {"u1": [1.0, 2.0]}, compression=100, window_count=1000)
    load_history(client, keys, {"u1": [7.0]}, compression=100, window_count=1000, replace=True)
    assert window_amounts(client, keys, "u1") == [7.0]


def test_rebuild_user_ids_with_glob_characters(client, make_settings):
    settings = make_settings(key_prefix="r?")
    keys = Keys.from_settings(settings)
    users = ["a*", "b?", "[c]", "d\\e", "plain", "ü:x"]
    fill_windows(client, keys, users, [5.0, 6.0], time.time() * 1000)
    decoy = Keys(prefix="rx", stream="s", consumer_group="g")
    fill_windows(client, decoy, ["decoy"], [5.0], time.time() * 1000)

    report = rebuild_histories(client, keys, settings)

    assert report.users == len(users)
    for user in users:
        assert observations(client, keys, user) == 2, user
    assert not client.exists(decoy.history("decoy"))


def test_rebuild_resumes_from_cursor(client, keys, settings):
    users = [f"user-{n}" for n in range(3000)]
    fill_windows(client, keys, users, [10.0, 20.0, 30.0], time.time() * 1000)

    first = rebuild_histories(client, keys, settings, max_users=500)

    state = read_state(client, keys)
    assert not first.finished
    assert 500 <= first.users < 3000
    assert state["status"] == "running"
    assert state["cursor"] != "0"
    assert int(state["run_users"]) == first.users

    second = rebuild_histories(client, keys, settings)

    assert second.resumed
    assert second.finished
    assert first.users + second.users >= 3000
    state = read_state(client, keys)
    assert state["status"] == "finished"
    assert int(state["last_run_users"]) == first.users + second.users
    assert float(state["last_run_users_per_s"]) > 0
    missing = [user for user in users if observations(client, keys, user) != 3]
    assert missing == []


def test_rebuild_restart_starts_over(client, keys, settings):
    fill_windows(client, keys, [f"user-{n}" for n in range(3000)], [10.0], time.time() * 1000)
    rebuild_histories(client, keys, settings, max_users=500)

    report = rebuild_histories(client, keys, settings, restart=True)

    assert not report.resumed
    assert report.finished
    assert report.users >= 3000


def test_rebuild_skipped_while_another_runs(client, keys, settings):
    fill_windows(client, keys, ["u1"], [10.0], time.time() * 1000)
    other = SingleFlightLock(client, keys.history_rebuild_lock)
    assert other.acquire()
    try:
        report = rebuild_histories(client, keys, settings)
    finally:
        other.release()

    assert report.skipped is not None
    assert "another history rebuild is running" in report.skipped
    assert not client.exists(keys.history("u1"))


def test_rebuild_during_approvals_loses_none(client, keys, settings, redis_server):
    users = [f"user-{n}" for n in range(300)]
    fill_windows(client, keys, users, [100.0, 110.0, 120.0], time.time() * 1000)
    done = threading.Event()
    errors: list[BaseException] = []

    def approve_continuously() -> None:
        writer = connect(redis_server.url(0))
        try:
            for round_number in range(20):
                batch = [{"tx_id": f"tx-{round_number}-{user}", "user_id": user, "amount": "105", "ip": ""} for user in users[::7]]
                result = score_fields(writer, settings, batch)
                assert result.outcomes["approved"] == len(batch)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
        finally:
            done.set()
            writer.close()

    thread = threading.Thread(target=approve_continuously)
    thread.start()
    rebuilds = 0
    while not done.is_set():
        rebuild_histories(client, keys, settings, restart=True)
        rebuilds += 1
    thread.join()

    assert errors == []
    assert rebuilds >= 1
    for user in users:
        # Every approval is in the window, and the digest contains exactly the window, whichever
        # order the rebuild and the approvals ran in.
        window = client.zcard(keys.approved(user))
        assert observations(client, keys, user) == window, user
        assert window == 3 + (20 if user in users[::7] else 0), user


# --- the command line -----------------------------------------------------------------------------


@pytest.fixture
def cli_env(
    redis_server: ServerInfo, redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """RISK_* variables that point commands at the emptied session server, with no other RISK_* set."""
    for name in list(os.environ):
        if name.startswith("RISK_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield {"RISK_REDIS_URL": redis_server.url(0), "RISK_DATA_DIR": str(tmp_path / "data")}
    get_settings.cache_clear()


def test_cli_history_refresh_and_status(cli_env, client, keys):
    fill_windows(client, keys, [f"user-{n}" for n in range(50)], [1.0, 2.0], time.time() * 1000)
    runner = CliRunner(env=cli_env)

    never = runner.invoke(cli, ["history", "status"])
    result = runner.invoke(cli, ["history", "refresh"])
    status = runner.invoke(cli, ["history", "status"])
    as_json = runner.invoke(cli, ["history", "status", "--json"])

    assert "rebuild           never run" in never.output
    assert result.exit_code == 0, result.output
    assert "Rebuilt 50 users (0 with an empty window, their digests deleted) from 100 amounts" in result.output
    assert "The run is finished: 50 users in all." in result.output
    assert "window            newest 1,000 approved amounts" in status.output
    assert "last finished run" in status.output
    assert ": 50 users (0 emptied), 100 amounts" in status.output
    report = json.loads(as_json.output)
    assert report["state"]["status"] == "finished"
    assert report["running"] is None


def test_cli_history_refresh_max_users(cli_env, client, keys):
    fill_windows(client, keys, [f"user-{n}" for n in range(3000)], [1.0], time.time() * 1000)
    runner = CliRunner(env=cli_env)

    first = runner.invoke(cli, ["history", "refresh", "--max-users", "100"])
    status = runner.invoke(cli, ["history", "status"])
    second = runner.invoke(cli, ["history", "refresh"])

    assert "the next `riskscore history refresh` resumes it" in first.output
    assert "(unfinished: the next rebuild resumes it)" in status.output
    assert second.output.startswith("Resumed and rebuilt")
    assert "The run is finished" in second.output


def test_rebuild_keeps_digest_loaded_without_window(client, keys, settings):
    load_history(client, keys, {"user_1": [20.0] * 100}, compression=settings.tdigest_compression)
    client.xgroup_create(keys.stream, keys.consumer_group, id="0", mkstream=True)
    client.xadd(keys.stream, {"tx_id": "tx_1", "user_id": "user_1", "amount": "20", "ip": ""})
    entries = [(i.decode(), {k.decode(): v.decode() for k, v in f.items()}) for _s, es in client.xreadgroup(keys.consumer_group, "t", {keys.stream: ">"}) for i, f in es]
    BatchScorer(client, settings).score(entries)

    rebuild_histories(client, keys, settings)

    info = client.execute_command("TDIGEST.INFO", keys.history("user_1"))
    observations = dict(zip(info[::2], info[1::2]))[b"Observations"]
    assert observations == 101
