"""Safe mode: a custom node that ends ComfyUI's start twice in a row is left out of the next starts.

The launcher records how each start ended (`record_previous_start`, before it starts the next one):
whether it got through its custom nodes (ComfyUI's import-times table is in its log) and, if not, the
node it was importing (the trace's last line). Two starts in a row ended at the same node: the next
starts leave that node out (ComfyUI's `--disable-all-custom-nodes` with `--whitelist-custom-nodes`
naming every other one), until the node is removed or someone asks for all nodes again
(`clear`: the dashboard's "retry with all nodes", `DELETE /api/comfyui/safe-mode`). Between failed
starts the launcher waits, doubling from 1 s up to 30 s.

The state lives in RUN_DIR: a new container tries every node again. With one ComfyUI per GPU each keeps
its own history; safe mode, once entered by one, applies to all (they load the same nodes).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from services.common import instances, nodes
from services.common.files import write_atomic
from services.common.instances import Instance
from services.common.settings import Settings

STARTS_IN_A_ROW = 2
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0
HISTORY_KEPT = 20


@dataclass(frozen=True)
class SafeMode:
    node: str  # the folder (or .py file) name left out
    path: str
    since: float
    error: str

    def as_dict(self) -> dict:
        return asdict(self)


def _state_file(settings: Settings) -> Path:
    # One for every ComfyUI (COMFYUI_GPUS): they load the same custom nodes.
    return settings.run_dir / "comfyui-safe-mode.json"


def history(settings: Settings, instance: Instance) -> list[dict]:
    try:
        return json.loads(instance.starts(settings.paths).read_text())
    except (OSError, ValueError):
        return []


def current(settings: Settings) -> SafeMode | None:
    try:
        return SafeMode(**json.loads(_state_file(settings).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def clear(settings: Settings) -> bool:
    """Every node again at the next start of every ComfyUI; True when safe mode was on."""
    for instance in instances.current(settings):
        write_atomic(instance.starts(settings.paths), "[]\n")
    try:
        _state_file(settings).unlink()
    except FileNotFoundError:
        return False
    return True


def record_previous_start(settings: Settings, instance: Instance) -> list[dict]:
    """How this ComfyUI's last start ended, appended to its history (before the trace is rotated)."""
    paths = settings.paths
    starts = instance.starts(paths)
    if not starts.exists():
        # This run dir's first start: the log's last start belongs to an earlier container, whose end
        # (a `docker stop` during start-up, say) says nothing about this one.
        write_atomic(starts, "[]\n")
        return []
    log = nodes.tail(paths.log_file(instance.program))
    segment = nodes.last_start(log)
    if segment is None:
        return history(settings, instance)
    trace = nodes.read_trace(instance.trace(paths))
    got_through = nodes.TABLE in segment
    entry = {"at": time.time(), "got_through": got_through, "node": None if got_through else (trace or [None])[-1]}
    entries = (history(settings, instance) + [entry])[-HISTORY_KEPT:]
    write_atomic(starts, json.dumps(entries) + "\n")
    return entries


def failed_in_a_row(entries: list[dict]) -> int:
    count = 0
    for entry in reversed(entries):
        if entry.get("got_through"):
            break
        count += 1
    return count


def backoff(entries: list[dict]) -> float:
    """Seconds to wait before this start: none after a start that got through."""
    failed = failed_in_a_row(entries)
    return 0.0 if failed == 0 else min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (failed - 1))


def decide(settings: Settings, entries: list[dict]) -> SafeMode | None:
    """Safe mode for this start: kept while its node is still there, entered after STARTS_IN_A_ROW starts
    that ended at the same node."""
    mode = current(settings)
    if mode is not None:
        if os.path.exists(mode.path):
            return mode
        clear(settings)  # the node is gone: nothing to leave out any more
        return None
    recent = entries[-STARTS_IN_A_ROW:]
    if len(recent) < STARTS_IN_A_ROW or any(e.get("got_through") or not e.get("node") for e in recent):
        return None
    node = recent[-1]["node"]
    if any(e["node"] != node for e in recent):
        return None
    mode = SafeMode(
        node=os.path.basename(node),
        path=node,
        since=time.time(),
        error=f"ended ComfyUI's start {STARTS_IN_A_ROW} times in a row while it was imported",
    )
    write_atomic(_state_file(settings), json.dumps(mode.as_dict()) + "\n")
    return mode


def whitelist(settings: Settings, mode: SafeMode) -> list[str]:
    """Every custom node entry ComfyUI would load, but the one left out."""
    names: set[str] = set()
    for root in (settings.paths.custom_nodes, settings.comfyui_dir / "custom_nodes"):
        try:
            names.update(e for e in os.listdir(root) if e != "__pycache__" and not e.startswith("."))
        except OSError:
            continue
    names.discard(mode.node)
    return sorted(names)
