"""Hot models on this pod's own disk: copies of volume models in MODEL_CACHE_DIR, which ComfyUI finds
first (the cache is the first path of every folder in extra_model_paths.yaml). Which: the ones pinned
("keep on this pod's disk") and the ones the last prompts used; the least recently used leave at the cap,
never one a process has open or mapped, and never the volume's own file. The worker fills it
(services/worker/cachefill.py); this module is its state, shared with the dashboard.

The state is one JSON file in the cache (pinned files, when each was last used, the volume file each
copy was made from), rewritten atomically under a lock file: the dashboard pins while the worker copies.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from services.common.files import locked, write_atomic
from services.common.paths import PART, check_folder, check_model_name
from services.common.settings import Settings

STATE = "cache.json"


@dataclass(frozen=True)
class Cache:
    root: Path
    cap: int  # bytes

    @property
    def models(self) -> Path:
        return self.root / "models"

    def file(self, folder: str, name: str) -> Path:
        check_folder(folder)
        return self.models / folder / check_model_name(name)


@dataclass
class State:
    pinned: list[str] = field(default_factory=list)  # "folder/name"
    used: dict[str, float] = field(default_factory=dict)  # "folder/name" -> last use (epoch seconds)
    sources: dict[str, list[int]] = field(default_factory=dict)  # "folder/name" -> [size, mtime_ns] copied


def of(settings: Settings) -> Cache | None:
    if settings.model_cache_dir is None:
        return None
    return Cache(settings.model_cache_dir, int(settings.model_cache_gb * 1e9))


def _read(cache: Cache) -> State:
    try:
        data = json.loads((cache.root / STATE).read_text())
    except (OSError, ValueError):
        return State()
    if not isinstance(data, dict):
        return State()
    return State(
        [str(k) for k in data.get("pinned", []) if isinstance(k, str)],
        {str(k): float(v) for k, v in (data.get("used") or {}).items() if isinstance(v, int | float)},
        {str(k): list(v) for k, v in (data.get("sources") or {}).items() if isinstance(v, list) and len(v) == 2},
    )


def read(cache: Cache) -> State:
    return _read(cache)


@contextlib.contextmanager
def changing(cache: Cache) -> Iterator[State]:
    """The state, for a change written back atomically when the block ends (one writer at a time)."""
    cache.root.mkdir(parents=True, exist_ok=True)
    with locked(cache.root / ".lock"):
        state = _read(cache)
        yield state
        body = {"pinned": sorted(set(state.pinned)), "used": state.used, "sources": state.sources}
        write_atomic(cache.root / STATE, json.dumps(body))


def pin(settings: Settings, folder: str, name: str, keep: bool) -> Cache:
    """Pin (or unpin) a volume model for the cache; raises ValueError for a name outside its folder."""
    cache = of(settings)
    if cache is None:
        raise LookupError("no model cache on this pod: set MODEL_CACHE_DIR to a folder on its own disk")
    key = f"{check_folder(folder)}/{check_model_name(name)}"
    with changing(cache) as state:
        if keep and key not in state.pinned:
            state.pinned.append(key)
        if not keep and key in state.pinned:
            state.pinned.remove(key)
        if keep:
            state.used[key] = time.time()
    return cache


def entries(cache: Cache) -> dict[str, int]:
    """Each cached copy ("folder/name") with its size; work files left out."""
    out: dict[str, int] = {}
    for root, _dirs, files in os.walk(cache.models):
        for name in files:
            if name.endswith(PART):
                continue
            path = Path(root) / name
            try:
                out[str(path.relative_to(cache.models))] = path.stat().st_size
            except OSError:
                continue
    return out


def summary(settings: Settings) -> dict | None:
    """For the overview and /api/status: where, how full, what is pinned."""
    cache = of(settings)
    if cache is None:
        return None
    held = entries(cache)
    state = read(cache)
    return {
        "dir": str(cache.root),
        "cap_bytes": cache.cap,
        "used_bytes": sum(held.values()),
        "files": len(held),
        "pinned": sorted(state.pinned),
    }


def open_paths(under: Path) -> set[str]:
    """The files under `under` that any process has open or mapped (/proc/<pid>/fd and maps): a cached
    model ComfyUI has loaded stays mapped until it is freed, and must not vanish under it."""
    prefix = str(under.resolve()) + "/"
    found: set[str] = set()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith(prefix):
                        found.add(target)
        with contextlib.suppress(OSError), open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                path = line.rstrip("\n").split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
                if path.startswith(prefix):
                    found.add(path.removesuffix(" (deleted)"))
    return found
