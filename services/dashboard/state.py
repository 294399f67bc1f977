"""What the dashboard shows, gathered by plain functions (the API, the pages and the socket share them)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import xmlrpc.client

import psutil
import redis

from services.common import (
    accel,
    bus,
    door,
    gpu,
    gpucheck,
    instances,
    jobs,
    logs,
    messages,
    modelcache,
    nodes,
    packages,
    presets,
    safemode,
    supervisor,
    timeouts,
    volume,
)
from services.common import comfyui as comfyui_status
from services.common.errors import Conflict, NotFound, Unavailable
from services.common.paths import ALL_FOLDERS, WORK_SUFFIXES, check_folder
from services.common.settings import Settings


def programs(settings: Settings) -> list[str]:
    """Programs a user may start, stop, restart and read the log of (never a path)."""
    return [*instances.services(settings), "jupyter", "code-server"]


def known_logs(settings: Settings) -> list[str]:
    return [*programs(settings), "supervisord"]


def log_names(settings: Settings) -> list[str]:
    """The logs worth a tab here: the dev tools' only in the image that has them."""
    dev = door.devtools_installed(settings)
    return [n for n in known_logs(settings) if dev or n not in ("jupyter", "code-server")]


def services(settings: Settings) -> list[dict]:
    try:
        infos = supervisor.rpc(settings, timeout=timeouts.SUPERVISOR_QUERY).supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Error) as exc:
        raise Unavailable(f"supervisord is not answering on its socket: {exc}") from None
    now = time.time()
    out = []
    wanted = programs(settings)
    comfyuis = set(instances.programs(settings))
    for info in infos:
        if info["name"] not in wanted:
            continue
        if info["name"] in ("jupyter", "code-server") and not (settings.devtools_dir / "bin" / info["name"]).exists():
            continue  # only the dev image has them
        running = info["statename"] == "RUNNING"
        out.append(
            {
                "name": info["name"],
                "state": info["statename"],
                "pid": info["pid"] or None,
                "uptime": int(now - info["start"]) if running and info["start"] else None,
                "description": info["description"],
                # The comfyui program stays RUNNING while it waits for ComfyUI to be installed: say so.
                "note": "waiting: ComfyUI is not installed"
                if info["name"] in comfyuis and running and comfyui_status.missing(settings)
                else None,
            }
        )
    return out


def with_failures(client: redis.Redis, listed: list[dict]) -> list[dict]:
    """Presets as listed, each missing file that the last download of it failed marked so, with the
    reason (a wrong sha256, a 404): the card says why a file is still missing."""
    try:
        failed = {}
        for job in sorted(jobs.all_jobs(client), key=lambda j: j.finished or j.updated):
            key = f"{job.folder}/{job.filename}"
            if job.state == "failed":
                failed[key] = job.error
            elif job.state in ("done", "queued", "running", "verifying"):
                failed.pop(key, None)
    except redis.RedisError:
        return listed
    for preset in listed:
        for f in preset["files"]:
            key = f"{f['folder']}/{f['filename']}"
            if f["state"] in ("missing", "wrong") and key in failed:
                f["state"], f["error"] = "failed", failed[key]
        counted = [f for f in preset["files"] if f["state"] in ("verified", "present")]
        preset["files_done"], preset["files_total"] = len(counted), len(preset["files"])
    return listed


def presets_with(settings: Settings, client: redis.Redis, folder: str, filename: str) -> list[dict]:
    """The presets (as listed) that hold this file: a download's end changes their cards."""
    catalogue = presets.load(settings)
    ids = [e.preset.id for e in catalogue.entries.values() if any(f.key == f"{folder}/{filename}" for f in e.files)]
    return with_failures(client, [presets.show(settings, client, i, catalogue) for i in ids])


# The catalogue last read, and which presets hold each file of it (folder/filename -> names).
_owners: tuple[object, dict[str, list[str]]] | None = None


def presets_of(settings: Settings, folder: str, filename: str | None) -> list[str]:
    """The presets a downloaded file belongs to (a download row says it); the map is made once per catalogue."""
    global _owners
    catalogue = presets.load(settings)
    if _owners is None or _owners[0] is not catalogue:
        mapping: dict[str, list[str]] = {}
        for e in catalogue.entries.values():
            for f in e.files:
                mapping.setdefault(f.key, []).append(e.preset.name)
        _owners = (catalogue, mapping)
    return sorted(set(_owners[1].get(f"{folder}/{filename}", [])))


def program_state(settings: Settings, name: str) -> str | None:
    """One program's state name (RUNNING, STOPPED, FATAL...); None when supervisord does not answer."""
    try:
        return next((s["state"] for s in services(settings) if s["name"] == name), None)
    except Unavailable:
        return None


def control(settings: Settings, name: str, action: str) -> dict:
    comfyuis = instances.programs(settings)
    if name == "comfyui" and comfyuis != ["comfyui"]:
        # One ComfyUI per GPU: "comfyui" is all of them, one after the other.
        done = [control(settings, program, action) for program in comfyuis]
        states = {d["state"] for d in done}
        return {"name": "comfyui", "state": states.pop() if len(states) == 1 else "MIXED", "pid": None}
    known = programs(settings)
    if name not in known:
        raise NotFound(f"no program {name!r}: one of {', '.join(known)}")
    if name == "dashboard" and action == "restart":
        return _restart_self(settings)
    rpc = supervisor.rpc(settings, timeout=timeouts.SUPERVISOR_CONTROL)
    try:
        if action in ("stop", "restart"):
            _unless_already(rpc.supervisor.stopProcess, name, "NOT_RUNNING")
        if action in ("start", "restart"):
            _unless_already(rpc.supervisor.startProcess, name, "ALREADY_STARTED")
        info = rpc.supervisor.getProcessInfo(name)
    except xmlrpc.client.Fault as fault:
        raise Unavailable(f"supervisord refused to {action} {name}: {fault.faultString}") from None
    except OSError as exc:
        raise Unavailable(f"supervisord is not answering on its socket: {exc}") from None
    return {"name": name, "state": info["statename"], "pid": info["pid"] or None}


# The helper waits this long so the answer reaches the browser before the dashboard stops.
SELF_RESTART_DELAY = 0.5


def _restart_self(settings: Settings) -> dict:
    """The dashboard's own restart, handed to a helper: done in this process, stopping the dashboard
    ends the request that was to start it again, and it stayed STOPPED. The helper runs in a session of
    its own, so supervisord's stop (which takes the dashboard's process group) leaves it alone; it asks
    supervisord to restart the dashboard, which then comes back on its own. The page reconnects."""
    script = f'sleep {SELF_RESTART_DELAY} && exec "$0" -m services.ctl restart dashboard'
    subprocess.Popen(
        ["sh", "-c", script, sys.executable],
        cwd=settings.app_dir,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # The program's pid as supervisord lists it: gunicorn's master, this worker's parent.
    return {"name": "dashboard", "state": "RESTARTING", "pid": os.getppid()}


def _unless_already(call, name: str, already: str) -> None:
    """A supervisord control call; the fault that says the program is already so is no error."""
    try:
        call(name)
    except xmlrpc.client.Fault as fault:
        if already not in fault.faultString:  # supervisord's fault names: NOT_RUNNING, ALREADY_STARTED
            raise


def log_tail(settings: Settings, name: str, lines: int) -> list[str]:
    known = known_logs(settings)
    if name not in known:
        raise NotFound(f"no log for {name!r}: one of {', '.join(known)}")
    return logs.tail(settings.paths.log_file(name), lines)


def comfyuis(settings: Settings, gpus: list[dict]) -> list[dict]:
    """Each ComfyUI (one per GPU with COMFYUI_GPUS) with its GPU, port and state, asked at once."""
    names = {g["index"]: g["name"] for g in gpus}
    out = []
    for instance, found in comfyui_status.probe_each(settings):
        # No --cuda-device: ComfyUI takes the first GPU it sees.
        name = names.get(instance.device if instance.device is not None else min(names, default=None))
        out.append({**instance.as_dict(), "gpu": name, **found.as_dict()})
    return out


def host(settings: Settings) -> dict:
    memory = psutil.virtual_memory()
    try:
        disk = shutil.disk_usage(settings.workspace)
        disk_info = {"total": disk.total, "used": disk.used, "free": disk.free}
    except OSError:
        disk_info = None
    report = gpu.probe()
    preflight = gpucheck.last(settings)
    return {
        "cpu": {"count": psutil.cpu_count(), "percent": psutil.cpu_percent(interval=None)},
        "memory": {"total": memory.total, "available": memory.available, "percent": memory.percent},
        "disk": disk_info,
        "gpus": [g.as_dict() for g in report.gpus],
        "gpu_note": report.error,
        # The launcher's GPU preflight at ComfyUI's last start (a mismatch names the tag that fixes it).
        "preflight": preflight.as_dict() if preflight else None,
        # triton and SageAttention as the probe found them at ComfyUI's last start on a GPU.
        "accelerators": accel.summary(accel.last(settings)) if report.gpus else None,
        "volume": _volume(settings),
        "model_cache": modelcache.summary(settings),
    }


def _volume(settings: Settings) -> dict:
    """What the workspace sits on (startup wrote it; health adds the read speed), and the mmap choice."""
    detected = volume.detect(settings)
    found = {**detected.as_dict(), **(volume.read(settings) or {})}  # a report of another version: filled in
    mmap, why = volume.mmap_choice(settings, detected)
    return {**found, "mmap": mmap, "mmap_reason": why}


def startup_report(settings: Settings) -> dict | None:
    try:
        return json.loads(settings.paths.startup_report.read_text())
    except (FileNotFoundError, ValueError):
        return None


def health(client: redis.Redis) -> dict:
    snap = bus.snapshot(client, messages.HealthCheck.kind)
    overall = snap.pop("_overall", None)
    return {
        "state": overall.state if isinstance(overall, messages.HealthState) else "unknown",
        "ready": overall.ready if isinstance(overall, messages.HealthState) else False,
        "checks": {
            k: {"status": v.status, "reason": v.reason} for k, v in snap.items() if isinstance(v, messages.HealthCheck)
        },
    }


def status(settings: Settings, client: redis.Redis) -> dict:
    try:
        service_list, service_error = services(settings), None
    except Unavailable as exc:
        service_list, service_error = [], str(exc)
    try:
        health_info = health(client)
    except (redis.RedisError, OSError) as exc:
        raise Unavailable(f"Redis is not answering: {exc}") from None
    host_info = host(settings)
    # When ComfyUI was asked: a reader can tell a fresh answer from a remembered one.
    observed_at = time.time()
    every = comfyuis(settings, host_info["gpus"])
    return {
        "services": service_list,
        "services_error": service_error,
        "startup": startup_report(settings),
        # The first ComfyUI, as a single one always was; then every one (COMFYUI_GPUS).
        "comfyui": {**every[0], "observed_at": observed_at},
        "comfyui_instances": every,
        "host": host_info,
        "health": health_info,
        # Which public ports the front door guards: one left open (FRONT_DOOR_OFF) must be seen.
        "ports": [p.as_dict() for p in door.ports(settings)],
        "nodes": {**nodes.report(settings).as_dict(), "safe_mode": _safe_mode(settings)},
        # <workspace>/python: its size and which node asked for what (services/common/packages.py).
        "packages": packages.summary(settings),
        "work": comfyui_work(settings),
    }


def comfyui_work(settings: Settings) -> dict | None:
    """The ComfyUIs' queues and last prompts; None while none answers (its card says so)."""
    try:
        return comfyui_status.work_each(settings)
    except Unavailable:
        return None


def _safe_mode(settings: Settings) -> dict | None:
    mode = safemode.current(settings)
    return mode.as_dict() if mode else None


def models(settings: Settings, folder: str) -> list[dict]:
    try:
        check_folder(folder)
    except ValueError as exc:
        raise NotFound(str(exc)) from None
    base = settings.paths.models / folder
    out = []
    try:
        entries = list(os.scandir(base))
    except FileNotFoundError:
        return []
    cache = modelcache.of(settings)
    held = modelcache.entries(cache) if cache else {}
    pinned = set(modelcache.read(cache).pinned) if cache else set()
    for entry in entries:
        if entry.name.startswith(".") or entry.name.endswith(WORK_SUFFIXES) or not entry.is_file():
            continue
        stat = entry.stat()
        key = f"{folder}/{entry.name}"
        out.append(
            {
                "name": entry.name,
                "size": stat.st_size,
                "modified": stat.st_mtime,
                "cached": key in held,  # also on this pod's disk, where ComfyUI reads it
                "pinned": key in pinned,
            }
        )
    return sorted(out, key=lambda m: m["name"].lower())


def pin_model(settings: Settings, folder: str, name: str, keep: bool) -> dict:
    try:
        path = settings.paths.model_file(folder, name)
        if keep and not path.is_file():
            raise NotFound(f"no model file {name!r} in {folder}")
        modelcache.pin(settings, folder, name, keep)
    except ValueError as exc:
        raise NotFound(str(exc)) from None
    except LookupError as exc:
        raise Conflict(str(exc)) from None
    except OSError as exc:
        raise Conflict(f"cannot write the model cache in {settings.model_cache_dir}: {exc.strerror}") from None
    return {"folder": folder, "name": name, "pinned": keep}


def delete_model(settings: Settings, folder: str, name: str) -> None:
    try:
        path = settings.paths.model_file(folder, name)
    except ValueError as exc:
        raise NotFound(str(exc)) from None
    if path.is_symlink() or not path.is_file():
        raise NotFound(f"no model file {name!r} in {folder}")
    path.unlink()


def folders() -> list[str]:
    return list(ALL_FOLDERS)


def downloads(client: redis.Redis) -> list[dict]:
    return [j.model_dump() for j in jobs.all_seen(client)]
