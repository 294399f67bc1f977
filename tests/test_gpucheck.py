"""GPU preflight over every combination that matters: driver vs torch build, GPU vs the build's kernels."""

from __future__ import annotations

import re

import pytest

from services.common.gpucheck import CUDA_TAGS, GpuFacts, preflight
from tests.helpers.procs import REPO

# Architecture lists as torch builds report them (torch._C._cuda_getArchFlags()), shaped like ours.
OLD_BUILD = ["sm_50", "sm_60", "sm_61", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
NEW_BUILD = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]
BLACKWELL = GpuFacts("NVIDIA RTX PRO 6000 Blackwell", (12, 0))
PASCAL = GpuFacts("Tesla P100", (6, 0))
AMPERE = GpuFacts("NVIDIA RTX A6000", (8, 6))
HOPPER = GpuFacts("NVIDIA H200", (9, 0))
S124, S130 = "standard-cu124", "standard-cu130"


@pytest.mark.parametrize(
    ("driver", "torch", "gpus", "arches", "status", "words", "tag"),
    [
        (None, "12.8", [], None, "ok", "no NVIDIA GPU visible", None),
        (
            "12.4",
            "13.0",
            [HOPPER],
            NEW_BUILD,
            "fail",
            "supports CUDA 12.4 but this image's torch is built for CUDA 13.0",
            "standard-cu124",
        ),
        ("12.8", "13.0", [HOPPER], NEW_BUILD, "fail", "use the image tag standard-cu128", "standard-cu128"),
        ("11.8", "12.4", [AMPERE], OLD_BUILD, "fail", "older than every image of ours", None),
        ("12.2", "12.8", [HOPPER], NEW_BUILD, "warn", "minor-version compatibility", None),
        ("13.0", "12.8", [HOPPER], NEW_BUILD, "ok", "fit", None),
        ("12.8", "12.4", [BLACKWELL], OLD_BUILD, "fail", "compute capability 12.0) has no kernels", "standard-cu128"),
        (
            "13.0",
            "12.4",
            [BLACKWELL],
            OLD_BUILD,
            "fail",
            "(sm_50 to sm_90): use the image tag standard-cu130",
            "standard-cu130",
        ),
        ("13.0", "13.0", [PASCAL], NEW_BUILD, "fail", "an older CUDA build", "standard-cu124"),
        ("12.4", "12.4", [AMPERE], ["sm_80"], "ok", "fit", None),  # sm_80 kernels run on an 8.6
        ("12.8", "12.8", [GpuFacts("future", (13, 0))], NEW_BUILD, "ok", "fit", None),  # PTX compute_120
        ("12.8", "12.8", [HOPPER, PASCAL], NEW_BUILD, "fail", "Tesla P100", "standard-cu124"),
        ("12.8", None, [HOPPER], None, "warn", "may be a CPU build", None),
        ("12.8", "12.8", [BLACKWELL], None, "ok", "fit", None),  # no architecture facts: not guessed
    ],
)
def test_preflight(driver, torch, gpus, arches, status, words, tag):
    verdict = preflight(driver, torch, gpus, arches, variant="standard")
    assert verdict.status == status and words in verdict.message, verdict.message
    assert verdict.use_tag == tag
    assert "\n" not in verdict.message  # one sentence


def test_the_tags_are_the_ones_we_build():
    bake = (REPO / "docker-bake.hcl").read_text()
    built = dict(re.findall(r'name\s*=\s*"(cu\d+)"[^}]*?version\s*=\s*"([\d.]+)"', bake, flags=re.S))
    assert {v: k for k, v in built.items()} == CUDA_TAGS


def test_the_facts_of_this_machine_and_the_verdict_kept(settings, tmp_path):
    from services.common import gpucheck
    from services.common.gpu import Gpu, GpuReport

    settings.run_dir.mkdir(parents=True, exist_ok=True)
    site = tmp_path / "venv" / "lib" / "python3.12" / "site-packages" / "torch"
    site.mkdir(parents=True)
    (site / "version.py").write_text("__version__ = '2.9.1+cu128'\ncuda: Optional[str] = '12.8'\n")
    host = settings.model_copy(
        update={"comfyui_python": tmp_path / "venv" / "bin" / "python", "comfyui_torch_build": tmp_path / "none"}
    )
    assert gpucheck.torch_facts(host) == ("12.8", None)  # host mode: read, not imported
    recorded = tmp_path / "torch-build.json"
    recorded.write_text('{"cuda": "13.0", "arch_list": ["sm_75", "sm_90", "sm_120"]}')
    image = host.model_copy(update={"comfyui_torch_build": recorded, "image_variant": "full"})
    assert gpucheck.torch_facts(image) == ("13.0", ["sm_75", "sm_90", "sm_120"])
    h200 = Gpu(0, "NVIDIA H200", 141 << 30, 0, None, None, capability=(9, 0))
    verdict = gpucheck.check(image, GpuReport(gpus=[h200], driver="550.54", cuda="12.4"))
    assert verdict.status == "fail" and verdict.use_tag == "full-cu124"
    assert gpucheck.last(image) == verdict
