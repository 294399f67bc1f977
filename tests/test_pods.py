"""Several pods on one volume: two full stacks (entrypoint, supervisord, Redis or not, worker, dashboard)
on one workspace, each with its own POD_ID. Each writes its own logs; the same model queued on both is
fetched once; with one shared, password-protected Redis every job runs once, every dashboard lists every
job and which pod ran it, and a pod killed mid-download leaves its job to the other."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time

import psutil
import pytest
import requests

from services.common import bus, jobs, messages, queue
from tests.helpers.procs import wait_for
from tests.helpers.redisserver import RedisServer
from tests.helpers.stack import PASSWORD, Stack

pytestmark = pytest.mark.timeout(300)

BEARER = {"Authorization": f"Bearer {PASSWORD}"}
MIB = 1024 * 1024


def blob(size: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 2048
    return (block * (size // len(block) + 1))[:size]


def pod(root, name: str, workspace, **env: str) -> Stack:
    return Stack(
        root / name,
        WORKSPACE=str(workspace),
        POD_ID=name,
        DOWNLOADS_ALLOW_PRIVATE_HOSTS="1",
        DOWNLOADS_RESERVE_MB="0",
        DOWNLOADS_HEARTBEAT_STALE="6",
        DOWNLOADS_RECONCILE_INTERVAL="2",
        WORKER_CONCURRENCY="2",
        **env,
    )


def submit(stack: Stack, url: str, filename: str) -> messages.DownloadJob:
    client = bus.connect(stack.settings)
    spec = messages.DownloadSpec(url=url, folder="checkpoints", filename=filename)
    job, _ = jobs.submit(stack.settings, client, spec, queue.download_sender(stack.settings))
    return job


def state(stack: Stack, job_id: str) -> messages.DownloadJob | None:
    return jobs.get(bus.connect(stack.settings), job_id)


def listed(stack: Stack) -> list[dict]:
    base = f"http://127.0.0.1:{stack.settings.dashboard_port}"
    return requests.get(f"{base}/api/downloads", headers=BEARER, timeout=10).json()["downloads"]


def test_two_pods_with_their_own_redis_fetch_a_shared_model_once(tmp_path, file_server):
    workspace = tmp_path / "volume"
    a, b = pod(tmp_path, "pod-a", workspace), pod(tmp_path, "pod-b", workspace)
    data = blob(256 * MIB, 1)
    file_server.fault("shared.safetensors", rate=64 * MIB)  # about 4 s: both pods are at it together
    url = file_server.add("shared.safetensors", data)
    try:
        for stack in (a, b):
            stack.start()
        for stack in (a, b):
            stack.wait_running()
        # Per-pod files on the shared volume: logs and ComfyUI's database.
        for stack in (a, b):
            assert (
                stack.settings.paths.log_file("worker") == workspace / "logs" / stack.settings.pod_name / "worker.log"
            )
        first, second = submit(a, url, "shared.safetensors"), submit(b, url, "shared.safetensors")
        began = time.monotonic()
        done_a = wait_for(lambda: (j := state(a, first.id)) and j.terminal and j, 120)
        seen_a = time.monotonic() - began
        done_b = wait_for(lambda: (j := state(b, second.id)) and j.terminal and j, 120)
        seen_b = time.monotonic() - began
        logs = [(workspace / "logs" / n / "worker.log").read_text()[-3000:] for n in ("pod-a", "pod-b")]
        assert (done_a.state, done_b.state) == ("done", "done"), (done_a.error, done_b.error, *logs)
        assert done_b.already_present or done_a.already_present  # the second found it there
        served = file_server.bytes_sent
        assert len(data) <= served < len(data) + 65536, (
            f"the file server sent {served / len(data):.2f}x the file"
        )  # + probes
        assert (workspace / "models" / "checkpoints" / "shared.safetensors").read_bytes() == data
        print(f"two pods, one 256 MiB model: {served / len(data):.1f}x the file fetched; done on the first pod")
        print(f"after {seen_a:.1f} s, seen done on the second {seen_b - seen_a:.1f} s later")
        logs = {p.name for p in (workspace / "logs").iterdir()}
        assert {"pod-a", "pod-b"} <= logs
        assert all(
            f.is_file()
            for f in (workspace / "logs" / "pod-a" / "worker.log", workspace / "logs" / "pod-b" / "worker.log")
        )
    finally:
        for stack in (a, b):
            stack.stop()


def test_two_pods_sharing_a_password_protected_redis_run_each_job_once(tmp_path, file_server):
    shared = RedisServer(password="not-a-real-secret-for-redis").start()
    workspace = tmp_path / "volume"
    a = pod(tmp_path, "pod-a", workspace, REDIS_URL=shared.tcp_url)
    b = pod(tmp_path, "pod-b", workspace, REDIS_URL=shared.tcp_url)
    try:
        for stack in (a, b):
            stack.start()
        for stack in (a, b):  # no Redis of their own
            stack.wait_running(("front-door", "comfyui", "dashboard", "worker", "health"))
        files = {f"job-{i:02d}.bin": blob(200_000, 100 + i) for i in range(20)}
        queued = []
        for i, (name, body) in enumerate(files.items()):
            queued.append(submit(a if i % 2 else b, file_server.add(f"pods/{name}", body), name))

        def unfinished() -> list[tuple[str, str | None]]:
            return [(q.filename, j and j.state) for q in queued if not ((j := state(a, q.id)) and j.terminal)]

        try:
            wait_for(lambda: not unfinished(), 120)
        except AssertionError:
            raise AssertionError(f"not finished: {unfinished()}\n{a.log_tails()}\n{b.log_tails()}") from None
        final = [state(b, q.id) for q in queued]
        assert [j.state for j in final] == ["done"] * 20
        total = sum(len(body) for body in files.values())
        assert total <= file_server.bytes_sent < total + 20 * 1024  # each file once (and its small probe)
        for stack in (a, b):
            ids = {j["id"] for j in listed(stack)}
            assert {q.id for q in queued} <= ids
        assert {j.pod for j in final} <= {"pod-a", "pod-b"}

        # A pod killed in the middle of a download: the other pod's reconciler hands the job to its worker.
        big = blob(40 * MIB, 7)
        file_server.fault("pods/big.bin", rate=4 * MIB)  # about 10 s
        job = submit(a, file_server.add("pods/big.bin", big), "big.bin")
        running = wait_for(lambda: (j := state(a, job.id)) and j.state == "running" and j.bytes_done > 0 and j, 60)
        victim, survivor = (a, b) if running.pod == "pod-a" else (b, a)
        # The whole pod at once, as when its machine goes: every process of its tree, SIGKILL.
        tree = [victim.proc, *psutil.Process(victim.proc.pid).children(recursive=True)]
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        victim.proc.wait(10)
        file_server.clear_faults()
        try:
            done = wait_for(lambda: (j := state(survivor, job.id)) and j.state == "done" and j, 120)
        except AssertionError:
            raise AssertionError(f"not done: {state(survivor, job.id)}\n{survivor.log_tails()}") from None
        assert done.pod == survivor.settings.pod_name
        assert (workspace / "models" / "checkpoints" / "big.bin").read_bytes() == big
    finally:
        for stack in (a, b):
            stack.stop()
        shared.stop()
