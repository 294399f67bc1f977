"""Making a workflow runnable: every missing model through the download queue (verified, resumable,
deduplicated), every missing node pack through the worker, and one view of it all."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

import redis

from services.common import bus, jobs
from services.common.errors import BadInput, Problem
from services.common.messages import DownloadSpec, NodePackInstall, WorkflowFile, WorkflowInstall
from services.common.settings import Settings
from services.common.workflows.analyze import Analysis

ON_VOLUME = "on the volume"
_COMMIT = re.compile(r"[0-9a-f]{7,40}")
# A pack is cloned from https only; its folder is the repository's name.
_REPO = re.compile(r"https://[A-Za-z0-9.-]+(?::[0-9]+)?/[A-Za-z0-9._~/-]+")


def check_commits(commits: object) -> dict[str, str]:
    """The user's choice of commit per pack URL: {"https://github.com/o/r": "<sha>"}; raises BadInput."""
    if commits is None:
        return {}
    if not isinstance(commits, dict):
        raise BadInput('commits: an object {"<pack URL>": "<commit sha>"}')
    for url, sha in commits.items():
        if not isinstance(sha, str) or not _COMMIT.fullmatch(sha.lower()):
            raise BadInput(f"commits: {sha!r} for {url} is not a commit (7 to 40 hexadecimal characters)")
    return {str(url).rstrip("/"): sha.lower() for url, sha in commits.items()}


def pack_folder(url: str) -> str:
    """custom_nodes/<this> for a pack's repository URL; raises ValueError for one we will not clone."""
    if not _REPO.fullmatch(url) or ".." in url:
        raise ValueError(f"{url!r} is not an https:// git repository address")
    name = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    if not name or name.startswith(".") or not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", name):
        raise ValueError(f"{url!r} does not end in a repository name")
    return name


def start(
    settings: Settings,
    client: redis.Redis,
    analysis: Analysis,
    name: str,
    commits: dict[str, str],
    send: jobs.Send,
    send_packs: Callable[[str], None],
) -> WorkflowInstall:
    """Queue what `analysis` found missing; returns the install's record (also on the bus)."""
    record = WorkflowInstall(id=uuid.uuid4().hex[:16], name=name[:200] or "workflow")
    for line in analysis.models:
        item = WorkflowFile(folder=line.folder, filename=line.name)
        if line.state in ("verified", "present"):
            item.note = ON_VOLUME
        elif line.state == "downloading" and not line.url:
            item.note = "being downloaded already (its job is on the downloads page)"
        elif line.state in ("downloading", "missing") and line.url:
            try:
                spec = DownloadSpec(
                    url=line.url or "", folder=line.folder or "", filename=line.name, sha256=line.sha256
                )
                job, _created = jobs.submit(settings, client, spec, send)
                item.job_id = job.id
            except Problem as exc:
                item.note = f"not queued: {exc.message}"
        elif line.state == "wrong":
            item.note = "a file of this name is on the volume with another size or hash: delete it, then install again"
        else:
            item.note = line.message or "no known source"
        record.files.append(item)
    for line in analysis.packs:
        if line.url is None or line.core:
            continue
        commit = commits.get(line.url) or line.commit
        pack = NodePackInstall(url=line.url, title=line.title or line.url, commit=commit)
        try:
            pack_folder(line.url)
        except ValueError as exc:
            pack.state, pack.message = "failed", str(exc)
        record.packs.append(pack)
    if any(p.state == "queued" for p in record.packs):
        record.restart = "pending"
    bus.publish(client, record)
    if record.restart == "pending":
        send_packs(record.id)
    return record


def get(client: redis.Redis, install_id: str) -> WorkflowInstall | None:
    return bus.latest(client, WorkflowInstall, install_id)


def save(client: redis.Redis, record: WorkflowInstall) -> None:
    record.ts = time.time()
    bus.publish(client, record)


def view(client: redis.Redis, record: WorkflowInstall) -> dict:
    """The whole install at a glance: files n of m, bytes, ETA, failures, and each pack."""
    ids = [f.job_id for f in record.files if f.job_id]
    found = {j.id: jobs.as_seen(j) for j in (jobs.get(client, i) for i in ids) if j is not None}
    files, failures = [], []
    done = total_bytes = done_bytes = 0
    eta = 0.0
    for f in record.files:
        job = found.get(f.job_id or "")
        state = job.state if job else ("present" if f.note == ON_VOLUME else "not_queued")
        files.append(
            {
                **f.model_dump(),
                "state": state,
                "bytes_done": job.bytes_done if job else 0,
                "total": job.total if job else None,
                "error": job.error if job else None,
            }
        )
        if job is None:
            done += state == "present"
            continue
        done += job.state == "done"
        done_bytes += job.bytes_done
        total_bytes += job.total or job.size or job.bytes_done
        if job.state == "failed":
            failures.append(f"{f.folder}/{f.filename}: {job.error}")
        if job.eta:
            eta = max(eta, job.eta)
    for pack in record.packs:
        if pack.state == "failed" or pack.loaded is False:
            failures.append(f"{pack.title}: {pack.message}")
    active = [f for f in files if f["state"] in ("queued", "running", "verifying")]
    packs_busy = record.restart in ("pending", "restarting")
    return {
        "id": record.id,
        "name": record.name,
        "created": record.created,
        "files": files,
        "packs": [p.model_dump() for p in record.packs],
        "restart": record.restart,
        "message": record.message,
        "files_done": done,
        "files_total": len(files),
        "bytes_done": done_bytes,
        "bytes_total": total_bytes,
        "eta": eta or None,
        "failures": failures,
        "finished": not active and not packs_busy,
    }
