"""Finished downloads kept on the volume, so the history survives a restart (Redis persists nothing).

One JSON line per finished job, appended by whoever finished it (one write with O_APPEND: workers on
several processes may append at once); a line `{"forget": [ids]}` when the user clears jobs. The
reconciler puts back into Redis what it lacks and rewrites the file to what Redis then holds, within
DOWNLOADS_HISTORY_DAYS and DOWNLOADS_HISTORY_MAX.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from pydantic import ValidationError

from services.common.files import write_atomic
from services.common.messages import DownloadJob

log = logging.getLogger(__name__)


def _append(path: Path, line: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    except OSError as exc:
        # The history is a convenience: a full or read-only volume must not fail the download.
        log.warning("cannot write the download history %s: %s", path, exc)


def record(path: Path, job: DownloadJob) -> None:
    if job.terminal:
        _append(path, job.model_dump_json())


def forget(path: Path, job_ids: list[str]) -> None:
    if job_ids:
        _append(path, json.dumps({"forget": job_ids}))


def load(path: Path, since: float) -> list[DownloadJob]:
    """The finished jobs the file holds (the last line of each wins), none forgotten, none older than `since`."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    found: dict[str, DownloadJob] = {}
    for line in lines:
        try:
            raw = json.loads(line)
            if "forget" in raw:
                for job_id in raw["forget"]:
                    found.pop(job_id, None)
                continue
            job = DownloadJob.model_validate(raw)
        except (ValueError, TypeError, ValidationError):
            continue  # a line cut short by a crash: the others still count
        if job.terminal:
            found[job.id] = job
    return [j for j in found.values() if (j.finished or j.updated) >= since]


def rewrite(path: Path, finished: list[DownloadJob]) -> None:
    """The file made to hold exactly these jobs (the reconciler's compaction)."""
    text = "".join(j.model_dump_json() + "\n" for j in sorted(finished, key=lambda j: j.finished or j.updated))
    try:
        if path.exists() or text:
            write_atomic(path, text)
    except OSError as exc:
        log.warning("cannot rewrite the download history %s: %s", path, exc)
