"""How the stack reaches supervisord: the environment its config file expands, and XML-RPC over its socket."""

from __future__ import annotations

import sys
import xmlrpc.client
from pathlib import Path

from services.common import door, instances
from services.common.settings import Settings, env_name
from services.common.unixhttp import UnixConnection


def config_file(settings: Settings) -> Path:
    return settings.app_dir / "supervisord.conf"


def environment(settings: Settings) -> dict[str, str]:
    """Every `%(ENV_X)s` that supervisord.conf uses, resolved, so supervisord never meets an unset one."""
    paths = settings.paths
    return {
        "APP_DIR": str(settings.app_dir),
        "WORKSPACE": str(settings.workspace),
        "RUN_DIR": str(settings.run_dir),
        "LOG_DIR": str(paths.logs),
        "PYTHON": sys.executable,
        "REDIS_SERVER": settings.redis_server,
        "REDIS_CONF": str(paths.redis_conf),
        "REDIS_AUTOSTART": _flag(settings.local_redis),
        # Space-separated, as supervisord's [include] reads it: ComfyUI's programs, then the dev tools'.
        "SUPERVISOR_INCLUDE": " ".join(
            (
                str(instances.supervisor_file(settings)),
                str(
                    settings.app_dir
                    / "config"
                    / "supervisor"
                    / ("devtools.conf" if door.devtools_installed(settings) else "none.conf")
                ),
            )
        ),
        "LOG_MAX_BYTES": str(settings.log_max_bytes),
        "LOG_BACKUPS": str(settings.log_backups),
        "PYTHONUNBUFFERED": "1",
    }


def without_control_plane(settings: Settings, inherited: dict[str, str]) -> dict[str, str]:
    """A program's environment minus every setting of this stack and what supervisord and startup add.

    For the programs that run other people's code (ComfyUI's custom nodes, the dev tools' terminals):
    the dashboard password, REDIS_URL with its password and the source tokens stay with the stack."""
    ours = {env_name(field) for field in Settings.model_fields} | set(environment(settings))
    ours.discard("PYTHONUNBUFFERED")
    ours.discard("RUNPOD_POD_ID")  # RunPod's, read by the stack too, and no secret: nodes may use it
    ours.discard("CUDA_VISIBLE_DEVICES")  # the user's choice of GPUs, read by the stack too: ComfyUI's first
    return {
        name: value
        for name, value in inherited.items()
        if name not in ours and not name.startswith(("SUPERVISOR_", "DASHBOARD_", "FRONT_DOOR_"))
    }


def _flag(value: bool) -> str:
    return "true" if value else "false"


class _UnixTransport(xmlrpc.client.Transport):
    """supervisor's own transport sets no timeout: a hung supervisord would hang its caller."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self._path = path
        self._timeout = timeout

    def make_connection(self, host):
        return UnixConnection(self._path, self._timeout)


def rpc(settings: Settings, timeout: float = 5.0) -> xmlrpc.client.ServerProxy:
    """supervisord's XML-RPC API over its unix socket (the only way in: there is no TCP port).

    Raises OSError when supervisord is not reachable and xmlrpc.client.Fault for a refused call.
    """
    transport = _UnixTransport(str(settings.paths.supervisor_socket), timeout)
    return xmlrpc.client.ServerProxy("http://localhost/RPC2", transport=transport)
