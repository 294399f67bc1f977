"""What a caller gives a download (settings, callbacks) and gets back (progress, outcome, errors)."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.common.hashing import HashCache
from services.common.settings import Settings
from services.worker.http import DownloadError

MIB = 1024 * 1024


class Cancelled(Exception):
    """The user cancelled; the `.part` is gone."""


@dataclass
class Progress:
    bytes_done: int
    total: int | None
    speed: float
    eta: float | None
    state: str = "running"


@dataclass
class Context:
    settings: Settings
    on_progress: Callable[[Progress], None] = lambda p: None
    on_resolved: Callable[[str, int | None], None] = lambda name, total: None
    cancelled: Callable[[], bool] = lambda: False
    hash_cache: HashCache = field(default_factory=HashCache)
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


@dataclass
class Outcome:
    path: Path
    size: int
    sha256: str
    already_present: bool = False
    resumed_from: int = 0
    fetched: int = 0


def disk_error(exc: OSError, part: Path) -> DownloadError:
    if exc.errno == errno.ENOSPC:
        return DownloadError(f"the volume is full while writing {part.name}: free space and retry")
    if exc.errno == errno.EROFS:
        return DownloadError("the volume is read-only: remount it read-write and retry")
    return DownloadError(f"cannot write {part.name}: {exc.strerror}")


def size_text(count: int) -> str:
    return f"{count / 1024**3:.2f} GB" if count >= 1024**3 / 10 else f"{count / MIB:.1f} MiB"
