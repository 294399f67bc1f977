"""Plain functions of the launcher: is ComfyUI there, is its port free, what argv it gets."""

from __future__ import annotations

import errno
import os
import socket

from services.common import modelpaths
from services.common.settings import Settings


def port_taken(host: str, port: int) -> bool:
    """ComfyUI only finds a taken port after its whole start-up (~14 s), so we look first."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Same option as ComfyUI's server, so a socket in TIME_WAIT does not count as taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def model_path_configs(settings: Settings) -> tuple[list[str], list[str]]:
    """The YAML files to pass, and notes on any left out (ComfyUI exits 1 on a bad one)."""
    paths = settings.paths
    files, notes = [], []
    for path in (paths.extra_model_paths, paths.user_extra_model_paths):
        if path == paths.user_extra_model_paths and not path.exists():
            continue
        trouble = modelpaths.problem(path)
        if trouble:
            notes.append(f"left out: {trouble}")
        else:
            files.append(str(path))
    return files, notes


def build_argv(settings: Settings, gpu: bool, model_configs: list[str]) -> list[str]:
    paths = settings.paths
    argv = [
        str(settings.comfyui_python),
        str(settings.comfyui_dir / "main.py"),
        "--listen",
        settings.comfyui_listen,
        "--port",
        str(settings.comfyui_port),
        "--output-directory",
        str(paths.output),
        "--input-directory",
        str(paths.input),
        "--user-directory",
        str(paths.user),
        # Its own database on the volume: the default lives in the ComfyUI tree, shared by every instance.
        "--database-url",
        f"sqlite:///{paths.comfyui_database}",
    ]
    for config in model_configs:
        argv += ["--extra-model-paths-config", config]
    if not gpu:
        argv.append("--cpu")
    if settings.comfyui_manager and (settings.comfyui_dir / "manager_requirements.txt").exists():
        argv.append("--enable-manager")
    return argv + settings.comfyui_extra_args()


def environment(settings: Settings, inherited: dict[str, str]) -> dict[str, str]:
    """ComfyUI's environment: pip installs by custom nodes go to the volume and are read back after a restart.

    The folder on PYTHONPATH holds only a sitecustomize that appends the volume's packages after the
    venv's own, so nothing installed at run time can shadow torch or the frontend.
    """
    paths = settings.paths
    site_dir = str(settings.app_dir / "config" / "comfyui-site")
    env = dict(inherited)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (site_dir, inherited.get("PYTHONPATH", "")) if p)
    env["COMFYUI_PACKAGES"] = str(paths.python_packages)
    env["PIP_TARGET"] = str(paths.python_packages)
    if settings.comfyui_constraints.is_file():
        env["PIP_CONSTRAINT"] = str(settings.comfyui_constraints)
    return env
