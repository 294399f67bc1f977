"""Startup benchmark: the steps alone and entrypoint -> every control-plane service ready.

Measured on a workspace holding 50,000 model files in 30 folders (startup must not walk them) and on an
empty one, side by side with what older images do at boot: copy a venv onto the volume (rsync -a of
this project's own venv, to local disk; a network volume is far slower).
Run: `make bench` or `.venv/bin/python bench/startup.py [--runs N]`.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.common import bus, messages, queue  # noqa: E402
from tests.helpers.procs import short_dir  # noqa: E402
from tests.helpers.stack import Stack  # noqa: E402

FILES = 50_000
FOLDERS = 30


def populate(workspace: Path) -> None:
    models = workspace / "models"
    per = FILES // FOLDERS + 1
    made = 0
    for i in range(FOLDERS):
        folder = models / ("checkpoints" if i == 0 else f"extra_{i:02d}")
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per):
            if made == FILES:
                return
            (folder / f"model_{j:05d}.safetensors").touch()
            made += 1


def steps_ms(workspace: Path) -> tuple[float, dict[str, float]]:
    run_dir = short_dir("cdb-")
    try:
        out = subprocess.run(
            [str(REPO / "docker" / "entrypoint.sh"), "--no-exec"],
            capture_output=True,
            text=True,
            env={
                "WORKSPACE": str(workspace),
                "RUN_DIR": str(run_dir),
                "PATH": "/usr/bin:/bin",
                "DASHBOARD_PASSWORD": "bench",
            },
            check=True,
        )
        del out
        report = json.loads((run_dir / "startup.json").read_text())
        return report["total_ms"], {s["name"]: s["ms"] for s in report["steps"]}
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def ready_seconds(root: Path) -> dict[str, float]:
    """Entrypoint's first instruction -> each control-plane service answering for real."""
    stack = Stack(root, COMFYUI_DIR=str(root / "no-comfyui"), HEALTH_INTERVAL="1")
    stack.start()
    s = stack.settings
    t0 = None
    marks: dict[str, float] = {}
    app = queue.client(s)
    try:
        deadline = time.monotonic() + 60
        while len(marks) < 4 and time.monotonic() < deadline:
            if t0 is None and s.paths.startup_report.exists():
                t0 = json.loads(s.paths.startup_report.read_text())["entrypoint_started_at"]
            now = time.time()
            if "redis" not in marks:
                try:
                    bus.connect(s, timeout=0.2).ping()
                    marks["redis"] = now
                except Exception:
                    pass
            if "dashboard" not in marks and _ok(f"http://127.0.0.1:{s.dashboard_port}/livez"):
                marks["dashboard"] = now
            if "health" not in marks and _ok(f"http://127.0.0.1:{s.health_port}/health"):
                marks["health"] = now
            if "worker" not in marks and "redis" in marks:
                reply = app.send_task(messages.TASK_PING, args=[now])
                try:
                    reply.get(timeout=0.5)
                    marks["worker"] = time.time()
                except Exception:
                    pass
                del reply
            # Polling supervisord also keeps its loop awake, as the health service does.
            try:
                stack.rpc().supervisor.getState()
            except Exception:
                pass
            time.sleep(0.02)
    finally:
        gc.collect()  # results hold the backend: release them while Redis still runs
        app.close()
        stack.stop()
    assert t0 is not None and len(marks) == 4, marks
    result = {name: at - t0 for name, at in marks.items()}
    result["all"] = max(result.values())
    return result


COMFYUI_CPU_SECONDS = "4"  # the stand-in's CPU work before its port opens (the real one: imports)


def _wait_ok(url: str, begin: float, timeout: float = 120) -> float:
    while time.perf_counter() - begin < timeout:
        if _ok(url):
            return time.perf_counter() - begin
        time.sleep(0.02)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


def comfyui_through_stack(root: Path) -> float:
    """Entrypoint to ComfyUI's first 200 on /system_stats, the whole stack starting beside it."""
    stack = Stack(root, STANDIN_STARTUP_SECONDS="0", STANDIN_STARTUP_CPU_SECONDS=COMFYUI_CPU_SECONDS)
    begin = time.perf_counter()
    stack.start()
    try:
        return _wait_ok(f"{stack.settings.comfyui_url}/system_stats", begin)
    finally:
        stack.stop()


def comfyui_bare(root: Path) -> float:
    """The same ComfyUI with the argv and environment the launcher gives it, started alone."""
    from services.comfyui.launcher import build_argv, environment, model_path_configs
    from services.common import instances
    from services.common.settings import load_settings
    from services.startup.__main__ import run_steps

    stack = Stack(root, STANDIN_STARTUP_SECONDS="0", STANDIN_STARTUP_CPU_SECONDS=COMFYUI_CPU_SECONDS)
    settings = load_settings(stack.env)
    run_steps(settings)
    one = instances.current(settings)[0]
    argv = build_argv(settings, one, gpu=False, model_configs=model_path_configs(settings)[0])
    begin = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=environment(settings, one, stack.env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        return _wait_ok(f"{settings.comfyui_url}/system_stats", begin)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(stack.run_dir, ignore_errors=True)


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.3) as response:
            return response.status == 200
    except OSError:
        return False


def make_venv_like_tree(dest: Path, copies: int) -> int:
    """A venv-shaped tree: this project's venv, `copies` times (a ComfyUI venv with CUDA torch is 5-8 GiB)."""
    for i in range(copies):
        subprocess.run(["cp", "-a", str(REPO / ".venv"), str(dest / f"part{i}")], check=True)
    return sum(p.stat().st_size for p in dest.rglob("*") if p.is_file() and not p.is_symlink())


def copy_seconds(source: Path, dest: Path) -> float:
    subprocess.run(["sync"], check=True)
    begin = time.perf_counter()
    tool = ["rsync", "-a"] if shutil.which("rsync") else ["cp", "-a"]
    subprocess.run([*tool, str(source) + "/", str(dest)], check=True)
    subprocess.run(["sync"], check=True)  # the copy is done when it is on disk
    return time.perf_counter() - begin


def _quiet_stale_results(unraisable) -> None:
    # Celery's AsyncResult.__del__ unsubscribes from a result store that the finished stack took with it.
    if isinstance(unraisable.exc_value, RuntimeError) and "result store" in str(unraisable.exc_value):
        return
    sys.__unraisablehook__(unraisable)


def main() -> int:
    sys.unraisablehook = _quiet_stale_results
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--venv-copies", type=int, default=10, help="size of the copied tree, in venvs")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    try:
        big = root / "big"
        begin = time.perf_counter()
        populate(big)
        print(f"workspace with {FILES} model files in {FOLDERS} folders made in {time.perf_counter() - begin:.1f} s")
        empty = root / "empty"
        steps_ms(big)  # first run creates the layout; the figures below are of real restarts
        steps_ms(empty)
        big_runs = [steps_ms(big) for _ in range(args.runs)]
        empty_runs = [steps_ms(empty) for _ in range(args.runs)]
        print(f"\nstartup steps, median of {args.runs} (ms)")
        print(f"{'step':14} {'50k files':>10} {'empty':>10}")
        for name in big_runs[0][1]:
            b = statistics.median(r[1][name] for r in big_runs)
            e = statistics.median(r[1][name] for r in empty_runs)
            print(f"{name:14} {b:10.2f} {e:10.2f}")
        total_big = statistics.median(r[0] for r in big_runs)
        total_empty = statistics.median(r[0] for r in empty_runs)
        print(f"{'total':14} {total_big:10.2f} {total_empty:10.2f}   (goal < 300 ms)")

        ready = [ready_seconds(root / f"stack{i}") for i in range(args.runs)]
        print(f"\nentrypoint -> service ready, median of {args.runs} (s)")
        for name in ("redis", "dashboard", "worker", "health", "all"):
            print(f"{name:14} {statistics.median(r[name] for r in ready):10.2f}")
        all_ready = statistics.median(r["all"] for r in ready)
        print(f"{'':14} goal: all < 3 s")

        tree = root / "venv-like"
        tree.mkdir()
        stacked, bare = [], []
        for i in range(args.runs):
            bare.append(comfyui_bare(root / f"bare{i}"))
            stacked.append(comfyui_through_stack(root / f"with{i}"))
        through, alone = statistics.median(stacked), statistics.median(bare)
        print(f"\nComfyUI ready (stand-in spending {COMFYUI_CPU_SECONDS} s of CPU first), median of {args.runs} (s)")
        print(f"bare, same argv      {alone:6.2f}")
        print(f"through the stack    {through:6.2f}   ratio: {through / alone:.2f}x (goal: at most 1.05x)")
        size = make_venv_like_tree(tree, args.venv_copies) / 2**30
        copies = [copy_seconds(tree, root / f"copy{i}") for i in range(2)]
        copy = statistics.median(copies)
        print(f"\nwhat older images do at boot: rsync a venv onto the volume ({size:.1f} GiB, local disk)")
        print(f"{'copy venv':14} {copy:10.2f} s")
        print(f"{'ours, ready':14} {all_ready:10.2f} s   ratio copy/ours: {copy / all_ready:.1f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
