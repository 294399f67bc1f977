"""One download from start to verified file: probe, lock, plan or resume, transfer, verify, rename.

`fetch` retries transient errors; each try is an `Attempt`, which holds everything one try uses (the
plan, the target and its work files, the lock, the open `.part`) and releases it in one place.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from urllib.parse import unquote

from services.common import netsafe
from services.common.files import fsync_dir, write_atomic
from services.common.hashing import cached_sha256, parse_sha256, sha256_of
from services.common.messages import DownloadSpec
from services.common.paths import Paths, WorkFiles, check_model_name
from services.worker import sources
from services.worker.download import transfer
from services.worker.download.context import MIB, Cancelled, Context, Outcome, Progress, disk_error, size_text
from services.worker.download.lock import Lock, live_holder
from services.worker.download.manifest import Manifest, Segment, boot_id, replay
from services.worker.http import AccessRefused, DownloadError, Http, Opened, TransientError, raise_for_status

log = logging.getLogger("worker.download")

BACKOFF_CAP = 60.0  # seconds: the longest wait between two retries
CANCEL_POLL = 0.2  # seconds between two cancel checks while waiting to retry
MIN_SEGMENT = 1 * MIB  # below this a ranged request costs more in round trips than it gains


def target_path(paths: Paths, folder: str, filename: str) -> Path:
    """The destination, proven inside its model folder, with no link in the way; raises DownloadError."""
    try:
        paths.model_folder(folder).mkdir(parents=True, exist_ok=True)
        target = paths.model_file(folder, filename)
        depth = len(check_model_name(filename).split("/")) - 1
    except ValueError as exc:
        raise DownloadError(str(exc)) from None
    # A subfolder (`sub/name`) is made here; a link on the way could lead out of the folder.
    for sub in reversed(target.parents[:depth]):
        if sub.is_symlink():
            raise DownloadError(f"{sub} is a symbolic link: remove it; downloads never write through links")
        try:
            sub.mkdir(exist_ok=True)
        except OSError as exc:
            raise DownloadError(f"cannot make the subfolder {sub}: {exc.strerror}") from None
    for path in (target, *WorkFiles(target).all()):
        if path.is_symlink():
            raise DownloadError(f"{path} is a symbolic link: remove it; downloads never write through links")
    return target


def holder_of(paths: Paths, folder: str, filename: str, stale_after: float) -> str | None:
    """Who is writing this destination right now, if anyone alive is (creates nothing)."""
    try:
        target = paths.model_file(folder, filename)
    except ValueError:
        return None
    return live_holder(WorkFiles(target).lock, stale_after)


def writer_died(paths: Paths, folder: str, filename: str) -> bool:
    """A lock left by a writer on this host that no longer runs (a killed worker): nobody is downloading
    this file, whatever the job's last heartbeat says."""
    try:
        target = paths.model_file(folder, filename)
    except ValueError:
        return False
    return Lock(WorkFiles(target).lock, "", 0).writer_died_here()


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


@dataclass
class Probe:
    opened: Opened
    total: int | None
    ranges: bool
    validator: str | None
    filename: str | None
    linked_sha256: str | None


def probe(http: Http, plan: sources.Plan) -> Probe:
    """One GET for the first byte: size, range support, validator, and the name the server gives."""
    opened = http.open(plan.url, {"Range": "bytes=0-0"}, plan.credential)
    response = opened.response
    status = response.status
    headers = {k.lower(): v for k, v in response.headers.items()}
    try:
        raise_for_status(status, opened.url)
    except AccessRefused:
        response.close()
        raise DownloadError(sources.access_message(plan, status)) from None
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
    validator = headers.get("etag") or headers.get("last-modified")
    return Probe(
        opened=opened,
        total=total,
        ranges=ranges and bool(validator),
        validator=validator,
        filename=name_from_headers(headers),
        linked_sha256=parse_sha256(opened.first_headers.get("x-linked-etag", "").strip('"')),
    )


def plan_segments(total: int, largest: int, connections: int) -> list[Segment]:
    """Segments sized from what remains: each `remaining / connections`, at most `largest`, at least
    MIN_SEGMENT. A mid-size file gives every connection work, and segments shrink towards the end, so
    what is in flight when the last byte lands is small: the hash follower, which can only hash the
    contiguous prefix, is then nearly done instead of facing a whole round of large segments."""
    segments, start = [], 0
    while start < total:
        remaining = total - start
        size = min(remaining, largest, max(MIN_SEGMENT, remaining // connections))
        segments.append(Segment(start, start + size - 1))
        start += size
    return segments


class Attempt:
    """One try at one download; `run` releases the `.part` (kept or discarded) and the lock in one place, but
    for a transient error: then `fetch` keeps the lock for the next try."""

    def __init__(self, job_id: str, spec: DownloadSpec, ctx: Context, http: Http, held: Lock | None = None) -> None:
        self.job_id, self.spec, self.ctx, self.http = job_id, spec, ctx, http
        settings = ctx.settings
        self.plan = sources.plan(spec.url, settings, http)
        self.probe = probe(http, self.plan)
        filename = self._filename()
        self.expected_sha = spec.sha256 or self.plan.sha256 or self.probe.linked_sha256
        if spec.size is not None and self.probe.total is not None and spec.size != self.probe.total:
            raise DownloadError(f"the server's file is {self.probe.total} bytes, not the {spec.size} expected")
        self.target = target_path(settings.paths, spec.folder, filename)
        self.name = check_model_name(filename)  # its name in the folder, subfolders included
        self.work = WorkFiles(self.target)
        if held is not None and held.held and held.path == self.work.lock and held.holder() == held.owner:
            self.lock = held  # kept through the last try's wait (see fetch)
        else:
            if held is not None:
                # The server now names another file (not ours to keep), or the lock was taken over while
                # this try probed: acquire below says whether its taker is alive.
                held.release()
            self.lock = Lock(self.work.lock, f"{ctx.owner}:{job_id}", settings.downloads_heartbeat_stale)
        self.transient = False  # the try ended on an error worth another: `fetch` keeps the lock for it
        self.manifest: Manifest | None = None
        self.transfer: transfer.Transfer | None = None
        self.fd: int | None = None
        self.discard = False  # when the try ends: delete the work files (True) or keep them to resume

    def _filename(self) -> str:
        if self.spec.filename:
            return self.spec.filename
        if self.plan.source == "url":  # the server's Content-Disposition beats the URL's tail
            name = self.probe.filename or self.plan.filename
        else:
            name = self.plan.filename or self.probe.filename
        if not name:
            raise DownloadError("the server gives no file name: give one with the download")
        return name

    def check_access(self, status: int, url: str) -> None:
        try:
            raise_for_status(status, url)
        except AccessRefused:
            raise DownloadError(sources.access_message(self.plan, status)) from None

    def run(self) -> Outcome:
        self.ctx.on_resolved(self.name, self.probe.total)
        if not self.lock.held:
            self.lock.acquire()
        try:
            return self._run()
        except TransientError:
            self.transient = True
            raise
        except (Cancelled, DownloadError):
            self.discard = True
            raise
        except transfer.RangeLost:
            self.discard, self.transient = True, True
            raise TransientError("the server stopped honouring ranges (content changed?): starting over") from None
        except OSError as exc:
            self.discard = True
            raise disk_error(exc, self.work.part) from None
        finally:
            self._release()

    def _release(self) -> None:
        if self.fd is not None:
            if not self.discard:  # a transient error: make what was written durable, to resume from it
                try:
                    if self.transfer is not None:
                        self.transfer.save_manifest()
                    else:
                        os.fsync(self.fd)
                        write_atomic(self.work.manifest, self.manifest.to_json())
                except OSError:
                    pass
            os.close(self.fd)
        if self.discard:
            self.work.remove_partial()
        if not self.transient:
            self.lock.release()

    def _run(self) -> Outcome:
        if self.target.exists():
            self.discard = True  # whatever an earlier try left beside it is of no use now
            return self._already_there()
        present, resumed_from = self._open()
        if self.manifest.segments is not None:
            digest = transfer.segmented(self)
        else:
            digest, resumed_from = transfer.sequential(self, present)
        os.fsync(self.fd)
        return self._finish(digest, resumed_from)

    def _already_there(self) -> Outcome:
        size = self.target.stat().st_size
        name = self.name
        if self.probe.total is not None and size != self.probe.total:
            raise DownloadError(f"{name} already exists with another size ({size} bytes): delete it first")
        digest = cached_sha256(self.target, self.ctx.hash_cache)
        if self.expected_sha and digest != self.expected_sha:
            raise DownloadError(f"{name} already exists with another sha256: delete it first")
        return Outcome(self.target, size, digest, already_present=True)

    def _open(self) -> tuple[int, int]:
        """Resume the `.part` when it holds these very bytes, else start over; check the space; open it.
        Returns where the bytes to fetch start, and how much of the file is already there."""
        settings, probe_ = self.ctx.settings, self.probe
        manifest = Manifest.load(self.work.manifest)
        usable = (
            manifest is not None
            and self.work.part.exists()
            and manifest.validator is not None
            and manifest.validator == probe_.validator
            and manifest.total == probe_.total
        )
        if not usable:
            # Nothing, or a .part of other bytes (content changed, server changed): start over, never append.
            self.work.remove_partial()
            total = probe_.total
            segmented = probe_.ranges and total is not None and total >= settings.downloads_min_segmented_mb * MIB
            segments = None
            if segmented:
                largest = settings.downloads_segment_mb * MIB
                segments = plan_segments(total, largest, settings.downloads_connections)
            url = netsafe.clean_url(self.spec.url)
            spec = self.spec.model_copy(update={"url": url, "filename": self.name, "sha256": self.expected_sha})
            manifest = Manifest(self.job_id, spec, total, probe_.validator, segments, boot_id=boot_id())
        self.manifest = manifest
        present = self.work.part.stat().st_size if self.work.part.exists() else 0
        same_boot = manifest.boot_id == boot_id()
        if manifest.segments is not None:
            if same_boot:  # the page cache survived the crash: the journal's record of written bytes holds
                replay(self.work.journal, manifest.segments)
            else:
                for segment in manifest.segments:
                    segment.written = segment.done
            done_before = sum(s.written for s in manifest.segments)
        else:
            present = present if same_boot else min(present, manifest.done)
            done_before = present
        manifest.boot_id = boot_id()
        remaining = (manifest.total - done_before) if manifest.total is not None else 0
        free = shutil.disk_usage(self.target.parent).free
        reserve = settings.downloads_reserve_mb * MIB
        if remaining + reserve > free:
            # A .part that cannot be finished only takes the space others need: discarded by run().
            raise DownloadError(
                f"not enough space for {self.target.name}: it needs {size_text(remaining)} more plus"
                f" {size_text(reserve)} kept free, the volume has {size_text(free)}: delete models or grow the volume"
            )
        self.fd = os.open(self.work.part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        write_atomic(self.work.manifest, manifest.to_json())
        return present, done_before

    def _finish(self, digest: str | None, resumed_from: int) -> Outcome:
        manifest, part, target = self.manifest, self.work.part, self.target
        self.ctx.on_progress(Progress(manifest.total or part.stat().st_size, manifest.total, 0.0, None, "verifying"))
        size = part.stat().st_size
        if manifest.total is not None and size != manifest.total:
            self.discard = True
            raise TransientError(f"{part.name} has {size} bytes, the server announced {manifest.total}")
        if self.spec.size is not None and size != self.spec.size:
            raise DownloadError(f"the file is {size} bytes, not the {self.spec.size} expected")
        digest = digest or sha256_of(part).hexdigest()
        if self.expected_sha and digest != self.expected_sha:
            raise DownloadError(
                f"sha256 mismatch for {target.name}: expected {self.expected_sha}, got {digest}. The file was"
                " discarded; the source serves other bytes than announced"
            )
        os.replace(part, target)
        fsync_dir(target.parent)
        self.discard = True  # the bytes are under their final name: the manifest and journal go
        stat = target.stat()
        self.ctx.hash_cache.put(target, stat.st_size, stat.st_mtime_ns, digest)
        return Outcome(target, size, digest, resumed_from=resumed_from, fetched=max(0, size - resumed_from))


def fetch(job_id: str, spec: DownloadSpec, ctx: Context) -> Outcome:
    """Download `spec` into its folder, retrying transient errors; raise DownloadError, Cancelled, Busy."""
    settings = ctx.settings
    http = Http(settings.downloads_allow_private_hosts, settings.downloads_read_timeout, settings.downloads_connections)
    delay = settings.downloads_backoff
    attempt = 0
    # The destination's lock stays ours through a retry's wait: released there, a second delivery of the
    # job (a redelivery, the reconciler's resend) would find nobody writing and start its own run.
    held: Lock | None = None
    try:
        while True:
            current = None
            try:
                current = Attempt(job_id, spec, ctx, http, held)
                return current.run()
            except TransientError as exc:
                if current is not None:
                    held = current.lock if current.lock.held else None
                attempt += 1
                if attempt > settings.downloads_retries:
                    raise DownloadError(f"gave up after {attempt} tries: {exc}") from None
                retries = settings.downloads_retries
                log.warning("job %s: %s; retry %d/%d in %.1f s", job_id, exc, attempt, retries, delay)
                ctx.on_progress(Progress(0, None, 0.0, None, state="retrying"))
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline:
                    if ctx.cancelled():
                        raise Cancelled() from None
                    if held is not None:
                        held.touch()  # a wait of up to BACKOFF_CAP must not look like a dead writer
                    time.sleep(min(CANCEL_POLL, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, BACKOFF_CAP) if delay else 0.0
    finally:
        if held is not None:
            held.release()  # a no-op when the last try released it (its lock is this one)
