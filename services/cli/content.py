"""The commands for what is on the volume: downloads, presets, models and workflows."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from services.cli import progress
from services.cli.base import State, cli, command, emit, human_size, new_table
from services.cli.client import USAGE, CliError, part


@cli.group()
def downloads() -> None:
    """Queue, list, follow, cancel and retry downloads."""


def _jobs_table(jobs: list[dict]) -> Table:
    table = new_table("id", "state", "file", "progress", "error")
    for j in jobs:
        done, total = j.get("bytes_done") or 0, j.get("total") or j.get("size")
        shown = f"{human_size(done)} of {human_size(total)}" if total else human_size(done)
        table.add_row(j["id"], j["state"], f"{j['folder']}/{j.get('filename') or '?'}", shown, j.get("error") or "")
    return table


@command(downloads, "add")
@click.argument("url")
@click.option("--folder", required=True, help="The model folder (checkpoints, loras, vae, ...).")
@click.option("--name", "filename", help="The file name (default: the server's or the URL's).")
@click.option("--sha256", help="The expected sha256: the file is refused unless it matches.")
@click.option("--wait", is_flag=True, help="Follow it to its end with a progress bar.")
def downloads_add(state: State, url: str, folder: str, filename: str | None, sha256: str | None, wait: bool) -> int:
    """Queue one file (twice queues nothing new)."""
    api = state.api()
    body = {"url": url, "folder": folder, **({"filename": filename} if filename else {})}
    job = api.post("/api/downloads", {**body, **({"sha256": sha256} if sha256 else {})})
    emit(state, job, _jobs_table([job]))
    return progress.wait(api, [job["id"]], state.console) if wait else 0


@command(downloads, "list")
def downloads_list(state: State) -> int:
    """Every job, newest first."""
    answer = state.api().get("/api/downloads")
    emit(state, answer, _jobs_table(answer["downloads"]))
    return 0


@command(downloads, "show")
@click.argument("job_id")
def downloads_show(state: State, job_id: str) -> int:
    """One job."""
    job = state.api().get(f"/api/downloads/{part(job_id)}")
    emit(state, job, _jobs_table([job]))
    return 0


@command(downloads, "cancel")
@click.argument("job_id")
def downloads_cancel(state: State, job_id: str) -> int:
    """Cancel a job (a running one stops and removes its .part)."""
    job = state.api().delete(f"/api/downloads/{part(job_id)}")
    emit(state, job, _jobs_table([job]))
    return 0


@command(downloads, "retry")
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Follow it to its end with a progress bar.")
def downloads_retry(state: State, job_id: str, wait: bool) -> int:
    """Queue a failed or cancelled job again, from what its .part holds."""
    api = state.api()
    job = api.post(f"/api/downloads/{part(job_id)}/retry")
    emit(state, job, _jobs_table([job]))
    return progress.wait(api, [job["id"]], state.console) if wait else 0


@command(downloads, "wait")
@click.argument("job_ids", nargs=-1, required=True)
def downloads_wait(state: State, job_ids: tuple[str, ...]) -> int:
    """Follow jobs to their end (exit 1 if any failed); Ctrl-C stops waiting, not the downloads."""
    return progress.wait(state.api(), list(job_ids), state.console)


@cli.group()
def presets() -> None:
    """Model bundles: list, show, install, remove."""


@command(presets, "list")
@click.option("--category", help="image, video, audio, upscale, controlnet, adapter, vae, text_encoder, other")
@click.option("--search", "q", help="Words in the name, description or tags.")
def presets_list(state: State, category: str | None, q: str | None) -> int:
    """Every preset with its state on the volume."""
    query = "&".join(f"{k}={part(v)}" for k, v in (("category", category), ("q", q)) if v)
    answer = state.api().get("/api/presets" + (f"?{query}" if query else ""))
    table = new_table("id", "state", "category", "size", "name")
    for p in answer["presets"]:
        table.add_row(p["id"], p["state"], p["category"], human_size(p["total_bytes"]), p["name"])
    emit(state, answer, table)
    return 0


@command(presets, "show")
@click.argument("preset_id")
def presets_show(state: State, preset_id: str) -> int:
    """One preset's files and their state."""
    answer = state.api().get(f"/api/presets/{part(preset_id)}")
    table = new_table("state", "file", "size")
    for f in answer["files"]:
        table.add_row(
            f["state"], f"{f['folder']}/{f['filename']}", human_size(f.get("size")) or f.get("approx_size") or ""
        )
    emit(state, answer, table)
    return 0


@command(presets, "install")
@click.argument("preset_id")
@click.option("--wait", is_flag=True, help="Follow its downloads to their end with progress bars.")
def presets_install(state: State, preset_id: str, wait: bool) -> int:
    """Queue the downloads of its missing files."""
    api = state.api()
    answer = api.post(f"/api/presets/{part(preset_id)}/install")
    emit(state, answer, _jobs_table(answer["queued"]) if answer["queued"] else "nothing to download")
    return progress.wait(api, [j["id"] for j in answer["queued"]], state.console) if wait else 0


@command(presets, "remove")
@click.argument("preset_id")
def presets_remove(state: State, preset_id: str) -> int:
    """Delete its files that no other installed preset uses."""
    answer = state.api().post(f"/api/presets/{part(preset_id)}/remove")
    emit(state, answer, f"removed {len(answer.get('removed', []))} file(s), kept {len(answer.get('kept', []))}")
    return 0


@cli.group()
def models() -> None:
    """The model files on the volume."""


@command(models, "list")
@click.argument("folder", required=False)
def models_list(state: State, folder: str | None) -> int:
    """The model folders, or the files in FOLDER."""
    api = state.api()
    if folder is None:
        answer = api.get("/api/models")
        emit(state, answer, "\n".join(answer["folders"]))
        return 0
    answer = api.get(f"/api/models/{part(folder)}")
    table = new_table("file", "size", "where")
    for m in answer["models"]:
        where = "volume + local disk" + (" (pinned)" if m.get("pinned") else "") if m.get("cached") else "volume"
        table.add_row(m["name"], human_size(m["size"]), where)
    emit(state, answer, table)
    return 0


@command(models, "rm")
@click.argument("folder")
@click.argument("name")
def models_rm(state: State, folder: str, name: str) -> int:
    """Delete one model file."""
    answer = state.api().delete(f"/api/models/{part(folder)}/{part(name)}")
    emit(state, answer, f"deleted {answer['deleted']}")
    return 0


@command(models, "pin")
@click.argument("folder")
@click.argument("name")
def models_pin(state: State, folder: str, name: str) -> int:
    """Keep a model on this pod's own disk (MODEL_CACHE_DIR), where ComfyUI reads it first."""
    answer = state.api().post(f"/api/models/{part(folder)}/{part(name)}/pin")
    emit(state, answer, f"pinned {folder}/{name}: the worker copies it to this pod's disk")
    return 0


@command(models, "unpin")
@click.argument("folder")
@click.argument("name")
def models_unpin(state: State, folder: str, name: str) -> int:
    """Let a model leave the local cache when room is needed."""
    answer = state.api().delete(f"/api/models/{part(folder)}/{part(name)}/pin")
    emit(state, answer, f"unpinned {folder}/{name}")
    return 0


@cli.group()
def workflow() -> None:
    """What a workflow needs, and installing it."""


def _workflow_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", USAGE) from None


@command(workflow, "analyze")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def workflow_analyze(state: State, file: Path) -> int:
    """FILE: a workflow's JSON, or a PNG/WebP/FLAC ComfyUI saved."""
    answer = state.api().post("/api/workflows/analyze", raw=_workflow_bytes(file))
    table = new_table("state", "file", "source")
    for m in answer["models"]:
        table.add_row(m["state"], f"{m['folder'] or '?'}/{m['name']}", m.get("url") or m.get("message") or "")
    for p in answer["node_packs"]:
        table.add_row("node pack", ", ".join(p["node_types"]), p.get("url") or p.get("message") or "")
    emit(state, answer, table)
    return 0


@command(workflow, "install")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--wait", is_flag=True, help="Follow its downloads and node packs to the end.")
def workflow_install(state: State, file: Path, wait: bool) -> int:
    """Queue every missing model and install every missing node pack."""
    api = state.api()
    view = api.post("/api/workflows/install", raw=_workflow_bytes(file))
    emit(state, view, f"install {view['id']}: {view['files_total']} file(s), {len(view['packs'])} node pack(s)")
    if not wait:
        return 0
    code = progress.wait(api, [f["job_id"] for f in view["files"] if f.get("job_id")], state.console)
    view = progress.wait_install(api, view["id"], state.console)
    return code or (1 if view["failures"] else 0)
