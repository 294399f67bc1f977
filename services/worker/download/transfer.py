"""Moving bytes into the `.part`: one stream, or many ranged segments with a hash follower beside them.

Writes go through `pwrite` at their offset, so segments never share a file position; a monitor thread
reports progress, notices a cancel, touches the lock and makes the manifest durable a few times a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import urllib3

from services.common.files import write_atomic
from services.common.hashing import sha256_of
from services.worker.download.context import MIB, Cancelled, Progress, disk_error
from services.worker.download.manifest import JOURNAL_RECORD, Segment
from services.worker.http import DownloadError, TransientError, raise_for_status, shown

if TYPE_CHECKING:
    from services.worker.download.fetch import Attempt

BUFFER = 1 * MIB
HASH_CHUNK = 8 * MIB
PROGRESS_EVERY = 0.25  # seconds between two progress reports (and cancel checks)
MANIFEST_EVERY = 2.0  # seconds between two durable manifest writes
FOLLOWER_IDLE = 0.05  # seconds the hash follower waits for the prefix to grow


class RangeLost(Exception):
    """The server answered a ranged request with the whole body: content changed or no range support."""


class Transfer:
    """One attempt's movement of bytes; every thread of it stops when `stop` is set."""

    def __init__(self, attempt: Attempt, url: str) -> None:
        self.attempt = attempt
        self.url = url
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self.hasher = None
        self.responses: set[urllib3.BaseHTTPResponse] = set()
        self.seq_written = 0
        self.journal: int | None = None

    def interrupt(self) -> None:
        """Stop every transfer now, even one blocked in a read on a stalled connection."""
        self.stop.set()
        with self._lock:
            responses = list(self.responses)
        for response in responses:
            with contextlib.suppress(Exception):
                response.shutdown()

    def monitor(self, done_bytes: Callable[[], int]) -> None:
        """Progress, cancel, heartbeat and durable manifest, a few times a second from one thread."""
        ctx, manifest = self.attempt.ctx, self.attempt.manifest
        last_bytes, last_t = done_bytes(), time.monotonic()
        speed = 0.0
        next_manifest = time.monotonic() + MANIFEST_EVERY
        while not self.stop.wait(PROGRESS_EVERY):
            now = time.monotonic()
            current = done_bytes()
            instant = (current - last_bytes) / max(now - last_t, 1e-6)
            speed = instant if speed == 0 else 0.7 * speed + 0.3 * instant
            last_bytes, last_t = current, now
            total = manifest.total
            eta = (total - current) / speed if total and speed > 0 else None
            ctx.on_progress(Progress(current, total, speed, eta))
            self.attempt.lock.touch()
            if ctx.cancelled():
                self.errors.append(Cancelled())
                self.interrupt()
                return
            if now >= next_manifest:
                self.save_manifest()
                next_manifest = now + MANIFEST_EVERY

    def save_manifest(self) -> None:
        """Claim only what is on disk: note what was written, fsync it, then record that much."""
        manifest, fd = self.attempt.manifest, self.attempt.fd
        segments = manifest.segments
        with self._lock:
            snapshot = [x.written for x in segments] if segments is not None else [self.seq_written]
        try:
            os.fdatasync(fd)
        except OSError:
            return
        with self._lock:
            if segments is not None:
                for segment, written in zip(segments, snapshot, strict=True):
                    segment.done = written
            else:
                manifest.done = snapshot[0]
            text = manifest.to_json()
        with contextlib.suppress(OSError):
            write_atomic(self.attempt.work.manifest, text)

    def note(self, index: int, written: int) -> None:
        """Journal a segment's progress (not fsynced): after a crash on the same boot it is exact."""
        if self.journal is not None:
            with contextlib.suppress(OSError):
                os.write(self.journal, JOURNAL_RECORD.pack(index, written))

    def stream(
        self, response: urllib3.BaseHTTPResponse, position: int, limit: int | None, advance: Callable[[int], None]
    ) -> None:
        """Copy a response's body into the `.part` from `position` (to `limit`, exclusive, when given)."""
        with self._lock:
            self.responses.add(response)
        try:
            self._copy(response, position, limit, advance)
        finally:
            with self._lock:
                self.responses.discard(response)

    def _copy(
        self, response: urllib3.BaseHTTPResponse, position: int, limit: int | None, advance: Callable[[int], None]
    ) -> None:
        fd, part = self.attempt.fd, self.attempt.work.part
        while limit is None or position < limit:
            if self.stop.is_set():
                return
            want = BUFFER if limit is None else min(BUFFER, limit - position)
            try:
                # read1: whatever has arrived, so a stall loses nothing already received.
                chunk = response.read1(want)
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                if self.stop.is_set():
                    return  # interrupted on purpose (cancel, or another segment failed)
                raise TransientError(f"{shown(self.url)}: connection lost: {type(exc).__name__}") from None
            count = len(chunk)
            if not count:
                if limit is None:
                    return
                raise TransientError(f"{shown(self.url)}: the connection closed early")
            try:
                os.pwrite(fd, chunk, position)
            except OSError as exc:
                raise disk_error(exc, part) from None
            if self.hasher is not None:
                self.hasher.update(chunk)
            position += count
            with self._lock:
                advance(count)

    def segment_worker(self, pending: list[tuple[int, Segment]]) -> None:
        """Take segments in order until none is left; one ranged request each."""
        http, credential = self.attempt.http, self.attempt.plan.credential
        validator = self.attempt.manifest.validator
        try:
            while not self.stop.is_set():
                with self._lock:
                    if not pending:
                        return
                    index, segment = pending.pop(0)
                start = segment.start + segment.written
                headers = {"Range": f"bytes={start}-{segment.end}"}
                if validator:
                    headers["If-Range"] = validator
                opened = http.open(self.url, headers, credential)
                response = opened.response
                try:
                    if response.status == 200:
                        raise RangeLost()
                    if response.status in (401, 403):
                        # A signed CDN URL can expire during a long download: resolve it anew.
                        raise TransientError(f"{shown(opened.url)} refused a segment ({response.status})")
                    raise_for_status(response.status, opened.url)

                    def advance(n: int, s: Segment = segment, i: int = index) -> None:
                        s.written += n
                        self.note(i, s.written)

                    self.stream(response, start, segment.end + 1, advance)
                finally:
                    let_go(response)
        except BaseException as exc:  # noqa: BLE001 - handed to the coordinating thread
            self.errors.append(exc)
            self.interrupt()

    def raise_first(self) -> None:
        """The error that explains the others best (a cancel beats the connection errors it caused)."""
        for kind in (Cancelled, DownloadError, RangeLost, TransientError):
            for error in self.errors:
                if isinstance(error, kind):
                    raise error
        if self.errors:
            raise self.errors[0]


def segmented(attempt: Attempt) -> str:
    """Every pending segment over parallel connections; returns the sha256 of the whole file."""
    manifest, fd = attempt.manifest, attempt.fd
    assert manifest.segments is not None and manifest.total is not None
    try:
        os.posix_fallocate(fd, 0, manifest.total)
    except OSError as exc:
        raise disk_error(exc, attempt.work.part) from None
    transfer = attempt.transfer = Transfer(attempt, attempt.probe.opened.url)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
    transfer.journal = os.open(attempt.work.journal, flags, 0o644)
    pending = [(i, s) for i, s in enumerate(manifest.segments) if s.remaining > 0]
    count = min(attempt.ctx.settings.downloads_connections, len(pending))
    workers = [threading.Thread(target=transfer.segment_worker, args=(pending,), daemon=True) for _ in range(count)]
    segments = manifest.segments
    monitor = threading.Thread(target=transfer.monitor, args=(lambda: sum(s.written for s in segments),), daemon=True)
    follower = HashFollower(fd, segments, transfer.stop)
    hashing = threading.Thread(target=follower.run, daemon=True)
    monitor.start()
    hashing.start()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    transfer.stop.set()
    monitor.join()
    hashing.join()
    transfer.save_manifest()
    os.close(transfer.journal)
    transfer.journal = None
    transfer.raise_first()
    return follower.finish(manifest.total)


class HashFollower:
    """Hashes the .part while it fills: segments are taken in order, so the contiguous prefix grows
    steadily and, by the time the last byte lands, most of the file is hashed (read from the page cache).
    """

    def __init__(self, fd: int, segments: list[Segment], stop: threading.Event) -> None:
        self.fd, self.segments, self.stop = fd, segments, stop
        self.hasher = hashlib.sha256()
        self.position = 0
        self.buffer = memoryview(bytearray(HASH_CHUNK))  # one buffer for every read: no 8 MiB allocation each

    def prefix(self) -> int:
        end = 0
        for segment in self.segments:
            end = segment.start + segment.written
            if segment.remaining > 0:
                break
        return end

    def advance(self, upto: int) -> None:
        while self.position < upto:
            view = self.buffer[: min(HASH_CHUNK, upto - self.position)]
            count = os.preadv(self.fd, [view], self.position)
            if not count:
                raise DownloadError("the .part is shorter than its segments claim")
            self.hasher.update(view[:count])
            self.position += count

    def run(self) -> None:
        with contextlib.suppress(OSError, DownloadError):
            while not self.stop.is_set():
                upto = self.prefix()
                if upto > self.position:
                    self.advance(upto)
                else:
                    self.stop.wait(FOLLOWER_IDLE)

    def finish(self, total: int) -> str:
        self.advance(total)
        return self.hasher.hexdigest()


def sequential(attempt: Attempt, present: int) -> tuple[str | None, int]:
    """One stream from `present`; returns the sha256 (None: hash the file) and where it really resumed."""
    manifest, fd, part = attempt.manifest, attempt.fd, attempt.work.part
    headers: dict[str, str] = {}
    if present:
        headers = {"Range": f"bytes={present}-"}
        if manifest.validator:
            headers["If-Range"] = manifest.validator
    opened = attempt.http.open(attempt.probe.opened.url, headers, attempt.plan.credential)
    response = opened.response
    transfer = attempt.transfer = Transfer(attempt, opened.url)
    try:
        if present and response.status == 200:
            # Resume refused (no ranges, or the content changed): start over, never append.
            present = 0
            os.ftruncate(fd, 0)
        elif present and response.status == 416:
            return None, present  # the .part already holds everything: verify it
        else:
            attempt.check_access(response.status, opened.url)
        os.ftruncate(fd, present)
        transfer.hasher = sha256_of(part, present) if present else hashlib.sha256()
        transfer.seq_written = present

        def advance(n: int) -> None:
            transfer.seq_written += n

        monitor = threading.Thread(target=transfer.monitor, args=(lambda: transfer.seq_written,), daemon=True)
        monitor.start()
        try:
            transfer.stream(response, present, manifest.total, advance)
        finally:
            transfer.stop.set()
            monitor.join()
        transfer.raise_first()
        if manifest.total is not None and transfer.seq_written < manifest.total:
            raise TransientError(f"{shown(opened.url)}: the transfer stopped early")
        return transfer.hasher.hexdigest(), present
    finally:
        let_go(response)


def let_go(response: urllib3.BaseHTTPResponse) -> None:
    """Back to the pool only when the body was read to its end; a connection with bytes left is closed."""
    if response.length_remaining == 0:
        response.release_conn()
    else:
        response.close()
        response.release_conn()
