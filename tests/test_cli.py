"""Tests of the `riskscore` commands that load lists and show transactions, on the session server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import redis
from click.testing import CliRunner, Result

from scoring.cli import cli, single_run
from scoring.embedded import ServerInfo
from scoring.settings import get_settings

RISKSCORE = str(Path(sys.executable).with_name("riskscore"))


@pytest.fixture
def cli_env(redis_server: ServerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """RISK_* variables that point commands at the session server, with no other RISK_* set.

    The working folder is tmp_path, so no .env file of the developer is read, and the cached
    process settings are cleared before and after, because `get_settings` loads them once.
    """
    for name in list(os.environ):
        if name.startswith("RISK_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield {"RISK_REDIS_URL": redis_server.url(0), "RISK_DATA_DIR": str(tmp_path / "data")}
    get_settings.cache_clear()


def invoke(env: dict[str, str], *args: str) -> Result:
    return CliRunner(env=env).invoke(cli, list(args))


def run_riskscore(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed `riskscore` command, so that errors go through its real entry point."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("RISK_")}
    return subprocess.run([RISKSCORE, *args], env={**clean, **env}, capture_output=True, text=True, timeout=60)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def bf_exists(client: redis.Redis, address: str) -> bool:
    return bool(client.execute_command("BF.EXISTS", "riskscore:blocklist:ip", address))


def observations(client: redis.Redis, user: str) -> int:
    info = client.execute_command("TDIGEST.INFO", f"riskscore:history:{user}")
    # redis_client speaks RESP3, in which TDIGEST.INFO replies with a map.
    return int(info[b"Observations"])


# --- load-blocklist -------------------------------------------------------------------------------


def test_load_blocklist_plain(cli_env, redis_client, tmp_path):
    blocklist = write(tmp_path / "list.txt", "# listed\n192.0.2.1\n192.0.2.2\n192.0.2.1\n198.51.100.0/24\nnot-an-ip\n")

    result = invoke(cli_env, "load-blocklist", "--format", "plain", str(blocklist))

    assert result.exit_code == 0, result.output
    assert "(plain): 2 addresses and 1 network from 6 lines" in result.output
    assert "1 duplicate" in result.output
    assert "1 invalid" in result.output
    assert "2 addresses new to the filter; 1 range skipped (CIDR)" in result.output
    assert bf_exists(redis_client, "192.0.2.1")
    assert bf_exists(redis_client, "192.0.2.2")
    assert not bf_exists(redis_client, "198.51.100.1")


def test_load_blocklist_guesses_netset(cli_env, redis_client, tmp_path):
    blocklist = write(tmp_path / "list.netset", "# FireHOL\n192.0.2.1\n198.51.100.0/24\n10.0.0.0/8\n")

    result = invoke(cli_env, "load-blocklist", str(blocklist))

    assert result.exit_code == 0, result.output
    assert "(netset)" in result.output
    assert "1 address new to the filter; 2 ranges skipped (CIDR)" in result.output


def test_load_blocklist_ipsum_min_count(cli_env, redis_client, tmp_path):
    blocklist = write(tmp_path / "ipsum.txt", "# IPsum\n#\n192.0.2.10\t5\n192.0.2.11\t2\n192.0.2.12\t3\n")

    result = invoke(cli_env, "load-blocklist", "--min-count", "3", str(blocklist))

    assert result.exit_code == 0, result.output
    assert "(ipsum): 2 addresses" in result.output
    assert "1 below the minimum count" in result.output
    assert bf_exists(redis_client, "192.0.2.10")
    assert bf_exists(redis_client, "192.0.2.12")
    assert not bf_exists(redis_client, "192.0.2.11")


def test_load_blocklist_twice_adds_nothing_new(cli_env, redis_client, tmp_path):
    blocklist = write(tmp_path / "list.txt", "192.0.2.1\n192.0.2.2\n")
    invoke(cli_env, "load-blocklist", str(blocklist))

    result = invoke(cli_env, "load-blocklist", str(blocklist))

    assert result.exit_code == 0, result.output
    assert "0 addresses new to the filter" in result.output


def test_load_blocklist_missing_file(cli_env, redis_client, tmp_path):
    result = invoke(cli_env, "load-blocklist", str(tmp_path / "absent.txt"))

    assert result.exit_code == 2
    assert "does not exist" in result.output


# --- load-history ---------------------------------------------------------------------------------


def test_load_history_counts_rows(cli_env, redis_client, tmp_path):
    history = write(tmp_path / "history.csv", "user_id,amount\nu1,10\nu1,20\nu2,5\nu3,abc\n")

    result = invoke(cli_env, "load-history", str(history))

    assert result.exit_code == 0, result.output
    assert "3 amounts for 2 users; 1 invalid rows skipped" in result.output
    assert "line 5:" in result.output
    assert observations(redis_client, "u1") == 2
    assert observations(redis_client, "u2") == 1
    assert not redis_client.exists("riskscore:history:u3")


def test_load_history_named_columns(cli_env, redis_client, tmp_path):
    history = write(tmp_path / "history.csv", "AccountID,TransactionAmount\nAC1,10\nAC1,12.5\n")

    result = invoke(cli_env, "load-history", "--user-column", "AccountID", "--amount-column", "TransactionAmount", str(history))

    assert result.exit_code == 0, result.output
    assert observations(redis_client, "AC1") == 2


def test_load_history_adds_by_default(cli_env, redis_client, tmp_path):
    history = write(tmp_path / "history.csv", "user_id,amount\nu1,10\nu1,20\n")
    invoke(cli_env, "load-history", str(history))

    invoke(cli_env, "load-history", str(history))

    assert observations(redis_client, "u1") == 4


def test_load_history_replace(cli_env, redis_client, tmp_path):
    history = write(tmp_path / "history.csv", "user_id,amount\nu1,10\nu1,20\n")
    invoke(cli_env, "load-history", str(history))

    result = invoke(cli_env, "load-history", "--replace", str(history))

    assert result.exit_code == 0, result.output
    assert observations(redis_client, "u1") == 2


def test_load_history_missing_column(cli_env, redis_client, tmp_path):
    history = write(tmp_path / "history.csv", "user,value\nu1,10\n")

    completed = run_riskscore(cli_env, "load-history", str(history))

    assert completed.returncode == 1
    assert "user_id" in completed.stderr
    assert "Traceback" not in completed.stderr


# --- show -----------------------------------------------------------------------------------------


def test_show_prints_hash(cli_env, redis_client):
    redis_client.hset("riskscore:tx:tx_1", mapping={"outcome": "approved", "risk_score": "0", "user_id": "u1"})

    result = invoke(cli_env, "show", "tx_1")

    assert result.exit_code == 0, result.output
    # Names are padded to the longest name, here risk_score (10 characters), plus two spaces.
    assert result.stdout.splitlines() == [
        "outcome     approved",
        "risk_score  0",
        "user_id     u1",
    ]


def test_show_missing_transaction(cli_env, redis_client):
    result = invoke(cli_env, "show", "tx_missing")

    assert result.exit_code == 1
    assert "no transaction 'tx_missing'" in result.stderr
    assert "riskscore:tx:tx_missing" in result.stderr


def test_show_missing_transaction_command(cli_env, redis_client):
    completed = run_riskscore(cli_env, "show", "tx_missing")

    assert completed.returncode == 1
    assert completed.stderr.startswith("Error: no transaction 'tx_missing'")


# --- settings and secrets at the entry point ------------------------------------------------------


def test_invalid_setting_names_variable(cli_env):
    completed = run_riskscore({**cli_env, "RISK_QUANTILE": "2"}, "show", "tx_1")

    assert completed.returncode == 1
    assert "RISK_QUANTILE" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_bad_password_never_printed(cli_env, redis_server):
    password = "wrong-password-4f9a1c"
    url = f"redis://:{password}@127.0.0.1:{redis_server.port}/0"

    completed = run_riskscore({**cli_env, "RISK_REDIS_URL": url}, "--log-level", "DEBUG", "show", "tx_1")

    assert completed.returncode == 1
    assert "rejected the credentials" in completed.stderr
    assert password not in completed.stderr
    assert password not in completed.stdout


def test_invalid_url_secret_never_printed(cli_env):
    completed = run_riskscore({**cli_env, "RISK_REDIS_URL": "http://user:hunter2-secret@127.0.0.1:1/0"}, "show", "tx_1")

    assert completed.returncode == 1
    assert "RISK_REDIS_URL" in completed.stderr
    assert "hunter2-secret" not in completed.stderr


def test_add_puts_entry_on_stream(cli_env, redis_client):
    result = invoke(cli_env, "add", "tx_id=tx_9", "user_id=u1", "amount=12.50", "ip=88.214.48.17")

    assert result.exit_code == 0, result.output
    entries = redis_client.xrange("transactions")
    assert len(entries) == 1
    assert entries[0][1] == {b"tx_id": b"tx_9", b"user_id": b"u1", b"amount": b"12.50", b"ip": b"88.214.48.17"}


def test_add_rejects_item_without_equals(cli_env, redis_client):
    result = invoke(cli_env, "add", "tx_id")

    assert result.exit_code == 2
    assert "expected FIELD=VALUE" in result.output


def test_second_run_is_refused(tmp_path):
    with single_run(tmp_path):
        with pytest.raises(click.ClickException, match="already running"):
            with single_run(tmp_path):
                pass


def test_replay_without_user_column_fails_early(cli_env, tmp_path):
    transactions = write(tmp_path / "t.csv", "a,b\n1,2\n")

    result = invoke(cli_env, "replay", str(transactions))

    assert result.exit_code == 1
    assert "no column 'user_id', 'amount'" in result.output
    assert not (tmp_path / "t.outcomes.csv").exists()


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_stops_cleanly_on_signal(tmp_path, signum):
    env = {name: value for name, value in os.environ.items() if not name.startswith("RISK_")}
    env["RISK_DATA_DIR"] = str(tmp_path / "data")
    # A background job of a non-interactive shell starts with SIGINT ignored; run must still stop.
    run = subprocess.Popen(
        [RISKSCORE, "run", "--no-flower"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert run.stdout is not None
        for line in run.stdout:
            if line.startswith("Running."):
                break
        run.send_signal(signum)
        output = run.stdout.read()
        assert run.wait(timeout=60) == 0
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        if run.stdout is not None:
            run.stdout.close()
    assert "Stopped." in output
    assert not (tmp_path / "data" / "server.json").exists()
    with single_run(tmp_path / "data"):
        pass
