"""Running one download job: its state in Redis around a call to the download engine. Plain functions, no Celery."""

from __future__ import annotations

import logging
import time

import redis

from services.common import credentials, history, jobs, messages, presets
from services.common.hashing import RedisHashCache
from services.common.messages import DownloadJob
from services.common.settings import Settings
from services.worker import download
from services.worker.http import DownloadError

log = logging.getLogger("worker.runner")

BUSY_RETRY_SECONDS = 5  # another pod (or worker) writes the file: look again soon, it may be done


def _save(client: redis.Redis, job: DownloadJob, progress: bool = False) -> None:
    """Publish the job's state; a Redis outage must not stop the bytes from flowing."""
    try:
        jobs.save(client, job, progress)
    except redis.RedisError as exc:
        log.warning("job %s: cannot record state %s (Redis unavailable: %s)", job.id, job.state, exc)


def _presets_changed(settings: Settings, client: redis.Redis, job: DownloadJob) -> None:
    """Presets using this file may have moved (missing -> partial -> installed): say so on the bus."""
    if not job.filename:
        return
    try:
        presets.publish_states(settings, client, file_key=f"{job.folder}/{job.filename}")
    except (redis.RedisError, OSError) as exc:
        log.warning("cannot publish preset states: %s", exc)


def _finish(
    settings: Settings, client: redis.Redis, job: DownloadJob, state: str, error: str | None = None, speed: float = 0.0
) -> None:
    """The job's end; `speed`: the average of a finished transfer (a done job used to say 0.0 B/s)."""
    job.state, job.error, job.finished, job.speed, job.eta = state, error, time.time(), speed, None
    _save(client, job)
    history.record(settings.paths.download_history, job)
    try:
        jobs.release(client, job)
        client.delete(messages.download_cancel_key(job.id))
    except redis.RedisError:
        pass


def run(settings: Settings, client: redis.Redis, job_id: str, owner: str) -> float | None:
    """Run one delivery of a job. Returns seconds to wait before another delivery, or None when done."""
    job = _startable(settings, client, job_id)
    if job is None:
        return None
    job.state, job.error, job.heartbeat, job.pod = "running", None, time.time(), settings.pod_name
    begin = time.monotonic()
    _save(client, job)
    try:
        outcome = download.fetch(job.id, job.spec, _context(settings, client, job, owner))
    except download.Busy as exc:
        log.info("job %s: %s; trying again in %d s", job.id, exc, BUSY_RETRY_SECONDS)
        job.state, job.error = "queued", f"waiting: {exc}"
        _save(client, job)
        return BUSY_RETRY_SECONDS
    except download.Cancelled:
        _finish(settings, client, job, "cancelled")
        _presets_changed(settings, client, job)
        return None
    except DownloadError as exc:
        log.warning("job %s failed: %s", job.id, exc)
        _finish(settings, client, job, "failed", str(exc))
        _presets_changed(settings, client, job)
        return None
    job.sha256, job.bytes_done, job.total = outcome.sha256, outcome.size, outcome.size
    job.already_present, job.resumed_from = outcome.already_present, outcome.resumed_from
    took = time.monotonic() - begin
    _finish(settings, client, job, "done", speed=outcome.fetched / took if outcome.fetched and took > 0 else 0.0)
    _presets_changed(settings, client, job)
    log.info(
        "job %s done: %s (%d bytes, %d fetched, resumed from %d)",
        job.id,
        outcome.path,
        outcome.size,
        outcome.fetched,
        outcome.resumed_from,
    )
    return None


def _startable(settings: Settings, client: redis.Redis, job_id: str) -> DownloadJob | None:
    """The job, when this delivery should run it (counted as an attempt); None for a duplicate, a late
    delivery, a cancelled job or one out of attempts (those last two are recorded)."""
    job = jobs.get(client, job_id)
    if job is None:
        log.warning("job %s is unknown (Redis lost it?): the reconciler rebuilds it from its .part", job_id)
        return None
    if job.terminal:
        return None  # a late or duplicate delivery of a finished job
    if job.filename:
        holder = download.holder_of(settings.paths, job.folder, job.filename, settings.downloads_heartbeat_stale)
        if holder and holder.endswith(f":{job.id}"):
            log.info("job %s: already running in %s; this delivery is a duplicate", job.id, holder)
            return None
    if jobs.cancel_requested(client, job.id):
        _finish(settings, client, job, "cancelled")
        return None
    job.attempts += 1
    if job.attempts > settings.downloads_max_attempts:
        attempts = job.attempts - 1
        _finish(
            settings,
            client,
            job,
            "failed",
            f"stopped after {attempts} attempts that each ended the worker process: see the worker log",
        )
        return None
    return job


def _context(settings: Settings, client: redis.Redis, job: DownloadJob, owner: str) -> download.Context:
    """The engine's callbacks: each records the job's progress in Redis (and on the bus)."""

    def on_progress(progress: download.Progress) -> None:
        job.bytes_done = progress.bytes_done or job.bytes_done
        job.total, job.speed, job.eta = progress.total, progress.speed, progress.eta
        job.state = "verifying" if progress.state == "verifying" else "running"
        job.heartbeat = time.time()
        _save(client, job, progress=True)

    def on_resolved(filename: str, total: int | None) -> None:
        job.filename, job.total = filename, total
        _save(client, job)
        _presets_changed(settings, client, job)

    def cancelled() -> bool:
        try:
            return jobs.cancel_requested(client, job.id)
        except redis.RedisError:
            return False

    # Tokens set on the dashboard since the worker started apply to this job, without a restart.
    effective = credentials.effective(settings)
    return download.Context(effective, on_progress, on_resolved, cancelled, RedisHashCache(client), owner=owner)
