"""A preset's state, derived from the volume every time (installed / partial / missing), never stored."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Literal

import redis

from services.common import messages
from services.common.paths import WorkFiles
from services.common.presets.catalogue import Catalogue, Entry, entry, load
from services.common.presets.model import ModelFile
from services.common.settings import Settings

FileState = Literal["verified", "present", "downloading", "wrong", "missing"]


def file_states(settings: Settings, client: redis.Redis | None, files: list[ModelFile]) -> dict[str, FileState]:
    """One stat per file, one Redis round trip for all: no hashing, no walk of the volume."""
    unique = {f.key: f for f in files}
    # The hash cache is keyed by real path (as the engine writes it): resolve each folder once, not each file.
    real = {folder: Path(os.path.realpath(settings.paths.models / folder)) for folder in {f.folder for f in files}}
    paths = {key: real[f.folder] / f.filename for key, f in unique.items()}
    stats = {}
    for key, path in paths.items():
        try:
            stats[key] = path.stat()
        except OSError:
            stats[key] = None
    cached: dict[str, str | None] = {}
    active: dict[str, str | None] = {}
    if client is not None:
        try:
            pipe = client.pipeline(transaction=False)
            keys = list(unique)
            for key in keys:
                pipe.get(messages.verified_key(str(paths[key])))
            for key in keys:
                pipe.get(messages.download_dedupe_key(unique[key].folder, unique[key].filename))
            replies = pipe.execute()
            cached = dict(zip(keys, replies[: len(keys)], strict=True))
            active = dict(zip(keys, replies[len(keys) :], strict=True))
        except redis.RedisError:
            pass
    states: dict[str, FileState] = {}
    for key, f in unique.items():
        stat = stats[key]
        if stat is None:
            part = WorkFiles(paths[key]).part
            states[key] = "downloading" if active.get(key) or part.exists() else "missing"
            continue
        if f.size is not None and stat.st_size != f.size:
            states[key] = "wrong"
            continue
        if f.sha256 is None:
            states[key] = "verified" if f.size is not None else "present"
            continue
        try:
            record = json.loads(cached.get(key) or "null")
        except ValueError:
            record = None
        fresh = record and record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns
        if fresh:
            states[key] = "verified" if record.get("sha256") == f.sha256 else "wrong"
        else:
            states[key] = "present"  # not hashed yet: `verify` checks it
    return states


def preset_state(files: list[ModelFile], states: dict[str, FileState]) -> str:
    mine = [states[f.key] for f in files]
    if all(s in ("verified", "present") for s in mine):
        return "installed"
    if any(s != "missing" for s in mine):
        return "partial"
    return "missing"


def describe(settings: Settings, item: Entry, states: dict[str, FileState], free: int) -> dict:
    todo = [f for f in item.files if states[f.key] in ("missing", "wrong")]
    need = sum(f.expected_bytes for f in {f.key: f for f in todo}.values())
    p = item.preset
    return {
        "id": p.id,
        "name": p.name,
        "description": p.description,
        "category": p.category,
        "base": p.base,
        "vram_gb": p.vram_gb,
        "tags": p.tags,
        "custom_nodes": p.custom_nodes,
        "workflow": p.workflow,
        "licence": p.licence,
        "source": item.source,
        "note": item.note,
        "state": preset_state(item.files, states),
        "files": [
            {
                "url": f.url,
                "folder": f.folder,
                "filename": f.filename,
                "size": f.size,
                "approx_size": f.approx_size,
                "sha256": f.sha256,
                "token": f.token,
                "licence": f.licence,
                "state": states[f.key],
            }
            for f in item.files
        ],
        "total_bytes": sum(f.expected_bytes for f in item.files),
        "bytes_to_download": need,
        "fits": need + settings.downloads_reserve_mb * 1024 * 1024 <= free,
    }


def _free(settings: Settings) -> int:
    try:
        return shutil.disk_usage(settings.paths.models if settings.paths.models.exists() else settings.workspace).free
    except OSError:
        return 0


def list_presets(
    settings: Settings,
    client: redis.Redis | None,
    category: str | None = None,
    tag: str | None = None,
    text: str | None = None,
    catalogue: Catalogue | None = None,
) -> list[dict]:
    catalogue = catalogue or load(settings)
    entries = list(catalogue.entries.values())
    if category:
        entries = [e for e in entries if e.preset.category == category]
    if tag:
        entries = [e for e in entries if tag in e.preset.tags]
    if text:
        needle = text.lower()
        entries = [
            e
            for e in entries
            if needle
            in " ".join([e.preset.id, e.preset.name, e.preset.description, e.preset.base, *e.preset.tags]).lower()
        ]
    states = file_states(settings, client, [f for e in entries for f in e.files])
    free = _free(settings)
    return [describe(settings, e, states, free) for e in sorted(entries, key=lambda e: e.preset.id)]


def show(settings: Settings, client: redis.Redis | None, preset_id: str, catalogue: Catalogue | None = None) -> dict:
    catalogue = catalogue or load(settings)
    found = entry(catalogue, preset_id)
    return describe(settings, found, file_states(settings, client, found.files), _free(settings))
