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

from services.common import jobs
from services.common.messages import DownloadJob
from services.common.paths import ALL_FOLDERS
from services.common.settings import Settings
from services.worker import engine

log = logging.getLogger("worker.reconcile")

LOCK_KEY = "downloads:reconcile:lock"


def run(settings: Settings, client: redis.Redis, send: Callable[[str], None]) -> dict[str, int]:
    """One pass; returns counts of what it did. Only one pass runs at a time across workers and pods."""
    if not client.set(LOCK_KEY, "1", nx=True, ex=60):
        return {}
    try:
        counts = {"rebuilt": 0, "requeued": 0, "cleaned": 0, "pruned": 0}
        now = time.time()
        for manifest_path in _manifests(settings):
            manifest = engine.Manifest.load(manifest_path)
            part = manifest_path.with_name(manifest_path.name.removesuffix(".json"))
            if manifest is None:
                counts["cleaned"] += _clean_if_old(settings, part, now)
                continue
            job = jobs.get(client, manifest.job_id)
            if job is None:
                job = DownloadJob(
                    id=manifest.job_id,
                    url=manifest.url,
                    folder=manifest.folder,
                    filename=manifest.filename,
                    sha256=manifest.sha256,
                    size=manifest.size,
                )
                job, created = jobs.create(client, job)
                if created:
                    send(job.id)
                    counts["rebuilt"] += 1
                    log.info("rebuilt job %s from %s", job.id, manifest_path)
            elif job.state in ("failed", "cancelled"):
                counts["cleaned"] += _clean_if_old(settings, part, now)
            elif job.state == "done":
                target = part.with_name(part.name.removesuffix(".part"))
                if target.exists():
                    counts["cleaned"] += _remove_work(part)  # the crash came after the rename
        for job in jobs.all_jobs(client):
            if job.state in ("running", "verifying") and _stale(settings, job, now):
                job.state, job.error = "queued", None
                jobs.save(client, job)
                send(job.id)
                counts["requeued"] += 1
                log.info("re-queued job %s: its worker went silent", job.id)
        counts["pruned"] = jobs.prune_history(settings, client)
        return counts
    finally:
        client.delete(LOCK_KEY)


def _manifests(settings: Settings) -> list[Path]:
    # One directory listing per model folder: no walk of the volume.
    found = []
    for folder in ALL_FOLDERS:
        with contextlib.suppress(OSError):
            found += sorted((settings.paths.models / folder).glob("*.part.json"))
    return found


def _stale(settings: Settings, job: DownloadJob, now: float) -> bool:
    if now - (job.heartbeat or job.updated) < settings.downloads_heartbeat_stale:
        return False
    if job.filename and engine.live_holder(
        settings.paths, job.folder, job.filename, settings.downloads_heartbeat_stale
    ):
        return False
    return True


def _clean_if_old(settings: Settings, part: Path, now: float) -> int:
    try:
        age = now - part.stat().st_mtime
    except FileNotFoundError:
        age = float("inf")
    if age < settings.downloads_stale_part_hours * 3600:
        return 0
    return _remove_work(part)


def _remove_work(part: Path) -> int:
    """The .part and the files that describe it (manifest, progress journal)."""
    return sum(_remove(part.with_name(part.name + suffix)) for suffix in ("", ".json", ".progress"))


def _remove(path: Path) -> int:
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    return 1
