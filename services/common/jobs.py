"""Download jobs in Redis: create (deduplicated), read, list, cancel, enqueue.

A job's record is the latest `download.*` event in the `downloads` snapshot: publishing a change and
storing it are one step, so the dashboard's snapshot and the worker's state cannot drift apart.
"""

from __future__ import annotations

import functools
import time
import uuid

import redis
from celery import Celery

from services.common import bus, messages, netsafe, queue
from services.common.messages import DownloadEvent, DownloadJob, DownloadProgress
from services.common.paths import check_filename, check_folder
from services.common.settings import Settings


class BadRequest(ValueError):
    """A download request a user got wrong; the message says what to fix."""


def validate_request(
    settings: Settings, url: str, folder: str, filename: str | None, sha256: str | None, size: int | None
) -> tuple[str, str, str | None, str | None]:
    """Check a request before anything is queued; raise BadRequest naming the field at fault."""
    if not isinstance(url, str) or not url.strip():
        raise BadRequest("url: give the address of the file to download")
    try:
        check_folder(folder)
    except ValueError as exc:
        raise BadRequest(f"folder: {exc}") from None
    if filename is not None:
        try:
            check_filename(filename)
        except ValueError as exc:
            raise BadRequest(f"filename: {exc}") from None
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise BadRequest("sha256: must be 64 hexadecimal characters")
    if size is not None and (not isinstance(size, int) or size < 0):
        raise BadRequest("size: must be a whole number of bytes")
    url = netsafe.clean_url(url)
    try:
        netsafe.check_url(url, settings.downloads_allow_private_hosts)
    except netsafe.UnsafeUrl as exc:
        raise BadRequest(f"url: {exc}") from None
    return url, folder, filename, sha256


def save(client: redis.Redis, job: DownloadJob, progress: bool = False) -> None:
    job.updated = time.time()
    bus.publish(client, (DownloadProgress if progress else DownloadEvent)(job=job))


def get(client: redis.Redis, job_id: str) -> DownloadJob | None:
    raw = client.hget(messages.snapshot_key(DownloadEvent.kind), job_id)
    if raw is None:
        return None
    try:
        event = messages.parse_event(raw)
    except messages.BadEvent:
        return None
    return event.job if isinstance(event, DownloadEvent) else None


def all_jobs(client: redis.Redis) -> list[DownloadJob]:
    events = bus.snapshot(client, DownloadEvent.kind).values()
    jobs = [e.job for e in events if isinstance(e, DownloadEvent)]
    return sorted(jobs, key=lambda j: j.created, reverse=True)


def dedupe_name(job: DownloadJob) -> str:
    return job.filename or job.url


def create(client: redis.Redis, job: DownloadJob) -> tuple[DownloadJob, bool]:
    """Store a new queued job, unless one for the same destination is already queued or running."""
    key = messages.download_dedupe_key(job.folder, dedupe_name(job))
    if not client.set(key, job.id, nx=True):
        existing_id = client.get(key)
        existing = get(client, existing_id) if existing_id else None
        if existing is not None and not existing.terminal:
            return existing, False
        client.set(key, job.id)  # the holder finished or vanished: take the destination over
    save(client, job)
    return job, True


def release(client: redis.Redis, job: DownloadJob) -> None:
    """A finished job no longer holds its destination."""
    key = messages.download_dedupe_key(job.folder, dedupe_name(job))
    if client.get(key) == job.id:
        client.delete(key)


def new_job(url: str, folder: str, filename: str | None, sha256: str | None, size: int | None) -> DownloadJob:
    return DownloadJob(id=uuid.uuid4().hex[:16], url=url, folder=folder, filename=filename, sha256=sha256, size=size)


@functools.lru_cache(maxsize=4)
def _celery(settings: Settings) -> Celery:
    return queue.client(settings)


def send(settings: Settings, job_id: str) -> None:
    """Queue the task for a job: only its id crosses the queue (no URL, no token)."""
    _celery(settings).send_task(messages.TASK_DOWNLOAD, args=[job_id])


def submit(
    settings: Settings,
    client: redis.Redis,
    url: str,
    folder: str,
    filename: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
) -> tuple[DownloadJob, bool]:
    """Validate, store and queue a download; return the job and whether it is new."""
    url, folder, filename, sha256 = validate_request(settings, url, folder, filename, sha256, size)
    job, created = create(client, new_job(url, folder, filename, sha256, size))
    if created:
        send(settings, job.id)
    return job, created


def cancel(client: redis.Redis, job_id: str) -> DownloadJob | None:
    """Cancel a queued job at once; ask a running one to stop (the worker removes its `.part`)."""
    job = get(client, job_id)
    if job is None or job.terminal:
        return job
    client.set(messages.download_cancel_key(job_id), "1", ex=24 * 3600)
    if job.state == "queued":
        job.state, job.finished, job.error = "cancelled", time.time(), None
        save(client, job)
        release(client, job)
    return job


def cancel_requested(client: redis.Redis, job_id: str) -> bool:
    return bool(client.exists(messages.download_cancel_key(job_id)))


def retry(settings: Settings, client: redis.Redis, job_id: str) -> DownloadJob | None:
    """Queue a failed or cancelled job again, from what its `.part` already holds."""
    job = get(client, job_id)
    if job is None or not job.terminal or job.state == "done":
        return job
    client.delete(messages.download_cancel_key(job_id))
    job.state, job.error, job.finished, job.attempts = "queued", None, None, 0
    job, created = create(client, job)
    if created:
        send(settings, job.id)
    return job


def forget(client: redis.Redis, job_ids: list[str]) -> None:
    if job_ids:
        client.hdel(messages.snapshot_key(DownloadEvent.kind), *job_ids)


def prune_history(settings: Settings, client: redis.Redis) -> int:
    """Drop finished jobs older than the history's age, and the oldest beyond its size."""
    finished = [j for j in all_jobs(client) if j.terminal]
    cutoff = time.time() - settings.downloads_history_days * 86400
    old = [j.id for j in finished if (j.finished or j.updated) < cutoff]
    keep = [j for j in finished if j.id not in old]
    keep.sort(key=lambda j: j.finished or j.updated, reverse=True)
    old += [j.id for j in keep[settings.downloads_history_max :]]
    forget(client, old)
    return len(old)
