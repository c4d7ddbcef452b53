"""Rebuild of every user's T-Digest from the rolling window of their approved amounts.

Each approved transaction's amount is recorded twice by the outcome script, in the same atomic
step that approves it: in the user's digest, which the amount rule reads, and in the user's window
(`<prefix>:approved:<user_id>`), a sorted set capped at RISK_HISTORY_WINDOW_COUNT. Flagged and
invalid transactions are recorded in neither. A rebuild trims each window to the newest
RISK_HISTORY_WINDOW_COUNT amounts of the last RISK_HISTORY_WINDOW_DAYS days and replaces the digest
with one built from the window, so old amounts stop counting.

A rebuild walks the windows with SCAN and keeps the cursor in `<prefix>:history_rebuild:state`
after every step, so a run that stops (a time budget, a user limit, a killed process) is resumed
by the next run where it stopped. SCAN may return a key twice, which rebuilds that user twice with
the same result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis

from scoring.keys import Keys
from scoring.locks import SingleFlightLock, lock_holder
from scoring.settings import Settings
from scoring.store import utc_now_iso

log = logging.getLogger(__name__)

LOCK_TTL_S = 60.0
BUILD_TTL_MS = 3_600_000
SCAN_COUNT = 1_000
USERS_PER_SCRIPT = 200
"""Users rebuilt per script call. Each call blocks the server while it runs, so it stays short."""

Progress = Callable[[int], None]
"""Called with the number of users just rebuilt."""


@dataclass
class RebuildReport:
    """The result of one call of rebuild_histories."""

    skipped: str | None = None
    """The reason nothing ran (another rebuild has the lock), or None."""
    resumed: bool = False
    finished: bool = False
    users: int = 0
    emptied: int = 0
    amounts: int = 0
    duration_s: float = 0.0
    run_users: int = 0
    """Users rebuilt by the whole run so far, across resumed calls."""

    @property
    def users_per_s(self) -> float:
        return self.users / self.duration_s if self.duration_s > 0 else 0.0


def _script_source() -> str:
    return resources.files("scoring").joinpath("rebuild_histories.lua").read_text(encoding="utf-8")


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def read_state(client: redis.Redis, keys: Keys) -> dict[str, str]:
    """Return the rebuild state hash: status, cursor, the current run's counts, the last finished run."""
    return {_text(k): _text(v) for k, v in client.hgetall(keys.history_rebuild_state).items()}


class HistoryRebuilder:
    """Rebuilds digests of batches of users with one script call per batch."""

    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings) -> None:
        self.client = client
        self.keys = keys
        self.compression = settings.tdigest_compression
        self.window_count = settings.history_window_count
        self.window_days = settings.history_window_days
        self._script = client.register_script(_script_source())
        self._approved_prefix = keys.approved_prefix.encode()
        self._history_prefix = keys.history("").encode()
        self._build_prefix = keys.history_build("").encode()

    def cutoff_ms(self) -> str:
        """Return the oldest approval time kept, in ms, or "" when the window has no age limit."""
        if self.window_days <= 0:
            return ""
        return str(int(time.time() * 1000 - self.window_days * 86_400_000))

    def rebuild_keys(self, approved_keys: list[bytes]) -> tuple[int, int, int]:
        """Rebuild the users of these approved-amount keys; return (rebuilt, emptied, amounts)."""
        totals = [0, 0, 0]
        for start in range(0, len(approved_keys), USERS_PER_SCRIPT):
            script_keys: list[bytes] = []
            for approved in approved_keys[start : start + USERS_PER_SCRIPT]:
                # Keys stay bytes, so a user id is passed on exactly as it was stored.
                user = approved[len(self._approved_prefix) :]
                script_keys += [approved, self._history_prefix + user, self._build_prefix + user]
            counts = self._script(
                keys=script_keys, args=[self.compression, self.window_count, self.cutoff_ms(), BUILD_TTL_MS]
            )
            totals = [total + int(count) for total, count in zip(totals, counts)]
        return totals[0], totals[1], totals[2]

    def rebuild_users(self, user_ids: list[str]) -> tuple[int, int, int]:
        """Rebuild these users' digests; return (rebuilt, emptied, amounts)."""
        return self.rebuild_keys([self.keys.approved(user).encode() for user in user_ids])


def rebuild_histories(
    client: redis.Redis,
    keys: Keys,
    settings: Settings,
    *,
    budget_s: float | None = None,
    max_users: int | None = None,
    restart: bool = False,
    progress: Progress | None = None,
) -> RebuildReport:
    """Rebuild every user's digest from their window, resuming an unfinished run unless `restart`.

    Stops after `budget_s` seconds or `max_users` users, at the end of a SCAN step, with the
    cursor saved; the next call resumes there. Returns without doing anything when another rebuild
    holds the lock.
    """
    started = time.monotonic()
    report = RebuildReport()
    lock = SingleFlightLock(client, keys.history_rebuild_lock, ttl_s=LOCK_TTL_S)
    if not lock.acquire():
        holder = lock_holder(client, keys.history_rebuild_lock)
        report.skipped = f"another history rebuild is running ({holder[0] if holder else 'it just finished'})"
        log.info("history rebuild skipped: %s", report.skipped)
        return report

    with lock:
        state = read_state(client, keys)
        report.resumed = state.get("status") == "running" and not restart
        if report.resumed:
            cursor = int(state.get("cursor") or 0)
            log.info("resuming the history rebuild started at %s at cursor %d", state.get("run_started_at"), cursor)
        else:
            cursor = 0
            state = {"run_users": "0", "run_emptied": "0", "run_amounts": "0", "run_seconds": "0"}
            client.hset(
                keys.history_rebuild_state,
                mapping={"status": "running", "cursor": 0, "run_started_at": utc_now_iso(), **state},
            )
        rebuilder = HistoryRebuilder(client, keys, settings)
        run_users = int(state.get("run_users") or 0)
        run_emptied = int(state.get("run_emptied") or 0)
        run_amounts = int(state.get("run_amounts") or 0)
        run_seconds = float(state.get("run_seconds") or 0)

        while True:
            if lock.lost:
                log.error("history rebuild stopped at cursor %d: its lock was lost", cursor)
                break
            cursor, found = client.scan(cursor, match=keys.approved_pattern, count=SCAN_COUNT)
            rebuilt, emptied, amounts = rebuilder.rebuild_keys(list(found))
            report.users += rebuilt + emptied
            report.emptied += emptied
            report.amounts += amounts
            if progress is not None and found:
                progress(rebuilt + emptied)
            elapsed = time.monotonic() - started
            fields: dict[str, Any] = {
                "cursor": cursor,
                "run_users": run_users + report.users,
                "run_emptied": run_emptied + report.emptied,
                "run_amounts": run_amounts + report.amounts,
                "run_seconds": round(run_seconds + elapsed, 3),
                "updated_at": utc_now_iso(),
            }
            if cursor == 0:
                report.finished = True
                total_seconds = run_seconds + elapsed
                fields.update(
                    status="finished",
                    last_finished_at=utc_now_iso(),
                    last_run_users=run_users + report.users,
                    last_run_emptied=run_emptied + report.emptied,
                    last_run_amounts=run_amounts + report.amounts,
                    last_run_seconds=round(total_seconds, 3),
                    last_run_users_per_s=round((run_users + report.users) / total_seconds, 1) if total_seconds else 0,
                )
            client.hset(keys.history_rebuild_state, mapping=fields)
            if report.finished:
                break
            if budget_s is not None and elapsed >= budget_s:
                break
            if max_users is not None and report.users >= max_users:
                break

    report.duration_s = time.monotonic() - started
    report.run_users = run_users + report.users
    log.info(
        "history rebuild %s: %d users (%d emptied, %d amounts) in %.1f s",
        "finished" if report.finished else f"paused at cursor {cursor}",
        report.users, report.emptied, report.amounts, report.duration_s,
    )
    return report


def history_status(client: redis.Redis, keys: Keys, settings: Settings) -> dict[str, Any]:
    """Gather the rebuild state, the running rebuild's lock holder and the window settings."""
    state: dict[str, Any] = read_state(client, keys)
    running = lock_holder(client, keys.history_rebuild_lock)
    return {
        "state": state or None,
        "running": None if running is None else {"holder": running[0], "lock_expires_in_s": running[1]},
        "window_count": settings.history_window_count,
        "window_days": settings.history_window_days,
    }
