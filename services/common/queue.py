"""Celery configuration shared by the worker and by whoever sends it tasks (health, dashboard)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable

import redis
from celery import Celery

from services.common import broker, messages
from services.common.settings import Settings

# Far above the longest download: past it, Redis hands a running task to a second worker.
VISIBILITY_TIMEOUT = 12 * 3600
# How long a stopping worker lets running tasks go on before it hands them back to the queue. A download
# gains nothing from waiting (it resumes from its .part), and Docker's stop grace is 10 s for the stack.
SOFT_SHUTDOWN = 1.0
# The one queue every task goes to (Celery's default name).
QUEUE = "celery"


def celery_config(settings: Settings) -> dict:
    broker.register()
    return {
        # The worker keeps consuming across a broker restart: see services/common/broker.py.
        "broker_url": broker.broker_url(settings.celery_broker_url),
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
        "worker_soft_shutdown_timeout": SOFT_SHUTDOWN,
        "worker_hijack_root_logger": False,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
    }


def client(settings: Settings, set_as_current: bool = False) -> Celery:
    """A Celery app configured for the stack: the worker's (current) or a sender's (services never import
    the worker: they send tasks by name)."""
    app = Celery("comfyui-docker", set_as_current=set_as_current)
    app.conf.update(celery_config(settings))
    return app


def waiting_downloads(client: redis.Redis) -> set[str]:
    """The job ids of download tasks still waiting in the broker's queue (sent, taken by no worker yet).

    On kombu's Redis transport the queue is a list of JSON envelopes; Celery's message protocol 2 names the
    task in the headers and carries `[args, kwargs, embed]` as base64 JSON in the body. A message this
    cannot read is skipped: the reconciler then at worst sends its job a second time, which is a no-op."""
    found = set()
    for raw in client.lrange(QUEUE, 0, -1):
        try:
            envelope = json.loads(raw)
            if envelope["headers"]["task"] != messages.TASK_DOWNLOAD:
                continue
            args = json.loads(base64.b64decode(envelope["body"]))[0]
            found.add(str(args[0]))
        except (TypeError, ValueError, KeyError, IndexError, binascii.Error):
            continue
    return found


def download_sender(settings: Settings) -> Callable[[str], None]:
    """Queues a download task; only the job's id crosses the queue (no URL, no token). Build it once."""
    app = client(settings)

    def send(job_id: str) -> None:
        app.send_task(messages.TASK_DOWNLOAD, args=[job_id])

    return send


def node_packs_sender(settings: Settings) -> Callable[[str], None]:
    """Queues a workflow's node pack installs; only the install's id crosses the queue."""
    app = client(settings)

    def send(install_id: str) -> None:
        app.send_task(messages.TASK_NODE_PACKS, args=[install_id])

    return send


def cache_sync_sender(settings: Settings) -> Callable[[], None]:
    """Asks the worker for a model cache pass now (a pin should not wait for the next interval)."""
    app = client(settings)

    def send() -> None:
        app.send_task(messages.TASK_CACHE_SYNC)

    return send
