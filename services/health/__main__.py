"""`python -m services.health [serve]` runs the service; `python -m services.health check` is the CLI.

Exit codes of `check`: 0 healthy, 1 unhealthy, 2 degraded. With `--docker` (the image's HEALTHCHECK):
0 unless unhealthy, since Docker reserves 2 and a slow ComfyUI start is no reason to mark the container.
With `--ready` (a readiness probe, as /ready answers): 0 when the stack is ready for work, else 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from services.common import service
from services.health.checks import CHECKS, report, run_checks
from services.health.server import serve

log = logging.getLogger("health")

EXIT = {"healthy": 0, "unhealthy": 1, "degraded": 2}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.health", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the health service (the default)")
    check = sub.add_parser("check", help="run every check once and print the result")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--verbose", action="store_true", help="print every check, not only the failing ones")
    check.add_argument("--docker", action="store_true", help="exit 0 unless unhealthy (for HEALTHCHECK)")
    check.add_argument("--ready", action="store_true", help="exit 0 when ready for work, else 1 (readiness probe)")
    check.add_argument("--only", choices=sorted(CHECKS), action="append", help="run only this check")
    args = parser.parse_args(argv)
    settings = service.start("health")
    if args.command == "check":
        body = report(run_checks(settings, args.only))
        if args.json:
            print(json.dumps(body, indent=2))
        else:
            print(f"{body['state']} (ready: {'yes' if body['ready'] else 'no'})")
            for c in body["checks"]:
                if args.verbose or c["status"] != "ok":
                    print(f"  {c['status']:4} {c['name']:12} {c['reason']} ({c['ms']:.0f} ms)")
        if args.ready:
            return 0 if body["ready"] else 1
        code = EXIT[body["state"]]
        return (1 if code == 1 else 0) if args.docker else code
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    serve(settings, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
