"""The image, built from the real docker/Dockerfile by a real Docker engine, and run as a container.

The build replaces only what these machines cannot reach (tests/helpers/docker.py, and the README's
list). The container runs with host networking on free ports, the volume a folder of this test.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.helpers import docker as engine
from tests.helpers.fileserver import FileServer
from tests.helpers.procs import REPO, free_port, wait_for

pytestmark = [
    pytest.mark.timeout(1500),
    pytest.mark.skipif(os.geteuid() != 0, reason="dockerd runs as root"),
]

PASSWORD = "container-test-password"
MIB = 1024 * 1024
PROGRAMS = ("redis", "comfyui", "dashboard", "worker", "health", "events", "front-door")


class Container:
    def __init__(self, name: str, workspace: Path, ports: dict[str, int]) -> None:
        self.name, self.workspace, self.ports = name, workspace, ports

    def inspect(self) -> dict:
        return json.loads(engine.docker("inspect", self.name).stdout)[0]

    def health(self) -> str:
        return self.inspect()["State"]["Health"]["Status"]

    def exec(self, *args: str, check: bool = True):
        return engine.docker("exec", self.name, *args, check=check, timeout=60)

    def logs(self) -> str:
        out = engine.docker("logs", self.name)
        return out.stdout + out.stderr

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.ports['DASHBOARD_PORT']}"

    def api(self, method: str, path: str, **kw) -> requests.Response:
        headers = {"Authorization": f"Bearer {PASSWORD}"}
        return requests.request(method, f"{self.base}{path}", headers=headers, timeout=30, **kw)


@pytest.fixture(scope="module")
def daemon():
    started = engine.start_engine()
    try:
        yield
    finally:
        engine.cleanup()
        engine.stop_engine(started)


@pytest.fixture(scope="module")
def image(daemon, tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    repo = engine.StandinRepo(root)
    try:
        seconds = engine.build(repo, root / "build.log")
        size = int(engine.docker("image", "inspect", engine.IMAGE, "--format", "{{.Size}}").stdout)
        print(f"image built in {seconds:.0f} s, {size / 1e9:.2f} GB")
        yield engine.IMAGE
    finally:
        repo.close()


@pytest.fixture(scope="module")
def container(image, tmp_path_factory):
    workspace = tmp_path_factory.mktemp("volume")
    ports = {name: free_port() for name in ("COMFYUI_PORT", "COMFYUI_INTERNAL_PORT", "DASHBOARD_PORT", "HEALTH_PORT")}
    name = f"cdtest-{os.getpid()}"
    env = {
        **{k: str(v) for k, v in ports.items()},
        "DASHBOARD_PASSWORD": PASSWORD,
        "HEALTH_EXPECT_GPU": "false",  # no GPU here: the one setting changed for this machine
        "HEALTH_INTERVAL": "2",
        "DOWNLOADS_ALLOW_PRIVATE_HOSTS": "1",  # the file server is this machine's 127.0.0.1
        "DOWNLOADS_RESERVE_MB": "0",
        "STANDIN_STARTUP_SECONDS": "0.5",
    }
    command = ["run", "-d", "--name", name, "--network=host", "--health-interval=2s", "--health-start-period=60s"]
    command += ["--health-timeout=20s", "--health-retries=2", "-v", f"{workspace}:/workspace"]
    for key, value in env.items():
        command += ["-e", f"{key}={value}"]
    engine.docker(*command, image)
    box = Container(name, workspace, ports)
    try:
        yield box
    finally:
        print(box.logs()[-3000:])
        engine.docker("rm", "-f", name, check=False)
        shutil.rmtree(workspace, ignore_errors=True)


def test_the_entrypoint_becomes_pid_1_and_every_program_starts(container):
    wait_for(lambda: container.health() == "healthy", 120)
    pid1 = container.exec("cat", "/proc/1/cmdline").stdout.split("\0")
    assert "services.supervise" in pid1, pid1
    wait_for(lambda: "success: comfyui entered RUNNING state" in container.logs(), 30)  # its startsecs is 3
    logs = container.logs()
    for program in PROGRAMS:
        assert f"success: {program} entered RUNNING state" in logs, program
    # The volume given with -v is a bind mount of a folder of the same file system: no false warning.
    assert "is not a mount of its own" not in logs
    # Every program's own lines reach `docker logs`, prefixed with its name (the events listener).
    for program in ("startup", "comfyui", "dashboard", "worker", "health", "redis"):
        assert re.search(rf"^{program} ", logs, re.M), program
    assert "Traceback" not in logs
    # The command line is on PATH and finds this pod's dashboard and password by itself.
    listed = json.loads(container.exec("comfyui-docker", "--json", "services", "list").stdout)
    assert {s["name"] for s in listed["services"]} >= set(PROGRAMS) - {"events"}  # the listener is no service


def test_health_goes_unhealthy_without_redis_and_back(container):
    wait_for(lambda: container.health() == "healthy", 120)
    container.exec("/app/.venv/bin/python", "-m", "services.ctl", "stop", "redis")
    try:
        wait_for(lambda: container.health() == "unhealthy", 60)
        last = container.inspect()["State"]["Health"]["Log"][-1]
        assert last["ExitCode"] != 0 and "redis" in last["Output"].lower()
    finally:
        container.exec("/app/.venv/bin/python", "-m", "services.ctl", "start", "redis")
    wait_for(lambda: container.health() == "healthy", 60)


def test_the_volume_is_written_as_documented(container):
    wait_for(lambda: container.health() == "healthy", 120)
    # Logs are the pod's own (its host name here: no POD_ID or RUNPOD_POD_ID is set).
    pod_logs = list((container.workspace / "logs").glob("*/comfyui.log"))
    assert len(pod_logs) == 1, pod_logs
    for path in (
        "models/checkpoints",
        "config/extra_model_paths.yaml",
        str(pod_logs[0].relative_to(container.workspace)),
    ):
        assert (container.workspace / path).stat().st_uid == 0, path
    assert (container.workspace / "config" / "session.key").stat().st_mode & 0o777 == 0o600
    # DASHBOARD_PASSWORD is set: no generated password file is written (or left behind).
    assert not (container.workspace / "config" / "dashboard.password").exists()


def test_orphans_are_reaped(container):
    wait_for(lambda: container.health() == "healthy", 120)
    # A grandchild whose parent exits at once: it is handed to PID 1, which must reap it when it ends.
    container.exec("bash", "-c", "(sleep 0.5 &) ; true")
    time.sleep(2)
    states = container.exec("bash", "-c", "cat /proc/[0-9]*/stat 2>/dev/null | awk '{print $3}'").stdout.split()
    assert "Z" not in states, states


def test_docker_stop_with_a_download_running_and_the_download_resumes_after_start(container):
    wait_for(lambda: container.health() == "healthy", 120)
    server = FileServer().start()
    try:
        data = os.urandom(6 * MIB)
        url = server.add("big.safetensors", data)
        server.fault("big.safetensors", rate=300_000)  # ~20 s: still running when docker stop comes
        queued = container.api("POST", "/api/downloads", json={"url": url, "folder": "checkpoints"})
        assert queued.status_code == 202, queued.text
        job = queued.json()["id"]
        wait_for(lambda: container.api("GET", f"/api/downloads/{job}").json()["bytes_done"] > MIB, 60)

        begin = time.monotonic()
        engine.docker("stop", container.name, timeout=60)  # Docker's default grace: 10 s, then SIGKILL
        took = time.monotonic() - begin
        state = container.inspect()["State"]
        print(f"docker stop with a download running: {took:.1f} s, exit code {state['ExitCode']}")
        assert state["ExitCode"] == 0  # 137 would be Docker's SIGKILL at the end of its grace
        assert not (container.workspace / "models" / "checkpoints" / "big.safetensors").exists()

        server.clear_faults()
        before = len(server.requests)
        engine.docker("start", container.name)
        begin = time.monotonic()
        wait_for(lambda: container.health() == "healthy", 120)
        # The killed writer's pid may be another process's in the restarted container: the lock's flock,
        # not that pid, says it is gone, so the job resumes at the start and not after the stale age.
        wait_for(lambda: container.api("GET", f"/api/downloads/{job}").json()["state"] == "done", 120)
        print(f"docker start to the download done: {time.monotonic() - begin:.1f} s")
        done = container.api("GET", f"/api/downloads/{job}").json()
        assert done["resumed_from"] > 0, done
        ranges = [r["headers"].get("Range", "") for r in server.requests[before:]]
        assert any(r.startswith("bytes=") and not r.startswith("bytes=0-") for r in ranges), ranges
        final = container.workspace / "models" / "checkpoints" / "big.safetensors"
        assert hashlib.sha256(final.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    finally:
        server.stop()


def test_make_run_on_a_fresh_debian_installs_what_it_needs_and_recovers_a_half_made_venv(daemon, tmp_path):
    """The README's first command on a minimal Debian with only git, make and ca-certificates (no python3,
    no python3-venv, no redis, no nginx), as root, with a venv left half-made by an interrupted run."""
    source = tmp_path / "src"
    tracked = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    for rel in filter(None, tracked):
        if (REPO / rel).is_file():
            (source / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, source / rel)
    (source / ".venv" / "bin").mkdir(parents=True)
    (source / ".venv" / "bin" / "python").write_text("")  # what an interrupted `python3 -m venv` can leave
    ports = {name: free_port() for name in ("COMFYUI_PORT", "COMFYUI_INTERNAL_PORT", "DASHBOARD_PORT", "HEALTH_PORT")}
    name = f"cdfresh-{os.getpid()}"
    command = ["run", "-d", "--name", name, "--network=host", "-v", f"{source}:/src:ro"]
    for key, value in {**ports, "DASHBOARD_PASSWORD": PASSWORD}.items():
        command += ["-e", f"{key}={value}"]
    command += [
        engine.fresh_image(),
        "bash",
        "-c",
        "cp -a /src /root/comfyui-docker && cd /root/comfyui-docker && make run",
    ]
    engine.docker(*command)
    try:
        login = f"http://127.0.0.1:{ports['DASHBOARD_PORT']}/login"

        deadline = time.monotonic() + 900
        while True:
            if engine.docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip() != "true":
                raise AssertionError("make run ended: " + engine.docker("logs", name).stderr[-3000:])
            try:
                if requests.get(login, timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "the dashboard of `make run` on a fresh Debian never answered"
            time.sleep(1)
        out = engine.docker("logs", name)
        logs = out.stdout + out.stderr
        assert "installing Debian packages: redis-server nginx python3-venv" in logs
        assert "Traceback" not in logs and "No module named pip" not in logs
        listed = engine.docker("exec", name, "/root/comfyui-docker/.venv/bin/python", "-m", "pip", "list").stdout
        assert "Flask" in listed and "playwright" not in listed.lower()  # make run: runtime packages only
    finally:
        print(engine.docker("logs", name, check=False).stdout[-2000:])
        engine.docker("rm", "-f", name, check=False)
