"""NVIDIA GPUs through NVML: what the launcher, health and dashboard need to know."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pynvml


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_total: int
    memory_used: int
    utilization: int | None
    temperature: int | None
    capability: tuple[int, int] | None = None  # CUDA compute capability (major, minor)
    uuid: str | None = None  # "GPU-8f2c...": what CUDA_VISIBLE_DEVICES may name instead of an index

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GpuReport:
    gpus: list[Gpu]
    driver: str | None = None
    cuda: str | None = None
    error: str | None = None


def cuda_visible(gpus: list[Gpu], mask: str | None) -> tuple[list[int], list[str]]:
    """The NVML indexes of the GPUs CUDA_VISIBLE_DEVICES leaves to CUDA (all of them when it is unset),
    and a note on an entry that names none.

    Its entries are indexes or GPU UUIDs (a unique prefix will do). Like CUDA, the list is read up to its
    first entry that names no GPU here: the GPUs after it are hidden too. Indexes are taken in NVML's
    order, PCI bus order, which ComfyUI is made to use as well (CUDA_DEVICE_ORDER, services/comfyui)."""
    if mask is None:
        return [g.index for g in gpus], []
    chosen: list[int] = []
    for entry in (part.strip() for part in mask.split(",")):
        if not entry:
            break
        named = [
            g
            for g in gpus
            if (entry.isdigit() and g.index == int(entry))
            or (entry.upper().startswith("GPU-") and (g.uuid or "").upper().startswith(entry.upper()))
        ]
        if len(named) != 1 or named[0].index in chosen:
            seen = ", ".join(str(g.index) for g in gpus) or "none"
            what = "names a GPU twice" if named and named[0].index in chosen else f"names no GPU here (GPUs {seen})"
            return chosen, [f"CUDA_VISIBLE_DEVICES={mask}: {entry!r} {what}: it and what follows are hidden"]
        chosen.append(named[0].index)
    return chosen, []


def probe() -> GpuReport:
    """The GPUs NVML sees; an empty list (with the reason) on a host without an NVIDIA driver."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return GpuReport(gpus=[], error=f"no NVIDIA driver ({exc})")
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda_raw = pynvml.nvmlSystemGetCudaDriverVersion()
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                Gpu(
                    index=index,
                    name=pynvml.nvmlDeviceGetName(handle),
                    memory_total=int(memory.total),
                    memory_used=int(memory.used),
                    utilization=_optional(lambda h=handle: pynvml.nvmlDeviceGetUtilizationRates(h).gpu),
                    temperature=_optional(
                        lambda h=handle: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)
                    ),
                    capability=_capability(handle),
                    uuid=_optional(lambda h=handle: pynvml.nvmlDeviceGetUUID(h)),
                )
            )
        return GpuReport(gpus=gpus, driver=driver, cuda=f"{cuda_raw // 1000}.{cuda_raw % 1000 // 10}")
    except pynvml.NVMLError as exc:
        return GpuReport(gpus=[], error=f"NVML error: {exc}")
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _capability(handle) -> tuple[int, int] | None:
    try:
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        return int(major), int(minor)
    except pynvml.NVMLError:
        return None


def _optional(read):
    try:
        return int(read())
    except pynvml.NVMLError:
        return None
