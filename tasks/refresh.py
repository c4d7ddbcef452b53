"""Scheduled maintenance tasks: the list refresh and the history rebuild.

Both are single-flight through a Redis lock (see scoring.locks): a run that finds another one in
progress logs that and returns, so overlapping beat ticks or a second beat never queue refreshes.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from scoring.blocklists import refresh_lists, report_as_dict
from scoring.histories import rebuild_histories
from scoring.keys import Keys
from scoring.settings import get_settings
from tasks.pipeline import data_client

log = logging.getLogger(__name__)


@shared_task(name="riskscore.refresh_lists", ignore_result=True)
def refresh_lists_task() -> dict[str, Any]:
    """Refresh the blocklist and allowlist from RISK_BLOCKLIST_SOURCES."""
    settings = get_settings()
    report = refresh_lists(data_client(), Keys.from_settings(settings), settings)
    for outcome in report.failed:
        log.error("list source %s failed: %s", outcome.source.name, outcome.error)
    return report_as_dict(report)


@shared_task(name="riskscore.rebuild_histories", ignore_result=True)
def rebuild_histories_task() -> dict[str, Any]:
    """Rebuild user digests for up to RISK_HISTORY_REBUILD_BUDGET_S, then send a task that continues.

    Short tasks keep one rebuild over millions of users well inside the broker's visibility
    timeout, so a long run is never redelivered while it still runs.
    """
    settings = get_settings()
    report = rebuild_histories(
        data_client(), Keys.from_settings(settings), settings, budget_s=settings.history_rebuild_budget_s
    )
    if report.skipped is None and not report.finished:
        log.info("history rebuild paused after %d users; sending a task to continue it", report.run_users)
        rebuild_histories_task.apply_async()
    return {
        "skipped": report.skipped,
        "finished": report.finished,
        "users": report.users,
        "run_users": report.run_users,
        "duration_s": round(report.duration_s, 3),
    }
