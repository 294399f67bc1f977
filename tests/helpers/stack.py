"""Boot the whole stack through the real entrypoint in a temp workspace, and tear it down."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import xmlrpc.client
from pathlib import Path

import requests

from services.common import supervisor
from services.common.settings import Settings, load_settings
from tests.helpers.procs import REPO, STANDIN_DIR, VENV_PYTHON, free_port, short_dir, wait_for

PASSWORD = "test-password-not-a-secret"


class Stack:
    """One stack: entrypoint -> startup -> supervisord -> programs, with the ComfyUI stand-in."""

    def __init__(self, root: Path, **env: str) -> None:
        self.root = root
        self.run_dir = short_dir("cds-")
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("COMFYUI_", "DASHBOARD_", "REDIS_", "FRONT_DOOR_"))
            },
            "WORKSPACE": str(root / "workspace"),
            "RUN_DIR": str(self.run_dir),
            "COMFYUI_DIR": str(STANDIN_DIR),
            "COMFYUI_PYTHON": str(VENV_PYTHON),
            "COMFYUI_LISTEN": "127.0.0.1",
            "COMFYUI_PORT": str(free_port()),
            "COMFYUI_INTERNAL_PORT": str(free_port()),
            "DASHBOARD_LISTEN": "127.0.0.1",
            "DASHBOARD_PORT": str(free_port()),
            "DASHBOARD_PASSWORD": PASSWORD,
            "DASHBOARD_WORKERS": "1",
            "DASHBOARD_THREADS": "4",
            "HEALTH_PORT": str(free_port()),
            "HEALTH_INTERVAL": "2",
            "STANDIN_STARTUP_SECONDS": "0.5",
            **env,
        }
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def settings(self) -> Settings:
        return load_settings(self.env)

    @property
    def workspace(self) -> Path:
        return Path(self.env["WORKSPACE"])

    def start(self) -> Stack:
        self.proc = subprocess.Popen(
            [str(REPO / "docker" / "entrypoint.sh")],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            text=True,
            errors="replace",
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def log_tails(self, lines: int = 15) -> str:
        """What a failed test prints of the stack: supervisord's output and the end of each service log."""
        parts = ["--- entrypoint and supervisord", *self.lines[-lines * 2 :]]
        try:
            logs = sorted(self.settings.paths.logs.glob("*.log"))
        except ValueError:  # a test of settings startup refuses: the output above says it all
            logs = []
        for log in logs:
            parts += [f"--- {log.name}", *log.read_text(errors="replace").splitlines()[-lines:]]
        return "\n".join(parts)

    def rpc(self, timeout: float = 60) -> xmlrpc.client.ServerProxy:
        # stopProcess answers only once the program is down: the worker's soft shutdown takes seconds.
        return supervisor.rpc(self.settings, timeout=timeout)

    def states(self) -> dict[str, dict]:
        return {info["name"]: info for info in self.rpc().supervisor.getAllProcessInfo()}

    def wait_running(
        self,
        names: tuple[str, ...] = ("redis", "front-door", "comfyui", "dashboard", "worker", "health"),
        timeout: float = 60,
    ) -> dict[str, dict]:
        def all_running() -> dict | None:
            if self.proc and self.proc.poll() is not None:
                raise AssertionError(f"the stack exited ({self.proc.returncode}):\n{self.output()[-3000:]}")
            states = self.states()
            return states if all(states.get(n, {}).get("statename") == "RUNNING" for n in names) else None

        states = wait_for(all_running, timeout, 0.2, what=f"{names} RUNNING\n{self.output()[-2000:]}")
        if {"front-door", "dashboard"} <= set(names):
            # RUNNING is supervisord's word after a second (startsecs); the dashboard's gunicorn, niced and
            # on a loaded machine, can take seconds more to bind its socket.
            wait_for(self._dashboard_answers, timeout, 0.2, what=f"the dashboard's /livez\n{self.output()[-2000:]}")
        return states

    def _dashboard_answers(self) -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{self.env['DASHBOARD_PORT']}/livez", timeout=2).ok
        except requests.RequestException:
            return False

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(VENV_PYTHON), "-m", "services.ctl", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        if self._reader:
            self._reader.join(5)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return self.proc.returncode
