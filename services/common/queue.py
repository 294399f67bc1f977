"""Celery configuration shared by the worker and by whoever sends it tasks (health, dashboard)."""

from __future__ import annotations

from celery import Celery

from services.common.settings import Settings

# Far above the longest download: past it, Redis hands a running task to a second worker.
VISIBILITY_TIMEOUT = 12 * 3600


def celery_config(settings: Settings) -> dict:
    return {
        "broker_url": settings.celery_broker_url,
        "result_backend": settings.celery_broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": VISIBILITY_TIMEOUT,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
        },
        "result_backend_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT},
        "result_expires": 3600,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_soft_shutdown_timeout": 5.0,
        "worker_hijack_root_logger": False,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
    }


def client(settings: Settings) -> Celery:
    """A Celery app that only sends tasks by name (services never import the worker)."""
    app = Celery("comfyui-docker", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app
