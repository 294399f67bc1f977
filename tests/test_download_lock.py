"""The destination's lock file against real processes: who is writing a file is the kernel's word where it
can give one (a flock the writer holds), whatever the record's pid now means.

A writer in another PID namespace stands for another container on this machine, or this container before a
restart: its pid means nothing here, and may name another live process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from services.worker.download.lock import BOOT_ID, Busy, Lock, live_holder
from tests.helpers.procs import REPO, wait_for

WRITER = (
    "import sys, time; from pathlib import Path; from services.worker.download.lock import Lock; "
    "Lock(Path(sys.argv[1]), sys.argv[2], 60).acquire(); print('held', flush=True); time.sleep(600)"
)


def writer(path, owner: str, namespace: bool = False) -> subprocess.Popen:
    """A process that takes the lock and keeps it; `namespace`: in a PID namespace of its own (as root)."""
    command = [sys.executable, "-c", WRITER, str(path), owner]
    if namespace:  # --kill-child: the writer dies with the unshare process it runs under
        command = ["unshare", "--pid", "--fork", "--kill-child", *command]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture
def lock_path(tmp_path):
    return tmp_path / "m.safetensors.lock"


@pytest.mark.skipif(os.geteuid() != 0, reason="a PID namespace needs root (CI runs as root)")
def test_a_writer_in_another_pid_namespace_is_alive_and_its_death_is_seen_at_once(lock_path):
    proc = writer(lock_path, "pod-a:job", namespace=True)
    try:
        record = json.loads(lock_path.read_text())
        assert record["boot"] == BOOT_ID and record["owner"] == "pod-a:job"
        with pytest.raises(Busy, match="being downloaded by pod-a:job"):
            Lock(lock_path, "pod-b:job", 60).acquire()
        assert live_holder(lock_path, 60) == "pod-a:job"
        assert not Lock(lock_path, "", 0).writer_died_here()
    finally:
        kill(proc)
    # Killed with -9, nobody released it: the file stays, and the kernel says at once that nobody writes.
    wait_for(lambda: Lock(lock_path, "", 0).writer_died_here(), 10, what="the killed writer's flock to go")
    assert lock_path.exists() and live_holder(lock_path, 60) is None
    taker = Lock(lock_path, "pod-b:job", 60)
    taker.acquire()
    assert taker.holder() == "pod-b:job"
    taker.release()
    assert not lock_path.exists()


def test_a_dead_writer_whose_pid_now_belongs_to_a_live_process_is_dead(lock_path):
    """A container restarted: the pid its killed writer had is another process's in the new namespace (here:
    this test's own). The lock used to count as alive, and the job's resumption was dropped as a duplicate."""
    proc = writer(lock_path, "pod:job")
    kill(proc)
    record = json.loads(lock_path.read_text())
    lock_path.write_text(json.dumps({**record, "pid": os.getpid()}))
    lock = Lock(lock_path, "pod:job", 60)
    assert lock.writer_died_here() and lock.stale() and live_holder(lock_path, 60) is None
    lock.acquire()
    assert lock.held and json.loads(lock_path.read_text())["pid"] == os.getpid()
    lock.release()


def test_a_lock_from_another_machine_counts_until_it_is_old(lock_path):
    """Another machine's (or boot's) writer cannot be asked: its lock is stale once untouched for the stale age."""
    lock_path.write_text(json.dumps({"owner": "far:job", "host": "far", "pid": os.getpid(), "boot": "another-boot"}))
    assert not Lock(lock_path, "", 0).writer_died_here()
    with pytest.raises(Busy, match="far:job"):
        Lock(lock_path, "near:job", 60).acquire()
    old = time.time() - 120
    os.utime(lock_path, (old, old))
    taker = Lock(lock_path, "near:job", 60)
    taker.acquire()
    assert taker.holder() == "near:job"
    taker.release()


def test_a_lock_just_made_and_not_yet_written_is_nobody_s_to_take(lock_path):
    """Two pods starting the same file together: the first has created the lock and not yet written its
    record when the second reads it. Empty is not stale: the second waits (it used to take it over, and
    both wrote one .part). An empty lock left long ago is taken."""
    lock_path.write_text("")
    with pytest.raises(Busy):
        Lock(lock_path, "pod-b:job", stale_after=60).acquire()
    old = time.time() - 120
    os.utime(lock_path, (old, old))
    taker = Lock(lock_path, "pod-b:job", stale_after=60)
    taker.acquire()
    assert taker.held and taker.holder() == "pod-b:job"
    taker.release()


def test_a_lock_taken_over_from_a_dead_writer_is_alive_to_the_next_taker(lock_path):
    """The takeover's file is flocked before it takes the lock's name: nobody takes it over in turn."""
    kill(writer(lock_path, "dead:job"))
    first, second = Lock(lock_path, "a:job", 60), Lock(lock_path, "b:job", 60)
    first.acquire()
    with pytest.raises(Busy, match="a:job"):
        second.acquire()  # the first's flock says it lives: not taken over again
    assert first.holder() == "a:job" and not Lock(lock_path, "", 0).writer_died_here()
    first.release()
