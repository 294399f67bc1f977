"""A FUSE file system that behaves like a network volume: a passthrough to a local folder that waits
`delay` seconds on every read request, with the kernel's read-ahead cut to `readahead` bytes. A read()
of a large buffer still goes out in `max_read` pieces, but a page fault of an mmap asks for little more
than its page: the small requests that make mmap slow on network file systems.

Run as a program (it stays in the foreground until unmounted): `python -m tests.helpers.slowfs SOURCE
MOUNTPOINT --delay 0.002`; `mounted()` does that for a test and unmounts after it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from fuse import FUSE, FuseOSError, Operations


class SlowPassthrough(Operations):
    def __init__(self, root: str, delay: float) -> None:
        self.root, self.delay = root, delay

    def _full(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def __call__(self, op, path, *args):
        try:
            return super().__call__(op, path, *args)
        except OSError as exc:
            raise FuseOSError(exc.errno or errno.EIO) from None

    def access(self, path, amode):
        if not os.access(self._full(path), amode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        os.chmod(self._full(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self._full(path), uid, gid)

    def getattr(self, path, fh=None):
        st = os.lstat(self._full(path))
        keys = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size", "st_uid", "st_ino")
        out = {key: getattr(st, key) for key in keys}
        out.update(st_atime=st.st_atime_ns / 1e9, st_mtime=st.st_mtime_ns / 1e9, st_ctime=st.st_ctime_ns / 1e9)
        return out

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self._full(path))]

    def readlink(self, path):
        return os.readlink(self._full(path))

    def mknod(self, path, mode, dev):
        os.mknod(self._full(path), mode, dev)

    def rmdir(self, path):
        os.rmdir(self._full(path))

    def mkdir(self, path, mode):
        os.mkdir(self._full(path), mode)

    def statfs(self, path):
        st = os.statvfs(self._full(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag")
        return {key: getattr(st, key) for key in (*keys, "f_frsize", "f_namemax")}

    def unlink(self, path):
        os.unlink(self._full(path))

    def symlink(self, name, target):
        os.symlink(target, self._full(name))

    def rename(self, old, new):
        os.rename(self._full(old), self._full(new))

    def link(self, target, name):
        os.link(self._full(name), self._full(target))

    def utimens(self, path, times=None):
        os.utime(self._full(path), times)

    def open(self, path, flags):
        return os.open(self._full(path), flags)

    def create(self, path, mode, fi=None):
        return os.open(self._full(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def read(self, path, length, offset, fh):
        time.sleep(self.delay)  # the network's round trip, paid by every request
        return os.pread(fh, length, offset)

    def write(self, path, buf, offset, fh):
        return os.pwrite(fh, buf, offset)

    def truncate(self, path, length, fh=None):
        os.truncate(self._full(path) if fh is None else fh, length)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)

    def fsync(self, path, fdatasync, fh):
        os.fsync(fh)

    def fallocate(self, path, mode, offset, length, fh):
        os.posix_fallocate(fh, offset, length)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.helpers.slowfs")
    parser.add_argument("source")
    parser.add_argument("mountpoint")
    parser.add_argument("--delay", type=float, default=0.002)
    parser.add_argument("--readahead", type=int, default=4096)
    args = parser.parse_args(argv)
    FUSE(
        SlowPassthrough(os.path.realpath(args.source), args.delay),
        args.mountpoint,
        foreground=True,
        allow_other=True,
        max_readahead=args.readahead,
        fsname="slowfs",
    )
    return 0


@contextlib.contextmanager
def mounted(source: Path, mountpoint: Path, delay: float = 0.002, readahead: int = 4096) -> Iterator[Path]:
    """`source` seen through the slow file system at `mountpoint`, for the duration of the block."""
    source.mkdir(parents=True, exist_ok=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[2]
    argv = [sys.executable, "-m", "tests.helpers.slowfs", str(source), str(mountpoint)]
    proc = subprocess.Popen([*argv, "--delay", str(delay), "--readahead", str(readahead)], cwd=repo)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the slow file system did not mount at {mountpoint} (exit {proc.poll()})")
            time.sleep(0.05)
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False, capture_output=True)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    raise SystemExit(main())
