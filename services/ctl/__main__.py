"""supervisorctl for the running stack: `python -m services.ctl status|restart X|tail -f X`."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from services.common import service, supervisor
from services.common.settings import inherited_environment


def main() -> int:
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
