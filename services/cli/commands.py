"""`comfyui-docker`: every operation of the dashboard from a terminal, through its API.

Exit codes: 0 done; 1 the operation failed (a download that failed, a refused request); 2 usage or
connection error (a wrong option, the dashboard unreachable); 3 authentication (a wrong or missing
token); 130 Ctrl-C while waiting (the downloads go on)."""

from __future__ import annotations

import json
import sys
import time

import click
import websocket

from services.cli import content  # noqa: F401 - registers the downloads, presets, models and workflow commands
from services.cli.base import State, cli, command, emit, new_table
from services.cli.client import AUTH, CONFIG_FILE, USAGE, Api, CliError, Target, part
from services.cli.client import write_config as save_config


@command(cli)
@click.argument("url")
@click.option("--token", "login_token", prompt=True, hide_input=True, help="The dashboard password or an API token.")
def login(state: State, url: str, login_token: str) -> int:
    """Check URL and the token, then keep both for later commands (0600)."""
    api = Api(Target(url, login_token))
    api.get("/api/settings")
    path = save_config(Target(api.base, login_token), CONFIG_FILE)
    emit(state, {"url": api.base, "saved": str(path)}, f"logged in to {api.base}; saved in {path} (mode 0600)")
    return 0


@command(cli)
def status(state: State) -> int:
    """Services, health, ComfyUI and the machine, at a glance."""
    answer = state.api().get("/api/status")
    table = new_table("service", "state", "pid", "note")
    for s in answer.get("services", []):
        table.add_row(s["name"], s["state"], str(s.get("pid") or ""), s.get("note") or "")
    health = answer.get("health", {})
    comfy = answer.get("comfyui", {})
    table.add_row("", "", "", "")
    table.add_row("health", health.get("state", "?"), "", "ready" if health.get("ready") else "not ready")
    table.add_row("comfyui", comfy.get("state", "?"), "", comfy.get("version") or comfy.get("message") or "")
    emit(state, answer, table)
    return 0


@command(cli)
def health(state: State) -> int:
    """Each health check and the overall state (exit 1 when unhealthy)."""
    answer = state.api().get("/api/status")["health"]
    table = new_table("check", "status", "reason")
    for name, check in sorted(answer.get("checks", {}).items()):
        table.add_row(name, check["status"], check["reason"])
    table.add_row("overall", answer.get("state", "?"), "ready" if answer.get("ready") else "not ready")
    emit(state, answer, table)
    return 1 if answer.get("state") == "unhealthy" else 0


@cli.group()
def services() -> None:
    """List the programs; start, stop or restart one."""


@command(services, "list")
def services_list(state: State) -> int:
    """Each program with its state, pid and uptime."""
    answer = state.api().get("/api/services")
    table = new_table("service", "state", "pid", "uptime")
    for s in answer["services"]:
        table.add_row(s["name"], s["state"], str(s.get("pid") or ""), f"{s['uptime']} s" if s.get("uptime") else "")
    emit(state, answer, table)
    return 0


def _control(action: str):
    @command(services, action)
    @click.argument("name")
    def run(state: State, name: str) -> int:
        api = state.api()
        answer = api.post(f"/api/services/{part(name)}/{action}")
        if answer.get("state") == "RESTARTING":
            answer = _back_after_restart(api, answer)
        emit(state, answer, f"{answer['name']}: {answer['state']}")
        return 0

    run.__doc__ = f"{action.capitalize()} one program (comfyui, worker, ...)."
    return run


for _action in ("start", "stop", "restart"):
    _control(_action)

# How long `services restart dashboard` waits for the dashboard to answer again.
SELF_RESTART_WAIT = 60.0


def _back_after_restart(api: Api, answer: dict) -> dict:
    """The dashboard restarts itself a moment after it answered: wait until another process answers, so
    that the next command is not refused by the dashboard still on its way down or up."""
    deadline = time.monotonic() + SELF_RESTART_WAIT
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            listed = api.get("/api/services")["services"]
        except CliError as exc:
            if exc.code == AUTH:
                raise
            continue  # down for the restart: that is the point
        now = next((s for s in listed if s["name"] == answer["name"]), None)
        if now and now["state"] == "RUNNING" and now.get("pid") != answer.get("pid"):
            return {"name": now["name"], "state": now["state"], "pid": now.get("pid")}
    raise CliError(f"{answer['name']} did not come back within {SELF_RESTART_WAIT:.0f} s: see `comfyui-docker status`")


@command(cli)
@click.argument("service")
@click.option("-n", "--lines", default=50, show_default=True, help="How many of the last lines.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C ends).")
def logs(state: State, service: str, lines: int, follow: bool) -> int:
    """The end of one service's log."""
    api = state.api()
    answer = api.get(f"/api/logs/{part(service)}?lines={lines}")
    emit(state, answer, "\n".join(answer["lines"]) if answer["lines"] else "(empty)")
    if not follow:
        return 0
    _follow(state, api, service)


def _follow(state: State, api: Api, service: str, attempts: int = 20) -> None:
    """Print the service's new lines until Ctrl-C; a dashboard restart under a long follow only
    reopens the stream (from the log's end), up to `attempts` failed connections in a row."""
    failures = 0
    while failures < attempts:
        try:
            sock = api.socket()
        except CliError as exc:
            if exc.code == AUTH:
                raise
            failures += 1
            time.sleep(1.0)
            continue
        failures = 0
        try:
            sock.send(json.dumps({"follow": service}))
            while True:
                try:
                    message = json.loads(sock.recv() or "{}")
                except websocket.WebSocketTimeoutException:
                    continue
                if message.get("type") == "log.lines":
                    for line in message["lines"]:
                        click.echo(json.dumps(line) if state.as_json else line)
        except (OSError, ValueError, websocket.WebSocketException):
            time.sleep(1.0)
        finally:
            sock.close()
    raise CliError(f"lost the dashboard while following the {service} log: is it running?", USAGE)


@cli.group()
def tokens() -> None:
    """API tokens for scripts and other machines."""


@command(tokens, "create")
@click.argument("name")
def tokens_create(state: State, name: str) -> int:
    """Make a token (shown once)."""
    answer = state.api().post("/api/tokens", {"name": name})
    emit(state, answer, f"token {answer['id']} ({answer['name']}), shown once: {answer['token']}")
    return 0


@command(tokens, "list")
def tokens_list(state: State) -> int:
    """The tokens, without their secrets."""
    answer = state.api().get("/api/settings")["api_tokens"]
    table = new_table("id", "name")
    for t in answer:
        table.add_row(t["id"], t["name"])
    emit(state, answer, table)
    return 0


@command(tokens, "revoke")
@click.argument("token_id")
def tokens_revoke(state: State, token_id: str) -> int:
    """Revoke a token at once."""
    answer = state.api().delete(f"/api/tokens/{part(token_id)}")
    emit(state, answer, f"revoked {answer['deleted']}")
    return 0


def main() -> None:
    try:
        cli.main(prog_name="comfyui-docker")
    except CliError as exc:  # raised outside a command
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(exc.code)
