"""The riskscore Celery app: `celery -A tasks worker`, `celery -A tasks beat`, `celery -A tasks flower`."""

from tasks.app import app

__all__ = ["app"]
