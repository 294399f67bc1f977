"""The lock file beside a download target: two workers, or two pods on one volume, never write one file.

Whether its writer still runs is the kernel's word where it can give one: the writer holds a `flock` on the
file for as long as it writes, and the kernel drops it when the process ends, however it ends. That holds
across PID namespaces: two containers on one machine (host networking gives them one host name), or a
container restarted (a new PID namespace, where the dead writer's pid may well belong to another process
now; a pid check once took such a download as running and dropped its resumption). The record names the
kernel it was taken on (its boot id); a lock taken on another machine, or before a reboot, is stale only
once untouched for the stale age.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import socket
import time
from pathlib import Path

# Whoever replaced a stale lock waits this long, then checks whose record stayed (the other taker's
# rename may have landed after its own).
TAKEOVER_SETTLE = 0.05


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


# One per running kernel, the same in every container on it (not namespaced).
BOOT_ID = _boot_id()


class Busy(Exception):
    """Another live writer holds the destination's lock."""


class Lock:
    """A lock file on the volume.

    The holder keeps it open and flocked, and touches it while it works; a lock is taken over when the
    kernel that took it says its writer is gone, or when it is untouched for longer than the stale age.
    """

    def __init__(self, path: Path, owner: str, stale_after: float) -> None:
        self.path = path
        self.owner = owner
        self.stale_after = stale_after
        self.held = False
        self._fd: int | None = None

    def _write(self, fd: int) -> None:
        """Flock `fd`, then write the record: a reader sees the record only once the flock is there."""
        boot = ""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            boot = BOOT_ID
        except OSError:
            pass  # a file system without locks: the record says so (no boot id) and ages out instead
        record = {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "ts": time.time()}
        if boot:
            record["boot"] = boot
        os.write(fd, json.dumps(record).encode())

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            if not self.stale():
                raise Busy(f"{self.path.name} is being downloaded by {self.holder()}") from None
            # Not write_atomic: a takeover must replace the record even when the text is the same, and
            # the new file is flocked before it takes the lock's name.
            # A name of its own: two takers in two containers may have one pid.
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            try:
                self._write(fd)
                os.replace(tmp, self.path)
                time.sleep(TAKEOVER_SETTLE)
            except BaseException:
                os.close(fd)
                raise
            if self.holder() != self.owner:
                os.close(fd)
                raise Busy(f"{self.path.name} was taken over by {self.holder()}") from None
        else:
            try:
                self._write(fd)
            except BaseException:
                os.close(fd)
                raise
        self._fd, self.held = fd, True

    def holder(self) -> str:
        try:
            return json.loads(self.path.read_text()).get("owner", "?")
        except (OSError, ValueError):
            return "?"

    def _kernel_says_dead(self, record: dict) -> bool | None:
        """True: the writer is gone; False: it runs; None: the kernel cannot tell (another machine or boot,
        a lock without a flock)."""
        if not BOOT_ID or record.get("boot") != BOOT_ID:
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            return False if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
        else:
            return True
        finally:
            os.close(fd)  # drops the shared flock too

    def _record(self) -> dict | None:
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def stale(self) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except OSError:
            return True  # gone: free to take
        record = self._record()
        if record is None:
            # Empty: its taker (another pod, another worker) made it a moment ago and writes its record
            # now. Taking it as stale would have two writers on one .part: only once it is old.
            return age > self.stale_after
        dead = self._kernel_says_dead(record)
        return dead if dead is not None else age > self.stale_after

    def writer_died_here(self) -> bool:
        """The kernel that took the lock is this one and says its writer is gone: the download stopped for
        good, now."""
        record = self._record()
        return record is not None and self._kernel_says_dead(record) is True

    def touch(self) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.path)

    def release(self) -> None:
        if self.held and self.holder() == self.owner:
            with contextlib.suppress(OSError):
                self.path.unlink()
        if self._fd is not None:
            os.close(self._fd)  # the flock goes with it; unlinked first, so nobody takes it as a dead writer's
            self._fd = None
        self.held = False


def live_holder(lock_path: Path, stale_after: float) -> str | None:
    """Who holds a lock right now, if anyone alive does."""
    lock = Lock(lock_path, "", stale_after)
    if not lock.path.exists() or lock.stale():
        return None
    return lock.holder()
