"""Downloads through the real stack: the Celery task by name, a real worker under supervisord, real Redis.

Crash safety (docs/reliability.md, rows A and B): no job lost, one completion, resumes fetch only what is
missing, and the token never leaves the environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
import urllib.request

import pytest
import yaml

from services.common import bus, jobs, messages, presets, queue
from tests.helpers.procs import wait_for
from tests.helpers.stack import Stack

pytestmark = pytest.mark.timeout(300)

MIB = 1024 * 1024
SENTINEL = "hf_SENTINEL_worker_never_print"


def blob(size: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 2048
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture(scope="module")
def server(module_file_server):
    return module_file_server


@pytest.fixture(scope="module")
def tls_server(tls_file_server):
    return tls_file_server


@pytest.fixture(scope="module")
def stack(tmp_path_factory, server, tls_server):
    stack = Stack(
        tmp_path_factory.mktemp("dl"),
        DOWNLOADS_ALLOW_PRIVATE_HOSTS="1",
        DOWNLOADS_BACKOFF="0.2",
        DOWNLOADS_RETRIES="3",
        DOWNLOADS_READ_TIMEOUT="3",
        DOWNLOADS_HEARTBEAT_STALE="6",
        DOWNLOADS_RECONCILE_INTERVAL="2",
        DOWNLOADS_MIN_SEGMENTED_MB="2",
        DOWNLOADS_SEGMENT_MB="1",
        DOWNLOADS_CONNECTIONS="2",
        DOWNLOADS_RESERVE_MB="0",
        DOWNLOADS_MAX_ATTEMPTS="3",
        WORKER_CONCURRENCY="2",
        HF_ENDPOINT=f"https://localhost:{tls_server.port}",  # tokens go only to https
        HF_TOKEN=SENTINEL,  # generic files stay on 127.0.0.1
        SSL_CERT_FILE=str(tls_server.cert),  # the worker trusts the test server's https
    )
    stack.start()
    stack.wait_running()
    yield stack
    stack.stop()


@pytest.fixture
def client(stack):
    return bus.connect(stack.settings)


def submit(
    stack, client, url: str, folder: str = "checkpoints", filename: str | None = None, sha256: str | None = None
) -> messages.DownloadJob:
    spec = messages.DownloadSpec(url=url, folder=folder, filename=filename, sha256=sha256)
    job, created = jobs.submit(stack.settings, client, spec, queue.download_sender(stack.settings))
    assert created
    return job


def wait_state(client, job_id: str, states: tuple[str, ...], timeout: float = 60) -> messages.DownloadJob:
    return wait_for(
        lambda: (j := jobs.get(client, job_id)) and j.state in states and j,
        timeout,
        0.1,
        what=f"job {job_id} in {states} (now {getattr(jobs.get(client, job_id), 'state', None)})",
    )


def task_pid(stack, folder: str, filename: str) -> int:
    """The pid writing a destination, from its lock file (the engine records its owner there)."""
    lock = stack.settings.paths.models / folder / f"{filename}.lock"
    return wait_for(lambda: json.loads(lock.read_text())["pid"], 20, what=f"{lock} taken")


def stalled_file(server, name: str, size: int, at: int, seed: int, seconds: float = 30) -> tuple[str, bytes]:
    data = blob(size, seed)
    url = server.add(name, data)
    # Off the 1 MiB segment boundaries, so the stall falls inside a ranged response.
    server.fault(name, stall_after=at + 123_456, stall_seconds=seconds, stall_resume=True, times=1)
    return url, data


def test_queued_download_lands_verified_and_comfyui_lists_it(stack, server, client):
    data = blob(3 * MIB, 1)
    url = server.add("e2e/model.safetensors", data)
    events: list[messages.Event] = []
    listening = threading.Event()

    def listen():
        for event in bus.listen(bus.connect(stack.settings), timeout=0.1):
            listening.set()
            if isinstance(event, messages.DownloadEvent):
                events.append(event)
                if event.job.state in messages.TERMINAL:
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    listening.wait(5)
    job = submit(stack, client, url, sha256=hashlib.sha256(data).hexdigest())
    done = wait_state(client, job.id, messages.TERMINAL)
    assert done.state == "done", done.error
    assert done.filename == "model.safetensors" and done.bytes_done == len(data)
    s = stack.settings
    assert (s.paths.models / "checkpoints" / "model.safetensors").read_bytes() == data
    listed = json.loads(urllib.request.urlopen(f"{s.comfyui_url}/models/checkpoints", timeout=5).read())
    assert "model.safetensors" in listed
    thread.join(10)
    assert [e.job.state for e in events][-1] == "done"
    # Enqueueing the same destination again while done: a new job that finds the file already there.
    spec = messages.DownloadSpec(url=url, folder="checkpoints")
    again, created = jobs.submit(s, client, spec, queue.download_sender(s))
    assert created and wait_state(client, again.id, messages.TERMINAL).already_present


def test_duplicate_enqueue_returns_the_running_job(stack, server, client):
    url, _ = stalled_file(server, "dup.bin", 2 * MIB, MIB, seed=2, seconds=3)
    first = submit(stack, client, url, filename="dup.bin")
    spec = messages.DownloadSpec(url=url, folder="checkpoints", filename="dup.bin")
    second, created = jobs.submit(stack.settings, client, spec, queue.download_sender(stack.settings))
    assert not created and second.id == first.id
    assert wait_state(client, first.id, messages.TERMINAL).state == "done"


def test_a1_kill_9_of_the_task_process_resumes_from_the_part(stack, server, client):
    url, data = stalled_file(server, "a1.bin", 6 * MIB, 4 * MIB, seed=3)
    job = submit(stack, client, url, filename="a1.bin", sha256=hashlib.sha256(data).hexdigest())
    pid = task_pid(stack, "checkpoints", "a1.bin")
    wait_for(lambda: (j := jobs.get(client, job.id)) and j.bytes_done >= 3 * MIB, 20, what="progress")
    time.sleep(2.2)  # let a manifest save record the progress
    os.kill(pid, signal.SIGKILL)
    done = wait_state(client, job.id, messages.TERMINAL, timeout=90)
    assert done.state == "done", done.error
    assert done.resumed_from >= 2 * MIB and done.attempts == 2
    print(f"A1 kill -9 of the task: resumed from {done.resumed_from} of {len(data)} bytes")
    assert (stack.settings.paths.models / "checkpoints" / "a1.bin").read_bytes() == data


def test_a3_duplicate_delivery_while_the_first_runs_is_a_no_op(stack, server, client):
    url, data = stalled_file(server, "a3.bin", 3 * MIB, 2 * MIB, seed=4, seconds=4)
    job = submit(stack, client, url, filename="a3.bin")
    task_pid(stack, "checkpoints", "a3.bin")
    queue.download_sender(stack.settings)(job.id)  # what a visibility-timeout redelivery looks like to the task
    done = wait_state(client, job.id, messages.TERMINAL)
    assert done.state == "done" and done.attempts == 1
    time.sleep(1)
    assert jobs.get(client, job.id).state == "done"
    assert (stack.settings.paths.models / "checkpoints" / "a3.bin").read_bytes() == data


def test_a8_a_task_lost_with_the_worker_that_took_it_is_sent_again(stack, server, client):
    """A worker killed between Redis handing it a task and Celery recording the delivery, or a pod gone with
    a task it had taken and not started: on kombu's Redis transport the message is lost and the job would
    stay queued for good. The reconciler sends it again once no queue and no live worker has it; a job whose
    task waits in the queue, or that another pod's worker holds, is left alone."""
    settings, rpc = stack.settings, stack.rpc()
    rpc.supervisor.stopProcess("worker")
    lost_data, kept_data = blob(MIB, 21), blob(MIB, 22)
    lost = submit(stack, client, server.add("a8-lost.bin", lost_data), filename="a8-lost.bin")
    kept = submit(stack, client, server.add("a8-kept.bin", kept_data), filename="a8-kept.bin")
    assert {lost.id, kept.id} <= queue.waiting_downloads(client)
    # The lost job's message taken off the queue, as by a worker that dies at that moment.
    raw = next(m for m in client.lrange(queue.QUEUE, 0, -1) if lost.id in json.loads(m)["headers"]["argsrepr"])
    assert client.lrem(queue.QUEUE, 1, raw) == 1
    assert lost.id not in queue.waiting_downloads(client)

    # Another pod's worker holds it (its snapshot kept fresh): nobody sends it again meanwhile.
    jobs.publish_held(client, "pod-elsewhere", {lost.id})
    rpc.supervisor.startProcess("worker")
    assert wait_state(client, kept.id, messages.TERMINAL).state == "done"
    log = settings.paths.log_file("worker")
    own = messages.download_held_key(settings.pod_name)
    wait_for(lambda: own in jobs.held(client), 10, what="the worker's own snapshot")
    until = time.monotonic() + settings.downloads_heartbeat_stale + 6  # quiet long enough, a few passes
    while time.monotonic() < until:
        published = time.monotonic()
        jobs.publish_held(client, "pod-elsewhere", {lost.id})
        assert jobs.get(client, lost.id).state == "queued"
        time.sleep(0.5)
    assert f"sent job {lost.id} again" not in log.read_text()

    # That pod goes away: its snapshot expires and the job is sent again, once, and done.
    gone_at = published + jobs.HELD_TTL
    done = wait_state(client, lost.id, messages.TERMINAL, timeout=60)
    print(f"A8 a lost task: done {time.monotonic() - gone_at:.1f} s after the pod holding it was gone (stale 6 s)")
    assert done.state == "done" and done.attempts == 1, done.error
    assert (settings.paths.models / "checkpoints" / "a8-lost.bin").read_bytes() == lost_data
    text = log.read_text()
    assert text.count(f"sent job {lost.id} again: its task was lost (in no queue, held by no worker)") == 1
    assert f"sent job {kept.id} again" not in text


def test_a6_cancel_running_and_queued(stack, server, client):
    folder = stack.settings.paths.models / "checkpoints"
    busy = [stalled_file(server, f"busy{i}.bin", 3 * MIB, MIB, seed=10 + i, seconds=20) for i in range(2)]
    running = [submit(stack, client, url, filename=f"busy{i}.bin") for i, (url, _) in enumerate(busy)]
    for i in range(2):
        task_pid(stack, "checkpoints", f"busy{i}.bin")
    url, _ = stalled_file(server, "queued.bin", MIB, 10, seed=12)
    queued = submit(stack, client, url, filename="queued.bin")
    assert jobs.get(client, queued.id).state == "queued"
    assert jobs.cancel(client, queued.id).state == "cancelled"
    asked = time.monotonic()
    jobs.cancel(client, running[0].id)
    wait_state(client, running[0].id, ("cancelled",), timeout=10)
    latency = time.monotonic() - asked
    print(f"A6 cancel of a running download took {latency:.2f} s")  # a figure, not an assertion: shared CPUs
    assert not (folder / "busy0.bin.part").exists() and not (folder / "busy0.bin").exists()
    jobs.cancel(client, running[1].id)
    wait_state(client, running[1].id, ("cancelled",), timeout=10)
    time.sleep(1)  # the cancelled queued job's task runs now and must stay a no-op
    assert jobs.get(client, queued.id).state == "cancelled" and not (folder / "queued.bin").exists()


def test_a5_a_job_that_always_crashes_stops_after_n_attempts(stack, server, client):
    url = server.add("crash.bin", blob(3 * MIB, 5))
    server.fault("crash.bin", rate=100_000)  # every attempt is still running when it is killed
    other_url = server.add("fine.bin", blob(100_000, 6))
    job = submit(stack, client, url, filename="crash.bin")
    seen = set()
    for _ in range(3):  # DOWNLOADS_MAX_ATTEMPTS=3
        pid = wait_for(lambda: (p := task_pid(stack, "checkpoints", "crash.bin")) not in seen and p, 60)
        seen.add(pid)
        wait_for(lambda: (j := jobs.get(client, job.id)) and j.state == "running", 10)
        os.kill(pid, signal.SIGKILL)
    failed = wait_state(client, job.id, messages.TERMINAL, timeout=60)
    assert failed.state == "failed" and "stopped after 3 attempts" in failed.error
    fine = submit(stack, client, other_url, filename="fine.bin")
    assert wait_state(client, fine.id, messages.TERMINAL).state == "done"
    server.clear_faults()


def test_a2_kill_9_of_the_whole_worker_is_recovered_by_the_reconciler(stack, server, client):
    url, data = stalled_file(server, "a2.bin", 5 * MIB, 3 * MIB, seed=7)
    job = submit(stack, client, url, filename="a2.bin")
    task_pid(stack, "checkpoints", "a2.bin")
    wait_for(lambda: (j := jobs.get(client, job.id)) and j.bytes_done >= 2 * MIB, 20)
    main = stack.states()["worker"]["pid"]
    children = [int(p) for p in open(f"/proc/{main}/task/{main}/children").read().split()]
    killed_at = time.monotonic()
    for pid in [main, *children]:
        os.kill(pid, signal.SIGKILL)
    done = wait_state(client, job.id, messages.TERMINAL, timeout=120)
    recovery = time.monotonic() - killed_at
    assert done.state == "done", done.error
    assert (stack.settings.paths.models / "checkpoints" / "a2.bin").read_bytes() == data
    print(f"A2 recovery {recovery:.1f} s")


def test_a4_stopping_the_worker_requeues_and_resumes(stack, server, client):
    data = blob(4 * MIB, 8)
    url = server.add("a4.bin", data)
    server.fault("a4.bin", rate=200_000)  # ~20 s: still running when the soft shutdown ends
    job = submit(stack, client, url, filename="a4.bin")
    task_pid(stack, "checkpoints", "a4.bin")
    wait_for(lambda: (j := jobs.get(client, job.id)) and j.bytes_done >= MIB, 20)
    # The worker says it holds the running job (the reconciler's way to tell a held task from a lost one).
    own = messages.download_held_key(stack.settings.pod_name)
    wait_for(lambda: job.id in jobs.held(client).get(own, (0, set()))[1], 10, what="the job in the held snapshot")
    begin = time.monotonic()
    stack.rpc().supervisor.stopProcess("worker")
    stop_seconds = time.monotonic() - begin
    print(f"A4 worker stop with a running download took {stop_seconds:.1f} s")
    assert "Restoring 1 unacknowledged message" in stack.settings.paths.log_file("worker").read_text()
    server.clear_faults()
    stack.rpc().supervisor.startProcess("worker")
    done = wait_state(client, job.id, messages.TERMINAL, timeout=60)
    assert done.state == "done" and done.resumed_from > 0
    assert (stack.settings.paths.models / "checkpoints" / "a4.bin").read_bytes() == data


def test_b1_redis_killed_mid_download(stack, server, client):
    url, data = stalled_file(server, "b1.bin", 4 * MIB, 2 * MIB, seed=9, seconds=4)
    job = submit(stack, client, url, filename="b1.bin")
    task_pid(stack, "checkpoints", "b1.bin")
    os.kill(stack.states()["redis"]["pid"], signal.SIGKILL)
    killed = time.monotonic()
    stack.wait_running(("redis",))
    app = queue.client(stack.settings)

    def round_trip() -> bool:
        reply = app.send_task(messages.TASK_PING, args=[time.time()])
        try:
            return bool(reply.get(timeout=2))
        finally:
            reply.forget()

    wait_for(round_trip, 60, 0.5, what="the worker consuming again")
    print(f"B1 worker consuming again after {time.monotonic() - killed:.1f} s")
    app.close()
    path = stack.settings.paths.models / "checkpoints" / "b1.bin"
    wait_for(lambda: path.exists(), 60, what="the download finishing despite Redis")
    assert path.read_bytes() == data
    done = wait_for(lambda: jobs.get(bus.connect(stack.settings), job.id), 30, what="the job recorded again")
    assert done.state == "done"


def test_b2_redis_losing_everything_is_rebuilt_from_manifests(stack, server, client):
    data = blob(4 * MIB, 13)
    url = server.add("b2.bin", data)
    server.fault("b2.bin", rate=200_000)
    job = submit(stack, client, url, filename="b2.bin")
    task_pid(stack, "checkpoints", "b2.bin")
    time.sleep(2.5)  # a manifest on the volume
    stack.rpc().supervisor.stopProcess("worker")
    client.flushall()
    server.clear_faults()
    stack.rpc().supervisor.startProcess("worker")
    rebuilt = wait_for(lambda: jobs.get(client, job.id), 30, what="the job rebuilt from its manifest")
    assert rebuilt.url == url and rebuilt.filename == "b2.bin"
    assert wait_state(client, job.id, messages.TERMINAL).state == "done"
    assert (stack.settings.paths.models / "checkpoints" / "b2.bin").read_bytes() == data


def test_failures_reach_the_job_with_a_message_and_no_token(stack, tls_server, client):
    tls_server.add("org/gated/resolve/main/g.safetensors", b"x")
    tls_server.fault("org/gated/resolve/main/g.safetensors", status=403)
    url = f"https://localhost:{tls_server.port}/org/gated/resolve/main/g.safetensors"
    job = submit(stack, client, url, folder="loras")
    failed = wait_state(client, job.id, messages.TERMINAL)
    assert failed.state == "failed" and "accept the licence" in failed.error
    hf_requests = [r for r in tls_server.requests if r["path"].startswith("/org/gated")]
    assert hf_requests[-1]["headers"]["Authorization"] == f"Bearer {SENTINEL}"
    # The token is nowhere but the environment: not in Redis, not in a log, not in a task message.
    for key in client.keys("*"):
        kind = client.type(key)
        values = {
            "string": lambda k: [client.get(k)],
            "hash": lambda k: list(client.hgetall(k).values()),
            "list": lambda k: client.lrange(k, 0, -1),
        }.get(kind, lambda k: [])(key)
        assert not any(SENTINEL in str(v) for v in values), key
    for log in stack.settings.paths.logs.glob("*.log*"):
        assert SENTINEL not in log.read_text(errors="replace"), log
    assert SENTINEL not in stack.output()


def test_a_user_preset_installs_live_missing_partial_installed(stack, tls_server, client):
    small, slow = blob(200_000, 20), blob(2 * MIB, 21)
    tls_server.add("p/vae.safetensors", small)
    tls_server.add("p/big.safetensors", slow)
    tls_server.fault("p/big.safetensors", rate=1_000_000)  # ~2 s: the preset is partial meanwhile
    base = f"https://127.0.0.1:{tls_server.port}/p"
    preset = {
        "id": "live-test",
        "name": "Live test",
        "category": "image",
        "base": "test",
        "files": [
            {
                "url": f"{base}/vae.safetensors",
                "folder": "vae",
                "filename": "live_vae.safetensors",
                "size": len(small),
                "sha256": hashlib.sha256(small).hexdigest(),
            },
            {
                "url": f"{base}/big.safetensors",
                "folder": "checkpoints",
                "filename": "live_big.safetensors",
                "approx_size": "2 MB",
            },
        ],
    }
    s = stack.settings
    s.paths.user_presets.mkdir(parents=True, exist_ok=True)
    (s.paths.user_presets / "live.yaml").write_text(yaml.safe_dump(preset))
    seen: list[str] = []
    listening = threading.Event()

    def listen():
        for event in bus.listen(bus.connect(s), timeout=0.1):
            listening.set()
            if isinstance(event, messages.PresetState) and event.id == "live-test":
                seen.append(event.state)
                if event.state == "installed":
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    listening.wait(5)
    assert presets.show(s, client, "live-test")["state"] == "missing"
    queued = presets.install(s, client, "live-test", queue.download_sender(s))
    assert len(queued) == 2
    thread.join(60)
    assert seen[0] == "partial" and seen[-1] == "installed", seen
    shown = presets.show(s, client, "live-test")
    assert shown["state"] == "installed" and shown["files"][0]["state"] == "verified"
    assert presets.install(s, client, "live-test", queue.download_sender(s)) == []  # installed: nothing to queue
