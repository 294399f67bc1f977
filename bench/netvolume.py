"""Loading a 2 GB safetensors file with the `safetensors` library, side by side in one run: from a slow
FUSE mount that behaves like a network volume (tests/helpers/slowfs.py: 0.2 ms per read request, read-ahead
cut to a page) with mmap (what ComfyUI does by default) and without (`--disable-mmap`, what the stack
turns on there), then from the local model cache (a copy made by the worker's own copier) against the same
file on local disk. The page cache is dropped before each load. Run as root: `make bench` or
`.venv/bin/python bench/netvolume.py` (BENCH_MODEL_MB=512 for a shorter run).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load, load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.worker.cachefill import copy
from tests.helpers.slowfs import mounted

SIZE_MB = int(os.environ.get("BENCH_MODEL_MB", "2048"))
DELAY = 0.0002
TENSOR_MB = 64


def drop_caches(path: Path) -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:  # not root: at least this file's pages
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def timed(label: str, path: Path, fn) -> float:
    drop_caches(path)
    begin = time.perf_counter()
    tensors = fn(path)
    seconds = time.perf_counter() - begin
    assert sum(t.nbytes for t in tensors.values()) >= (SIZE_MB - TENSOR_MB) << 20
    print(f"  {label:38} {seconds:7.2f} s  ({SIZE_MB / 1.048576 / seconds:7.0f} MB/s)")
    return seconds


def with_mmap(path: Path) -> dict:
    return load_file(str(path))  # safe_open: the file mapped, each tensor copied out of the mapping


def without_mmap(path: Path) -> dict:
    return load(path.read_bytes())  # read whole, then parsed: ComfyUI's --disable-mmap


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="bench-netvolume-"))
    try:
        backing, local = root / "backing", root / "local"
        backing.mkdir()
        local.mkdir()
        tensors = {f"t{i}": np.full((TENSOR_MB << 20) // 4, i, dtype=np.float32) for i in range(SIZE_MB // TENSOR_MB)}
        save_file(tensors, str(backing / "model.safetensors"))
        del tensors
        shutil.copy(backing / "model.safetensors", local / "model.safetensors")
        print(f"a {SIZE_MB} MB safetensors file ({SIZE_MB // TENSOR_MB} tensors):")
        with mounted(backing, root / "mnt", delay=DELAY) as mnt:
            slow = mnt / "model.safetensors"
            without = timed("network volume, without mmap", slow, without_mmap)
            mapped = timed("network volume, with mmap", slow, with_mmap)
            cache = root / "cache" / "checkpoints" / "model.safetensors"
            begin = time.perf_counter()
            copy(slow, cache, None)
            print(f"  {'copy into the local cache':38} {time.perf_counter() - begin:7.2f} s (once, in the background)")
        disk = timed("local disk, with mmap", local / "model.safetensors", with_mmap)
        cached = timed("local cache, with mmap", cache, with_mmap)
        print(f"without mmap on the network volume: {mapped / without:.1f}x faster than with it (goal: 5x)")
        print(f"from the local cache: {cached / disk:.2f}x the time of local disk (goal: within 1.2x)")
        print(f"from the local cache: {mapped / cached:.0f}x faster than mmap on the network volume")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
