"""Installing a workflow's node packs: clone each at its commit, its requirements onto the volume under
the venv's pins (never touching torch), one ComfyUI restart, then ComfyUI's import report says whether
each pack loaded. Plain functions, no Celery; every step is published on the bus."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
import xmlrpc.client
from pathlib import Path

import redis

from services.common import comfyui, instances, nodes, packages, supervisor, timeouts
from services.common.messages import NodePackInstall, WorkflowInstall
from services.common.settings import Settings, inherited_environment
from services.common.workflows import install as workflow_install

log = logging.getLogger("worker.nodepacks")

GIT_TIMEOUT = 600
PIP_TIMEOUT = 1800
READY_TIMEOUT = 300  # a ComfyUI start with many nodes (and the Manager's fetches) takes a while
OUTPUT_TAIL = 600  # characters of a failed command's output in the message


def _run(argv: list[str], cwd: Path | None, env: dict[str, str], timeout: int) -> str | None:
    """None when the command succeeded, else the end of what it said."""
    try:
        done = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return f"{argv[0]} {argv[1]} took longer than {timeout} s"
    except OSError as exc:
        return f"cannot run {argv[0]}: {exc.strerror}"
    if done.returncode == 0:
        return None
    said = (done.stderr.strip() or done.stdout.strip())[-OUTPUT_TAIL:]
    return said or f"{argv[0]} {argv[1]} exited with {done.returncode}"


def _git_env(settings: Settings) -> dict[str, str]:
    env = supervisor.without_control_plane(settings, inherited_environment())
    env["GIT_TERMINAL_PROMPT"] = "0"  # a private or mistyped repository fails at once, never asks
    return env


def clone(settings: Settings, pack: NodePackInstall) -> str | None:
    """The pack in custom_nodes/<name> at its commit (recorded in `pack.commit`); None or what went wrong.
    It is built beside and moved in whole: ComfyUI never sees half a clone."""
    name = workflow_install.pack_folder(pack.url)
    target = settings.paths.custom_nodes / name
    if target.exists():
        pack.state, pack.message = "skipped", f"custom_nodes/{name} is there already: left as it is"
        return None
    staging = settings.paths.node_staging / name
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    env = _git_env(settings)
    error = _run(["git", "clone", "--quiet", pack.url, str(staging)], None, env, GIT_TIMEOUT)
    if error is None and pack.commit:
        error = _run(["git", "checkout", "--quiet", pack.commit], staging, env, GIT_TIMEOUT)
        if error:
            error = f"commit {pack.commit} is not in {pack.url}: {error}"
    if error is None:
        error = _run(["git", "submodule", "update", "--init", "--recursive", "--quiet"], staging, env, GIT_TIMEOUT)
    if error is None:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=staging, env=env, capture_output=True, text=True, check=False
        )
        pack.commit = head.stdout.strip() or pack.commit
        settings.paths.custom_nodes.mkdir(parents=True, exist_ok=True)
        staging.rename(target)
        return None
    shutil.rmtree(staging, ignore_errors=True)
    return error


def requirements(settings: Settings, name: str) -> str | None:
    """pip install -r requirements.txt with ComfyUI's python, onto the volume, the venv pinned."""
    wanted = settings.paths.custom_nodes / name / "requirements.txt"
    if not wanted.is_file():
        return None
    packages.write_constraints(settings)
    env = supervisor.without_control_plane(settings, inherited_environment())
    env.update(packages.pip_environment(settings, env))
    argv = [str(settings.comfyui_python), "-m", "pip", "install", "--no-input", "--disable-pip-version-check"]
    return _run([*argv, "-r", str(wanted)], wanted.parent, env, PIP_TIMEOUT)


def _publish(client: redis.Redis, record: WorkflowInstall) -> None:
    try:
        workflow_install.save(client, record)
    except redis.RedisError as exc:
        log.warning("workflow install %s: cannot publish its state (%s)", record.id, exc)


# States in which a ComfyUI is meant to run: a restart brings it back.
ALIVE = ("RUNNING", "STARTING", "BACKOFF")


def restart_comfyui(settings: Settings) -> str | None:
    """Restart every ComfyUI and wait until they answer; None, or why the packs could not be checked."""
    programs = instances.programs(settings)
    try:
        rpc = supervisor.rpc(settings, timeout=timeouts.SUPERVISOR_CONTROL)
        running = [p for p in programs if rpc.supervisor.getProcessInfo(p)["statename"] in ALIVE]
        if not running:
            return "ComfyUI is stopped: the packs load when it is started again"
        for program in running:
            try:
                rpc.supervisor.stopProcess(program)
            except xmlrpc.client.Fault as fault:
                if "NOT_RUNNING" not in fault.faultString:
                    raise
            rpc.supervisor.startProcess(program, False)
    except (OSError, xmlrpc.client.Fault) as exc:
        return f"supervisord could not restart ComfyUI: {exc}"
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        ready = all(status.state == "ready" for i, status in comfyui.probe_each(settings) if i.program in running)
        if ready and nodes.report(settings).state == "loaded":
            return None
        time.sleep(1.0)
    return f"ComfyUI was not ready {READY_TIMEOUT} s after the restart: see the {running[0]} log"


def run(settings: Settings, client: redis.Redis, install_id: str) -> None:
    record = workflow_install.get(client, install_id)
    if record is None or record.restart != "pending":
        return  # unknown, or a second delivery of a finished install
    installed = []
    for pack in record.packs:
        if pack.state != "queued":
            continue
        pack.state = "cloning"
        _publish(client, record)
        try:
            error = clone(settings, pack)
            if error is None and pack.state == "cloning":
                pack.state = "installing"
                _publish(client, record)
                error = requirements(settings, workflow_install.pack_folder(pack.url))
                if error is None:
                    pack.state = "installed"
                    installed.append(pack)
        except OSError as exc:  # the volume itself (full, read-only): the install says so, never hangs
            error = f"cannot write custom_nodes: {exc.strerror or exc}"
        if error is not None:
            pack.state, pack.message = "failed", error
            log.warning("node pack %s: %s", pack.url, error)
        _publish(client, record)
    if not installed:
        record.restart = "done"
        _publish(client, record)
        return
    record.restart = "restarting"
    _publish(client, record)
    problem = restart_comfyui(settings)
    if problem is None:
        report = {n.name: n for n in nodes.report(settings).nodes}
        for pack in installed:
            node = report.get(workflow_install.pack_folder(pack.url))
            pack.loaded = node is not None and node.status == "loaded"
            if not pack.loaded:
                pack.message = (node.error if node else None) or "ComfyUI did not import it: see the comfyui log"
    record.restart, record.message = ("done", None) if problem is None else ("failed", problem)
    _publish(client, record)
