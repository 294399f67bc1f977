"""The reconciler: the volume and Redis brought back in agreement, at worker start and on a timer.

Redis may lose everything (it persists nothing); the `.part` manifests on the volume are the record of
what was in flight. A job whose worker died is re-queued once its heartbeat is stale. A queued job whose
task message is nowhere (in no queue, held by no live worker) is sent again: on kombu's Redis transport a
message popped by a worker that dies before it records the delivery is gone (a pod killed, a connection
Redis hands it to while it is being torn down), and one a dead worker had received would come back only
after the visibility timeout, 12 h later.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import redis

from services.common import history, jobs, messages, queue
from services.common.messages import DownloadJob
from services.common.paths import ALL_FOLDERS, MANIFEST, WorkFiles
from services.common.settings import Settings
from services.worker import download

log = logging.getLogger("worker.reconcile")

# Longer than any pass takes: a worker killed mid-pass does not block the next one for long.
PASS_LOCK_SECONDS = 60


def run(settings: Settings, client: redis.Redis, send: Callable[[str], None]) -> dict[str, int]:
    """One pass; returns counts of what it did. Only one pass runs at a time across workers and pods."""
    if not client.set(messages.reconcile_lock_key(), "1", nx=True, ex=PASS_LOCK_SECONDS):
        return {}
    try:
        counts = {"rebuilt": 0, "requeued": 0, "resent": 0, "cleaned": 0, "pruned": 0, "restored": 0}
        now = time.time()
        counts["restored"] = _restore_history(settings, client, now)
        for manifest_path in _manifests(settings):
            work = WorkFiles.of_manifest(manifest_path)
            manifest = download.Manifest.load(manifest_path)
            if manifest is None:
                counts["cleaned"] += _clean_if_old(settings, work, now)
                continue
            job = jobs.get(client, manifest.job_id)
            if job is None:
                job, created = jobs.create(client, DownloadJob(id=manifest.job_id, **manifest.spec.model_dump()))
                if created:
                    send(job.id)
                    counts["rebuilt"] += 1
                    log.info("rebuilt job %s from %s", job.id, manifest_path)
            elif job.state in ("failed", "cancelled"):
                counts["cleaned"] += _clean_if_old(settings, work, now)
            elif job.state == "done" and work.target.exists():
                counts["cleaned"] += work.remove_partial()  # the crash came after the rename
        known = jobs.all_jobs(client)
        for job in known:
            if job.state in ("running", "verifying") and _stale(settings, job, now):
                job.state, job.error = "queued", None
                jobs.save(client, job)
                send(job.id)
                counts["requeued"] += 1
                log.info("re-queued job %s: its worker went silent", job.id)
        counts["resent"] = _resend_lost(settings, client, send, known, now)
        counts["pruned"] = jobs.prune_history(settings, client)
        history.rewrite(settings.paths.download_history, [j for j in jobs.all_jobs(client) if j.terminal])
        return counts
    finally:
        client.delete(messages.reconcile_lock_key())


def _resend_lost(
    settings: Settings, client: redis.Redis, send: Callable[[str], None], known: list[DownloadJob], now: float
) -> int:
    """Send again each queued job, quiet for a while, whose task is neither waiting in the broker's queue nor
    held by a live worker. A duplicate is harmless (a delivery of a running or finished job is a no-op), so
    where in doubt (a pod slow to republish, clocks apart) it may send one too many, never one too few.
    `known`: the pass's jobs, those it has just re-queued included (with a fresh `updated`, so not quiet)."""
    wait = settings.downloads_heartbeat_stale
    quiet = [j for j in known if j.state == "queued" and now - j.updated > wait]
    if not quiet:
        return 0
    listed_at = time.time()
    missing = {j.id for j in quiet} - queue.waiting_downloads(client)
    if not missing:
        return 0
    # A task popped after the listing shows up in its worker's next snapshot: wait for one newer than it.
    missing -= _held_after(client, listed_at)
    resent = 0
    for job in quiet:
        current = jobs.get(client, job.id) if job.id in missing else None
        if current is None or current.state != "queued" or current.updated != job.updated:
            continue  # taken meanwhile
        jobs.save(client, current)  # a fresh `updated`: the next look waits its turn again
        send(current.id)
        resent += 1
        log.info("sent job %s again: its task was lost (in no queue, held by no worker)", job.id)
    return resent


def _held_after(client: redis.Redis, since: float) -> set[str]:
    """The jobs live workers hold, each from a snapshot published after `since` where one comes in time; a
    pod that does not republish in time counts with its last one (it may hold them still)."""
    deadline = time.monotonic() + 2 * jobs.HELD_EVERY + 1
    while True:
        snapshots = jobs.held(client)
        if all(at > since for at, _ in snapshots.values()) or time.monotonic() > deadline:
            return set().union(*(ids for _, ids in snapshots.values()))
        time.sleep(0.2)


def _restore_history(settings: Settings, client: redis.Redis, now: float) -> int:
    """Finished jobs the volume remembers and Redis lost (a restart, a Redis stop) put back as they were."""
    since = now - settings.downloads_history_days * 86400
    restored = 0
    for job in history.load(settings.paths.download_history, since):
        if jobs.get(client, job.id) is None:
            jobs.put_back(client, job)
            restored += 1
    return restored


def _manifests(settings: Settings) -> list[Path]:
    # Model folders and their subfolders (a workflow's `sub/name`), not the rest of the volume.
    found = []
    for folder in ALL_FOLDERS:
        with contextlib.suppress(OSError):
            found += sorted((settings.paths.models / folder).glob(f"**/*{MANIFEST}"))
    return found


def _stale(settings: Settings, job: DownloadJob, now: float) -> bool:
    if job.filename and download.writer_died(settings.paths, job.folder, job.filename):
        return True  # its worker was killed and restarted on this host: no need to wait for the heartbeat
    if now - (job.heartbeat or job.updated) < settings.downloads_heartbeat_stale:
        return False
    stale_after = settings.downloads_heartbeat_stale
    return not (job.filename and download.holder_of(settings.paths, job.folder, job.filename, stale_after))


def _clean_if_old(settings: Settings, work: WorkFiles, now: float) -> int:
    try:
        age = now - work.part.stat().st_mtime
    except FileNotFoundError:
        age = float("inf")
    if age < settings.downloads_stale_part_hours * 3600:
        return 0
    return work.remove_partial()
