"""What a user does with a preset: install (queue its missing files), remove (reference counted), verify."""

from __future__ import annotations

import re
import time

import redis

from services.common import bus, jobs, messages
from services.common.errors import BadInput
from services.common.hashing import RedisHashCache, cached_sha256
from services.common.messages import DownloadSpec
from services.common.presets.catalogue import Catalogue, entry, load
from services.common.presets.state import file_states, preset_state, show
from services.common.settings import Settings


def install(settings: Settings, client: redis.Redis, preset_id: str, send: jobs.Send) -> list[messages.DownloadJob]:
    """Queue one download per missing file; installing twice queues nothing new."""
    catalogue = load(settings)
    found = entry(catalogue, preset_id)
    states = file_states(settings, client, found.files)
    todo = [f for f in found.files if states[f.key] in ("missing", "wrong", "downloading")]
    for f in todo:
        # `token` names which token a file needs; it never holds one.
        if f.token == "huggingface" and settings.hf_token is None:  # noqa: S105
            raise BadInput(
                f"{f.filename} needs a Hugging Face token: accept the licence at {_repo_page(f.url)}"
                " and set HF_TOKEN (dashboard settings or environment)"
            )
        if f.token == "civitai" and settings.civitai_token is None:  # noqa: S105
            raise BadInput(f"{f.filename} needs a Civitai account: set CIVITAI_TOKEN")
    wrong = [f.filename for f in todo if states[f.key] == "wrong"]
    if wrong:
        raise BadInput(f"{', '.join(wrong)} already exist with another size or sha256: delete them first")
    queued = []
    for f in todo:
        spec = DownloadSpec(url=f.url, folder=f.folder, filename=f.filename, sha256=f.sha256, size=f.size)
        job, _ = jobs.submit(settings, client, spec, send)
        queued.append(job)
    publish_states(settings, client, catalogue)
    return queued


def remove(settings: Settings, client: redis.Redis, preset_id: str) -> dict[str, list[str]]:
    """Delete this preset's files, except those another installed preset still uses (reference counted)."""
    catalogue = load(settings)
    found = entry(catalogue, preset_id)
    all_files = [f for e in catalogue.entries.values() for f in e.files]
    states = file_states(settings, client, all_files)
    in_use: set[str] = set()
    for other in catalogue.entries.values():
        if other.preset.id != preset_id and preset_state(other.files, states) == "installed":
            in_use |= {f.key for f in other.files if states[f.key] != "missing"}
    removed, kept = [], []
    for f in {f.key: f for f in found.files}.values():
        if f.key in in_use:
            kept.append(f.key)
            continue
        job_id = client.get(messages.download_dedupe_key(f.folder, f.filename))
        if job_id:
            jobs.cancel(client, job_id)
        path = settings.paths.models / f.folder / f.filename
        if path.is_file() and not path.is_symlink():
            path.unlink()
            removed.append(f.key)
    publish_states(settings, client, catalogue)
    return {"removed": removed, "kept": kept}


def verify(settings: Settings, client: redis.Redis, preset_id: str) -> dict:
    """Hash this preset's files that have a known sha256 and no fresh cache entry (slow: reads them)."""
    catalogue = load(settings)
    found = entry(catalogue, preset_id)
    for f in found.files:
        path = settings.paths.models / f.folder / f.filename
        if f.sha256 and path.is_file():
            cached_sha256(path, RedisHashCache(client))
    publish_states(settings, client, catalogue)
    return show(settings, client, preset_id, catalogue)


def publish_states(
    settings: Settings, client: redis.Redis, catalogue: Catalogue | None = None, file_key: str | None = None
) -> None:
    """Publish the presets whose state changed (only those using `file_key`, when given)."""
    catalogue = catalogue or load(settings)
    entries = [e for e in catalogue.entries.values() if file_key is None or file_key in {f.key for f in e.files}]
    if not entries:
        return
    states = file_states(settings, client, [f for e in entries for f in e.files])
    snapshot = bus.snapshot(client, messages.PresetState.kind)
    for e in entries:
        state = preset_state(e.files, states)
        done = sum(1 for f in e.files if states[f.key] in ("verified", "present"))
        before = snapshot.get(e.preset.id)
        if isinstance(before, messages.PresetState) and (before.state, before.files_done) == (state, done):
            continue
        bus.publish(
            client,
            messages.PresetState(
                id=e.preset.id, state=state, files_done=done, files_total=len(e.files), ts=time.time()
            ),
        )


def _repo_page(url: str) -> str:
    match = re.match(r"(https://[^/]+/(?:datasets/)?[^/]+/[^/]+)/", url)
    return match.group(1) if match else url
