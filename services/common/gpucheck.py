"""GPU preflight: will this image's torch build run on this driver and these GPUs? One sentence that
names the fix, before ComfyUI starts, instead of a crash deep inside it.

Pure logic over facts (the driver's CUDA version from NVML, each GPU's compute capability, the torch
build's CUDA version and GPU architectures), so that tests can feed it every combination.

- The driver: a CUDA 12.x build runs on any driver for CUDA 12 (CUDA's minor-version compatibility),
  so only an older major version is fatal (a CUDA 13 image on a driver for CUDA 12, i.e. before 580);
  an older minor version is worth a warning.
- The GPU: torch ships kernels for a list of architectures (`sm_XY`) and PTX (`compute_XY`) that the
  driver can compile for newer GPUs. A GPU runs the build when the list has its major version at or
  below its minor (sm_80 runs on an 8.6), or PTX at or below its capability.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

from services.common.files import write_atomic

# The CUDA builds we publish (docker-bake.hcl; tests/test_docker.py keeps the two in step): CUDA
# version -> the tag's suffix.
CUDA_TAGS = {"12.4": "cu124", "12.6": "cu126", "12.8": "cu128", "13.0": "cu130"}


@dataclass(frozen=True)
class GpuFacts:
    name: str
    capability: tuple[int, int]


@dataclass(frozen=True)
class Verdict:
    status: str  # ok | warn | fail
    message: str
    use_tag: str | None = None  # the image tag that fixes a failure, when one does

    def as_dict(self) -> dict:
        return asdict(self)


def _version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def _tag(variant: str | None, suffix: str) -> str:
    return f"{variant}-{suffix}" if variant else f"<variant>-{suffix}"


def _arches(arch_list: list[str]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(binary kernels, PTX) as (major, minor) from flags like sm_86, sm_90a, compute_90."""
    sm, ptx = [], []
    for flag in arch_list:
        found = re.fullmatch(r"(sm|compute)_(\d+)(\d)[a-z]?", flag.strip())
        if found:
            (sm if found.group(1) == "sm" else ptx).append((int(found.group(2)), int(found.group(3))))
    return sm, ptx


def _runs(capability: tuple[int, int], sm: list[tuple[int, int]], ptx: list[tuple[int, int]]) -> bool:
    major, minor = capability
    return any(m == major and n <= minor for m, n in sm) or any(p <= capability for p in ptx)


def preflight(
    driver_cuda: str | None,
    torch_cuda: str | None,
    gpus: list[GpuFacts],
    arch_list: list[str] | None,
    variant: str | None = None,
) -> Verdict:
    if not gpus:
        return Verdict("ok", "no NVIDIA GPU visible: ComfyUI runs on the CPU")
    if torch_cuda is None:
        return Verdict("warn", "the CUDA version of ComfyUI's torch is not known: it may be a CPU build")
    built, names = _version(torch_cuda), ", ".join(g.name for g in gpus)
    if driver_cuda is not None:
        driver = _version(driver_cuda)
        if driver[0] < built[0]:
            fitting = [v for v in CUDA_TAGS if _version(v) <= driver]
            if not fitting:
                return Verdict(
                    "fail",
                    f"The NVIDIA driver supports CUDA {driver_cuda}, older than every image of ours"
                    f" (CUDA {min(CUDA_TAGS, key=_version)} and newer): update the host's driver.",
                )
            best = CUDA_TAGS[max(fitting, key=_version)]
            return Verdict(
                "fail",
                f"The NVIDIA driver supports CUDA {driver_cuda} but this image's torch is built for CUDA"
                f" {torch_cuda}: use the image tag {_tag(variant, best)}, or update the host's driver.",
                _tag(variant, best),
            )
        if driver < built:
            return Verdict(
                "warn",
                f"The NVIDIA driver supports CUDA {driver_cuda}, this image's torch is built for CUDA"
                f" {torch_cuda}: it runs through CUDA's minor-version compatibility; a few features need"
                " a newer driver",
            )
    if arch_list:
        sm, ptx = _arches(arch_list)
        for gpu in gpus:
            if sm or ptx:
                if _runs(gpu.capability, sm, ptx):
                    continue
                newest = max(sm + ptx)
                cap = f"{gpu.capability[0]}.{gpu.capability[1]}"
                span = f"sm_{min(sm + ptx)[0]}{min(sm + ptx)[1]} to sm_{newest[0]}{newest[1]}"
                if gpu.capability > newest:
                    # Newer GPUs come with newer CUDA builds: the newest one this driver runs.
                    newer = [
                        s
                        for v, s in CUDA_TAGS.items()
                        if _version(v) > built and (driver_cuda is None or _version(v)[0] <= _version(driver_cuda)[0])
                    ]
                    fix = _tag(variant, newer[-1]) if newer else None
                    where = f"use the image tag {fix} (a newer CUDA build)" if fix else "no image of ours has it yet"
                else:
                    # Builds drop old GPUs first: the oldest CUDA build still has them.
                    older = [s for v, s in CUDA_TAGS.items() if _version(v) < built]
                    fix = _tag(variant, older[0]) if older else None
                    where = f"use the image tag {fix} (an older CUDA build)" if fix else "no image of ours has it"
                return Verdict(
                    "fail",
                    f"GPU {gpu.name} (compute capability {cap}) has no kernels in this image's torch build"
                    f" ({span}): {where}.",
                    fix,
                )
    return Verdict("ok", f"{names}: the driver (CUDA {driver_cuda}) and torch (CUDA {torch_cuda}) fit")


# --- the facts of this machine, and the verdict kept for health and the dashboard -------------------


def torch_facts(settings) -> tuple[str | None, list[str] | None]:
    """(CUDA version, architecture flags) of the torch in ComfyUI's venv: the image build recorded both;
    elsewhere the CUDA version is read from torch's version.py (importing torch would cost seconds)."""
    try:
        recorded = json.loads(settings.comfyui_torch_build.read_text())
        return recorded.get("cuda"), recorded.get("arch_list") or None
    except (OSError, ValueError, AttributeError):
        pass
    venv = settings.comfyui_python.parent.parent
    for version_file in sorted(venv.glob("lib/python*/site-packages/torch/version.py")):
        try:
            found = re.search(r"^cuda\b[^=]*=\s*['\"]([\d.]+)['\"]", version_file.read_text(), re.M)
        except OSError:
            continue
        return (found.group(1) if found else None), None
    return None, None


def check(settings, report) -> Verdict:
    """The preflight for this machine (`report`: services.common.gpu.probe()), kept in the run dir."""
    cuda, arches = torch_facts(settings)
    gpus = [GpuFacts(g.name, g.capability) for g in report.gpus if g.capability]
    if report.gpus and not gpus:
        gpus = [GpuFacts(g.name, (0, 0)) for g in report.gpus]
        arches = None  # capabilities unknown: the driver check alone
    verdict = preflight(report.cuda, cuda, gpus, arches, settings.image_variant)
    write_atomic(settings.run_dir / "gpu-preflight.json", json.dumps(verdict.as_dict()) + "\n")
    return verdict


def last(settings) -> Verdict | None:
    """The verdict of ComfyUI's last start, or None before the first."""
    try:
        return Verdict(**json.loads((settings.run_dir / "gpu-preflight.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None
