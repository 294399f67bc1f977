"""`python -m services.events`: the supervisord event listener loop."""

from __future__ import annotations

import logging
import signal
import sys

from services.common import bus, service, timeouts
from services.events.listener import Publisher, log_lines, read_event, state_event

log = logging.getLogger("events")


def main() -> int:
    service.arguments("services.events", __doc__)
    settings = service.start("events")
    # supervisord stops us last; a TERM is the normal way out, not a crash.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    publisher = Publisher(lambda: bus.connect(settings, timeout=timeouts.REDIS_EVENTS))
    out = sys.stdout
    while True:
        # stdout is the protocol channel with supervisord; everything else goes to stderr.
        out.write("READY\n")
        out.flush()
        header, payload = read_event(sys.stdin)
        if not header:
            return 0  # supervisord closed our stdin: it is going away
        name = header.get("eventname", "")
        if name.startswith("PROCESS_LOG"):
            for line in log_lines(payload):
                sys.stderr.write(line + "\n")
            sys.stderr.flush()
        elif name.startswith("PROCESS_STATE_"):
            publisher.send(state_event(name, payload))
        elif name.startswith("TICK"):
            publisher.send()
        out.write("RESULT 2\nOK")
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
