"""The reconciler against a real Redis and real files: rebuild, re-queue, clean, prune."""

from __future__ import annotations

import subprocess
import sys
import time

from services.common import jobs
from services.common.messages import DownloadJob, DownloadSpec
from services.worker import download, reconcile
from services.worker.download.lock import Lock
from tests.helpers.procs import REPO


def manifest(settings, job_id: str, name: str, folder: str = "checkpoints") -> None:
    base = settings.paths.models / folder
    base.mkdir(parents=True, exist_ok=True)
    (base / f"{name}.part").write_bytes(b"x" * 100)
    m = download.Manifest(
        job_id=job_id,
        spec=DownloadSpec(url=f"https://example.com/{name}", folder=folder, filename=name),
        total=1000,
        validator='"v"',
        segments=None,
        done=100,
    )
    (base / f"{name}.part.json").write_text(m.to_json())


def test_rebuilds_jobs_redis_lost_from_their_manifests(settings, redis_client):
    manifest(settings, "a" * 16, "one.safetensors")
    manifest(settings, "b" * 16, "two.safetensors", folder="loras")
    sent: list[str] = []
    counts = reconcile.run(settings, redis_client, sent.append)
    assert counts["rebuilt"] == 2 and sorted(sent) == ["a" * 16, "b" * 16]
    job = jobs.get(redis_client, "b" * 16)
    assert (job.folder, job.filename, job.state, job.url) == (
        "loras",
        "two.safetensors",
        "queued",
        "https://example.com/two.safetensors",
    )
    assert reconcile.run(settings, redis_client, sent.append)["rebuilt"] == 0  # idempotent
    assert len(sent) == 2


def test_requeues_a_silent_running_job_unless_its_writer_lives(settings, redis_client):
    stale = time.time() - settings.downloads_heartbeat_stale - 5
    dead = DownloadJob(
        id="c" * 16, url="https://example.com/x", folder="vae", filename="x.bin", state="running", heartbeat=stale
    )
    alive = DownloadJob(
        id="d" * 16, url="https://example.com/y", folder="vae", filename="y.bin", state="running", heartbeat=stale
    )
    for job in (dead, alive):
        jobs.create(redis_client, job)
    (settings.paths.models / "vae").mkdir(parents=True)
    lock = Lock(settings.paths.models / "vae" / "y.bin.lock", f"me:{alive.id}", settings.downloads_heartbeat_stale)
    lock.acquire()  # a writer that lives: this process, holding the lock
    try:
        sent: list[str] = []
        assert reconcile.run(settings, redis_client, sent.append)["requeued"] == 1
    finally:
        lock.release()
    assert sent == [dead.id] and jobs.get(redis_client, dead.id).state == "queued"
    assert jobs.get(redis_client, alive.id).state == "running"


def test_cleans_leftovers_and_old_parts(settings, redis_client):
    manifest(settings, "e" * 16, "done.bin")
    (settings.paths.models / "checkpoints" / "done.bin").write_bytes(b"final")
    jobs.create(
        redis_client,
        DownloadJob(
            id="e" * 16,
            url="https://example.com/done.bin",
            folder="checkpoints",
            filename="done.bin",
            state="done",
            finished=time.time(),
        ),
    )
    manifest(settings, "f" * 16, "failed.bin")
    jobs.create(
        redis_client,
        DownloadJob(
            id="f" * 16,
            url="https://example.com/failed.bin",
            folder="checkpoints",
            filename="failed.bin",
            state="failed",
            finished=time.time(),
        ),
    )
    counts = reconcile.run(settings, redis_client, lambda _: None)
    folder = settings.paths.models / "checkpoints"
    assert not (folder / "done.bin.part").exists() and (folder / "done.bin").read_bytes() == b"final"
    assert (folder / "failed.bin.part").exists()  # younger than DOWNLOADS_STALE_PART_HOURS: kept for a retry
    old = settings.model_copy(update={"downloads_stale_part_hours": 0})
    counts = reconcile.run(old, redis_client, lambda _: None)
    assert counts["cleaned"] >= 2 and not (folder / "failed.bin.part").exists()
    assert not (folder / "failed.bin.part.json").exists()


def test_history_is_bounded(settings, redis_client):
    for i in range(5):
        jobs.create(
            redis_client,
            DownloadJob(
                id=f"{i:016x}",
                url=f"https://example.com/{i}",
                folder="vae",
                filename=f"{i}.bin",
                state="done",
                finished=time.time() + i,
            ),
        )
    small = settings.model_copy(update={"downloads_history_max": 2})
    assert reconcile.run(small, redis_client, lambda _: None)["pruned"] == 3
    assert sorted(j.id for j in jobs.all_jobs(redis_client)) == [f"{3:016x}", f"{4:016x}"]


def test_a_job_whose_writer_died_on_this_host_is_requeued_at_once(settings, redis_client):
    """A killed worker restarted by supervisord: its job's heartbeat is fresh, but the lock names a dead
    process of this host, so nobody will ever touch it again. Waiting for the heartbeat is not needed."""
    fresh = time.time()
    orphan = DownloadJob(
        id="a1" * 8, url="https://example.com/o", folder="vae", filename="o.bin", state="running", heartbeat=fresh
    )
    working = DownloadJob(
        id="b1" * 8, url="https://example.com/w", folder="vae", filename="w.bin", state="running", heartbeat=fresh
    )
    for job in (orphan, working):
        jobs.create(redis_client, job)
    folder = settings.paths.models / "vae"
    folder.mkdir(parents=True, exist_ok=True)
    # The orphan's writer took its lock and was killed; the other's writer is this process.
    code = "import sys; from pathlib import Path; from services.worker.download.lock import Lock; "
    code += "Lock(Path(sys.argv[1]), sys.argv[2], 60).acquire(); import os; os._exit(0)"
    subprocess.run([sys.executable, "-c", code, str(folder / "o.bin.lock"), f"x:{orphan.id}"], cwd=REPO, check=True)
    lock = Lock(folder / "w.bin.lock", f"x:{working.id}", settings.downloads_heartbeat_stale)
    lock.acquire()
    try:
        sent: list[str] = []
        assert reconcile.run(settings, redis_client, sent.append)["requeued"] == 1
    finally:
        lock.release()
    assert sent == [orphan.id] and jobs.get(redis_client, orphan.id).state == "queued"
    assert jobs.get(redis_client, working.id).state == "running"
