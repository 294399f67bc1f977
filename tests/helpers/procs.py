"""Small process and network helpers for tests."""

from __future__ import annotations

import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
STANDIN_DIR = REPO / "tests" / "standin" / "comfyui"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count: int) -> int:
    """The first of `count` free ports in a row (one ComfyUI per GPU takes COMFYUI_PORT + n)."""
    for _ in range(100):
        first = free_port()
        if first + count > 65535:
            continue
        held = []
        try:
            for port in range(first, first + count):
                held.append(socket.socket())
                held[-1].bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError(f"no {count} free ports in a row")


def short_dir(prefix: str = "cd-") -> Path:
    """Unix socket paths are limited to ~107 bytes: pytest's tmp_path is too long for them."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll until `predicate()` is truthy; return its value or fail with `what`."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_exc})")


def peak_rss(pid: int) -> int:
    """The most memory (bytes) the process ever held resident: the kernel's high-water mark, VmHWM."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("VmHWM")).split()[1]) * 1024


def zombies(root_pid: int) -> list[str]:
    """Zombies among the descendants of `root_pid` (other tests run beside this one)."""
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for child in children:
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                out.append(f"{child.pid} {child.name()}")
        except psutil.NoSuchProcess:
            continue
    return out
