"""The worker's Celery app and its tasks: each validates its payload and calls a plain function."""

from __future__ import annotations

import ctypes
import logging
import os
import re
import socket
import time

from celery import Celery

from services.common import bus, messages, queue, timeouts
from services.common.settings import Settings
from services.worker import cachefill, nodepacks, reconcile, runner

log = logging.getLogger("worker")

_JOB_ID = re.compile(r"[0-9a-f]{16}")
MAX_CHILD_MEMORY_KIB = 300 * 1024


def release_memory() -> None:
    """Give the heap a download freed back to the system: glibc keeps freed memory for reuse, so a pool
    process would otherwise stay at its largest size between downloads."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim this way


def create_celery(settings: Settings) -> Celery:
    app = queue.client(settings, set_as_current=True)
    app.conf.worker_concurrency = settings.worker_concurrency
    # A backstop: a pool process grown past this (KiB) is replaced by a fresh one after its task.
    app.conf.worker_max_memory_per_child = MAX_CHILD_MEMORY_KIB
    clients: dict[int, object] = {}

    def client():
        pid = os.getpid()
        if pid not in clients:
            clients.clear()
            clients[pid] = bus.connect(settings, timeout=timeouts.REDIS_WORKER)
        return clients[pid]

    @app.task(name=messages.TASK_PING, acks_late=False)
    def ping(sent_at: float) -> dict:
        """The health service's round trip: proves the worker still consumes from the queue."""
        return {"sent_at": sent_at, "seen_at": time.time()}

    @app.task(name=messages.TASK_DOWNLOAD, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def fetch(self, job_id: str) -> None:
        if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
            log.error("ignored a download task with a malformed job id")
            return
        owner = f"{socket.gethostname()}:{os.getpid()}"
        try:
            wait = runner.run(settings, client(), job_id, owner)
        finally:
            release_memory()
        if wait is not None:
            raise self.retry(countdown=wait, max_retries=None)

    @app.task(name=messages.TASK_NODE_PACKS, acks_late=False, ignore_result=True)
    def node_packs(install_id: str) -> None:
        # Not acked late: a second delivery after a lost worker would clone over a half-made install.
        if not isinstance(install_id, str) or not _JOB_ID.fullmatch(install_id):
            log.error("ignored a node pack task with a malformed install id")
            return
        nodepacks.run(settings, client(), install_id)

    @app.task(name=messages.TASK_CACHE_SYNC, acks_late=False, ignore_result=True)
    def cache_sync() -> dict:
        # The copies resume from their .part: a lost pass is redone by the next one.
        counts = cachefill.sync(settings, client())
        if any(counts.values()):
            log.info("model cache: %s", counts)
        return counts

    @app.task(name=messages.TASK_RECONCILE, acks_late=False, ignore_result=True)
    def reconcile_task() -> dict:
        counts = reconcile.run(settings, client(), lambda job_id: fetch.delay(job_id))
        if any(counts.values()):
            log.info("reconciled: %s", counts)
        return counts

    return app
