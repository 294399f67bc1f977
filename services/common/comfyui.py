"""ComfyUI as the other services see it: whether it is installed, and one probe of its HTTP API.

The probe asks `/system_stats` (small and fast) and `/prompt` (the queue length); never `/object_info`
(1.6 MB, a quarter of a second): only a workflow analysis reads it, kept a few seconds.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from services.common import instances, timeouts
from services.common.errors import Unavailable
from services.common.instances import Instance
from services.common.settings import Settings

State = Literal["not_installed", "ready", "error", "unreachable"]
T = TypeVar("T")


def missing(settings: Settings) -> str | None:
    """Why ComfyUI cannot be started from these settings, or None when it can."""
    if not (settings.comfyui_dir / "main.py").is_file():
        return (
            f"ComfyUI is not installed: no main.py in COMFYUI_DIR={settings.comfyui_dir}. The rest of the"
            " stack runs without it; point COMFYUI_DIR at a ComfyUI checkout (or use an image that has"
            " one) and it starts within seconds"
        )
    if not settings.comfyui_python.exists():
        return f"COMFYUI_PYTHON={settings.comfyui_python} does not exist: point it at the Python of ComfyUI's venv"
    return None


def installed(settings: Settings) -> bool:
    return (settings.comfyui_dir / "main.py").is_file()


@dataclass
class Status:
    state: State
    message: str
    version: str | None = None
    devices: list[str] = field(default_factory=list)
    queue_remaining: int | None = None

    def as_dict(self) -> dict:
        if self.state != "ready":
            return {"state": self.state, "message": self.message}
        return {
            "state": "ready",
            "version": self.version,
            "devices": self.devices,
            "queue_remaining": self.queue_remaining,
        }


def _get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - a loopback URL we build
            return response.status, response.read(1 << 20)
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def probe(settings: Settings, timeout: float = timeouts.COMFYUI_PROBE, base: str | None = None) -> Status:
    """The first ComfyUI, or the one at `base`."""
    if not installed(settings):
        return Status("not_installed", f"no ComfyUI in {settings.comfyui_dir}")
    base = base or settings.comfyui_url
    try:
        status, body = _get(f"{base}/system_stats", timeout)
    except OSError as exc:
        return Status("unreachable", f"ComfyUI does not answer at {base}: {exc}")
    if status != 200:
        return Status("error", f"/system_stats answered {status}: see the comfyui log")
    try:
        stats = json.loads(body)
        version = stats["system"]["comfyui_version"]
        devices = [d.get("name") for d in stats.get("devices", [])]
    except (ValueError, KeyError, TypeError):
        return Status("error", "/system_stats answered something that is not ComfyUI's JSON")
    return Status("ready", f"ComfyUI {version} ready", version, devices, queue_remaining(base, timeout))


def ask_each(settings: Settings, ask: Callable[[Instance], T]) -> list[tuple[Instance, T]]:
    """`ask` of every ComfyUI (COMFYUI_GPUS), all at once; one alone is asked in this thread."""
    found = instances.current(settings)
    if len(found) == 1:
        return [(found[0], ask(found[0]))]
    with concurrent.futures.ThreadPoolExecutor(len(found), thread_name_prefix="ask") as pool:
        return list(zip(found, pool.map(ask, found), strict=True))


def probe_each(settings: Settings, timeout: float = timeouts.COMFYUI_PROBE) -> list[tuple[Instance, Status]]:
    return ask_each(settings, lambda i: probe(settings, timeout, i.url(settings)))


def queue_remaining(base: str, timeout: float = timeouts.COMFYUI_PROBE) -> int | None:
    """How many prompts the ComfyUI at `base` has queued or running; None when it does not answer."""
    try:
        _, body = _get(f"{base}/prompt", timeout)
        return int(json.loads(body)["exec_info"]["queue_remaining"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --- ComfyUI's own work: its queue and its last prompts, and the two controls over them ------------

RECENT = 10


def _call(settings: Settings, method: str, path: str, payload: dict | None = None, base: str | None = None) -> bytes:
    data = json.dumps(payload).encode() if payload is not None else None
    url = (base or settings.comfyui_url) + path  # http on loopback, built here
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeouts.COMFYUI_PROBE) as response:  # noqa: S310
            return response.read(8 << 20)
    except urllib.error.HTTPError as exc:
        raise Unavailable(f"ComfyUI answered {exc.code} to {method} {path}: see the comfyui log") from None
    except OSError as exc:
        raise Unavailable(f"ComfyUI is not answering ({exc}): it may be starting; see the services page") from None


def _prompt(item: list) -> dict:
    # A queue entry is [number, prompt_id, prompt, extra_data, outputs_to_execute].
    return {"number": item[0], "prompt_id": item[1], "nodes": len(item[2]) if isinstance(item[2], dict) else None}


def _finished(prompt_id: str, entry: dict) -> dict:
    status = entry.get("status") or {}
    times = {name: data.get("timestamp") for name, data in status.get("messages", []) if isinstance(data, dict)}
    started, ended = times.get("execution_start"), times.get("execution_success") or times.get("execution_error")
    error = next(
        (data.get("exception_message") for name, data in status.get("messages", []) if name == "execution_error"),
        None,
    )
    images = sum(len(out.get("images", [])) for out in (entry.get("outputs") or {}).values() if isinstance(out, dict))
    return {
        "prompt_id": prompt_id,
        "status": status.get("status_str", "unknown"),
        "started": started / 1000 if started else None,
        "seconds": (ended - started) / 1000 if started and ended else None,
        "error": error,
        "images": images,
    }


def work(settings: Settings, base: str | None = None) -> dict:
    """The prompts running and waiting, and the last ones finished, newest first, of the first ComfyUI or
    the one at `base`. Raises Unavailable."""
    queue = json.loads(_call(settings, "GET", "/queue", base=base))
    history = json.loads(_call(settings, "GET", f"/history?max_items={RECENT}", base=base))
    return {
        "running": [_prompt(item) for item in queue.get("queue_running", [])],
        "pending": [_prompt(item) for item in sorted(queue.get("queue_pending", []), key=lambda i: i[0])],
        "recent": [_finished(pid, entry) for pid, entry in reversed(list(history.items()))],
    }


def _each_answering(settings: Settings, ask: Callable[[Instance], T]) -> list[tuple[Instance, T]]:
    """`ask` of every ComfyUI at once, and the answers of those that gave one. Raises the first one's
    Unavailable when none did."""

    def attempt(instance: Instance) -> T | Unavailable:
        try:
            return ask(instance)
        except Unavailable as exc:
            return exc

    answers = ask_each(settings, attempt)
    answered = [(i, a) for i, a in answers if not isinstance(a, Unavailable)]
    if not answered:
        raise answers[0][1]
    return answered


def work_each(settings: Settings) -> dict:
    """`work` of every ComfyUI in one: each prompt names its `instance`, and the last ones finished are
    the newest across all. Raises Unavailable when none answers."""
    merged: dict[str, list[dict]] = {"running": [], "pending": [], "recent": []}
    for instance, found in _each_answering(settings, lambda i: work(settings, i.url(settings))):
        for key, items in merged.items():
            items.extend({**item, "instance": instance.program} for item in found[key])
    merged["recent"] = sorted(merged["recent"], key=lambda p: p["started"] or 0, reverse=True)[:RECENT]
    return merged


def _prompts(history: dict) -> list[dict]:
    """The API-format prompts of a `/history` answer, newest first."""
    prompts = []
    for entry in reversed(list(history.values())):
        item = entry.get("prompt") if isinstance(entry, dict) else None
        if isinstance(item, list) and len(item) > 2 and isinstance(item[2], dict):
            prompts.append(item[2])
    return prompts


def recent_prompts(settings: Settings, count: int = RECENT) -> list[dict]:
    """The API-format prompts of the last `count` finished runs of each ComfyUI, newest first, one of
    each in turn. Raises Unavailable when none answers."""

    def ask(instance: Instance) -> list[dict]:
        return _prompts(json.loads(_call(settings, "GET", f"/history?max_items={count}", base=instance.url(settings))))

    each = [prompts for _, prompts in _each_answering(settings, ask)]
    return [p for turn in itertools.zip_longest(*each) for p in turn if p is not None]


def interrupt(settings: Settings, base: str | None = None) -> None:
    """Stop the prompt that runs now (ComfyUI's own interrupt); the queue goes on."""
    _call(settings, "POST", "/interrupt", {}, base=base)


def clear_queue(settings: Settings, base: str | None = None) -> None:
    """Drop every waiting prompt; the running one finishes."""
    _call(settings, "POST", "/queue", {"clear": True}, base=base)


# `/object_info` is large (1.6 MB for ComfyUI's own nodes, more with custom ones): read it whole, rarely.
OBJECT_INFO_LIMIT = 256 << 20
OBJECT_INFO_TTL = 10.0
_node_types: tuple[float, tuple, set[str]] | None = None


def _start_stamp(settings: Settings) -> tuple:
    # The launcher begins a new node trace at each ComfyUI start: a restart (new nodes) changes this.
    try:
        stat = instances.current(settings)[0].trace(settings.paths).stat()
    except OSError:
        return (settings.comfyui_url, None)
    return (settings.comfyui_url, stat.st_mtime_ns, stat.st_size, stat.st_ino)


def node_types(settings: Settings) -> set[str] | None:
    """The node classes the running ComfyUI knows, or None when it does not answer (kept for a few
    seconds within one start of ComfyUI: an analysis of many workflows asks once)."""
    global _node_types
    now, stamp = time.monotonic(), _start_stamp(settings)
    if _node_types and _node_types[1] == stamp and now - _node_types[0] < OBJECT_INFO_TTL:
        return _node_types[2]
    try:
        with urllib.request.urlopen(settings.comfyui_url + "/object_info", timeout=timeouts.COMFYUI_PROBE * 4) as r:  # noqa: S310 - loopback, built here
            known = set(json.loads(r.read(OBJECT_INFO_LIMIT)))
    except (OSError, ValueError, TypeError):
        return None
    _node_types = (now, stamp, known)
    return known
