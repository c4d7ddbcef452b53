"""The Celery app. Its configuration is read from `tasks.celeryconfig` on first use, not at import."""

from celery import Celery

app = Celery("riskscore", include=["tasks.pipeline", "tasks.refresh"])
app.config_from_object("tasks.celeryconfig")
