"""Celery configuration, built from the riskscore settings when the app is first configured.

The broker is the configured `RISK_BROKER_URL`, or the data server's database `RISK_BROKER_DB`,
or the embedded server started by `riskscore run`, found through its state file.
"""

from datetime import timedelta

from kombu import Queue

from scoring.embedded import resolve_running_urls
from scoring.settings import get_settings

_settings = get_settings()
_data_url, broker_url = resolve_running_urls(_settings)

DRAIN_QUEUE = "riskscore.drain"
SCORE_QUEUE = "riskscore.score"

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
worker_cancel_long_running_tasks_on_connection_loss = True

# Flower shows tasks from worker events.
worker_send_task_events = True
task_send_sent_event = True

# Drains get their own queue so that a long scoring backlog does not delay the next drain, and
# every worker consumes both unless started with -Q.
task_queues = [Queue(SCORE_QUEUE), Queue(DRAIN_QUEUE)]
task_default_queue = SCORE_QUEUE
task_routes = {"riskscore.drain": {"queue": DRAIN_QUEUE}}

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
