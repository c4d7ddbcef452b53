"""Integration tests: real Celery worker and beat processes score entries from the session server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from scoring.cli import stack_env
from scoring.embedded import ServerInfo
from scoring.keys import Keys
from scoring.loads import load_blocklist, load_history
from scoring.settings import Settings, load_settings
from scoring.stack import Stack
from scoring.store import connect

pytestmark = pytest.mark.integration

USER_AMOUNTS = [500, 520, 530, 540, 560, 560, 560, 520, 200, 520]
LISTED_IP = "203.0.113.9"
SCORING_TIMEOUT_S = 90.0


@dataclass
class Pipeline:
    """Celery processes running against one key namespace of the session server."""

    client: redis.Redis
    settings: Settings
    keys: Keys
    env: dict[str, str]
    root: Path
    stacks: list[Stack] = field(default_factory=list)

    def start(self, workers: int = 1, beats: int = 1, concurrency: int = 2, **extra_env: str) -> None:
        """Start worker and beat processes. Each beat gets its own work folder and schedule file."""
        env = {**self.env, **extra_env}
        for number in range(max(workers, beats)):
            workdir = self.root / f"stack-{len(self.stacks)}"
            workdir.mkdir()
            stack = Stack(env=env, workdir=workdir, log_dir=workdir)
            self.stacks.append(stack)
            if number < workers:
                stack.start_worker(concurrency=concurrency, name=f"worker-{number}")
            if number < beats:
                stack.start_beat()

    def stop(self) -> None:
        # Every process gets SIGTERM at once, so their warm shutdowns overlap. Stack.stop then waits.
        for stack in self.stacks:
            for child in stack.children:
                if child.process.poll() is None:
                    child.process.terminate()
        for stack in self.stacks:
            stack.stop()

    def logs(self) -> str:
        tails = []
        for path in sorted(self.root.glob("stack-*/*.log")):
            tails.append(f"--- {path.name} ({path.parent.name})\n{path.read_text(errors='replace')[-2000:]}")
        return "\n".join(tails)

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = SCORING_TIMEOUT_S) -> None:
        """Poll `predicate` until it is true. Fail with the processes' logs on timeout or exit."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            for stack in self.stacks:
                stack.check_alive()
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout_s:.0f} s\n{self.logs()}")
            time.sleep(0.1)

    def add(self, entries: list[dict[str, str] | dict[bytes, bytes]]) -> list[str]:
        pipe = self.client.pipeline(transaction=False)
        for fields in entries:
            pipe.xadd(self.keys.stream, fields)  # type: ignore[arg-type]
        return [entry_id.decode() for entry_id in pipe.execute()]

    def acknowledged(self) -> int:
        """Return how many entries the group has read and acknowledged."""
        try:
            groups = self.client.xinfo_groups(self.keys.stream)
        except redis.ResponseError:
            return 0
        for group in groups:
            if group["name"].decode() == self.keys.consumer_group:
                return int(group.get("entries-read") or 0) - int(group["pending"])
        return 0

    def pending(self) -> int:
        return int(self.client.xpending(self.keys.stream, self.keys.consumer_group)["pending"])

    def outcome(self, tx_id: str) -> dict[str, str]:
        raw = self.client.hgetall(self.keys.transaction(tx_id))
        return {name.decode(): value.decode() for name, value in raw.items()}

    def dead_letters(self) -> dict[str, dict[bytes, bytes]]:
        """Return dead-letter entries by the stream id of the entry they record."""
        letters = {}
        for _entry_id, fields in self.client.xrange(self.keys.dead_letter):
            letters[fields[b"source_id"].decode()] = fields
        return letters


@pytest.fixture
def pipeline(redis_client: redis.Redis, redis_server: ServerInfo, tmp_path: Path) -> Iterator[Pipeline]:
    """A fresh key namespace and an empty broker database. Call `start` to run processes.

    FLUSHALL (by redis_client) empties the broker too, so no task left over from an earlier test
    reaches this test's workers.
    """
    prefix = f"it-{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        redis_url=redis_server.url(0),
        broker_url=None,
        data_dir=tmp_path,
        key_prefix=prefix,
        stream=f"{prefix}:transactions",
    )
    # A drain waits on the stream for its whole budget, so the budget stays below the beat interval.
    # Otherwise waiting drains pile up and hold every worker process.
    env = {
        **stack_env(settings, redis_server.url(0), redis_server.url(1)),
        "RISK_DATA_DIR": str(tmp_path),
        "RISK_DRAIN_INTERVAL_S": "0.2",
        "RISK_DRAIN_BUDGET_S": "0.15",
    }
    client = connect(redis_server.url(0))
    running = Pipeline(client, settings, Keys.from_settings(settings), env, tmp_path)
    try:
        yield running
    finally:
        running.stop()
        client.close()


def tx(tx_id: str, user_id: str = "user_1", amount: str = "500", ip: str = "198.51.100.7") -> dict[str, str]:
    return {"tx_id": tx_id, "user_id": user_id, "amount": amount, "ip": ip}


def test_mixed_entries_get_outcomes(pipeline):
    keys = pipeline.keys
    load_history(pipeline.client, keys, {"user_1": USER_AMOUNTS}, compression=100)
    load_blocklist(pipeline.client, keys, [LISTED_IP], error_rate=0.01, capacity=1000)
    entries = [
        tx("tx_ok"),
        tx("tx_listed", ip=LISTED_IP),
        tx("tx_big", amount="90000"),
        tx("tx_bad", amount="12,50"),
        {"user_id": "user_1", "amount": "5", "ip": ""},
        tx("tx_ok", amount="1"),
        {b"tx_id": b"tx_bytes", b"user_id": b"user_1", b"amount": b"5", b"ip": b"", b"memo": b"\xff\xfe"},
    ]
    pipeline.start()

    ids = pipeline.add(entries)
    pipeline.wait_for(lambda: pipeline.acknowledged() >= len(entries))

    letters = pipeline.dead_letters()
    assert pipeline.outcome("tx_ok")["status"] == "Approved"
    assert pipeline.outcome("tx_ok")["stream_id"] == ids[0]
    assert pipeline.outcome("tx_listed")["reasons"] == "ip_blocklisted"
    assert pipeline.outcome("tx_listed")["status"] == "pending"
    assert pipeline.outcome("tx_big")["reasons"] == "amount_above_threshold"
    assert pipeline.outcome("tx_bad")["outcome"] == "invalid"
    assert pipeline.outcome("tx_bytes")["outcome"] == "invalid"
    assert sorted(letters) == sorted([ids[3], ids[4], ids[5], ids[6]])
    assert letters[ids[3]][b"reason"] == b"invalid_amount"
    assert letters[ids[4]][b"reason"] == b"missing_field"
    assert letters[ids[5]][b"reason"] == b"duplicate_tx_id"
    assert letters[ids[6]][b"field:memo"] == b"\xff\xfe"
    assert pipeline.outcome("tx_ok")["duplicates"] == "1"
    assert pipeline.pending() == 0


def test_abandoned_entries_are_reclaimed(pipeline):
    # A consumer that read entries and died leaves them pending, and the drain claims them again.
    ids = pipeline.add([tx(f"tx_{n}") for n in range(5)])
    pipeline.client.xgroup_create(pipeline.keys.stream, pipeline.keys.consumer_group, id="0")
    pipeline.client.xreadgroup(pipeline.keys.consumer_group, "dead-worker", {pipeline.keys.stream: ">"}, count=10)
    pipeline.client.xdel(pipeline.keys.stream, ids[4])
    pipeline.start(RISK_RECLAIM_IDLE_S="0.5")

    pipeline.wait_for(lambda: pipeline.pending() == 0)

    letters = pipeline.dead_letters()
    for n in range(4):
        assert pipeline.outcome(f"tx_{n}")["stream_id"] == ids[n]
    assert list(letters) == [ids[4]]
    assert letters[ids[4]][b"reason"] == b"entry_lost"


def test_backlog_before_group_is_scored(pipeline):
    ids = pipeline.add([tx(f"tx_{n}", user_id=f"user_{n % 7}") for n in range(200)])
    groups_before = pipeline.client.xinfo_groups(pipeline.keys.stream)

    pipeline.start()
    pipeline.wait_for(lambda: pipeline.acknowledged() >= len(ids))

    assert groups_before == []
    assert [pipeline.outcome(f"tx_{n}")["stream_id"] for n in range(200)] == ids
    assert pipeline.pending() == 0


def test_two_beats_two_workers_score_once(pipeline):
    total = 3_000
    users = {f"user_{n}": USER_AMOUNTS for n in range(30)}
    load_history(pipeline.client, pipeline.keys, users, compression=100)
    entries = [tx(f"tx_{n}", user_id=f"user_{n % 30}", amount=str(100 + n % 1500)) for n in range(total)]
    # Half is a backlog before any process runs, and half arrives while two drains compete.
    ids = pipeline.add(entries[: total // 2])
    pipeline.start(workers=2, beats=2)
    for start in range(total // 2, total, 100):
        ids += pipeline.add(entries[start : start + 100])
        time.sleep(0.02)

    pipeline.wait_for(lambda: pipeline.acknowledged() >= total)

    pipe = pipeline.client.pipeline(transaction=False)
    for n in range(total):
        pipe.hmget(pipeline.keys.transaction(f"tx_{n}"), "stream_id", "outcome", "duplicates")
    rows = [[value.decode() if value is not None else None for value in row] for row in pipe.execute()]
    assert [row[0] for row in rows] == ids
    assert {row[1] for row in rows} <= {"approved", "flagged"}
    assert [row[2] for row in rows] == [None] * total
    assert len(pipeline.client.keys(f"{pipeline.keys.prefix}:tx:*")) == total
    assert pipeline.client.xlen(pipeline.keys.dead_letter) == 0
    assert pipeline.pending() == 0


def test_demo_command_prints_prototype_outcomes(tmp_path):
    # The README's first command: no RISK_REDIS_URL, so the demo starts a throwaway server of its own.
    env = {name: value for name, value in os.environ.items() if not name.startswith("RISK_")}
    env["RISK_DATA_DIR"] = str(tmp_path / "data")
    riskscore = Path(sys.executable).with_name("riskscore")

    completed = subprocess.run(
        [str(riskscore), "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )

    statuses = {}
    current = None
    for line in completed.stdout.splitlines():
        if line.startswith("riskscore-demo:tx:"):
            current = line.removeprefix("riskscore-demo:tx:")
        elif current and line.startswith("  status "):
            statuses[current] = line.split()[1]
    assert completed.returncode == 0, completed.stderr
    assert statuses == {"tx_1001": "Approved", "tx_1002": "pending", "tx_1003": "Approved", "tx_1004": "pending"}
    assert "Outcomes match the prototype" in completed.stdout
    assert not (tmp_path / "data").exists()


def test_recreated_stream_is_scored(pipeline):
    # Deleting the stream deletes its consumer group too, so running drains must create it again.
    pipeline.start()
    pipeline.add([tx("tx_before")])
    pipeline.wait_for(lambda: pipeline.acknowledged() >= 1)
    pipeline.client.delete(pipeline.keys.stream)

    ids = pipeline.add([tx("tx_after")])
    pipeline.wait_for(lambda: pipeline.acknowledged() >= 1, timeout_s=20)

    assert pipeline.outcome("tx_after")["stream_id"] == ids[0]
