"""The lock-file helper every read-modify-write across processes goes through (services/common/files.py)."""

from __future__ import annotations

import subprocess
import sys

from services.common.files import locked
from tests.helpers.procs import wait_for


def test_a_lock_file_has_one_holder_and_one_that_will_not_wait_is_told_at_once(tmp_path):
    path = tmp_path / "pass.lock"
    with locked(path) as first:
        assert first
        with locked(path, wait=False) as second:  # each call opens the file anew: threads exclude each other too
            assert second is False
    # Another process holding it, as a second worker's pass would.
    ready = tmp_path / "held"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from services.common.files import locked\n"
            f"with locked(Path({str(path)!r})):\n"
            f"    Path({str(ready)!r}).touch(); time.sleep(60)",
        ]
    )
    try:
        wait_for(ready.exists, 10, what="the other process holding the lock")
        with locked(path, wait=False) as mine:
            assert mine is False
    finally:
        holder.kill()
        holder.wait(10)
    with locked(path, wait=False) as mine:  # its process gone, the lock went with it
        assert mine
