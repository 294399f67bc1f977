"""Preset listing benchmark: 100 presets with their state, on a volume holding 50,000 model files.

State is derived on every request (one stat per preset file, one Redis round trip), never stored, so
it must stay cheap however full the volume is. Side by side: what a listing that walks the volume to
find installed files would cost. Run: `make bench` or `.venv/bin/python bench/presets.py`.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common import presets
from services.common.settings import Settings
from tests.helpers.redisserver import RedisServer

FILES, FOLDERS, PRESETS, RUNS = 50_000, 30, 100, 20


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="bench-presets-"))
    redis_server = RedisServer().start()
    try:
        settings = Settings(workspace=root / "ws", redis_url=redis_server.url)
        models = settings.paths.models
        folders = ["checkpoints", "loras", "vae", "text_encoders", "diffusion_models"]
        folders += [f"extra_{i:02d}" for i in range(FOLDERS - len(folders))]
        for i in range(FILES):
            folder = models / folders[i % FOLDERS]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"model_{i:05d}.safetensors").touch()
        settings.paths.user_presets.mkdir(parents=True)
        for p in range(PRESETS):
            files = [
                {
                    "url": f"https://example.com/{p}/{k}.safetensors",
                    "folder": folders[k % 5],
                    "filename": f"model_{(p * 4 + k) * 7 % FILES:05d}.safetensors" if k % 2 else f"p{p}_{k}.bin",
                    "approx_size": "1 GB",
                }
                for k in range(4)
            ]
            preset = {"id": f"bench-{p:03d}", "name": f"Bench {p}", "category": "image", "base": "x", "files": files}
            (settings.paths.user_presets / f"bench-{p:03d}.yaml").write_text(yaml.safe_dump(preset))
        client = redis_server.client()
        catalogue = presets.load(settings)
        presets.list_presets(settings, client, catalogue=catalogue)
        timings, with_load = [], []
        for _ in range(RUNS):
            begin = time.perf_counter()
            listed = presets.list_presets(settings, client, catalogue=catalogue)
            timings.append((time.perf_counter() - begin) * 1000)
            begin = time.perf_counter()
            presets.list_presets(settings, client)
            with_load.append((time.perf_counter() - begin) * 1000)
        walks = []
        for _ in range(3):
            begin = time.perf_counter()
            found = sum(len(names) for _, _, names in os.walk(models))
            walks.append((time.perf_counter() - begin) * 1000)
        assert len(listed) >= PRESETS and found >= FILES
        ours = statistics.median(timings)
        print(
            f"{len(listed)} presets ({PRESETS} generated + built-ins) with state, {FILES} files in {FOLDERS} folders,"
            f" median of {RUNS}"
        )
        print(f"{'list with state (catalogue loaded)':40} {ours:8.1f} ms   (goal < 50 ms)")
        print(f"{'list via load() (stat-checked cache)':40} {statistics.median(with_load):8.1f} ms")
        print(
            f"{'walking the volume instead (os.walk)':40} {statistics.median(walks):8.1f} ms   "
            f"ratio walk/ours: {statistics.median(walks) / ours:.1f}x"
        )
    finally:
        redis_server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
