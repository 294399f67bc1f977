"""The front door: which public ports exist, which are behind the login, and nginx's config for them.

Every public web port is served by nginx. The dashboard's port goes straight to the dashboard (it checks
its own login); every other port asks the dashboard first (`auth_request` to `/_frontdoor/auth`) and
passes the request to a program that listens on 127.0.0.1 only. FRONT_DOOR_OFF leaves a port to its
program, listening on the public address itself.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from services.common import instances
from services.common.files import fill
from services.common.settings import Settings

# Where each protected port serves the dashboard's login page and asks the dashboard for a yes.
PREFIX = "/_frontdoor"
COOKIE = "comfyui_docker_session"
# nginx's workers, when it starts as root: they parse what the internet sends, so they hold no privilege.
WORKER_USER = "nobody"


@dataclass(frozen=True)
class Port:
    name: str  # the program behind it: comfyui (comfyui-0, comfyui-1...), jupyter, code-server, dashboard
    title: str
    public: int
    internal: int | None  # where the program listens on 127.0.0.1; None for the dashboard (its socket)
    protected: bool  # behind the login at the front door (False: FRONT_DOOR_OFF, the program is on its own)

    def as_dict(self) -> dict:
        return {"name": self.name, "port": self.public, "protected": self.protected}


def devtools_installed(settings: Settings) -> bool:
    return (settings.devtools_dir / "bin" / "jupyter").exists()


def ports(settings: Settings) -> list[Port]:
    """The public web ports of this stack, the dashboard's first."""
    found = [Port("dashboard", "The dashboard", settings.dashboard_port, None, True)]
    # One port per ComfyUI (COMFYUI_GPUS): 8188, 8189, ... each behind the login.
    found += [
        Port(i.program, i.title, i.public_port, i.internal_port, not settings.door_open("comfyui"))
        for i in instances.current(settings)
    ]
    if devtools_installed(settings):
        found += [
            Port(
                "jupyter",
                "JupyterLab",
                settings.jupyter_port,
                settings.jupyter_internal_port,
                not settings.door_open("jupyter"),
            ),
            Port(
                "code-server",
                "code-server",
                settings.code_server_port,
                settings.code_server_internal_port,
                not settings.door_open("code-server"),
            ),
        ]
    return found


def unprotected(settings: Settings) -> list[Port]:
    return [p for p in ports(settings) if not p.protected]


def listen_address(settings: Settings, p: Port) -> str:
    return settings.dashboard_listen if p.name in ("dashboard", "jupyter", "code-server") else settings.comfyui_listen


def served(settings: Settings) -> list[Port]:
    """The ports nginx listens on: the dashboard's and every protected one."""
    return [p for p in ports(settings) if p.protected]


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def worker_identity() -> tuple[str, int] | None:
    """(user and group line for nginx, the group's id) when nginx starts as root; None otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(WORKER_USER)
    except KeyError:
        return None
    group = grp.getgrgid(user.pw_gid).gr_name
    return f"user {WORKER_USER} {group};", user.pw_gid


def render(settings: Settings, log_level: str = "warn") -> str:
    """nginx.conf for these Settings."""
    config = settings.app_dir / "config" / "front-door"
    paths = settings.paths
    proxy_conf = str(config / "proxy.conf")
    servers = []
    for p in served(settings):
        template = (config / ("dashboard.conf" if p.name == "dashboard" else "protected.conf")).read_text()
        servers.append(
            fill(
                template,
                {
                    "name": p.name,
                    "title": p.title,
                    "listen": _host(listen_address(settings, p)),
                    "port": str(p.public),
                    "internal": str(p.internal),
                    "proxy_conf": proxy_conf,
                },
            )
        )
    real_ip = ""
    if settings.trusted_proxies:
        lines = [f"    set_real_ip_from {network};" for network in settings.trusted_proxies]
        lines += ["    real_ip_header X-Forwarded-For;", "    real_ip_recursive on;"]
        real_ip = "\n".join(lines) + "\n"
    identity = worker_identity()
    return fill(
        (config / "nginx.conf").read_text(),
        {
            "user": identity[0] if identity else "# not started as root: the workers run as this user",
            "door": str(paths.front_door),
            "log_level": log_level,
            "cookie": COOKIE,
            "socket": str(paths.dashboard_socket),
            "real_ip": real_ip,
            "servers": "\n".join(servers),
        },
    )


def nginx_log_level(level: str) -> str:
    return {"DEBUG": "info", "INFO": "warn", "WARNING": "warn", "ERROR": "error", "CRITICAL": "crit"}[level]


def prepare(settings: Settings) -> Path:
    """The front door's folder, writable by root, enterable by nginx's workers; returns the config path."""
    folder = settings.paths.front_door
    (folder / "tmp").mkdir(parents=True, exist_ok=True)
    identity = worker_identity()
    if identity is not None:
        os.chown(folder, 0, identity[1])
    folder.chmod(0o750)
    return settings.paths.nginx_conf
