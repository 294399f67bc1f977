"""What every command shares: the `comfyui-docker` group, where it connects, the decorator that gives
each command `--json` and turns every CliError into one line and its exit code, and the output helpers."""

from __future__ import annotations

import functools
import json
import sys

import click
from rich.console import Console
from rich.table import Table

from services.cli.client import INTERRUPTED, Api, CliError, Target, read_config
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


def emit(state: State, answer: object, table: Table | str | None = None) -> None:
    if state.as_json or table is None:
        click.echo(json.dumps(answer, indent=2))
    elif isinstance(table, str):
        click.echo(table)  # not through Rich: `[INFO]` in a log line is no markup
    else:
        console.print(table)


def new_table(*columns: str) -> Table:
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for name in columns:
        table.add_column(name)
    return table


def human_size(value: object) -> str:
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
