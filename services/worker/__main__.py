"""`python -m services.worker`: the Celery worker (prefork: the only pool whose soft shutdown re-queues)."""

from __future__ import annotations

import logging
import sys

from services.common.logs import setup_logging
from services.common.settings import SettingsError, load_settings
from services.worker.app import create_celery

log = logging.getLogger("worker")


def main() -> int:
    setup_logging("worker")
    try:
        settings = load_settings()
    except SettingsError as exc:
        log.error("%s", exc)
        return 2
    logging.getLogger().setLevel(settings.log_level)
    app = create_celery(settings)
    app.worker_main(
        ["worker", "--pool=prefork", "--concurrency=2", f"--loglevel={settings.log_level}",
         "--hostname=worker@%h", "--without-mingle", "--without-gossip"]
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
