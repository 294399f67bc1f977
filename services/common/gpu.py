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

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GpuReport:
    gpus: list[Gpu]
    driver: str | None = None
    cuda: str | None = None
    error: str | None = None


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
