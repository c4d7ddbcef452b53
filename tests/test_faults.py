"""Faults: SIGKILLed workers, a Redis restart and redelivered batches lose nothing and apply nothing twice."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
import redis

from bench.faults import run_fault_test
from scoring.engine import BatchScorer
from scoring.errors import ServerError
from scoring.keys import Keys
from scoring.settings import Settings
from scoring.stack import Stack
from scoring.store import ensure_group, read_new

SUMMARY_FIELDS = (
    "transactions", "kills", "restarts", "lost", "duplicated", "redelivered", "elapsed_s", "drained",
    "group", "worker_exits", "workers_not_consuming", "restart_checks", "events",
)


def observations(client: redis.Redis, key: str) -> int:
    info = client.execute_command("TDIGEST.INFO", key)
    return int(dict(zip(info[::2], info[1::2]))[b"Observations"])


def test_redelivered_batch_changes_nothing(client: redis.Redis, settings: Settings):
    # A first copy, a second copy of the same tx_id and an entry without a tx_id, in one batch
    # that runs twice, as when a task runs again after its worker process was killed.
    keys = Keys.from_settings(settings)
    client.execute_command("TDIGEST.CREATE", keys.history("user_1"))
    client.execute_command("TDIGEST.ADD", keys.history("user_1"), *range(100, 110))
    first = {"tx_id": "tx_1", "user_id": "user_1", "amount": "101", "ip": "198.51.100.7"}
    client.xadd(keys.stream, first)
    client.xadd(keys.stream, first)
    client.xadd(keys.stream, {"user_id": "user_1", "amount": "5", "ip": ""})
    ensure_group(client, keys)
    entries = read_new(client, keys, "test", 10)
    scorer = BatchScorer(client, settings)

    once = scorer.score(entries)
    hash_once = client.hgetall(keys.transaction("tx_1"))
    again = scorer.score(entries)

    assert once.statuses == {"scored": 1, "duplicate": 1, "invalid": 1}
    assert again.statuses == {"redelivered": 3}
    assert client.hgetall(keys.transaction("tx_1")) == hash_once
    assert hash_once[b"duplicates"] == b"1"
    assert client.xlen(keys.dead_letter) == 2
    assert observations(client, keys.history("user_1")) == 11


def test_stack_starts_exited_child_again(tmp_path: Path):
    stack = Stack(env={}, workdir=tmp_path, log_dir=tmp_path)
    short = stack.start("short", [sys.executable, "-c", "print('ran')"])
    running = stack.start("running", [sys.executable, "-c", "import time; time.sleep(60)"])
    short.process.wait()

    restarted = stack.restart_exited(max_restarts=1)
    restarted[0].process.wait()
    with pytest.raises(ServerError, match="short exited with code 0, 2 exits within 300 s"):
        stack.restart_exited(max_restarts=1)

    stack.stop(timeout_s=5)
    assert [child.name for child in restarted] == ["short"]
    assert restarted[0].process.pid != short.process.pid
    assert running.process.returncode == -signal.SIGTERM
    assert (tmp_path / "short.log").read_text().splitlines() == ["ran", "ran"]


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_kills_and_restart_lose_nothing(tmp_path: Path):
    result = run_fault_test(
        transactions=3_000, kills=5, restarts=1, rate_per_s=150.0, drain_timeout_s=90.0, workdir=tmp_path
    )

    summary = json.dumps({name: result.get(name) for name in SUMMARY_FIELDS}, indent=1)
    problems = "\n".join(result["checks"]["problems"])
    context = f"{summary}\n{problems}\n{result.get('logs_tail', '')}"
    assert result["drained"], context
    assert result["transactions"] == 3_000
    assert result["kills"] >= 5
    assert result["kills_main"] >= 1
    assert result["restarts"] == 1
    assert result["lost"] == 0, context
    assert result["duplicated"] == 0, context
    assert result["checks"]["history_mismatches"] == 0, context
    assert result["checks"]["problem_count"] == 0, context
    assert all(check["sentinel_kept"] for check in result["restart_checks"]), context
    assert all(check["stream_kept"] for check in result["restart_checks"]), context
    assert result["workers_not_consuming"] == [], context
