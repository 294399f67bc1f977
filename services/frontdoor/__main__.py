"""`python -m services.frontdoor`: check that nginx and its ports are there, then exec nginx.

startup wrote nginx.conf (services.common.door); this program only makes a missing binary or a taken
port one clear line, instead of nginx's own words after a restart loop.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from services.common import door, service
from services.common.ports import port_taken

log = logging.getLogger("front-door")

SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


def orphans(pid_file: Path) -> list[int]:
    """nginx workers left by a master that was killed (kill -9, OOM): they keep the ports open.

    The master was its process group's leader (supervisord starts each program in a group of its own,
    and this program became nginx by exec), so its workers carry its pid as their group id."""
    try:
        group = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return []
    if Path(f"/proc/{group}").exists():
        # Linux hands out no pid while a group of that number has members: a live process with the old
        # master's pid means our group is empty and the pid went to another program (after a reboot, the
        # system's own nginx): its workers are not ours to kill.
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            # Fields after the command name, which is in parentheses and may hold spaces.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if int(fields[2]) == group and command == "nginx":
            found.append(int(entry.name))
    return found


def reap(pid_file: Path) -> None:
    for pid in orphans(pid_file):
        log.warning("stopping nginx process %d left over from a front door that was killed", pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 5
    while orphans(pid_file) and time.monotonic() < deadline:
        time.sleep(0.05)


def main() -> int:
    service.arguments("services.frontdoor", __doc__)
    settings = service.start("front-door")
    # Debian puts nginx in /usr/sbin, which a user's PATH often lacks (host mode).
    binary = shutil.which(settings.front_door_nginx) or shutil.which(settings.front_door_nginx, path=SBIN)
    if binary is None:
        log.error(
            "%s is not installed: the front door needs nginx (`make run` installs it; the image has it)",
            settings.front_door_nginx,
        )
        return 1
    config = settings.paths.nginx_conf
    if not config.is_file():
        log.error("no front door config at %s: services.startup writes it, start the stack through it", config)
        return 1
    reap(settings.paths.front_door / "nginx.pid")
    for p in door.served(settings):
        address = door.listen_address(settings, p)
        if port_taken(address, p.public):
            log.error(
                "port %d on %s (%s) is already in use: stop what holds it or choose another port",
                p.public,
                address,
                p.title,
            )
            return 1
    for p in door.unprotected(settings):
        log.warning("FRONT_DOOR_OFF: %s's port %d has no login", p.title, p.public)
    shown = ", ".join(f"{p.name} :{p.public}" for p in door.served(settings))
    log.info("front door on %s", shown)
    argv = [binary, "-p", str(settings.paths.front_door), "-c", str(config)]
    sys.stderr.flush()
    os.execv(binary, argv)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
