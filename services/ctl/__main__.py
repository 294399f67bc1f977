"""supervisorctl for the running stack: `python -m services.ctl status|restart X|tail -f X`."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from services.common import service, supervisor
from services.common.settings import inherited_environment

USAGE = """usage: python -m services.ctl [supervisorctl arguments]

supervisorctl on the stack's own socket: status, start/stop/restart NAME, tail [-f] NAME, ...
`python -m services.ctl help` lists supervisorctl's commands."""


def main() -> int:
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if sys.argv[1:2] and sys.argv[1].startswith("-"):
        # The socket and config are the stack's own: supervisorctl's options have no use here.
        print(f"{USAGE}\n\nunknown option {sys.argv[1]!r}", file=sys.stderr)
        return 2
    settings = service.start("ctl")
    local = Path(sys.executable).with_name("supervisorctl")
    binary = str(local) if local.exists() else shutil.which("supervisorctl")
    if binary is None:
        print("supervisorctl is not installed (pip install supervisor)", file=sys.stderr)
        return 2
    env = {**inherited_environment(), **supervisor.environment(settings)}
    argv = [binary, "-c", str(supervisor.config_file(settings)), *sys.argv[1:]]
    os.execve(binary, argv, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
