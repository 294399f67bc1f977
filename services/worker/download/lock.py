"""The lock file beside a download target: two workers, or two pods on one volume, never write one file."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

# Whoever replaced a stale lock waits this long, then checks whose record stayed (the other taker's
# rename may have landed after its own).
TAKEOVER_SETTLE = 0.05


class Busy(Exception):
    """Another live writer holds the destination's lock."""


class Lock:
    """A lock file on the volume.

    The holder touches it while it works; a lock left by a dead process on this host, or untouched for
    longer than the stale age, is taken over.
    """

    def __init__(self, path: Path, owner: str, stale_after: float) -> None:
        self.path = path
        self.owner = owner
        self.stale_after = stale_after
        self.held = False

    def _record(self) -> str:
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "ts": time.time()})

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            if not self.stale():
                raise Busy(f"{self.path.name} is being downloaded by {self.holder()}") from None
            # Not write_atomic: a takeover must replace the record even when the text is the same.
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(self._record())
            os.replace(tmp, self.path)
            time.sleep(TAKEOVER_SETTLE)
            if self.holder() != self.owner:
                raise Busy(f"{self.path.name} was taken over by {self.holder()}") from None
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(self._record())
        self.held = True

    def holder(self) -> str:
        try:
            return json.loads(self.path.read_text()).get("owner", "?")
        except (OSError, ValueError):
            return "?"

    def stale(self) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except OSError:
            return True  # gone: free to take
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError):
            # Empty: its taker (another pod, another worker) made it a moment ago and writes its record
            # now. Taking it as stale would have two writers on one .part: only once it is old.
            return age > self.stale_after
        if record.get("host") == socket.gethostname() and not pid_alive(int(record.get("pid", 0))):
            return True
        return age > self.stale_after

    def writer_died_here(self) -> bool:
        """The lock names a process on this host that is gone: its download stopped for good, now."""
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return False
        return record.get("host") == socket.gethostname() and not pid_alive(int(record.get("pid", 0)))

    def touch(self) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.path)

    def release(self) -> None:
        if self.held and self.holder() == self.owner:
            with contextlib.suppress(OSError):
                self.path.unlink()
        self.held = False


def live_holder(lock_path: Path, stale_after: float) -> str | None:
    """Who holds a lock right now, if anyone alive does."""
    lock = Lock(lock_path, "", stale_after)
    if not lock.path.exists() or lock.stale():
        return None
    return lock.holder()


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purpose
        return open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
