"""The reconciler: the volume and Redis brought back in agreement, at worker start and on a timer.

Redis may lose everything (it persists nothing); the `.part` manifests on the volume are the record of
what was in flight. A job whose worker died is re-queued once its heartbeat is stale.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import redis

from services.common import history, jobs, messages
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
        counts = {"rebuilt": 0, "requeued": 0, "cleaned": 0, "pruned": 0, "restored": 0}
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
        for job in jobs.all_jobs(client):
            if job.state in ("running", "verifying") and _stale(settings, job, now):
                job.state, job.error = "queued", None
                jobs.save(client, job)
                send(job.id)
                counts["requeued"] += 1
                log.info("re-queued job %s: its worker went silent", job.id)
        counts["pruned"] = jobs.prune_history(settings, client)
        history.rewrite(settings.paths.download_history, [j for j in jobs.all_jobs(client) if j.terminal])
        return counts
    finally:
        client.delete(messages.reconcile_lock_key())


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
