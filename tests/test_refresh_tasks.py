"""Integration tests: real Celery worker and beat processes run the scheduled list refresh and history rebuild.

List sources are served by a ListServer on 127.0.0.1.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from list_server import ListServer

from scoring.cli import stack_env
from scoring.embedded import ServerInfo
from scoring.histories import read_state
from scoring.keys import Keys
from scoring.settings import load_settings
from scoring.stack import Stack
from scoring.store import connect, read_batch

pytestmark = pytest.mark.integration

TIMEOUT_S = 60.0
LIST_V1 = "192.0.2.1\n198.51.100.0/24\n"
LIST_V2 = "192.0.2.1\n198.51.100.0/24\n203.0.113.0/24\n"


class Processes:
    """A worker and a beat on one key namespace of the session server."""

    def __init__(self, redis_server: ServerInfo, root: Path) -> None:
        self.prefix = f"it-{uuid.uuid4().hex[:8]}"
        settings = load_settings(
            redis_url=redis_server.url(0), broker_url=None, data_dir=root, key_prefix=self.prefix, stream=f"{self.prefix}:transactions"
        )
        self.keys = Keys.from_settings(settings)
        self.env = {
            **stack_env(settings, redis_server.url(0), redis_server.url(1)),
            "RISK_DATA_DIR": str(root),
            "RISK_BLOCKLIST_REFRESH_SCHEDULE": "off",
            "RISK_HISTORY_REFRESH_SCHEDULE": "off",
        }
        self.root = root
        self.client = connect(redis_server.url(0))
        self.stack: Stack | None = None

    def start(self, concurrency: int = 2, **env: str) -> None:
        workdir = self.root / "stack"
        workdir.mkdir()
        self.stack = Stack(env={**self.env, **env}, workdir=workdir, log_dir=workdir)
        self.stack.start_worker(concurrency=concurrency)
        self.stack.start_beat()

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}" for path in sorted(self.root.glob("stack/*.log"))
        )

    def worker_log(self) -> str:
        path = self.root / "stack" / "worker.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert self.stack is not None
            self.stack.check_alive()
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout_s:.0f} s\n{self.logs()}")
            time.sleep(0.1)

    def version(self) -> str | None:
        value = self.client.get(self.keys.list_version)
        return None if value is None else value.decode()

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()
        self.client.close()


@pytest.fixture
def processes(redis_client: redis.Redis, redis_server: ServerInfo, tmp_path: Path) -> Iterator[Processes]:
    """A fresh key namespace and an empty broker; call `start` to run a worker and a beat."""
    running = Processes(redis_server, tmp_path)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def server() -> Iterator[ListServer]:
    running = ListServer()
    try:
        yield running
    finally:
        running.close()


def sources_env(*sources: dict[str, object]) -> str:
    return json.dumps(list(sources))


def test_scheduled_refresh_swaps_and_sends_conditional_requests(processes, server):
    url = server.serve("/list", LIST_V1, etag='"v1"')
    processes.start(RISK_BLOCKLIST_SOURCES=sources_env({"name": "feed", "url": url}), RISK_BLOCKLIST_REFRESH_SCHEDULE="1")

    processes.wait_for(lambda: processes.version() is not None)
    first = processes.version()
    processes.wait_for(lambda: any(request.status == 304 for request in server.requests_for("/list")))
    assert processes.version() == first

    server.serve("/list", LIST_V2, etag='"v2"')
    processes.wait_for(lambda: processes.version() != first)

    state = read_batch(processes.client, processes.keys, ["203.0.113.7", "198.51.100.9", "8.8.8.8"], [], 0.8)
    assert state.listings["203.0.113.7"].blocklisted
    assert state.listings["198.51.100.9"].blocklisted
    assert not state.listings["8.8.8.8"].match
    status = {k.decode(): v.decode() for k, v in processes.client.hgetall(processes.keys.list_source_status("feed")).items()}
    assert status["etag"] == '"v2"'
    assert status["version"] == processes.version()
    conditional = [request for request in server.requests_for("/list") if "if-none-match" in request.headers]
    assert conditional, "no conditional request was sent"


def test_scheduled_refresh_is_single_flight(processes, server):
    # Each download takes 2 s while beat sends a refresh every 0.3 s to four worker processes.
    url = server.serve("/list", LIST_V1, delay_s=2.0)
    processes.start(
        concurrency=4,
        RISK_BLOCKLIST_SOURCES=sources_env({"name": "slow", "url": url}),
        RISK_BLOCKLIST_REFRESH_SCHEDULE="0.3",
    )
    processes.wait_for(lambda: "list refresh skipped: another list refresh is running" in processes.worker_log())
    started = time.monotonic()
    time.sleep(5.0)
    elapsed = time.monotonic() - started

    requests = server.requests_for("/list")
    assert processes.version() is not None
    # One download at a time: at most one per 2 s, against about 16 refresh ticks in that time.
    assert len(requests) <= 2 + (elapsed + 5.0) / 2.0, len(requests)
    assert processes.worker_log().count("list refresh skipped: another list refresh is running") >= 3


def test_scheduled_history_rebuild_continues_until_finished(processes):
    users = [f"user-{n}" for n in range(5000)]
    pipe = processes.client.pipeline(transaction=False)
    for user in users:
        pipe.zadd(processes.keys.approved(user), {"seed-1|10.0": time.time() * 1000, "seed-2|30.0": time.time() * 1000})
    pipe.execute()

    processes.start(RISK_HISTORY_REFRESH_SCHEDULE="2", RISK_HISTORY_REBUILD_BUDGET_S="0.01")

    processes.wait_for(lambda: read_state(processes.client, processes.keys).get("last_finished_at") is not None)
    state = read_state(processes.client, processes.keys)
    assert int(state["last_run_users"]) >= len(users)
    assert "sending a task to continue it" in processes.worker_log()
    assert "resuming the history rebuild" in processes.worker_log()
    pipe = processes.client.pipeline(transaction=False)
    for user in users:
        pipe.exists(processes.keys.history(user))
    assert all(pipe.execute())
