"""The accelerator probe: run for real in an interpreter (this machine has no GPU, so it says so), and
the logic around it over the answers a GPU gives."""

from __future__ import annotations

import json
import os

from services.common import accel, packages
from services.common.gpu import Gpu, GpuReport

H200 = GpuReport(gpus=[Gpu(0, "NVIDIA H200", 139 * 2**30, 0, None, None, (9, 0))], driver="580.65", cuda="13.0")
PASSED = {
    "cuda": True,
    "triton": {"ok": True, "version": "3.5.0"},
    "sageattention": {"ok": True, "version": "2.2.0"},
}


def test_the_probe_runs_in_comfyuis_interpreter_and_says_what_it_found(settings):
    found = accel.run_probe(settings, dict(os.environ))
    # This machine's venv has no torch and no GPU: the probe says so instead of failing.
    assert found["cuda"] is False and "torch" in found["error"], found
    assert accel.summary(found).startswith("not probed: torch")


def test_only_what_passed_gets_a_flag_and_the_users_own_is_not_doubled():
    assert accel.flags(PASSED, []) == ["--use-sage-attention"]
    assert accel.flags(PASSED, ["--use-sage-attention"]) == []
    broken = {**PASSED, "sageattention": {"ok": False, "error": "RuntimeError: no kernel image is available"}}
    assert accel.flags(broken, []) == []
    assert accel.summary(broken) == (
        "triton 3.5.0 runs; SageAttention fails (RuntimeError: no kernel image is available): not used"
    )
    missing = {**PASSED, "sageattention": {"ok": False, "error": "not installed"}}
    assert accel.summary(missing) == "triton 3.5.0 runs; SageAttention not installed"


def test_an_answer_is_kept_per_gpu_and_build_and_asked_again_when_they_change(settings, tmp_path):
    settings.paths.config.mkdir(parents=True, exist_ok=True)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    # An interpreter that does not exist: had the probe run, its answer would say it could not.
    absent = settings.model_copy(update={"comfyui_python": tmp_path / "no-venv" / "bin" / "python"})
    wanted = accel.key(absent, H200)
    settings.paths.accelerators_cache.write_text(json.dumps({wanted: PASSED}))
    assert accel.probe(absent, H200, {}) == PASSED
    assert accel.last(absent) == PASSED
    # Another GPU, or a SageAttention a node put on the volume: another key, so the probe runs again.
    other = GpuReport(gpus=[Gpu(0, "NVIDIA RTX 5090", 32 * 2**30, 0, None, None, (12, 0))], driver="580.65")
    assert accel.key(absent, other) != wanted
    (packages.site_dir(absent) / "sageattention-2.2.0.dist-info").mkdir(parents=True)
    assert accel.key(absent, H200) != wanted
    again = accel.probe(absent, H200, {})
    assert again["cuda"] is None and "could not run" in again["error"]
    # A probe that could not run is not kept: the next start asks again.
    assert list(json.loads(settings.paths.accelerators_cache.read_text())) == [wanted]


def test_comfyuis_starting_together_probe_once_on_the_first_ones_gpu(settings, tmp_path):
    """COMFYUI_GPUS starts every ComfyUI at once: one probe (seconds of torch import each), the rest wait."""
    import concurrent.futures

    settings.paths.config.mkdir(parents=True, exist_ok=True)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    runs = tmp_path / "runs"
    fake = tmp_path / "python"  # stands for ComfyUI's interpreter: it counts its runs and answers PASSED
    fake.write_text(f"#!/bin/sh\necho \"$CUDA_VISIBLE_DEVICES\" >> {runs}\nsleep 1\necho '{json.dumps(PASSED)}'\n")
    fake.chmod(0o755)
    four = settings.model_copy(update={"comfyui_python": fake})
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda device: accel.probe(four, H200, {"PATH": "/usr/bin:/bin"}, device), range(4)))
    assert answers == [PASSED] * 4
    ran = runs.read_text().split()
    assert len(ran) == 1 and ran[0] in {"0", "1", "2", "3"}  # on the GPU of whichever came first
