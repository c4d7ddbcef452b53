"""The pipeline's health in one report: stream, consumer group, outcomes, drain, workers."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import redis

from scoring.blocklists import list_status
from scoring.histories import history_status
from scoring.keys import Keys
from scoring.model import decode_text
from scoring.settings import Settings



def _text(value: object) -> str:
    return decode_text(value) if isinstance(value, bytes) else str(value)


def _decode_hash(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def _age_s(iso_time: str | None, now: float) -> float | None:
    if not iso_time:
        return None
    return round(now - datetime.fromisoformat(iso_time).timestamp(), 3)


def entry_age_s(entry_id: str, now: float) -> float:
    """Return the age of a stream entry from the millisecond time in its id."""
    return round(now - int(entry_id.split("-", 1)[0]) / 1000, 3)


def collect_status(
    client: redis.Redis,
    broker: redis.Redis | None,
    keys: Keys,
    settings: Settings,
    workers: list[str] | None,
) -> dict[str, Any]:
    """Gather the status report. `workers` are the names that answered a ping (None: not asked)."""
    now = time.time()
    report: dict[str, Any] = {"stream": keys.stream, "consumer_group": keys.consumer_group}

    report["stream_length"] = int(client.xlen(keys.stream))
    group_info: dict[str, Any] | None = None
    try:
        for group in client.xinfo_groups(keys.stream):
            if _text(group["name"]) == keys.consumer_group:
                group_info = group
    except redis.ResponseError:
        group_info = None  # the stream does not exist yet
    if group_info is None:
        report["group"] = None
    else:
        summary = client.xpending(keys.stream, keys.consumer_group)
        oldest = _text(summary["min"]) if summary["pending"] else None
        report["group"] = {
            "lag": group_info.get("lag"),
            "pending": int(group_info["pending"]),
            "oldest_pending_id": oldest,
            "oldest_pending_age_s": entry_age_s(oldest, now) if oldest else None,
            "consumers": int(group_info["consumers"]),
            "last_delivered_id": _text(group_info["last-delivered-id"]),
        }

    stats = _decode_hash(client.hgetall(keys.stats))
    report["outcomes"] = {name: int(value) for name, value in stats.items() if name != "last_write_at"}
    report["last_write_at"] = stats.get("last_write_at")
    report["last_write_age_s"] = _age_s(stats.get("last_write_at"), now)
    report["dead_letter_length"] = int(client.xlen(keys.dead_letter))
    report["duplicates"] = report["outcomes"].get("duplicate", 0)

    heartbeat: dict[str, Any] = _decode_hash(client.hgetall(keys.drain_heartbeat))
    for name, value in heartbeat.items():
        if value.isdigit():
            heartbeat[name] = int(value)
    report["drain"] = {**heartbeat, "age_s": _age_s(heartbeat.get("at"), now)} if heartbeat else None

    lists = list_status(client, keys, settings)
    live = lists["live"] or {}
    report["lists"] = {
        "version": live.get("version"),
        "last_refresh": lists["last_run"],
        "refresh_running": lists["running"] is not None,
        "sources": [
            {name: source.get(name) for name in ("name", "last_success_at", "last_error", "last_error_at")}
            for source in lists["sources"]
        ],
    }
    history = history_status(client, keys, settings)
    report["history_rebuild"] = {"state": history["state"], "running": history["running"] is not None}

    report["broker_queues"] = (
        {"score": int(broker.llen(keys.score_queue)), "drain": int(broker.llen(keys.drain_queue))}
        if broker is not None
        else None
    )
    report["workers"] = workers
    report["problems"] = find_problems(report, settings)
    report["healthy"] = not report["problems"]
    return report


def find_problems(report: dict[str, Any], settings: Settings) -> list[str]:
    """Return a sentence for each sign of a stalled pipeline in a status report."""
    problems = []
    stale_after_s = max(5 * settings.drain_interval_s, 10.0)
    queues = report.get("broker_queues") or {}
    drain = report.get("drain")
    drain_stale = drain is None or (drain["age_s"] is not None and drain["age_s"] > stale_after_s)
    if drain_stale:
        last_drain = "no drain has run yet" if drain is None else f"the last drain ran {drain['age_s']:.0f} s ago"
        # Beat sends a drain every interval. When drains pile up in the broker, beat is alive but
        # no worker takes tasks, as with a worker that reconnected after a broker restart and
        # never consumes again.
        if queues.get("drain", 0) > 0:
            problems.append(f"{last_drain}, but {queues['drain']} drain tasks are queued: workers are not consuming")
        elif drain is None:
            problems.append("no drain has run yet: is a beat process running?")
        else:
            problems.append(f"{last_drain}: beat or the drain queue is stalled")

    group = report.get("group")
    if group and group["oldest_pending_age_s"] is not None and group["oldest_pending_age_s"] > settings.reclaim_idle_s * 2:
        problems.append(
            f"an entry has been pending for {group['oldest_pending_age_s']:.0f} s, over twice the reclaim timeout"
        )

    last_write_age = report.get("last_write_age_s")
    if queues.get("score", 0) > 0 and (last_write_age is None or last_write_age > stale_after_s):
        problems.append(
            f"{queues['score']} scoring tasks are queued but nothing was written for "
            f"{'ever' if last_write_age is None else f'{last_write_age:.0f} s'}: workers are not consuming"
        )
    workers = report.get("workers")
    if workers is not None and not workers:
        problems.append("no Celery worker answered a ping")
    return problems
