"""The worker's Celery app and its tasks (each thin: validate, call a plain function)."""

from __future__ import annotations

import time

from celery import Celery

from services.common import messages
from services.common.queue import celery_config
from services.common.settings import Settings


def create_celery(settings: Settings) -> Celery:
    app = Celery("comfyui-docker", set_as_current=True)
    app.conf.update(celery_config(settings))

    @app.task(name=messages.TASK_PING, acks_late=False)
    def ping(sent_at: float) -> dict:
        """The health service's round trip: proves the worker still consumes from the queue."""
        return {"sent_at": sent_at, "seen_at": time.time()}

    return app
