"""`python -m services.worker`: the Celery worker (prefork: the only pool whose soft shutdown re-queues)."""

from __future__ import annotations

import logging
import sys
import threading

import kombu.exceptions
import redis

from services.common import messages, service
from services.common.queue import client as celery_client
from services.common.settings import Settings
from services.worker.app import create_celery

log = logging.getLogger("worker")


def reconcile_timer(settings: Settings, stop: threading.Event) -> None:
    """Queue the reconciler at start and then on an interval (it runs in a pool process like any task)."""
    app = celery_client(settings)
    delay = 1.0
    while not stop.wait(delay):
        try:
            app.send_task(messages.TASK_RECONCILE)
            delay = settings.downloads_reconcile_interval
        except (kombu.exceptions.OperationalError, redis.RedisError, OSError) as exc:
            log.warning("cannot queue the reconciler yet: %s", exc)
            delay = 5.0


def main() -> int:
    service.arguments("services.worker", __doc__)
    settings = service.start("worker")
    app = create_celery(settings)
    stop = threading.Event()
    threading.Thread(target=reconcile_timer, args=(settings, stop), name="reconcile-timer", daemon=True).start()
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
