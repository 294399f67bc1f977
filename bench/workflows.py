"""Workflow analysis over every one of ComfyUI's own templates (PyPI's comfyui-workflow-templates-json,
a test dependency), with ComfyUI-Manager's lists (comfyui-manager): how many templates resolve in full,
and how long the largest takes. Side by side: reading the same file as JSON alone, the floor any tool
pays. Run: `make bench` or `.venv/bin/python bench/workflows.py`.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common.settings import Settings
from services.common.workflows import analyze, catalog, formats
from tests.helpers.procs import VENV_PYTHON

RUNS = 9


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="bench-workflows-"))
    settings = Settings(workspace=root / "ws", run_dir=root / "run", comfyui_python=VENV_PYTHON)
    templates = catalog.templates(settings)
    if not templates:
        print("ComfyUI's templates are not installed: pip install -e .[test]")
        return 1
    # A ComfyUI that knows the core classes Manager's map records (an older one than the templates'):
    # each other node type is then named by a pack, marked as a newer ComfyUI's, or unknown.
    known = set(catalog.manager(settings).core)
    models_ok = full = refs = resolved = 0
    begin = time.perf_counter()
    for t in templates:
        found = analyze.analyze(settings, None, formats.read(t.path.read_bytes()), known)
        refs += len(found.models)
        resolved += sum(1 for m in found.models if m.url)
        models_ok += all(m.url for m in found.models)
        full += all(m.url for m in found.models) and all(p.url for p in found.packs)
    every = time.perf_counter() - begin
    largest = max(templates, key=lambda t: t.path.stat().st_size)
    raw = largest.path.read_bytes()
    times, floor = [], []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        analyze.analyze(settings, None, formats.read(raw), known)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        json.loads(raw)
        floor.append(time.perf_counter() - t0)
    ours, parse = statistics.median(times), statistics.median(floor)
    print(f"templates: {len(templates)}; model references: {refs}, {resolved} with a source")
    print(f"  every model resolvable: {models_ok}/{len(templates)}")
    print(f"  every model and node type resolvable (Manager's core list as ComfyUI): {full}/{len(templates)}")
    print(f"  all {len(templates)} analysed in {every:.2f} s")
    print(
        f"  largest ({largest.name}, {len(raw) / 1e6:.2f} MB): analysis {ours * 1000:.1f} ms,"
        f" json.loads alone {parse * 1000:.1f} ms ({ours / parse:.1f}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
