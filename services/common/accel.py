"""Accelerators for ComfyUI (triton, SageAttention): probed with a real kernel launch on the GPU, and
used only when they pass.

The video workflows people run (Wan, HunyuanVideo) ask for SageAttention; a build that does not match
the torch/CUDA pair or the GPU fails inside a sampler, minutes into a run. So before ComfyUI starts on a
GPU, `services/comfyui/accel_probe.py` runs in ComfyUI's own Python and environment (the volume's
packages included: a SageAttention a node installed counts) and launches a small kernel of each; ComfyUI
gets `--use-sage-attention` only when SageAttention's passed. triton has no flag of ComfyUI's: nodes that
compile (torch.compile, KJNodes) use it, and the overview says whether it runs.

The probe costs seconds (it imports torch), so its answer is kept on the volume per GPU, driver, torch
build and installed versions: it runs again only when one of them changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from pathlib import Path

from services.common import packages
from services.common.files import locked, write_atomic
from services.common.settings import Settings

log = logging.getLogger(__name__)

PROBE = Path(__file__).resolve().parents[1] / "comfyui" / "accel_probe.py"
PROBE_TIMEOUT = 180.0  # triton compiles its kernel on first use
SAGE_FLAG = "--use-sage-attention"


def _versions(settings: Settings) -> dict[str, str]:
    found = {}
    venv = packages.venv_site(settings.comfyui_python)
    for site in (venv, packages.site_dir(settings)):
        if site is None:
            continue
        installed = packages.distributions(site)
        for name in ("triton", "sageattention"):
            if name in installed and name not in found:
                found[name] = installed[name][0]
    return found


def key(settings: Settings, report) -> str:
    """What the answer depends on: the GPUs, the driver, the torch build, triton's and SageAttention's versions."""
    try:
        torch_build = settings.comfyui_torch_build.read_text()
    except OSError:
        torch_build = ""
    facts = {
        "gpus": [g.name for g in report.gpus],
        "driver": report.driver,
        "torch_build": torch_build,
        "versions": _versions(settings),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def _cache(settings: Settings) -> dict:
    try:
        return json.loads(settings.paths.accelerators_cache.read_text())
    except (OSError, ValueError):
        return {}


def run_probe(settings: Settings, env: dict[str, str]) -> dict:
    """The probe itself, in ComfyUI's interpreter; a failure to run it is an answer too (not kept)."""
    try:
        done = subprocess.run(
            [str(settings.comfyui_python), str(PROBE)],
            env=env,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"cuda": None, "error": f"the probe did not finish in {PROBE_TIMEOUT:.0f} s"}
    except OSError as exc:
        return {"cuda": None, "error": f"the probe could not run: {exc.strerror}"}
    lines = done.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"cuda": None, "error": f"the probe exited {done.returncode}: {done.stderr.strip()[-300:]}"}


def probe(settings: Settings, report, env: dict[str, str], device: int | None = None) -> dict:
    """The answer for this machine: kept on the volume, probed when nothing kept matches.

    One ComfyUI per GPU (COMFYUI_GPUS) starts them all at once: under one lock the first probes, on its
    own GPU, and the others find its answer kept (the key covers every GPU of the machine)."""
    wanted = key(settings, report)
    with locked(settings.run_dir / "accelerators.lock"):
        cache = _cache(settings)
        if wanted in cache:
            found = cache[wanted]
        else:
            if device is not None:  # what ComfyUI's own --cuda-device does (CUDA_DEVICE_ORDER is set)
                env = {**env, "CUDA_VISIBLE_DEVICES": str(device)}
            found = run_probe(settings, env)
            if found.get("cuda"):  # a real answer from the GPU; a probe that could not run is tried again
                cache[wanted] = found
                try:
                    write_atomic(settings.paths.accelerators_cache, json.dumps(cache, indent=1) + "\n")
                except OSError as exc:
                    log.warning("cannot keep the accelerator probe's answer: %s", exc)
        write_atomic(settings.run_dir / "accelerators.json", json.dumps(found) + "\n")
    return found


def flags(result: dict, given: list[str]) -> list[str]:
    """ComfyUI's flags for what passed, unless the user's COMFYUI_ARGS already say so."""
    sage = result.get("sageattention") or {}
    return [SAGE_FLAG] if sage.get("ok") and SAGE_FLAG not in given else []


def summary(result: dict | None) -> str:
    """One line for the log and the overview."""
    if not result:
        return "not probed yet"
    if not result.get("cuda"):
        return f"not probed: {result.get('error', 'no GPU')}"
    parts = []
    for name, title in (("triton", "triton"), ("sageattention", "SageAttention")):
        found = result.get(name) or {}
        if found.get("ok"):
            parts.append(f"{title} {found.get('version') or ''} runs".replace("  ", " "))
        elif found.get("error") == "not installed":
            parts.append(f"{title} not installed")
        else:
            parts.append(f"{title} fails ({found.get('error', 'wrong result')}): not used")
    return "; ".join(parts)


def last(settings: Settings) -> dict | None:
    """What the probe said at ComfyUI's last start on a GPU."""
    try:
        return json.loads((settings.run_dir / "accelerators.json").read_text())
    except (OSError, ValueError):
        return None
