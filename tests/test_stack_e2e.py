"""The whole stack booted through the real entrypoint: programs, logs, control socket, kill -9 of each."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import time
import urllib.request

import pytest

from services.common import bus, messages, queue
from tests.helpers.procs import wait_for, zombies
from tests.helpers.stack import PASSWORD

pytestmark = pytest.mark.timeout(300)

PROGRAMS = ("redis", "front-door", "comfyui", "dashboard", "worker", "health")


def get_json(url: str, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_the_stack_runs_kills_and_stops(stack_factory):
    stack = stack_factory(LOG_MAX_BYTES="20000", LOG_BACKUPS="2").start()
    states = stack.wait_running()
    s = stack.settings

    # supervisorctl through the documented command, over the 0700 unix socket only.
    status = stack.ctl("status")
    for name in PROGRAMS:
        assert f"{name}" in status.stdout and "RUNNING" in status.stdout, status.stdout
    assert stat.S_IMODE(os.stat(s.paths.supervisor_socket).st_mode) == 0o700
    conf = (s.app_dir / "supervisord.conf").read_text()
    assert "[inet_http_server]" not in conf

    # The ComfyUI stand-in was launched by the comfyui program with the flags we build; a script reaches
    # it through the front door with the password as its bearer token.
    stats = wait_for(
        lambda: get_json(f"http://127.0.0.1:{s.comfyui_port}/system_stats", PASSWORD)[1].get("system"),
        30,
        what="ComfyUI stand-in",
    )
    argv = stats["argv"]
    assert "--cpu" in argv and str(s.paths.extra_model_paths) in argv
    assert f"sqlite:///{s.paths.comfyui_database}" in argv
    # The program's own pid runs ComfyUI's main.py: the launcher exec'ed it, no Python parent is left.
    cmdline = open(f"/proc/{states['comfyui']['pid']}/cmdline", "rb").read().split(b"\0")
    assert cmdline[1].endswith(b"main.py"), cmdline

    # A model placed on the volume is listed by ComfyUI through the generated extra_model_paths.yaml.
    (s.paths.models / "checkpoints" / "tiny.safetensors").write_bytes(b"x" * 10)
    code, listed = get_json(f"http://127.0.0.1:{s.comfyui_port}/models/checkpoints", PASSWORD)
    assert code == 200 and listed == ["tiny.safetensors"]

    # The dashboard refuses anonymous API calls and answers the password as a bearer token.
    assert get_json(f"http://127.0.0.1:{s.dashboard_port}/api/status")[0] == 401
    code, body = get_json(f"http://127.0.0.1:{s.dashboard_port}/api/status", PASSWORD)
    assert code == 200 and {x["name"] for x in body["services"]} >= set(PROGRAMS)

    # Per-service logs on the volume, and every service's lines on supervisord's stdout (docker logs).
    for name in PROGRAMS:
        assert s.paths.log_file(name).exists(), name
    wait_for(lambda: "comfyui | To see the GUI go to" in stack.output(), 20, what="comfyui lines on stdout")
    assert any(line.startswith("dashboard ") for line in stack.lines)
    # The startup report is in the run dir, each step timed.
    report = json.loads(s.paths.startup_report.read_text())
    assert [step["name"] for step in report["steps"]][:4] == ["run_dir", "comfyuis", "volume", "layout"]

    # kill -9 each program once: supervisord restarts it and the crash reaches the bus.
    client = bus.connect(s)
    for name in PROGRAMS:
        old_pid = stack.states()[name]["pid"]
        os.kill(old_pid, signal.SIGKILL)
        new = wait_for(
            lambda n=name, p=old_pid: (i := stack.states()[n])["statename"] == "RUNNING" and i["pid"] != p and i,
            60,
            0.2,
            what=f"{name} restarted",
        )
        assert new["pid"] != old_pid

        def crash_recorded(n: str = name, p: int = old_pid) -> bool:
            crashes = [messages.parse_event(x) for x in client.lrange(messages.crashes_key(), 0, -1)]
            return any(c.name == n and c.state == "EXITED" and c.expected is False for c in crashes)

        wait_for(crash_recorded, 30, 0.3, what=f"{name}'s crash on the bus")
    snapshot = bus.snapshot(client, "services")
    assert snapshot["comfyui"].state == "RUNNING"
    stack.wait_running()
    assert not zombies(stack.proc.pid)

    # Logs rotate at LOG_MAX_BYTES (20 kB here): each no-op task logs a line in the worker's log.
    app = queue.client(s)
    for _ in range(150):
        app.send_task(messages.TASK_PING, args=[time.time()]).get(timeout=30)
    app.close()
    backups = sorted(s.paths.logs.glob("worker.log.*"))
    assert backups and all(p.stat().st_size <= 20000 + 4096 for p in backups), backups
    assert len(backups) <= 2

    # SIGTERM to PID 1 (here: the entrypoint's process, now supervisord) stops everything cleanly.
    code = stack.stop()
    assert code == 0, stack.output()[-2000:]
    assert "Stopped server" in s.paths.log_file("comfyui").read_text()


def test_ctrl_c_stops_every_program(stack_factory):
    """`make run` in a terminal: Ctrl-C sends SIGINT to the whole foreground process group."""
    stack = stack_factory().start()
    pids = [info["pid"] for info in stack.wait_running().values() if info["pid"]]
    os.killpg(stack.proc.pid, signal.SIGINT)
    assert stack.proc.wait(30) == 0, stack.output()[-2000:]
    wait_for(
        lambda: not [p for p in pids if os.path.exists(f"/proc/{p}") and not _zombie(p)], 10, what="every program gone"
    )


def _zombie(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    except OSError:
        return True


CONTROL_PLANE = ("startup", "comfyui", "dashboard", "worker", "health", "events")


def _debug_services(output: str) -> set[str]:
    """The control-plane services that wrote a DEBUG line (each line starts with its service's name)."""
    return {m.group(1) for m in re.finditer(rf"^({'|'.join(CONTROL_PLANE)}) \S+Z DEBUG ", output, re.M)}


@pytest.mark.parametrize("level", ["DEBUG", None])
def test_log_level_reaches_every_control_plane_service(stack_factory, level):
    stack = stack_factory(**({"LOG_LEVEL": level} if level else {})).start()
    stack.wait_running()
    if level == "DEBUG":
        wait_for(lambda: _debug_services(stack.output()) >= set(CONTROL_PLANE), 30, what="DEBUG lines")
    else:
        # Up and answering: every service has logged its start by now, none at DEBUG.
        wait_for(lambda: "health" in stack.output() and "startup steps done" in stack.output(), 30)
        assert _debug_services(stack.output()) == set()
