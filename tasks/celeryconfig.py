"""Celery configuration, built from the riskscore settings when the app is first configured.

The broker is the configured `RISK_BROKER_URL`, or the data server's database `RISK_BROKER_DB`,
or the embedded server started by `riskscore run`, found through its state file.
"""

import os
import ssl
import sys
from collections.abc import Mapping, Sequence
from datetime import timedelta

from kombu import Queue

from scoring.embedded import resolve_running_urls
from scoring.errors import ConfigurationError
from scoring.settings import get_settings
from scoring.keys import Keys
from tasks.schedules import maintenance_entry


def flower_auth_configured(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """Return True when Flower gets basic auth or OAuth from its options or FLOWER_* variables."""
    options = ("--basic-auth", "--basic_auth", "--auth")
    if any(arg.split("=", 1)[0] in options for arg in argv):
        return True
    return bool(environ.get("FLOWER_BASIC_AUTH") or environ.get("FLOWER_AUTH"))


def check_flower_auth(argv: Sequence[str], environ: Mapping[str, str], allow_no_auth: bool) -> None:
    """Raise ConfigurationError when `celery ... flower` would start without authentication.

    Flower shows task arguments, which hold transaction data, and can revoke tasks and shut
    workers down, so an open Flower is refused unless RISK_FLOWER_ALLOW_NO_AUTH is true.
    """
    if "flower" not in argv[1:] or allow_no_auth or flower_auth_configured(argv, environ):
        return
    raise ConfigurationError(
        "Flower refuses to start without authentication: set FLOWER_BASIC_AUTH=user:password, pass "
        "--basic-auth=user:password or --auth (OAuth), or set RISK_FLOWER_ALLOW_NO_AUTH=true"
    )

_settings = get_settings()
check_flower_auth(sys.argv, os.environ, _settings.flower_allow_no_auth)
_data_url, broker_url = resolve_running_urls(_settings)

_keys = Keys.from_settings(_settings)
SCORE_QUEUE = _keys.score_queue
DRAIN_QUEUE = _keys.drain_queue
MAINTENANCE_QUEUE = _keys.maintenance_queue

# Only JSON crosses the broker: pickle would let anyone who can write to the broker run code.
task_serializer = "json"
result_serializer = "json"
event_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# Verdicts live in the transaction hashes, so no task stores a result. Anything a caller asks to
# store anyway expires after a day.
task_ignore_result = True
result_expires = timedelta(days=1)

# A task is acknowledged after it ran, and requeued when its worker process dies mid-task. Scoring
# is idempotent (an entry's outcome is written once), so running a batch twice is harmless.
task_acks_late = True
task_reject_on_worker_lost = True

# Scoring tasks take milliseconds: a small prefetch keeps the pipe full without one worker hoarding
# batches that another idle worker could take.
worker_prefetch_multiplier = 4

# The Redis transport redelivers a task not acknowledged within the visibility timeout. It must be
# longer than any task runs, including queued time with late acknowledgement.
broker_transport_options = {"visibility_timeout": 3600}
broker_connection_retry_on_startup = True

# A rediss:// broker URL without ssl_cert_reqs makes kombu refuse to start; verify the server's
# certificate by default, as redis-py does for the data connection.
if broker_url.startswith("rediss://") and "ssl_cert_reqs" not in broker_url:
    broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
worker_cancel_long_running_tasks_on_connection_loss = True

# Flower shows tasks from worker events. The "sent" event is off: the drain would publish one per
# batch on top of the batch itself, and Flower lists tasks from the worker's events alone.
worker_send_task_events = True
task_send_sent_event = False

# Drains get their own queue so that a long scoring backlog does not delay the next drain, and
# every worker consumes all queues unless started with -Q. List refreshes and history rebuilds get
# theirs too, so that they do not wait behind a scoring backlog either.
task_queues = [Queue(SCORE_QUEUE), Queue(DRAIN_QUEUE), Queue(MAINTENANCE_QUEUE)]
task_default_queue = SCORE_QUEUE
task_routes = {
    "riskscore.drain": {"queue": DRAIN_QUEUE},
    "riskscore.refresh_lists": {"queue": MAINTENANCE_QUEUE},
    "riskscore.rebuild_histories": {"queue": MAINTENANCE_QUEUE},
}

timezone = "UTC"
enable_utc = True

beat_schedule = {
    "drain-transactions": {
        "task": "riskscore.drain",
        "schedule": timedelta(seconds=_settings.drain_interval_s),
        # A drain that waited longer than two intervals in the queue is dropped: the next tick
        # does the same work, and a backlog of ticks must not replay as a pile of drains.
        "options": {"expires": 2 * _settings.drain_interval_s},
    },
}

# The list refresh and the history rebuild, on the schedules of their settings (off drops the entry).
# Each entry's expiry drops a run that waited too long in the queue; see tasks.schedules.
for _name, _task, _schedule_text in (
    ("refresh-lists", "riskscore.refresh_lists", _settings.blocklist_refresh_schedule),
    ("rebuild-histories", "riskscore.rebuild_histories", _settings.history_refresh_schedule),
):
    _entry = maintenance_entry(_task, _schedule_text)
    if _entry is not None:
        beat_schedule[_name] = _entry
