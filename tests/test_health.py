"""The health checks made to fail for real: on /ready, in the CLI and on the bus."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import urllib.request

import pytest

from services.common import bus, messages
from services.health.checks import overall, run_checks
from services.startup.__main__ import run_steps
from tests.helpers.mounts import fill, tmpfs
from tests.helpers.procs import REPO, VENV_PYTHON, short_dir, wait_for

pytestmark = pytest.mark.timeout(300)


def http(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def cli(env: dict, *args: str) -> tuple[int, str]:
    result = subprocess.run(
        [str(VENV_PYTHON), "-m", "services.health", "check", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stdout


def by_name(body: dict) -> dict[str, dict]:
    return {c["name"]: c for c in body["checks"]}


# --- checks alone, against real files, mounts and sockets -------------------------------------------


def test_workspace_read_only_and_full(settings):
    with tmpfs(short_dir("cdh-") / "ro", read_only=True) as ws:
        result = run_checks(settings.model_copy(update={"workspace": ws}), ["workspace"])[0]
    assert result.status == "fail" and "is not writable: Read-only file system" in result.reason
    with tmpfs(short_dir("cdh-") / "full", size="8m") as ws:
        s = settings.model_copy(
            update={"workspace": ws, "workspace_critical_free_gb": 0.004, "workspace_warn_free_gb": 0.006}
        )
        assert run_checks(s, ["workspace"])[0].status == "ok"
        fill(ws, leave=5 * 2**20)
        warn = run_checks(s, ["workspace"])[0]
        fill(ws, leave=2 * 2**20)
        full = run_checks(s, ["workspace"])[0]
    assert warn.status == "warn" and "GB free" in warn.reason
    assert full.status == "fail" and "delete models or grow the volume" in full.reason


def test_model_paths_deleted_or_corrupted(settings):
    run_steps(settings)
    assert run_checks(settings, ["model_paths"])[0].status == "ok"
    settings.paths.extra_model_paths.write_text("workspace: [oops\n")
    corrupt = run_checks(settings, ["model_paths"])[0]
    assert corrupt.status == "fail" and "YAML syntax error at line 2" in corrupt.reason
    settings.paths.extra_model_paths.unlink()
    gone = run_checks(settings, ["model_paths"])[0]
    assert gone.status == "fail" and "does not exist: restart the stack to regenerate it" in gone.reason


def test_no_gpu_is_fine_unless_expected(settings):
    assert run_checks(settings, ["gpu"])[0].status == "ok"
    expected = run_checks(settings.model_copy(update={"health_expect_gpu": True}), ["gpu"])[0]
    assert expected.status == "fail" and "--gpus all" in expected.reason


def test_a_hanging_dependency_times_out_instead_of_hanging_health(settings):
    """A supervisord socket that accepts and never answers: the check ends, the others still report."""
    settings.run_dir.mkdir(exist_ok=True)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(settings.paths.supervisor_socket))
    server.listen()
    held = []
    threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
    try:
        results = run_checks(settings, ["supervisor", "gpu"], timeout=1.0)  # the RPC itself waits 3 s
        # The round returned while the hung check still runs: it did not wait for it.
        still_running = [t.name for t in threading.enumerate() if t.name.startswith("check")]
    finally:
        server.close()
    sup = {r.name: r for r in results}["supervisor"]
    assert sup.status == "fail" and "check timed out after 1 s" in sup.reason
    assert still_running
    assert {r.name: r for r in results}["gpu"].status == "ok"


def test_a_check_that_never_returns_does_not_hold_the_cli(tmp_path):
    """The CLI prints its report and exits while a check still hangs (Docker kills a HEALTHCHECK that
    outlives its timeout, and then shows no report at all)."""
    hang = (
        "import sys, threading\n"
        "from services.health import __main__ as health, checks\n"
        "checks.CHECKS['hang'] = lambda settings: threading.Event().wait()\n"
        "sys.exit(health.main(['check', '--only', 'hang', '--only', 'gpu']))\n"
    )
    run_dir = short_dir()
    env = {"PATH": os.environ["PATH"], "WORKSPACE": str(tmp_path / "ws"), "RUN_DIR": str(run_dir)}
    try:
        # The subprocess timeout only catches a hang: the report comes after the check's own 8 s.
        done = subprocess.run(
            [str(VENV_PYTHON), "-c", hang], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    assert done.returncode == 2, done.stderr  # degraded: the hung check is no liveness check
    assert "fail hang         check timed out after 8 s" in done.stdout and "Traceback" not in done.stderr


def test_states_table():
    from services.health.checks import Result

    ok = [Result(n, "ok", "") for n in ("workspace", "redis", "supervisor", "worker", "comfyui", "dashboard")]
    assert overall(ok) == ("healthy", True)
    starting = ok[:4] + [Result("comfyui", "warn", "starting"), ok[5]]
    assert overall(starting) == ("degraded", False)
    worker_down = ok[:3] + [Result("worker", "fail", ""), *ok[4:]]
    assert overall(worker_down) == ("degraded", False)
    redis_down = [ok[0], Result("redis", "fail", ""), *ok[2:]]
    assert overall(redis_down) == ("unhealthy", False)


# --- the live stack ---------------------------------------------------------------------------------


@pytest.fixture
def live(stack_factory):
    mount = short_dir("cdw-")
    with tmpfs(mount / "ws", size="64m") as ws:
        stack = stack_factory(
            WORKSPACE=str(ws),
            HEALTH_INTERVAL="1",
            WORKSPACE_WARN_FREE_GB="0.01",
            WORKSPACE_CRITICAL_FREE_GB="0.002",
            STANDIN_STARTUP_SECONDS="4",
        )
        stack.start()
        yield stack
        stack.stop()


def wait_check(stack, name: str, status: str, contains: str = "", timeout: float = 30) -> dict:
    port = stack.settings.health_port

    def seen() -> dict | None:
        code, body = http(port, "/ready")
        check = by_name(body).get(name) if body.get("checks") else None
        return body if check and check["status"] == status and contains in check["reason"] else None

    return wait_for(seen, timeout, 0.3, what=f"{name} {status} {contains!r}")


def test_live_stack_health(live):
    stack = live
    s = stack.settings
    stack.wait_running()
    client = bus.connect(s)

    # ComfyUI still importing nodes: "starting", never "dead"; not ready, not unhealthy.
    body = wait_check(stack, "comfyui", "warn", "starting", timeout=20)
    assert body["ready"] is False and body["state"] == "degraded"
    assert http(s.health_port, "/health")[0] == 200

    # Everything up: healthy and ready; the CLI reports every check.
    body = wait_check(stack, "comfyui", "ok", "ready")
    wait_for(lambda: http(s.health_port, "/ready")[0] == 200, 20, what="ready")
    code, out = cli(stack.env, "--json")
    report = json.loads(out)
    assert code == 0 and report["state"] == "healthy", out
    assert set(by_name(report)) == {
        "workspace",
        "model_paths",
        "supervisor",
        "redis",
        "worker",
        "dashboard",
        "front_door",
        "comfyui",
        "nodes",
        "gpu",
    }
    assert by_name(report)["comfyui"]["data"]["version"]
    door = by_name(report)["front_door"]
    assert door["status"] == "ok" and door["reason"] == "every port behind the login"
    assert (
        report["unprotected"] == []
        and {"name": "comfyui", "port": s.comfyui_port, "protected": True} in (door["data"]["ports"])
    )

    # The front door stopped: its check fails (ComfyUI's port answers nothing), and passes once it is back.
    stack.rpc().supervisor.stopProcess("front-door")
    wait_check(stack, "front_door", "fail", "the front door does not answer")
    stack.rpc().supervisor.startProcess("front-door")
    wait_check(stack, "front_door", "ok")

    # Worker alive but not consuming (SIGSTOP): only a real task through the queue sees it.
    worker = stack.states()["worker"]["pid"]
    family = [worker, *[int(p) for p in open(f"/proc/{worker}/task/{worker}/children").read().split()]]
    for pid in family:
        os.kill(pid, signal.SIGSTOP)
    try:
        body = wait_check(stack, "worker", "fail", "no worker took a no-op task")
        assert stack.states()["worker"]["statename"] == "RUNNING"  # the process check sees nothing wrong
        assert http(s.health_port, "/ready")[0] == 503 and http(s.health_port, "/health")[0] == 200
        code, out = cli(stack.env, "--only", "worker")
        assert code == 2 and "no worker took a no-op task" in out
        assert bus.snapshot(client, "health")["worker"].status == "fail"
    finally:
        for pid in family:
            os.kill(pid, signal.SIGCONT)
    wait_check(stack, "worker", "ok")

    # The worker stopped: the queue check fails and supervisor names the stopped program.
    stack.rpc().supervisor.stopProcess("worker")
    wait_check(stack, "worker", "fail", "no worker took a no-op task")
    wait_check(stack, "supervisor", "warn", "worker (STOPPED)")
    stack.rpc().supervisor.startProcess("worker")
    wait_check(stack, "worker", "ok")

    # The YAML deleted.
    s.paths.extra_model_paths.unlink()
    wait_check(stack, "model_paths", "fail", "does not exist")
    assert bus.snapshot(client, "health")["model_paths"].status == "fail"

    # The disk over the threshold.
    filler = fill(s.workspace, leave=1 * 2**20)
    wait_check(stack, "workspace", "fail", "delete models or grow the volume")
    code, _ = cli(stack.env, "--docker")
    assert code == 1
    filler.unlink()
    wait_check(stack, "workspace", "ok")

    # A program in FATAL: ComfyUI's port taken, so its launcher refuses until supervisord gives up.
    stack.rpc().supervisor.stopProcess("comfyui")
    wait_check(stack, "comfyui", "fail", "down")
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", s.comfyui_internal_port))
        holder.listen()
        try:
            stack.rpc().supervisor.startProcess("comfyui")
        except Exception:
            pass
        body = wait_check(stack, "supervisor", "fail", "comfyui is FATAL", timeout=60)
    assert "already in use" in by_name(body)["supervisor"]["reason"]
    assert body["state"] == "degraded" or body["state"] == "unhealthy"
    assert bus.snapshot(client, "health")["supervisor"].status == "fail"

    # Redis stopped: unhealthy, /health answers 503, the CLI exits 1.
    stack.rpc().supervisor.stopProcess("redis")
    wait_for(lambda: http(s.health_port, "/health")[0] == 503, 30, what="/health 503")
    code, out = cli(stack.env)
    assert code == 1 and "Redis does not answer" in out
    # The worker check says why it cannot ask, at once: Celery alone retries a gone broker for seconds,
    # long enough for Docker's HEALTHCHECK to kill the CLI with no output at all.
    assert "worker       cannot reach the queue: Redis does not answer" in out
    stack.rpc().supervisor.startProcess("redis")
    wait_check(stack, "redis", "ok")
    # Back on the bus once Redis is: the overall state is published again.
    wait_for(lambda: isinstance(bus.snapshot(client, "health").get("_overall"), messages.HealthState), 20)


def test_comfyui_answering_500(stack_factory):
    stack = stack_factory(STANDIN_FAIL_STATUS="500", HEALTH_INTERVAL="1").start()
    stack.wait_running()
    body = wait_check(stack, "comfyui", "fail", "/system_stats answered 500")
    assert body["ready"] is False
