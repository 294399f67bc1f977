"""`comfyui-docker`: every operation of the dashboard from a terminal, through its API.

Exit codes: 0 done; 1 the operation failed (a download that failed, a refused request); 2 usage or
connection error (a wrong option, the dashboard unreachable); 3 authentication (a wrong or missing
token); 130 Ctrl-C while waiting (the downloads go on)."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click
import websocket
from rich.console import Console
from rich.table import Table

from services.cli import progress
from services.cli.client import CONFIG_FILE, INTERRUPTED, USAGE, Api, CliError, Target, part, read_config
from services.cli.client import write_config as save_config
from services.common import credentials
from services.common.settings import SettingsError, load_settings

console = Console(highlight=False)
# With --json, stdout carries the API's answer alone: progress bars and notes go to stderr.
quiet_console = Console(highlight=False, stderr=True)


def _default_target() -> Target:
    """Inside the pod (or on the host of `make run`): the dashboard on loopback, its password as token."""
    try:
        settings = load_settings()
    except SettingsError:
        return Target("http://127.0.0.1:8080", None)
    try:
        token = credentials.dashboard_password(settings)
    except OSError:
        token = None  # not ours to read (another user's volume): the token must be given
    return Target(f"http://127.0.0.1:{settings.dashboard_port}", token)


class State:
    def __init__(self, url: str | None, token: str | None, as_json: bool) -> None:
        self.url, self.token, self.as_json = url, token, as_json

    @property
    def console(self) -> Console:
        return quiet_console if self.as_json else console

    def api(self) -> Api:
        """--url / COMFYUI_DOCKER_URL, else the address `login` saved, else this pod's dashboard; the token
        given, else the one saved for that address, else (this pod's address) the dashboard password."""
        saved = read_config()
        url = self.url or saved.get("url")
        token = self.token
        if url is None:
            default = _default_target()
            url, token = default.url, token or default.token
        elif token is None and url.rstrip("/") == str(saved.get("url", "")).rstrip("/"):
            token = saved.get("token")
        return Api(Target(url, token))


def command(group: click.Group, name: str | None = None, **kwargs):
    """A subcommand that takes --json too, and turns every CliError into its line and exit code."""

    def wrap(func):
        @group.command(name, **kwargs)
        @click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
        @click.pass_obj
        @functools.wraps(func)
        def run(state: State, as_json: bool, **args):
            state.as_json = state.as_json or as_json
            try:
                code = func(state, **args)
            except CliError as exc:
                click.echo(f"error: {exc.message}", err=True)
                sys.exit(exc.code)
            except KeyboardInterrupt:
                sys.exit(INTERRUPTED)
            sys.exit(code or 0)

        return run

    return wrap


def _print(state: State, answer: object, table: Table | str | None = None) -> None:
    if state.as_json or table is None:
        click.echo(json.dumps(answer, indent=2))
    elif isinstance(table, str):
        click.echo(table)  # not through Rich: `[INFO]` in a log line is no markup
    else:
        console.print(table)


def _table(*columns: str) -> Table:
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for name in columns:
        table.add_column(name)
    return table


def _size(value: object) -> str:
    if not isinstance(value, int | float):
        return ""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return ""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="COMFYUI_DOCKER_URL", help="The dashboard's address (default: this pod's).")
@click.option("--token", envvar="COMFYUI_DOCKER_TOKEN", help="The dashboard password or an API token.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
@click.version_option(package_name="comfyui-docker")
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None, as_json: bool) -> None:
    """One command line for the stack: services, logs, downloads, presets, models, workflows, tokens.

    It talks to the dashboard's API only, so it works inside the pod, on its host, or from a laptop
    with --url https://<pod>-8080.proxy.runpod.net and a token (or `comfyui-docker login` once)."""
    ctx.obj = State(url, token, as_json)


@command(cli)
@click.argument("url")
@click.option("--token", "login_token", prompt=True, hide_input=True, help="The dashboard password or an API token.")
def login(state: State, url: str, login_token: str) -> int:
    """Check URL and the token, then keep both for later commands (0600)."""
    api = Api(Target(url, login_token))
    api.get("/api/settings")
    path = save_config(Target(api.base, login_token), CONFIG_FILE)
    _print(state, {"url": api.base, "saved": str(path)}, f"logged in to {api.base}; saved in {path} (mode 0600)")
    return 0


@command(cli)
def status(state: State) -> int:
    """Services, health, ComfyUI and the machine, at a glance."""
    answer = state.api().get("/api/status")
    table = _table("service", "state", "pid", "note")
    for s in answer.get("services", []):
        table.add_row(s["name"], s["state"], str(s.get("pid") or ""), s.get("note") or "")
    health = answer.get("health", {})
    comfy = answer.get("comfyui", {})
    table.add_row("", "", "", "")
    table.add_row("health", health.get("state", "?"), "", "ready" if health.get("ready") else "not ready")
    table.add_row("comfyui", comfy.get("state", "?"), "", comfy.get("version") or comfy.get("message") or "")
    _print(state, answer, table)
    return 0


@command(cli)
def health(state: State) -> int:
    """Each health check and the overall state (exit 1 when unhealthy)."""
    answer = state.api().get("/api/status")["health"]
    table = _table("check", "status", "reason")
    for name, check in sorted(answer.get("checks", {}).items()):
        table.add_row(name, check["status"], check["reason"])
    table.add_row("overall", answer.get("state", "?"), "ready" if answer.get("ready") else "not ready")
    _print(state, answer, table)
    return 1 if answer.get("state") == "unhealthy" else 0


@cli.group()
def services() -> None:
    """List the programs; start, stop or restart one."""


@command(services, "list")
def services_list(state: State) -> int:
    """Each program with its state, pid and uptime."""
    answer = state.api().get("/api/services")
    table = _table("service", "state", "pid", "uptime")
    for s in answer["services"]:
        table.add_row(s["name"], s["state"], str(s.get("pid") or ""), f"{s['uptime']} s" if s.get("uptime") else "")
    _print(state, answer, table)
    return 0


def _control(action: str):
    @command(services, action)
    @click.argument("name")
    def run(state: State, name: str) -> int:
        answer = state.api().post(f"/api/services/{part(name)}/{action}")
        _print(state, answer, f"{answer['name']}: {answer['state']}")
        return 0

    run.__doc__ = f"{action.capitalize()} one program (comfyui, worker, ...)."
    return run


for _action in ("start", "stop", "restart"):
    _control(_action)


@command(cli)
@click.argument("service")
@click.option("-n", "--lines", default=50, show_default=True, help="How many of the last lines.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C ends).")
def logs(state: State, service: str, lines: int, follow: bool) -> int:
    """The end of one service's log."""
    api = state.api()
    answer = api.get(f"/api/logs/{part(service)}?lines={lines}")
    _print(state, answer, "\n".join(answer["lines"]) if answer["lines"] else "(empty)")
    if not follow:
        return 0
    sock = api.socket()
    sock.send(json.dumps({"follow": service}))
    try:
        while True:
            try:
                message = json.loads(sock.recv() or "{}")
            except websocket.WebSocketTimeoutException:
                continue
            if message.get("type") == "log.lines":
                for line in message["lines"]:
                    click.echo(json.dumps(line) if state.as_json else line)
    finally:
        sock.close()


@cli.group()
def downloads() -> None:
    """Queue, list, follow, cancel and retry downloads."""


def _jobs_table(jobs: list[dict]) -> Table:
    table = _table("id", "state", "file", "progress", "error")
    for j in jobs:
        done, total = j.get("bytes_done") or 0, j.get("total") or j.get("size")
        shown = f"{_size(done)} of {_size(total)}" if total else _size(done)
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
    _print(state, job, _jobs_table([job]))
    return progress.wait(api, [job["id"]], state.console) if wait else 0


@command(downloads, "list")
def downloads_list(state: State) -> int:
    """Every job, newest first."""
    answer = state.api().get("/api/downloads")
    _print(state, answer, _jobs_table(answer["downloads"]))
    return 0


@command(downloads, "show")
@click.argument("job_id")
def downloads_show(state: State, job_id: str) -> int:
    """One job."""
    job = state.api().get(f"/api/downloads/{part(job_id)}")
    _print(state, job, _jobs_table([job]))
    return 0


@command(downloads, "cancel")
@click.argument("job_id")
def downloads_cancel(state: State, job_id: str) -> int:
    """Cancel a job (a running one stops and removes its .part)."""
    job = state.api().delete(f"/api/downloads/{part(job_id)}")
    _print(state, job, _jobs_table([job]))
    return 0


@command(downloads, "retry")
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Follow it to its end with a progress bar.")
def downloads_retry(state: State, job_id: str, wait: bool) -> int:
    """Queue a failed or cancelled job again, from what its .part holds."""
    api = state.api()
    job = api.post(f"/api/downloads/{part(job_id)}/retry")
    _print(state, job, _jobs_table([job]))
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
    table = _table("id", "state", "category", "size", "name")
    for p in answer["presets"]:
        table.add_row(p["id"], p["state"], p["category"], _size(p["total_bytes"]), p["name"])
    _print(state, answer, table)
    return 0


@command(presets, "show")
@click.argument("preset_id")
def presets_show(state: State, preset_id: str) -> int:
    """One preset's files and their state."""
    answer = state.api().get(f"/api/presets/{part(preset_id)}")
    table = _table("state", "file", "size")
    for f in answer["files"]:
        table.add_row(f["state"], f"{f['folder']}/{f['filename']}", _size(f.get("size")) or f.get("approx_size") or "")
    _print(state, answer, table)
    return 0


@command(presets, "install")
@click.argument("preset_id")
@click.option("--wait", is_flag=True, help="Follow its downloads to their end with progress bars.")
def presets_install(state: State, preset_id: str, wait: bool) -> int:
    """Queue the downloads of its missing files."""
    api = state.api()
    answer = api.post(f"/api/presets/{part(preset_id)}/install")
    _print(state, answer, _jobs_table(answer["queued"]) if answer["queued"] else "nothing to download")
    return progress.wait(api, [j["id"] for j in answer["queued"]], state.console) if wait else 0


@command(presets, "remove")
@click.argument("preset_id")
def presets_remove(state: State, preset_id: str) -> int:
    """Delete its files that no other installed preset uses."""
    answer = state.api().post(f"/api/presets/{part(preset_id)}/remove")
    _print(state, answer, f"removed {len(answer.get('removed', []))} file(s), kept {len(answer.get('kept', []))}")
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
        _print(state, answer, "\n".join(answer["folders"]))
        return 0
    answer = api.get(f"/api/models/{part(folder)}")
    table = _table("file", "size", "where")
    for m in answer["models"]:
        where = "volume + local disk" + (" (pinned)" if m.get("pinned") else "") if m.get("cached") else "volume"
        table.add_row(m["name"], _size(m["size"]), where)
    _print(state, answer, table)
    return 0


@command(models, "rm")
@click.argument("folder")
@click.argument("name")
def models_rm(state: State, folder: str, name: str) -> int:
    """Delete one model file."""
    answer = state.api().delete(f"/api/models/{part(folder)}/{part(name)}")
    _print(state, answer, f"deleted {answer['deleted']}")
    return 0


@command(models, "pin")
@click.argument("folder")
@click.argument("name")
def models_pin(state: State, folder: str, name: str) -> int:
    """Keep a model on this pod's own disk (MODEL_CACHE_DIR), where ComfyUI reads it first."""
    answer = state.api().post(f"/api/models/{part(folder)}/{part(name)}/pin")
    _print(state, answer, f"pinned {folder}/{name}: the worker copies it to this pod's disk")
    return 0


@command(models, "unpin")
@click.argument("folder")
@click.argument("name")
def models_unpin(state: State, folder: str, name: str) -> int:
    """Let a model leave the local cache when room is needed."""
    answer = state.api().delete(f"/api/models/{part(folder)}/{part(name)}/pin")
    _print(state, answer, f"unpinned {folder}/{name}")
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
    table = _table("state", "file", "source")
    for m in answer["models"]:
        table.add_row(m["state"], f"{m['folder'] or '?'}/{m['name']}", m.get("url") or m.get("message") or "")
    for p in answer["node_packs"]:
        table.add_row("node pack", ", ".join(p["node_types"]), p.get("url") or p.get("message") or "")
    _print(state, answer, table)
    return 0


@command(workflow, "install")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--wait", is_flag=True, help="Follow its downloads and node packs to the end.")
def workflow_install(state: State, file: Path, wait: bool) -> int:
    """Queue every missing model and install every missing node pack."""
    api = state.api()
    view = api.post("/api/workflows/install", raw=_workflow_bytes(file))
    _print(state, view, f"install {view['id']}: {view['files_total']} file(s), {len(view['packs'])} node pack(s)")
    if not wait:
        return 0
    code = progress.wait(api, [f["job_id"] for f in view["files"] if f.get("job_id")], state.console)
    view = progress.wait_install(api, view["id"], state.console)
    return code or (1 if view["failures"] else 0)


@cli.group()
def tokens() -> None:
    """API tokens for scripts and other machines."""


@command(tokens, "create")
@click.argument("name")
def tokens_create(state: State, name: str) -> int:
    """Make a token (shown once)."""
    answer = state.api().post("/api/tokens", {"name": name})
    _print(state, answer, f"token {answer['id']} ({answer['name']}), shown once: {answer['token']}")
    return 0


@command(tokens, "list")
def tokens_list(state: State) -> int:
    """The tokens, without their secrets."""
    answer = state.api().get("/api/settings")["api_tokens"]
    table = _table("id", "name")
    for t in answer:
        table.add_row(t["id"], t["name"])
    _print(state, answer, table)
    return 0


@command(tokens, "revoke")
@click.argument("token_id")
def tokens_revoke(state: State, token_id: str) -> int:
    """Revoke a token at once."""
    answer = state.api().delete(f"/api/tokens/{part(token_id)}")
    _print(state, answer, f"revoked {answer['deleted']}")
    return 0


def main() -> None:
    try:
        cli.main(prog_name="comfyui-docker")
    except CliError as exc:  # raised outside a command
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(exc.code)
