"""`python -m services.devtools jupyter|code-server`: exec the tool behind the front door.

Behind the front door (the default) the tool listens on 127.0.0.1 with its own auth off: the front
door lets only logged-in users through, with the dashboard's rate-limited login. With FRONT_DOOR_OFF
naming it, it listens on its public port with the dashboard password as its own, passed through the
environment (JUPYTER_TOKEN, PASSWORD), never the command line: supervisord's API and /proc show argv.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from services.common import credentials, service, supervisor
from services.common.settings import Settings, inherited_environment

log = logging.getLogger("devtools")


def command(settings: Settings, tool: str, password: str | None) -> tuple[list[str], dict[str, str]]:
    """argv and environment; `password` is used only when the front door is off for this tool."""
    env = supervisor.without_control_plane(settings, inherited_environment())
    bin_dir = settings.devtools_dir / "bin"
    behind = not settings.door_open(tool)
    if tool == "jupyter":
        host, port = ("127.0.0.1", settings.jupyter_internal_port) if behind else ("0.0.0.0", settings.jupyter_port)
        argv = [
            str(bin_dir / "jupyter"),
            "lab",
            "--ip",
            host,
            "--port",
            str(port),
            "--no-browser",
            "--allow-root",
            f"--ServerApp.root_dir={settings.workspace}",
        ]
        if behind:
            # The Host header is the pod's public name, not loopback: Jupyter refuses that unless told.
            argv += ["--IdentityProvider.token=", "--ServerApp.password=", "--ServerApp.allow_remote_access=True"]
        else:
            env["JUPYTER_TOKEN"] = password or ""
    else:
        host, port = (
            ("127.0.0.1", settings.code_server_internal_port) if behind else ("0.0.0.0", settings.code_server_port)
        )
        argv = [
            str(bin_dir / "code-server"),
            "--bind-addr",
            f"{host}:{port}",
            "--auth",
            "none" if behind else "password",
            "--disable-telemetry",
            str(settings.workspace),
        ]
        if not behind:
            env["PASSWORD"] = password or ""
    return argv, env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.devtools")
    parser.add_argument("tool", choices=["jupyter", "code-server"])
    args = parser.parse_args(argv)
    settings = service.start(args.tool)
    password = None
    if settings.door_open(args.tool):
        password = credentials.dashboard_password(settings)
        if not password:
            log.error("no dashboard password yet (startup creates one): refusing to start %s open", args.tool)
            return 1
        log.warning("FRONT_DOOR_OFF=%s: %s checks the dashboard password itself, with no rate limit", *[args.tool] * 2)
    program, env = command(settings, args.tool, password)
    if not os.path.exists(program[0]):
        log.error("%s is not installed in %s: it comes with the dev image", args.tool, settings.devtools_dir)
        return 1
    os.execve(program[0], program, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
