"""Filling the local model cache (services/common/modelcache.py): copy each wanted model from the volume
(resumable from its .part, verified by size and by the sha256 we already know, renamed into place
whole), drop copies whose volume file changed or left, and evict the least recently used past the cap,
never a file a process has open or mapped. Plain functions, no Celery."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import redis

from services.common import comfyui, modelcache
from services.common.errors import Problem
from services.common.files import fsync_dir, locked
from services.common.hashing import RedisHashCache
from services.common.paths import PART
from services.common.settings import Settings
from services.common.workflows import formats, refs

log = logging.getLogger("worker.cache")

CHUNK = 8 << 20
RECENT_PROMPTS = 20


def recently_used(settings: Settings) -> list[str]:
    """ "folder/name" of the models the last prompts loaded, newest first (none while ComfyUI is away)."""
    try:
        prompts = comfyui.recent_prompts(settings, RECENT_PROMPTS)
    except Problem:
        return []
    keys: list[str] = []
    for prompt in prompts:
        try:
            found, _ = refs.models(refs.nodes(formats.from_data(prompt)))
        except Problem:
            continue
        keys += [f"{r.folder}/{r.name}" for r in found if r.folder]
    return list(dict.fromkeys(keys))


def _source(settings: Settings, key: str) -> Path:
    """The volume's file for "folder/name" (its folder resolved, as the engine and the hash cache name it)."""
    folder, _, name = key.partition("/")
    return settings.paths.model_file(folder, name)


def _known_sha256(client: redis.Redis | None, source: Path, stat: os.stat_result) -> str | None:
    if client is None:
        return None
    try:
        return RedisHashCache(client).get(source, stat.st_size, stat.st_mtime_ns)
    except redis.RedisError:
        return None


def copy(source: Path, target: Path, expected_sha256: str | None) -> None:
    """`source` to `target` through `target.part`, resumed from what the .part holds; raises OSError or
    ValueError (a copy that does not match) with the .part removed."""
    part = target.with_name(target.name + PART)
    target.parent.mkdir(parents=True, exist_ok=True)
    size = source.stat().st_size
    digest = hashlib.sha256() if expected_sha256 else None
    with open(source, "rb") as src, open(part, "ab+") as dst:
        done = dst.tell()
        if done > size:
            dst.truncate(0)
            done = 0
        if digest is not None and done:
            dst.seek(0)
            while chunk := dst.read(CHUNK):
                digest.update(chunk)
        src.seek(done)
        while chunk := src.read(CHUNK):
            dst.write(chunk)
            if digest is not None:
                digest.update(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    if part.stat().st_size != size:
        part.unlink(missing_ok=True)
        raise ValueError(
            f"the copy of {source.name} has {part.stat().st_size if part.exists() else 0} bytes, not {size}"
        )
    if digest is not None and digest.hexdigest() != expected_sha256:
        part.unlink(missing_ok=True)
        raise ValueError(f"the copy of {source.name} does not have the volume file's sha256")
    os.replace(part, target)
    fsync_dir(target.parent)


def _evict(cache: modelcache.Cache, state: modelcache.State, need: int, keep: set[str]) -> bool:
    """Room for `need` more bytes: least recently used first, never pinned, wanted now or in use."""
    held = modelcache.entries(cache)
    busy = modelcache.open_paths(cache.models)
    used = sum(held.values())
    for key in sorted(held, key=lambda k: state.used.get(k, 0.0)):
        if used + need <= cache.cap:
            break
        path = cache.models / key
        if key in state.pinned or key in keep or str(path.resolve()) in busy:
            continue
        path.unlink(missing_ok=True)
        state.sources.pop(key, None)
        used -= held[key]
        log.info("model cache: %s left (least recently used; the cap is %.1f GB)", key, cache.cap / 1e9)
    return used + need <= cache.cap


def sync(settings: Settings, client: redis.Redis | None) -> dict[str, int]:
    """One pass: forget stale copies, copy what is wanted, keep under the cap. Returns counts.

    One pass at a time (a lock file held without waiting: a pass already copying is left alone); the
    state's own lock is held only to read and change it, never during a copy, so a pin from the
    dashboard does not wait for a 20 GB copy."""
    cache = modelcache.of(settings)
    counts = {"copied": 0, "dropped": 0, "skipped": 0}
    if cache is None:
        return counts
    cache.root.mkdir(parents=True, exist_ok=True)
    with locked(cache.root / ".sync", wait=False) as mine:
        if not mine:
            return counts
        recent = recently_used(settings)
        with modelcache.changing(cache) as state:
            now = time.time()
            for key in recent:
                state.used[key] = max(state.used.get(key, 0.0), now)
            counts["dropped"] = _drop_stale(settings, cache, state)
            wanted = list(dict.fromkeys([*state.pinned, *recent]))
        for key in wanted:
            outcome = _bring(settings, client, cache, key, set(wanted))
            if outcome:
                counts[outcome] += 1
        with modelcache.changing(cache) as state:
            _evict(cache, state, 0, set(state.pinned))
    return counts


def _drop_stale(settings: Settings, cache: modelcache.Cache, state: modelcache.State) -> int:
    """Copies whose volume file changed or left (ComfyUI would still find them), unless in use."""
    busy = modelcache.open_paths(cache.models)
    dropped = 0
    for key in list(modelcache.entries(cache)):
        try:
            stat = _source(settings, key).stat()
            fresh = state.sources.get(key) == [stat.st_size, stat.st_mtime_ns]
        except (OSError, ValueError):
            fresh = False
        if not fresh and str((cache.models / key).resolve()) not in busy:
            (cache.models / key).unlink(missing_ok=True)
            state.sources.pop(key, None)
            dropped += 1
    return dropped


def _bring(
    settings: Settings, client: redis.Redis | None, cache: modelcache.Cache, key: str, wanted: set[str]
) -> str | None:
    """One wanted model onto local disk: room made, copied, recorded. Returns the count it adds to."""
    folder, _, name = key.partition("/")
    try:
        source, target = _source(settings, key), cache.file(folder, name)
        stat = source.stat()
    except (ValueError, OSError):
        return None  # not on the volume (yet): nothing to copy
    if target.exists():
        return None
    with modelcache.changing(cache) as state:
        room = _evict(cache, state, stat.st_size, wanted)
    if not room:
        log.warning("model cache: %s (%.1f GB) does not fit under the cap", key, stat.st_size / 1e9)
        return "skipped"
    try:
        copy(source, target, _known_sha256(client, source, stat))
    except (OSError, ValueError) as exc:
        log.warning("model cache: %s not copied: %s", key, exc)
        return "skipped"
    with modelcache.changing(cache) as state:
        state.sources[key] = [stat.st_size, stat.st_mtime_ns]
        state.used.setdefault(key, time.time())
    log.info("model cache: %s copied to this pod's disk (%.1f MB)", key, stat.st_size / 1e6)
    return "copied"
