"""Fault recovery times on the real stack with the default settings (nothing shortened), loopback.

For each fault, a download of a rate-limited file (a real HTTP server on 127.0.0.1 with Range support)
is running when the fault strikes; the figure is the time from the fault until the stack is back at
work: the same download moving again (its bytes grow past the count at the fault), a new job done, or
every process gone. sha256 of every file is checked.
Run: `make bench` or `.venv/bin/python bench/faults.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common import bus, jobs, messages, queue
from tests.helpers.fileserver import FileServer
from tests.helpers.procs import wait_for
from tests.helpers.stack import Stack

MIB = 1024 * 1024
ENV = {"DOWNLOADS_ALLOW_PRIVATE_HOSTS": "1", "DOWNLOADS_RESERVE_MB": "0"}  # everything else: the defaults
SIZE, RATE = 48 * MIB, 256_000  # bytes per second and connection: 16 connections, about 12 s in all


class Run:
    def __init__(self, server: FileServer, root: Path) -> None:
        self.server, self.root = server, root
        self.stack: Stack | None = None

    def start(self, workspace: Path | None = None) -> Stack:
        self.stack = Stack(self.root / f"s{time.monotonic_ns()}", **ENV)
        if workspace is not None:
            self.stack.env["WORKSPACE"] = str(workspace)
        self.stack.start()
        self.stack.wait_running()
        return self.stack

    def download(self, name: str) -> tuple[messages.DownloadJob, bytes]:
        data = os.urandom(SIZE)
        url = self.server.add(name, data)
        self.server.fault(name, rate=RATE)
        s = self.stack.settings
        client = bus.connect(s)
        spec = messages.DownloadSpec(url=url, folder="checkpoints", filename=name)
        job, _ = jobs.submit(s, client, spec, queue.download_sender(s))
        wait_for(lambda: (j := jobs.get(client, job.id)) and j.bytes_done > 4 * MIB, 60, what="progress")
        return job, data

    def bytes_done(self, job_id: str) -> int:
        try:
            found = jobs.get(bus.connect(self.stack.settings), job_id)
        except (OSError, redis.RedisError):  # Redis restarting: no figure yet
            return -1
        return found.bytes_done if found else -1

    def moving_again(self, job_id: str, since: float) -> float:
        before = self.bytes_done(job_id)
        wait_for(lambda: self.bytes_done(job_id) > max(before, 0) + MIB, 180, 0.1, what="the download moving again")
        return time.monotonic() - since

    def finish(self, job: messages.DownloadJob, data: bytes) -> None:
        s = self.stack.settings
        client = bus.connect(s)
        done = wait_for(lambda: (j := jobs.get(client, job.id)) and j.terminal and j, 300, what="the job's end")
        target = s.paths.models / "checkpoints" / job.filename
        assert done.state == "done", done.error
        assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()

    def stop(self) -> None:
        if self.stack:
            self.stack.stop()
            self.stack = None


def pool_child(stack: Stack, name: str) -> int:
    lock = stack.settings.paths.models / "checkpoints" / f"{name}.lock"
    return wait_for(lambda: json.loads(lock.read_text())["pid"], 20, what="the lock")


def pool_memory_around_a_download(run: Run, size: int) -> tuple[float, float]:
    """The worker's largest pool process (MiB resident) before and after one download at full speed."""
    stack = run.stack

    def largest() -> float:
        children = psutil.Process(stack.states()["worker"]["pid"]).children()
        return max(p.memory_info().rss for p in children) / MIB

    time.sleep(2)  # the pool settled after start
    before = largest()
    data = os.urandom(size)
    s = stack.settings
    client = bus.connect(s)
    spec = messages.DownloadSpec(url=run.server.add("memory.bin", data), folder="checkpoints", filename="memory.bin")
    job, _ = jobs.submit(s, client, spec, queue.download_sender(s))
    run.finish(job, data)
    time.sleep(1)
    return before, largest()


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    server = FileServer().start()
    run = Run(server, root)
    rows: list[tuple[str, str, float]] = []
    try:
        stack = run.start()
        memory = pool_memory_around_a_download(run, 512 * MIB)
        # The two worker kills: the download's pool process (from its lock), then the main process.
        for name, label, victim in (
            ("child.bin", "kill -9 of the download's pool process", lambda: pool_child(stack, "child.bin")),
            ("main.bin", "kill -9 of the worker's main process", lambda: stack.states()["worker"]["pid"]),
        ):
            job, data = run.download(name)
            os.kill(victim(), signal.SIGKILL)
            rows.append((label, "the download moving again", run.moving_again(job.id, time.monotonic())))
            run.finish(job, data)

        job, data = run.download("redis.bin")
        os.kill(stack.states()["redis"]["pid"], signal.SIGKILL)
        killed = time.monotonic()
        stack.wait_running(("redis",))
        s = stack.settings
        small = os.urandom(MIB)
        spec = messages.DownloadSpec(url=server.add("new.bin", small), folder="loras", filename="new.bin")
        client = bus.connect(s)
        new = wait_for(lambda: jobs.submit(s, client, spec, queue.download_sender(s))[0], 30, what="Redis back")
        wait_for(lambda: (j := jobs.get(client, new.id)) and j.terminal, 60, 0.1, what="the new job")
        rows.append(("kill -9 of Redis, a download running", "a new job done", time.monotonic() - killed))
        run.finish(job, data)

        job, data = run.download("stop.bin")
        workspace = stack.workspace
        tree = [stack.proc.pid, *(p.pid for p in psutil.Process(stack.proc.pid).children(recursive=True))]
        begin = time.monotonic()
        stack.proc.send_signal(signal.SIGTERM)
        stack.proc.wait(30)
        wait_for(
            lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in tree), 15, 0.05
        )
        rows.append(
            ("SIGTERM to the stack (docker stop), a download running", "every process gone", time.monotonic() - begin)
        )
        run.stop()
        started = time.monotonic()
        run.start(workspace)
        job = wait_for(lambda: jobs.get(bus.connect(run.stack.settings), job.id), 60, what="the job rebuilt")
        run.moving_again(job.id, started)
        rows.append(("the next start after that stop", "the download moving again", time.monotonic() - started))
        run.finish(job, data)
    finally:
        run.stop()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    print("\nFault recovery, default settings (bench/faults.py):")
    print("| fault | back when | after |")
    print("|---|---|---|")
    for fault, what, seconds in rows:
        print(f"| {fault} | {what} | {seconds:.1f} s |")
    before, after = memory
    print(f"\nLargest pool process, resident: {before:.1f} MiB before a 512 MiB download, {after:.1f} MiB after.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
