"""`python -m services.devtools jupyter|code-server`: exec the tool with the password in its environment.

The password goes through the environment (JUPYTER_TOKEN, PASSWORD), never the command line:
supervisord's API and /proc show every program's argv.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from services.common import credentials, service
from services.common.settings import Settings, inherited_environment

log = logging.getLogger("devtools")


def command(settings: Settings, tool: str, password: str) -> tuple[list[str], dict[str, str]]:
    env = inherited_environment()
    bin_dir = settings.devtools_dir / "bin"
    if tool == "jupyter":
        argv = [
            str(bin_dir / "jupyter"),
            "lab",
            "--ip",
            "0.0.0.0",
            "--port",
            str(settings.jupyter_port),
            "--no-browser",
            "--allow-root",
            f"--ServerApp.root_dir={settings.workspace}",
        ]
        env["JUPYTER_TOKEN"] = password
    else:
        argv = [
            str(bin_dir / "code-server"),
            "--bind-addr",
            f"0.0.0.0:{settings.code_server_port}",
            "--auth",
            "password",
            "--disable-telemetry",
            str(settings.workspace),
        ]
        env["PASSWORD"] = password
    return argv, env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.devtools")
    parser.add_argument("tool", choices=["jupyter", "code-server"])
    args = parser.parse_args(argv)
    settings = service.start(args.tool)
    password = credentials.dashboard_password(settings)
    if not password:
        log.error("no dashboard password yet (startup creates one): refusing to start %s open", args.tool)
        return 1
    program, env = command(settings, args.tool, password)
    if not os.path.exists(program[0]):
        log.error("%s is not installed in %s: it comes with the dev image", args.tool, settings.devtools_dir)
        return 1
    os.execve(program[0], program, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
