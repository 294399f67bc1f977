"""ComfyUI as the other services see it: whether it is installed, and one probe of its HTTP API.

The probe asks `/system_stats` (small and fast) and `/prompt` (the queue length); never `/object_info`
(1.6 MB, a quarter of a second).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Literal

from services.common import timeouts
from services.common.settings import Settings

State = Literal["not_installed", "ready", "error", "unreachable"]


def missing(settings: Settings) -> str | None:
    """Why ComfyUI cannot be started from these settings, or None when it can."""
    if not (settings.comfyui_dir / "main.py").is_file():
        return (
            f"ComfyUI is not installed: no main.py in COMFYUI_DIR={settings.comfyui_dir}. The rest of the"
            " stack runs without it; point COMFYUI_DIR at a ComfyUI checkout (or use an image that has"
            " one) and it starts within seconds"
        )
    if not settings.comfyui_python.exists():
        return f"COMFYUI_PYTHON={settings.comfyui_python} does not exist: point it at the Python of ComfyUI's venv"
    return None


def installed(settings: Settings) -> bool:
    return (settings.comfyui_dir / "main.py").is_file()


@dataclass
class Status:
    state: State
    message: str
    version: str | None = None
    devices: list[str] = field(default_factory=list)
    queue_remaining: int | None = None

    def as_dict(self) -> dict:
        if self.state != "ready":
            return {"state": self.state, "message": self.message}
        return {
            "state": "ready",
            "version": self.version,
            "devices": self.devices,
            "queue_remaining": self.queue_remaining,
        }


def _get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - a loopback URL we build
            return response.status, response.read(1 << 20)
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def probe(settings: Settings, timeout: float = timeouts.COMFYUI_PROBE) -> Status:
    if not installed(settings):
        return Status("not_installed", f"no ComfyUI in {settings.comfyui_dir}")
    base = settings.comfyui_url
    try:
        status, body = _get(f"{base}/system_stats", timeout)
    except OSError as exc:
        return Status("unreachable", f"ComfyUI does not answer at {base}: {exc}")
    if status != 200:
        return Status("error", f"/system_stats answered {status}: see the comfyui log")
    try:
        stats = json.loads(body)
        version = stats["system"]["comfyui_version"]
        devices = [d.get("name") for d in stats.get("devices", [])]
    except (ValueError, KeyError, TypeError):
        return Status("error", "/system_stats answered something that is not ComfyUI's JSON")
    return Status("ready", f"ComfyUI {version} ready", version, devices, _queue_remaining(base, timeout))


def _queue_remaining(base: str, timeout: float) -> int | None:
    try:
        _, body = _get(f"{base}/prompt", timeout)
        return int(json.loads(body)["exec_info"]["queue_remaining"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
