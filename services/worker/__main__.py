"""`python -m services.worker`: the Celery worker (prefork: the only pool whose soft shutdown re-queues)."""

from __future__ import annotations

import logging
import sys
import threading

import kombu.exceptions
import redis

from services.common import bus, jobs, messages, service, timeouts
from services.common.queue import client as celery_client
from services.common.settings import Settings
from services.worker.app import create_celery

log = logging.getLogger("worker")


def periodic(settings: Settings, task: str, interval: float, stop: threading.Event) -> None:
    """Queue `task` at start and then on an interval (it runs in a pool process like any task)."""
    app = celery_client(settings)
    delay = 1.0
    while not stop.wait(delay):
        try:
            app.send_task(task)
            delay = interval
        except (kombu.exceptions.OperationalError, redis.RedisError, OSError) as exc:
            log.warning("cannot queue %s yet: %s", task, exc)
            delay = 5.0


def held_downloads() -> set[str]:
    """The download jobs this worker has taken from the queue and not finished: waiting for a pool slot,
    for a countdown, or running (Celery's own bookkeeping in the main process)."""
    from celery.worker import state

    # list() copies in one step under the GIL: the consumer thread adds and removes requests meanwhile.
    return {str(r.args[0]) for r in list(state.requests.values()) if r.name == messages.TASK_DOWNLOAD and r.args}


def report_held(settings: Settings, stop: threading.Event) -> None:
    """Publish what this worker holds until it stops: the reconciler's way to tell a job whose task a worker
    holds from one whose task was lost with a worker that died (see services/worker/reconcile.py)."""
    client = bus.connect(settings, timeout=timeouts.REDIS_WORKER)
    while True:
        try:
            jobs.publish_held(client, settings.pod_name, held_downloads())
        except redis.RedisError as exc:
            log.debug("cannot publish the jobs this worker holds: %s", exc)
        if stop.wait(jobs.HELD_EVERY):
            return


def main() -> int:
    service.arguments("services.worker", __doc__)
    settings = service.start("worker")
    app = create_celery(settings)
    stop = threading.Event()
    timers = [(messages.TASK_RECONCILE, settings.downloads_reconcile_interval)]
    if settings.model_cache_dir is not None:
        timers.append((messages.TASK_CACHE_SYNC, settings.model_cache_interval))
    for task, interval in timers:
        threading.Thread(target=periodic, args=(settings, task, interval, stop), name=task, daemon=True).start()
    threading.Thread(target=report_held, args=(settings, stop), name="held", daemon=True).start()
    try:
        app.worker_main(
            [
                "worker",
                "--pool=prefork",
                f"--concurrency={settings.worker_concurrency}",
                f"--loglevel={settings.log_level}",
                "--hostname=worker@%h",
                "--without-mingle",
                "--without-gossip",
            ]
        )
    finally:
        stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
