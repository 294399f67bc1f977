"""What the workspace sits on: its file-system type from the kernel's mount table, whether that is a
network file system (where mmap's small page faults each cost a round trip), and its read speed, measured
once on a bounded sample. Written to RUN_DIR/volume.json for the overview, the API and health."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from services.common.files import write_atomic
from services.common.settings import Settings

# Network file systems (FUSE ones too: RunPod's network volumes, s3fs, sshfs); `fuseblk` is a local disk
# (ntfs-3g, exfat) served through FUSE.
NETWORK_TYPES = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "beegfs", "gpfs", "afs", "davfs"}
)
SAMPLE_BYTES = 256 << 20  # the most a measurement reads
SAMPLE_SECONDS = 3.0  # and the longest it reads
CHUNK = 4 << 20
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft")


@dataclass(frozen=True)
class Mount:
    point: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    # The kernel writes spaces, tabs and backslashes in mount points as octal escapes (\040).
    return field.encode().decode("unicode_escape")


def mounts() -> list[Mount]:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if sep and len(fields) > 4 and len(tail) >= 2:
            out.append(Mount(_unescape(fields[4]), tail[0], _unescape(tail[1])))
    return out


def mount_of(path: Path) -> Mount | None:
    """The mount holding `path`: the deepest mount point above its real path (the last mounted on a tie)."""
    target = os.path.realpath(path)
    best: Mount | None = None
    for mount in mounts():
        prefix = mount.point if mount.point.endswith("/") else mount.point + "/"
        if (target == mount.point or target.startswith(prefix)) and (
            best is None or len(mount.point) >= len(best.point)
        ):
            best = mount
    return best


def is_mount_point(path: Path) -> bool:
    """A mount point, bind mounts of a folder on the same file system included (`docker run -v ./ws:/workspace`):
    os.path.ismount compares devices and misses those; the kernel's mount table does not."""
    if os.path.ismount(path):
        return True
    target = os.path.realpath(path)
    return any(m.point == target for m in mounts())


def is_network(fstype: str) -> bool:
    return fstype in NETWORK_TYPES or (fstype.startswith("fuse") and fstype != "fuseblk")


@dataclass
class Volume:
    fstype: str
    network: bool
    mount_point: str
    read_mb_s: float | None = None
    sample: str | None = None
    measured_at: float | None = None
    free_trusted: bool = True

    @property
    def label(self) -> str:
        kind = f"network volume ({self.fstype})" if self.network else f"local disk ({self.fstype})"
        return kind + (f", reads {self.read_mb_s:.0f} MB/s" if self.read_mb_s else "")

    def as_dict(self) -> dict:
        return {**asdict(self), "label": self.label}


def detect(settings: Settings) -> Volume:
    mount = mount_of(settings.workspace)
    fstype = mount.fstype if mount else "unknown"
    network = is_network(fstype)
    # On a network file system the free space is often the whole cluster's (RunPod's network volumes
    # show the storage's, not the size bought): the number cannot be trusted to plan downloads.
    return Volume(fstype, network, mount.point if mount else "", free_trusted=not network)


def mmap_choice(settings: Settings, found: Volume | None = None) -> tuple[bool, str]:
    """Whether ComfyUI mmaps safetensors, and why (the overview says both)."""
    if settings.comfyui_mmap == "on":
        return True, "COMFYUI_MMAP=on"
    if settings.comfyui_mmap == "off":
        return False, "COMFYUI_MMAP=off"
    found = found or detect(settings)
    if found.network:
        return False, f"the workspace is a network volume ({found.fstype}): whole reads beat mmap's page faults"
    return True, f"the workspace is a local disk ({found.fstype})"


def _sample_file(settings: Settings) -> Path | None:
    """The largest model file on the volume (a real one beats a file we write), else None."""
    best: tuple[int, Path] | None = None
    try:
        folders = list(os.scandir(settings.paths.models))
    except OSError:
        return None
    for folder in folders:
        try:
            entries = list(os.scandir(folder.path)) if folder.is_dir() else []
        except OSError:
            continue
        for entry in entries:
            if entry.name.endswith(MODEL_SUFFIXES) and entry.is_file(follow_symlinks=False):
                size = entry.stat().st_size
                if best is None or size > best[0]:
                    best = (size, Path(entry.path))
    return best[1] if best else None


def measure(settings: Settings) -> tuple[float | None, str | None]:
    """Sequential read speed in MB/s on a bounded sample (a model file, else one written for it), with
    the page cache for it dropped first so the figure is the volume's, not memory's."""
    sample = _sample_file(settings)
    made = None
    if sample is None:
        made = settings.workspace / f".read-speed-sample.{settings.pod_name}"  # pods may share the volume
        try:
            with open(made, "wb") as handle:
                for _ in range(16):
                    handle.write(os.urandom(CHUNK))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError:
            made.unlink(missing_ok=True)
            return None, None
        sample = made
    try:
        fd = os.open(sample, os.O_RDONLY)
    except OSError:
        return None, None
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        done, begin = 0, time.perf_counter()
        while done < SAMPLE_BYTES and time.perf_counter() - begin < SAMPLE_SECONDS:
            chunk = os.read(fd, CHUNK)
            if not chunk:
                break
            done += len(chunk)
        seconds = time.perf_counter() - begin
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        return None, None
    finally:
        os.close(fd)
        if made is not None:
            made.unlink(missing_ok=True)
    if done == 0 or seconds <= 0:
        return None, None
    return done / seconds / 1e6, sample.name if made is None else None


def write(settings: Settings, volume: Volume) -> None:
    write_atomic(settings.paths.volume_report, json.dumps(volume.as_dict()))


def read(settings: Settings) -> dict | None:
    try:
        return json.loads(settings.paths.volume_report.read_text())
    except (OSError, ValueError):
        return None
