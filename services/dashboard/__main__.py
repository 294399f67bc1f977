"""`python -m services.dashboard`: gunicorn (gthread) serving create_app, in this very process."""

from __future__ import annotations

import logging
import sys

from gunicorn.app.base import BaseApplication

from services.common import service
from services.common.settings import Settings

log = logging.getLogger("dashboard")


class DashboardServer(BaseApplication):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options = {
            # Only the front door (nginx) connects: it listens on the public port and passes requests here.
            "bind": f"unix:{s.paths.dashboard_socket}",
            "workers": s.dashboard_workers,
            "worker_class": "gthread",
            # Each open WebSocket holds one thread for its whole life.
            "threads": s.dashboard_threads,
            "timeout": 60,
            # nginx keeps idle connections to us for reuse and drops them after its upstream
            # keepalive_timeout (60 s, nginx.conf). Were we to drop one first (gunicorn's default is 2 s),
            # a request nginx sends on it at that moment is lost: nginx retries a GET, but a POST gets a 503.
            "keepalive": 75,
            # A stop (QUIT, see supervisord.conf) gives requests in flight a second, not five.
            "graceful_timeout": 1,
            "control_socket_disable": True,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": s.log_level.lower(),
            "proc_name": "dashboard",
        }
        for key, value in options.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self):
        from services.dashboard.app import create_app

        return create_app(self.settings)


def main() -> int:
    service.arguments("services.dashboard", __doc__)
    DashboardServer(service.start("dashboard")).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
