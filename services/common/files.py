"""Small file helpers: atomic, change-only writes, and the one template syntax of our config files."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path


def write_atomic(path: Path, text: str, mode: int = 0o644) -> bool:
    """Write `text` to `path` through a temp file + rename; return False when it already held it."""
    try:
        if path.read_text() == text:
            if (path.stat().st_mode & 0o777) != mode:
                path.chmod(mode)
            return False
    except FileNotFoundError:
        pass
    except (UnicodeDecodeError, IsADirectoryError):
        raise
    # mkstemp creates the file 0600: a secret is never readable by others, not even before the chmod.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return True


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_error(folder: Path) -> OSError | None:
    """Write, fsync and delete a probe file in `folder`: the error a real write would meet, or None."""
    probe = folder / f".write-test-{os.getpid()}"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"x")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        return exc
    finally:
        with contextlib.suppress(OSError):  # on a read-only volume even unlinking nothing fails
            probe.unlink()
    return None


@contextlib.contextmanager
def locked(path: Path, wait: bool = True, mode: int = 0o644) -> Iterator[bool]:
    """Hold `path` as a lock file for the block: one holder at a time across processes and threads (each
    call opens the file anew), let go when the block ends or its process dies. Without `wait`, the block
    gets False at once when another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def fill(template: str, values: dict[str, str]) -> str:
    """`{{name}}` placeholders; every other brace (nginx's `${x}`, supervisord's `%(ENV_X)s`) stays as it is."""
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], template)
