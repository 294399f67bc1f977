"""`python -m services.supervise -n -c supervisord.conf`: supervisord, woken at once by every signal.

supervisord's loop polls its file descriptors with a 1 s timeout, and Python restarts an interrupted
poll (PEP 475): a SIGTERM, or a child's exit (SIGCHLD), is seen only when the poll returns. When a
program's output pipe closes a moment before the program can be reaped, supervisord waits out the full
second before it notices the exit and stops the next program: on a stop, up to a second per program,
seven in a row. Here Python writes a byte to a pipe for every signal (`signal.set_wakeup_fd`), and
supervisord polls that pipe like its other descriptors, so each signal ends the poll at once; a byte
written before it starts ends its first poll too, which otherwise delays every program's first spawn
by a second. The same supervisord, the same config; it only hears sooner.
"""

from __future__ import annotations

import os
import signal
import sys

from supervisor import supervisord
from supervisor.medusa import asyncore_25 as asyncore

# supervisor.options.ServerOptions.cleanup_fds: os.closerange(5, minfds) at every reload.
SUPERVISORD_CLOSES_FROM = 5


class Wakeup:
    """A descriptor in supervisord's poll map that only needs draining."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read_event(self) -> None:
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass

    def handle_write_event(self) -> None:
        pass

    def handle_error(self) -> None:
        pass


def main() -> None:
    read, write = os.pipe()
    if max(read, write) >= SUPERVISORD_CLOSES_FROM:
        # On a reload (SIGHUP) supervisord closes every descriptor from 5 up: a wake-up pipe there would
        # be closed under it, and its number reused. Without the pipe, supervisord runs as it always did.
        os.close(read)
        os.close(write)
        supervisord.main(sys.argv[1:])
        return
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    asyncore.socket_map[read] = Wakeup(read)
    # supervisord starts its programs after its first poll: without a byte waiting, that poll sits out
    # its whole second before ComfyUI (and everything else) is even spawned.
    os.write(write, b"\0")
    supervisord.main(sys.argv[1:])


if __name__ == "__main__":
    main()
