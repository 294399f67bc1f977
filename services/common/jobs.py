"""Download jobs in Redis: create (deduplicated), read, list, cancel, enqueue.

A job's record is the latest `download.*` event in the `downloads` snapshot: publishing a change and
storing it are one step, so the dashboard's snapshot and the worker's state cannot drift apart.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import redis

from services.common import bus, messages, netsafe
from services.common.errors import BadInput, Conflict
from services.common.hashing import check_sha256
from services.common.messages import DownloadEvent, DownloadJob, DownloadProgress, DownloadSpec
from services.common.paths import check_folder, check_model_name
from services.common.settings import Settings

# Queues a job's task by its id (the dashboard's and the worker's Celery senders both fit).
Send = Callable[[str], None]


def validate(settings: Settings, spec: DownloadSpec) -> DownloadSpec:
    """The semantic checks of a spec before anything is queued (its types are the model's); raise BadInput
    naming the field at fault. Returns the spec as it will be stored (URL without credentials)."""
    if not spec.url.strip():
        raise BadInput("url: give the address of the file to download")
    try:
        check_folder(spec.folder)
    except ValueError as exc:
        raise BadInput(f"folder: {exc}") from None
    filename = spec.filename
    if filename is not None:
        try:
            filename = check_model_name(filename)
        except ValueError as exc:
            raise BadInput(f"filename: {exc}") from None
    sha256 = None
    if spec.sha256 is not None:
        try:
            sha256 = check_sha256(spec.sha256)
        except ValueError as exc:
            raise BadInput(f"sha256: {exc}") from None
    if spec.size is not None and spec.size < 0:
        raise BadInput("size: must be a whole number of bytes")
    try:
        url = netsafe.clean_url(spec.url)
        netsafe.check_url(netsafe.mirrored(url, settings.hf_endpoint), settings.downloads_allow_private_hosts)
    except netsafe.UnsafeUrl as exc:
        raise BadInput(f"url: {exc}") from None
    return spec.model_copy(update={"url": url, "sha256": sha256, "filename": filename})


def save(client: redis.Redis, job: DownloadJob, progress: bool = False) -> None:
    job.updated = time.time()
    bus.publish(client, (DownloadProgress if progress else DownloadEvent)(job=job))


def get(client: redis.Redis, job_id: str) -> DownloadJob | None:
    event = bus.latest(client, DownloadEvent, job_id)
    return event.job if event is not None else None


def all_jobs(client: redis.Redis) -> list[DownloadJob]:
    events = bus.snapshot(client, DownloadEvent.kind).values()
    jobs = [e.job for e in events if isinstance(e, DownloadEvent)]
    return sorted(jobs, key=lambda j: j.created, reverse=True)


# A running job's worker reports a few times a second; silent this long, nobody is running it right now
# (a probe's connect can take up to 10 s, so less would cry wolf).
SILENT_AFTER = 15.0


def as_seen(job: DownloadJob, now: float | None = None) -> DownloadJob:
    """The job as a person should see it: "running" with frozen progress is a lie once its worker went
    silent, so say since when it has been waiting for one (the reconciler re-queues it meanwhile)."""
    now = time.time() if now is None else now
    heartbeat = job.heartbeat or job.updated
    if job.state in ("running", "verifying") and now - heartbeat > SILENT_AFTER:
        return job.model_copy(update={"waiting_since": heartbeat, "speed": 0.0, "eta": None})
    return job


def all_seen(client: redis.Redis) -> list[DownloadJob]:
    """Every job, newest first, as a person should see it."""
    now = time.time()
    return [as_seen(job, now) for job in all_jobs(client)]


# A worker republishes the jobs it holds this often; a snapshot outlives a few missed turns, not a dead pod.
HELD_EVERY = 2.0
HELD_TTL = 10


def publish_held(client: redis.Redis, pod: str, job_ids: set[str]) -> None:
    """What one pod's worker holds right now (received, waiting for a pool slot or a countdown, or running)."""
    payload = json.dumps({"at": time.time(), "jobs": sorted(job_ids)})
    client.set(messages.download_held_key(pod), payload, ex=HELD_TTL)


def held(client: redis.Redis) -> dict[str, tuple[float, set[str]]]:
    """Every live pod's last snapshot: the key's name -> (when it was published, the job ids)."""
    keys = sorted(client.scan_iter(match=messages.DOWNLOAD_HELD_PATTERN, count=100))
    found = {}
    for key, raw in zip(keys, client.mget(keys) if keys else [], strict=True):
        try:
            value = json.loads(raw)
            found[key] = (float(value["at"]), {str(i) for i in value["jobs"]})
        except (TypeError, ValueError, KeyError):
            continue  # expired between the scan and the read, or not ours
    return found


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


def new_job(spec: DownloadSpec) -> DownloadJob:
    return DownloadJob(id=uuid.uuid4().hex[:16], **spec.model_dump())


def submit(settings: Settings, client: redis.Redis, spec: DownloadSpec, send: Send) -> tuple[DownloadJob, bool]:
    """Validate, store and queue a download; return the job and whether it is new."""
    job, created = create(client, new_job(validate(settings, spec)))
    if created:
        send(job.id)
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


def retry(client: redis.Redis, job_id: str, send: Send) -> DownloadJob | None:
    """Queue a failed or cancelled job again, from what its `.part` already holds; None: no such job."""
    job = get(client, job_id)
    if job is None:
        return None
    if job.state not in ("failed", "cancelled"):
        raise Conflict(f"only a failed or cancelled download can be retried (this one is {job.state})")
    client.delete(messages.download_cancel_key(job_id))
    job.state, job.error, job.finished, job.attempts = "queued", None, None, 0
    job, created = create(client, job)
    if created:
        send(job.id)
    return job


def put_back(client: redis.Redis, job: DownloadJob) -> None:
    """A finished job restored from the history on the volume, unchanged (its `updated` kept, no event)."""
    event = DownloadEvent(job=job)
    client.hset(messages.snapshot_key(event.kind), event.subject, event.to_json())


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
