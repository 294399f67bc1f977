"""The download engine: plain functions, no Celery. Resumable, verified, atomic, parallel, cancellable.

The volume is the record of what is in flight: `<name>.part` (the bytes) and `<name>.part.json` (the
manifest: where it comes from, its validator, how far each segment got) sit beside the destination,
and `<name>.lock` says who writes them. A file appears under its final name only once its size and
sha256 are checked, fsynced, and renamed in one step.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from urllib.parse import unquote

import urllib3

from services.common import netsafe
from services.common.files import write_atomic
from services.common.hashing import HashCache, cached_sha256, sha256_of
from services.common.paths import WORK_SUFFIXES, Paths
from services.common.settings import Settings
from services.worker import sources
from services.worker.http import DownloadError, Http, Opened, TransientError, raise_for_status, shown

log = logging.getLogger("worker.engine")

MIB = 1024 * 1024
BUFFER = 1 * MIB
PROGRESS_EVERY = 0.25
MANIFEST_EVERY = 2.0
MANIFEST_VERSION = 2
JOURNAL_RECORD = struct.Struct("<IQ")  # segment index, bytes written from its start


class Cancelled(Exception):
    """The user cancelled; the `.part` is gone."""


class Busy(Exception):
    """Another live writer holds the destination's lock."""


@dataclass
class Request:
    job_id: str
    url: str
    folder: str
    filename: str | None = None
    sha256: str | None = None
    size: int | None = None


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


# --- names and paths --------------------------------------------------------------------------------


def target_path(paths: Paths, folder: str, filename: str) -> Path:
    """The destination, proven inside its model folder, with no link in the way; raises DownloadError."""
    try:
        paths.model_folder(folder).mkdir(parents=True, exist_ok=True)
        target = paths.model_file(folder, filename)
    except ValueError as exc:
        raise DownloadError(str(exc)) from None
    for path in [target, *(work_file(target, suffix) for suffix in WORK_SUFFIXES)]:
        if path.is_symlink():
            raise DownloadError(f"{path} is a symbolic link: remove it; downloads never write through links")
    return target


def work_file(target: Path, suffix: str) -> Path:
    return target.with_name(target.name + suffix)


def name_from_headers(headers: dict[str, str]) -> str | None:
    value = headers.get("content-disposition")
    if not value:
        return None
    message = Message()
    message["content-disposition"] = value
    name = message.get_filename()
    if name:
        name = unquote(name).replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name or None


# --- the lock ---------------------------------------------------------------------------------------


class Lock:
    """A lock file on the volume, so two workers, or two pods sharing the volume, never write one file.

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
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(self._record())
            os.replace(tmp, self.path)
            time.sleep(0.05)  # another taker may have replaced it too: whoever's record stays wins
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
            record = json.loads(self.path.read_text())
            age = time.time() - self.path.stat().st_mtime
        except (OSError, ValueError):
            return True
        if record.get("host") == socket.gethostname() and not _pid_alive(int(record.get("pid", 0))):
            return True
        return age > self.stale_after

    def touch(self) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.path)

    def release(self) -> None:
        if self.held and self.holder() == self.owner:
            with contextlib.suppress(OSError):
                self.path.unlink()
        self.held = False


def live_holder(paths: Paths, folder: str, filename: str, stale_after: float) -> str | None:
    """Who holds a destination's lock right now, if anyone alive does."""
    try:
        lock = Lock(work_file(target_path(paths, folder, filename), ".lock"), "", stale_after)
    except DownloadError:
        return None
    if not lock.path.exists() or lock.stale():
        return None
    return lock.holder()


def _pid_alive(pid: int) -> bool:
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


# --- manifest ---------------------------------------------------------------------------------------


@dataclass
class Segment:
    start: int
    end: int  # inclusive
    done: int = 0  # bytes from start that were fsynced before the manifest claimed them
    written: int = field(default=0, compare=False)  # bytes written so far (in the page cache at least)

    def __post_init__(self) -> None:
        self.written = max(self.written, self.done)

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def remaining(self) -> int:
        return self.length - self.written


def boot_id() -> str:
    """Changes when the machine reboots: only then can written-but-unsynced bytes have been lost."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass
class Manifest:
    job_id: str
    url: str
    folder: str
    filename: str
    sha256: str | None
    size: int | None
    total: int | None
    validator: str | None
    segments: list[Segment] | None  # None: one sequential stream
    done: int = 0  # sequential: bytes fsynced before this record claimed them
    boot_id: str = ""

    def to_json(self) -> str:
        data = {k: v for k, v in self.__dict__.items() if k != "segments"}
        data["segments"] = [[s.start, s.end, s.done] for s in self.segments] if self.segments is not None else None
        data["v"] = MANIFEST_VERSION
        return json.dumps(data)

    @classmethod
    def load(cls, path: Path) -> Manifest | None:
        try:
            data = json.loads(path.read_text())
            if data.pop("v", None) != MANIFEST_VERSION:
                return None
            segments = data.pop("segments")
            return cls(**data, segments=[Segment(*s) for s in segments] if segments is not None else None)
        except (OSError, ValueError, TypeError):
            return None


# --- the download -----------------------------------------------------------------------------------


@dataclass
class Probe:
    opened: Opened
    total: int | None
    ranges: bool
    validator: str | None
    filename: str | None
    linked_sha256: str | None


def _probe(http: Http, plan: sources.Plan) -> Probe:
    """One GET for the first byte: size, range support, validator, and the name the server gives."""
    opened = http.open(plan.url, {"Range": "bytes=0-0"}, plan.credential)
    response = opened.response
    status = response.status
    headers = {k.lower(): v for k, v in response.headers.items()}
    if status in (401, 403):
        response.close()
        raise DownloadError(sources.access_message(plan, status))
    try:
        raise_for_status(status, opened.url)
    except (DownloadError, TransientError):
        response.close()
        raise
    total = None
    ranges = False
    if status == 206 and (m := re.match(r"bytes 0-\d+/(\d+)", headers.get("content-range", ""))):
        total, ranges = int(m.group(1)), True
    elif "content-length" in headers:
        total = int(headers["content-length"])
    if status == 206:
        response.drain_conn()  # one byte: the connection can serve the next request
        response.release_conn()
    else:
        response.close()  # the whole body is coming: drop this connection rather than read it
    linked = opened.first_headers.get("x-linked-etag", "").strip('"').lower() or None
    return Probe(
        opened=opened,
        total=total,
        ranges=ranges and bool(headers.get("etag") or headers.get("last-modified")),
        validator=headers.get("etag") or headers.get("last-modified"),
        filename=name_from_headers(headers),
        linked_sha256=linked if linked and re.fullmatch(r"[0-9a-f]{64}", linked) else None,
    )


class _Transfer:
    """Moves bytes into the .part with pwrite, from one or many ranged connections, and reports."""

    def __init__(
        self,
        http: Http,
        url: str,
        plan: sources.Plan,
        fd: int,
        manifest: Manifest,
        ctx: Context,
        lock: Lock,
        part: Path,
    ) -> None:
        self.http, self.url, self.plan, self.fd = http, url, plan, fd
        self.manifest, self.ctx, self.lock, self.part = manifest, ctx, lock, part
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

    # Progress, cancel, heartbeat and durable manifest, a few times a second from one thread.
    def monitor(self, done_bytes: Callable[[], int]) -> None:
        last_bytes, last_t = done_bytes(), time.monotonic()
        speed = 0.0
        next_manifest = time.monotonic() + MANIFEST_EVERY
        while not self.stop.wait(PROGRESS_EVERY):
            now = time.monotonic()
            current = done_bytes()
            instant = (current - last_bytes) / max(now - last_t, 1e-6)
            speed = instant if speed == 0 else 0.7 * speed + 0.3 * instant
            last_bytes, last_t = current, now
            total = self.manifest.total
            eta = (total - current) / speed if total and speed > 0 else None
            self.ctx.on_progress(Progress(current, total, speed, eta))
            self.lock.touch()
            if self.ctx.cancelled():
                self.errors.append(Cancelled())
                self.interrupt()
                return
            if now >= next_manifest:
                self.save_manifest()
                next_manifest = now + MANIFEST_EVERY

    def save_manifest(self) -> None:
        """Claim only what is on disk: note what was written, fsync it, then record that much."""
        segments = self.manifest.segments
        with self._lock:
            snapshot = [x.written for x in segments] if segments is not None else [self.seq_written]
        try:
            os.fdatasync(self.fd)
        except OSError:
            return
        with self._lock:
            if segments is not None:
                for segment, written in zip(segments, snapshot, strict=True):
                    segment.done = written
            else:
                self.manifest.done = snapshot[0]
            text = self.manifest.to_json()
        with contextlib.suppress(OSError):
            write_atomic(_manifest_path(self.part), text)

    def note(self, index: int, written: int) -> None:
        """Journal a segment's progress (not fsynced): after a crash on the same boot it is exact."""
        if self.journal is not None:
            with contextlib.suppress(OSError):
                os.write(self.journal, JOURNAL_RECORD.pack(index, written))

    def _stream(
        self, response: urllib3.BaseHTTPResponse, offset: int, limit: int | None, advance: Callable[[int], None]
    ) -> None:
        position = offset
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
                os.pwrite(self.fd, chunk, position)
            except OSError as exc:
                raise _disk_error(exc, self.part) from None
            if self.hasher is not None:
                self.hasher.update(chunk)
            position += count
            with self._lock:
                advance(count)

    def segment_worker(self, pending: list[tuple[int, Segment]]) -> None:
        try:
            while not self.stop.is_set():
                with self._lock:
                    if not pending:
                        return
                    index, segment = pending.pop(0)
                start = segment.start + segment.written
                headers = {"Range": f"bytes={start}-{segment.end}"}
                if self.manifest.validator:
                    headers["If-Range"] = self.manifest.validator
                opened = self.http.open(self.url, headers, self.plan.credential)
                response = opened.response
                try:
                    if response.status == 200:
                        raise _RangeLost()
                    if response.status in (401, 403):
                        # A signed CDN URL can expire during a long download: resolve it anew.
                        raise TransientError(f"{shown(opened.url)} refused a segment ({response.status})")
                    raise_for_status(response.status, opened.url)

                    def advance(n: int, s: Segment = segment, i: int = index) -> None:
                        s.written += n
                        self.note(i, s.written)

                    self._stream(response, start, segment.end + 1, advance)
                finally:
                    _let_go(response)
        except BaseException as exc:  # noqa: BLE001 - handed to the coordinating thread
            self.errors.append(exc)
            self.interrupt()


class _RangeLost(Exception):
    """The server answered a ranged request with the whole body: content changed or no range support."""


def _manifest_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _journal_path(part: Path) -> Path:
    return part.with_name(part.name + ".progress")


def _replay(journal: Path, segments: list[Segment]) -> None:
    try:
        raw = journal.read_bytes()
    except OSError:
        return
    usable = len(raw) - len(raw) % JOURNAL_RECORD.size
    for index, written in JOURNAL_RECORD.iter_unpack(raw[:usable]):
        if index < len(segments):
            segment = segments[index]
            segment.written = max(segment.written, min(written, segment.length))


def _disk_error(exc: OSError, part: Path) -> DownloadError:
    if exc.errno == errno.ENOSPC:
        return DownloadError(f"the volume is full while writing {part.name}: free space and retry")
    if exc.errno == errno.EROFS:
        return DownloadError("the volume is read-only: remount it read-write and retry")
    return DownloadError(f"cannot write {part.name}: {exc.strerror}")


def _remove_work(target: Path) -> None:
    for suffix in (".part", ".part.json", ".part.progress"):
        with contextlib.suppress(FileNotFoundError):
            work_file(target, suffix).unlink()


def fetch(request: Request, ctx: Context) -> Outcome:
    """Download `request` into its folder, retrying transient errors; raise DownloadError, Cancelled, Busy."""
    settings = ctx.settings
    http = Http(settings.downloads_allow_private_hosts, settings.downloads_read_timeout, settings.downloads_connections)
    delay = settings.downloads_backoff
    attempt = 0
    while True:
        try:
            return _attempt(request, ctx, http)
        except TransientError as exc:
            attempt += 1
            if attempt > settings.downloads_retries:
                raise DownloadError(f"gave up after {attempt} tries: {exc}") from None
            log.warning(
                "job %s: %s; retry %d/%d in %.1f s", request.job_id, exc, attempt, settings.downloads_retries, delay
            )
            ctx.on_progress(Progress(0, None, 0.0, None, state="retrying"))
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                if ctx.cancelled():
                    raise Cancelled() from None
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 60.0) if delay else 0.0


def _attempt(request: Request, ctx: Context, http: Http) -> Outcome:
    settings = ctx.settings
    plan = sources.plan(request.url, settings, http)
    probe = _probe(http, plan)
    if request.filename:
        filename = request.filename
    elif plan.source == "url":
        filename = probe.filename or plan.filename  # the server's Content-Disposition beats the URL's tail
    else:
        filename = plan.filename or probe.filename
    if not filename:
        raise DownloadError("the server gives no file name: give one with the download")
    expected_sha = request.sha256 or plan.sha256 or probe.linked_sha256
    if request.size is not None and probe.total is not None and request.size != probe.total:
        raise DownloadError(f"the server's file is {probe.total} bytes, not the {request.size} expected")
    target = target_path(settings.paths, request.folder, filename)
    ctx.on_resolved(filename, probe.total)
    lock = Lock(work_file(target, ".lock"), f"{ctx.owner}:{request.job_id}", settings.downloads_heartbeat_stale)
    lock.acquire()
    try:
        return _locked(request, ctx, http, plan, probe, target, expected_sha, lock)
    finally:
        lock.release()


def _locked(
    request: Request,
    ctx: Context,
    http: Http,
    plan: sources.Plan,
    probe: Probe,
    target: Path,
    expected_sha: str | None,
    lock: Lock,
) -> Outcome:
    settings = ctx.settings
    if target.exists():
        size = target.stat().st_size
        if probe.total is not None and size != probe.total:
            raise DownloadError(f"{target.name} already exists with another size ({size} bytes): delete it first")
        digest = cached_sha256(target, ctx.hash_cache)
        if expected_sha and digest != expected_sha:
            raise DownloadError(f"{target.name} already exists with another sha256: delete it first")
        _remove_work(target)
        return Outcome(target, size, digest, already_present=True)

    part = work_file(target, ".part")
    manifest_path = _manifest_path(part)
    manifest = Manifest.load(manifest_path)
    usable = (
        manifest is not None
        and part.exists()
        and manifest.validator is not None
        and manifest.validator == probe.validator
        and manifest.total == probe.total
    )
    if not usable:
        # Nothing, or a .part of other bytes (content changed, server changed): start over, never append.
        _remove_work(target)
        segmented = (
            probe.ranges and probe.total is not None and probe.total >= settings.downloads_min_segmented_mb * MIB
        )
        manifest = Manifest(
            job_id=request.job_id,
            url=netsafe.clean_url(request.url),
            folder=request.folder,
            filename=target.name,
            sha256=expected_sha,
            size=request.size,
            total=probe.total,
            validator=probe.validator,
            segments=_plan_segments(probe.total, settings.downloads_segment_mb * MIB) if segmented else None,
            boot_id=boot_id(),
        )
    assert manifest is not None
    present = part.stat().st_size if part.exists() else 0
    same_boot = manifest.boot_id == boot_id()
    if manifest.segments is not None:
        if same_boot:  # the page cache survived the crash: the journal's record of written bytes holds
            _replay(_journal_path(part), manifest.segments)
        else:
            for segment in manifest.segments:
                segment.written = segment.done
        done_before = sum(s.written for s in manifest.segments)
    else:
        present = present if same_boot else min(present, manifest.done)
        done_before = present
    manifest.boot_id = boot_id()
    remaining = (probe.total - done_before) if probe.total is not None else 0
    free = shutil.disk_usage(target.parent).free
    reserve = settings.downloads_reserve_mb * MIB
    if remaining + reserve > free:
        _remove_work(target)  # a .part that cannot be finished only takes the space others need
        raise DownloadError(
            f"not enough space for {target.name}: it needs {_gb(remaining)} more plus {_gb(reserve)} kept free,"
            f" the volume has {_gb(free)}: delete models or grow the volume"
        )
    try:
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise _disk_error(exc, part) from None
    try:
        write_atomic(manifest_path, manifest.to_json())
        if manifest.segments is not None:
            outcome_hash = _segmented(http, plan, probe, fd, manifest, ctx, lock, part)
            resumed_from = done_before
        else:
            outcome_hash, resumed_from = _sequential(http, plan, probe, fd, manifest, ctx, lock, part, present)
        os.fsync(fd)
    except Cancelled:
        os.close(fd)
        _remove_work(target)
        raise
    except DownloadError:
        os.close(fd)
        _remove_work(target)
        raise
    except TransientError:
        with contextlib.suppress(OSError):
            os.fsync(fd)
            write_atomic(manifest_path, manifest.to_json())
        os.close(fd)
        raise
    except _RangeLost:
        os.close(fd)
        _remove_work(target)
        raise TransientError("the server stopped honouring ranges (content changed?): starting over") from None
    except OSError as exc:
        os.close(fd)
        _remove_work(target)
        raise _disk_error(exc, part) from None
    os.close(fd)

    ctx.on_progress(Progress(manifest.total or part.stat().st_size, manifest.total, 0.0, None, state="verifying"))
    size = part.stat().st_size
    if manifest.total is not None and size != manifest.total:
        _remove_work(target)
        raise TransientError(f"{part.name} has {size} bytes, the server announced {manifest.total}")
    if request.size is not None and size != request.size:
        _remove_work(target)
        raise DownloadError(f"the file is {size} bytes, not the {request.size} expected")
    digest = outcome_hash or sha256_of(part).hexdigest()
    if expected_sha and digest != expected_sha:
        _remove_work(target)
        raise DownloadError(
            f"sha256 mismatch for {target.name}: expected {expected_sha}, got {digest}. The file was discarded;"
            " the source serves other bytes than announced"
        )
    os.replace(part, target)
    _fsync_dir(target.parent)
    for leftover in (manifest_path, _journal_path(part)):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
    stat = target.stat()
    ctx.hash_cache.put(target, stat.st_size, stat.st_mtime_ns, digest)
    return Outcome(target, size, digest, resumed_from=resumed_from, fetched=max(0, size - resumed_from))


def _plan_segments(total: int, segment: int) -> list[Segment]:
    return [Segment(start, min(start + segment, total) - 1) for start in range(0, total, segment)]


def _segmented(
    http: Http, plan: sources.Plan, probe: Probe, fd: int, manifest: Manifest, ctx: Context, lock: Lock, part: Path
) -> str | None:
    assert manifest.segments is not None and manifest.total is not None
    try:
        os.posix_fallocate(fd, 0, manifest.total)
    except OSError as exc:
        raise _disk_error(exc, part) from None
    transfer = _Transfer(http, probe.opened.url, plan, fd, manifest, ctx, lock, part)
    transfer.journal = os.open(_journal_path(part), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    pending = [(i, s) for i, s in enumerate(manifest.segments) if s.remaining > 0]
    workers = [
        threading.Thread(target=transfer.segment_worker, args=(pending,), daemon=True)
        for _ in range(min(ctx.settings.downloads_connections, len(pending)))
    ]
    monitor = threading.Thread(
        target=transfer.monitor, args=(lambda: sum(s.written for s in manifest.segments),), daemon=True
    )
    follower = _HashFollower(fd, manifest.segments, transfer.stop)
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
    _raise_first(transfer.errors)
    return follower.finish(manifest.total)


class _HashFollower:
    """Hashes the .part while it fills: segments are taken in order, so the contiguous prefix grows
    steadily and, by the time the last byte lands, most of the file is hashed (read from the page cache).
    """

    def __init__(self, fd: int, segments: list[Segment], stop: threading.Event) -> None:
        self.fd, self.segments, self.stop = fd, segments, stop
        self.hasher = hashlib.sha256()
        self.position = 0

    def prefix(self) -> int:
        end = 0
        for segment in self.segments:
            end = segment.start + segment.written
            if segment.remaining > 0:
                break
        return end

    def advance(self, upto: int) -> None:
        while self.position < upto:
            chunk = os.pread(self.fd, min(8 * MIB, upto - self.position), self.position)
            if not chunk:
                raise DownloadError("the .part is shorter than its segments claim")
            self.hasher.update(chunk)
            self.position += len(chunk)

    def run(self) -> None:
        with contextlib.suppress(OSError, DownloadError):
            while not self.stop.is_set():
                upto = self.prefix()
                if upto > self.position:
                    self.advance(upto)
                else:
                    self.stop.wait(0.05)

    def finish(self, total: int) -> str:
        self.advance(total)
        return self.hasher.hexdigest()


def _sequential(
    http: Http,
    plan: sources.Plan,
    probe: Probe,
    fd: int,
    manifest: Manifest,
    ctx: Context,
    lock: Lock,
    part: Path,
    present: int,
) -> tuple[str | None, int]:
    """One stream from `present`; returns the sha256 (None: hash the file) and where it really resumed."""
    url = probe.opened.url
    headers: dict[str, str] = {}
    if present:
        headers = {"Range": f"bytes={present}-"}
        if manifest.validator:
            headers["If-Range"] = manifest.validator
    opened = http.open(url, headers, plan.credential)
    response = opened.response
    transfer = _Transfer(http, opened.url, plan, fd, manifest, ctx, lock, part)
    try:
        if present and response.status == 200:
            # Resume refused (no ranges, or the content changed): start over, never append.
            present = 0
            os.ftruncate(fd, 0)
        elif present and response.status == 416:
            return None, present  # the .part already holds everything: verify it
        else:
            if response.status in (401, 403):
                raise DownloadError(sources.access_message(plan, response.status))
            raise_for_status(response.status, opened.url)
        os.ftruncate(fd, present)
        transfer.hasher = sha256_of(part, present) if present else hashlib.sha256()
        counter = {"n": present}
        transfer.seq_written = present

        def advance(n: int) -> None:
            counter["n"] += n
            transfer.seq_written = counter["n"]

        monitor = threading.Thread(target=transfer.monitor, args=(lambda: counter["n"],), daemon=True)
        monitor.start()
        try:
            limit = manifest.total if manifest.total is not None else None
            transfer._stream(response, present, limit, advance)
        finally:
            transfer.stop.set()
            monitor.join()
        _raise_first(transfer.errors)
        if manifest.total is not None and counter["n"] < manifest.total:
            raise TransientError(f"{shown(opened.url)}: the transfer stopped early")
        return transfer.hasher.hexdigest(), present
    finally:
        _let_go(response)


def _let_go(response: urllib3.BaseHTTPResponse) -> None:
    """Back to the pool only when the body was read to its end; a connection with bytes left is closed."""
    if response.length_remaining == 0:
        response.release_conn()
    else:
        response.close()
        response.release_conn()


def _raise_first(errors: list[BaseException]) -> None:
    for kind in (Cancelled, DownloadError, _RangeLost, TransientError):
        for error in errors:
            if isinstance(error, kind):
                raise error
    if errors:
        raise errors[0]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _gb(count: int) -> str:
    return f"{count / 1024**3:.2f} GB" if count >= 1024**3 / 10 else f"{count / MIB:.1f} MiB"
