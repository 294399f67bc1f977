"""Delay every packet queued by iptables NFQUEUE by a fixed time (a round trip for the download bench).

This kernel has no sch_netem; delaying the client->server direction (requests, ACKs)
through NFQUEUE gives a CDN-like round trip without throttling TCP. Usage: netdelay.py QUEUE MS.
"""

from __future__ import annotations

import collections
import select
import signal
import sys
import time

from netfilterqueue import NetfilterQueue


def main() -> int:
    queue_num, delay = int(sys.argv[1]), float(sys.argv[2]) / 1000
    held: collections.deque = collections.deque()

    def hold(packet) -> None:
        packet.retain()
        held.append((time.monotonic() + delay, packet))

    nfq = NetfilterQueue()
    nfq.bind(queue_num, hold, max_len=100_000)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    fd = nfq.get_fd()
    print("ready", flush=True)
    try:
        while True:
            timeout = max(0.0, held[0][0] - time.monotonic()) if held else 1.0
            readable, _, _ = select.select([fd], [], [], timeout)
            if readable:
                nfq.run(block=False)
            now = time.monotonic()
            while held and held[0][0] <= now:
                held.popleft()[1].accept()
    finally:
        nfq.unbind()


if __name__ == "__main__":
    sys.exit(main())
