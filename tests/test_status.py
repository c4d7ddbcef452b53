"""`riskscore status` problems: stalled drains, and workers that are alive but consume nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from scoring.cli import stack_env
from scoring.embedded import ServerInfo
from scoring.settings import load_settings
from scoring.stack import Stack, celery_command
from scoring.status import find_problems

SETTINGS = load_settings(drain_interval_s=1.0, reclaim_idle_s=60.0)


def report(drain_age_s: float | None, drain_queue: int = 0, score_queue: int = 0) -> dict[str, Any]:
    """Return a status report with a drain of this age (None: no drain yet) and these queue lengths."""
    return {
        "drain": None if drain_age_s is None else {"age_s": drain_age_s},
        "group": None,
        "broker_queues": {"drain": drain_queue, "score": score_queue},
        "last_write_age_s": 1.0,
        "workers": ["worker@host"],
    }


def test_queued_drains_without_drain_mean_not_consuming():
    problems = find_problems(report(None, drain_queue=3), SETTINGS)

    assert problems == ["no drain has run yet, but 3 drain tasks are queued: workers are not consuming"]


def test_queued_drains_after_stale_drain_mean_not_consuming():
    problems = find_problems(report(60.0, drain_queue=40), SETTINGS)

    assert problems == ["the last drain ran 60 s ago, but 40 drain tasks are queued: workers are not consuming"]


def test_no_drain_and_empty_queue_points_at_beat():
    problems = find_problems(report(None), SETTINGS)

    assert problems == ["no drain has run yet: is a beat process running?"]


def test_stale_drain_and_empty_queue_points_at_beat():
    problems = find_problems(report(60.0), SETTINGS)

    assert problems == ["the last drain ran 60 s ago: beat or the drain queue is stalled"]


def test_recent_drain_with_queued_drain_is_healthy():
    assert find_problems(report(0.5, drain_queue=1), SETTINGS) == []


@pytest.mark.integration
def test_status_reports_worker_that_consumes_nothing(
    redis_client: redis.Redis, redis_server: ServerInfo, tmp_path: Path
):
    # The worker replies to pings but listens on another queue, like a worker that reconnected
    # to the broker and never consumes again.
    prefix = f"st-{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        redis_url=redis_server.url(0), broker_url=None, data_dir=tmp_path, key_prefix=prefix, stream=f"{prefix}:tx"
    )
    env = {
        **stack_env(settings, redis_server.url(0), redis_server.url(1)),
        "RISK_DATA_DIR": str(tmp_path),
        "RISK_DRAIN_INTERVAL_S": "0.2",
    }
    broker = redis.Redis.from_url(redis_server.url(1))
    with Stack(env=env, workdir=tmp_path, log_dir=tmp_path) as stack:
        worker = stack.start(
            "idle-worker",
            celery_command(
                "worker", "--loglevel", "INFO", "-Q", "riskscore.unused", "--concurrency", "1", "-n", f"idle-{prefix}@%h"
            ),
        )
        stack.start_beat()
        deadline = time.monotonic() + 60
        while broker.llen(f"{prefix}.drain") < 3 or "ready." not in worker.log_path.read_text(errors="replace"):  # type: ignore[union-attr]
            stack.check_alive()
            assert time.monotonic() < deadline, "beat sent no drains or the worker did not start within 60 s"
            time.sleep(0.2)

        riskscore = Path(sys.executable).with_name("riskscore")
        completed = subprocess.run(
            [str(riskscore), "status", "--json", "--check", "--ping-timeout", "3"],
            cwd=tmp_path,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    broker.close()
    assert completed.returncode == 2, completed.stderr
    status = json.loads(completed.stdout)
    assert len(status["workers"]) == 1
    assert status["workers"][0].startswith(f"idle-{prefix}@")
    assert any("workers are not consuming" in problem for problem in status["problems"]), status["problems"]
