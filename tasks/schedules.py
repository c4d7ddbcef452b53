"""Beat entries of the maintenance tasks, built from their schedule settings."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery.schedules import crontab

from scoring.settings import parse_schedule

CRONTAB_EXPIRES_S = 3600.0
"""A run queued for longer than this is dropped when its schedule is a crontab.

An interval schedule drops a run after one interval instead. The next tick does the same work, so a
backlog of ticks (beat running while no worker consumes) never replays as a pile of refreshes.
"""


def maintenance_entry(task: str, schedule_text: str) -> dict[str, Any] | None:
    """Return the beat entry of `task` for a schedule setting, or None when it is off."""
    schedule = parse_schedule(schedule_text)
    if schedule is None:
        return None
    if isinstance(schedule, float):
        return {"task": task, "schedule": timedelta(seconds=schedule), "options": {"expires": schedule}}
    minute, hour, day_of_month, month, day_of_week = schedule
    return {
        "task": task,
        "schedule": crontab(
            minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month, day_of_week=day_of_week
        ),
        "options": {"expires": CRONTAB_EXPIRES_S},
    }
