"""One ComfyUI per GPU in one container (COMFYUI_GPUS): which instances run, on which GPU and ports.

ComfyUI uses one GPU. With several, startup plans one instance per GPU (`plan`; `auto` needs the GPUs
NVML sees) and writes the plan to RUN_DIR, with supervisord's programs for it; every other process reads
that file (`current`), so the launcher, the front door, health, the worker and the dashboard agree on
one list.

One instance is the program `comfyui`, with every file name it always had. Several are `comfyui-0`,
`comfyui-1`, ... each with ComfyUI's `--cuda-device`, its own port pair (public 8188 + n behind the
front door, internal 18188 + n), log, database, temp folder and start history; they share the volume's
models, custom nodes, user folder and output folder, where each one's file names start with its program
name (`comfyui-1_ComfyUI_00001_.png`): two ComfyUIs counting files in one folder would otherwise pick the
same next number and overwrite each other's images.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from services.common.files import fill, write_atomic
from services.common.paths import Paths
from services.common.settings import Settings

PLAN_FILE = "comfyui-instances.json"
SUPERVISOR_FILE = "supervisor-comfyui.conf"


@dataclass(frozen=True)
class Instance:
    index: int
    count: int  # how many run; a single one keeps every name of the one ComfyUI
    device: int | None  # ComfyUI's --cuda-device; None: ComfyUI's own default (one instance, or no GPU)
    public_port: int
    internal_port: int

    @property
    def single(self) -> bool:
        return self.count == 1

    @property
    def program(self) -> str:
        return "comfyui" if self.single else f"comfyui-{self.index}"

    @property
    def title(self) -> str:
        if self.single:
            return "ComfyUI"
        return f"ComfyUI {self.index}" + (f" (GPU {self.device})" if self.device is not None else "")

    @property
    def output_prefix(self) -> str:
        """What starts every file name it saves ('' for a single ComfyUI: nothing to tell apart)."""
        return "" if self.single else f"{self.program}_"

    def trace(self, paths: Paths) -> Path:
        """Where its sitecustomize records each custom node as it is imported (services/common/nodes.py)."""
        return paths.run_dir / f"{self.program}-nodes.trace"

    def trace_before(self, paths: Paths) -> Path:
        """The previous start's trace: a node that killed that start is its last line."""
        return paths.run_dir / f"{self.program}-nodes.trace.1"

    def starts(self, paths: Paths) -> Path:
        """How its last starts ended (services/common/safemode.py)."""
        return paths.run_dir / f"{self.program}-starts.json"

    def database(self, paths: Paths) -> Path:
        """Its own SQLite database: two ComfyUIs on one fight over its lock. The first keeps the pod's."""
        if self.index == 0:
            return paths.comfyui_database
        return paths.user / f"comfyui.{paths.pod}.{self.index}.db"

    def temp_root(self, paths: Paths) -> Path | None:
        """Its `--temp-directory` (ComfyUI empties `<it>/temp` at every start); None: ComfyUI's own."""
        return None if self.single else paths.run_dir / self.program

    def listen(self, settings: Settings) -> tuple[str, int]:
        """Loopback behind the front door; the public address only with FRONT_DOOR_OFF=comfyui.

        On loopback, ComfyUI-Manager also allows its install-from-URL and pip features (it refuses them
        on a public address); the front door lets only logged-in users reach them."""
        if settings.door_open("comfyui"):
            return settings.comfyui_listen, self.public_port
        return "127.0.0.1", self.internal_port

    def url(self, settings: Settings) -> str:
        """Where the stack itself reaches it: past the front door, on loopback."""
        return settings.comfyui_url_at(self.index)

    def as_dict(self) -> dict:
        return {**asdict(self), "name": self.program, "title": self.title}


def _instance(settings: Settings, index: int, count: int, device: int | None) -> Instance:
    return Instance(index, count, device, settings.comfyui_port + index, settings.comfyui_internal_port + index)


def _devices(settings: Settings, visible: list[int] | None) -> tuple[list[int | None], list[str]]:
    """The GPU of each instance, and notes on what COMFYUI_GPUS asked that cannot be had."""
    wanted = settings.comfyui_gpus
    notes: list[str] = []
    if wanted == "auto":
        if not visible:
            return [None], ["COMFYUI_GPUS=auto and no GPU visible: one ComfyUI, on the CPU"]
        return (list(visible) if len(visible) > 1 else [None]), []
    if "," in wanted:
        listed = [int(part) for part in wanted.split(",") if part]
        if visible:
            absent = [d for d in listed if d not in visible]
            if absent:
                missing, seen = ", ".join(map(str, absent)), ", ".join(map(str, visible))
                notes.append(f"COMFYUI_GPUS lists GPU {missing}, not visible here ({seen}): left out")
            listed = [d for d in listed if d in visible] or [visible[0]]
        return listed, notes  # one listed: the single `comfyui`, on that GPU
    count = int(wanted)
    if count == 1:
        return [None], []
    if not visible:
        return [None] * count, []  # a count without GPUs: several ComfyUIs on the CPU (testing)
    if count > len(visible):
        notes.append(f"COMFYUI_GPUS={count} but {len(visible)} GPU(s) visible: {len(visible)} ComfyUI(s)")
        count = len(visible)
    return list(visible[:count]) if count > 1 else [None], notes


def plan(settings: Settings, visible: list[int] | None) -> tuple[list[Instance], list[str]]:
    """The instances for these settings and these GPUs (NVML's indexes; None or [] when there are none)."""
    devices, notes = _devices(settings, visible)
    found = [_instance(settings, i, len(devices), d) for i, d in enumerate(devices)]
    taken = {
        "DASHBOARD_PORT": settings.dashboard_port,
        "HEALTH_PORT": settings.health_port,
        "JUPYTER_PORT": settings.jupyter_port,
        "JUPYTER_INTERNAL_PORT": settings.jupyter_internal_port,
        "CODE_SERVER_PORT": settings.code_server_port,
        "CODE_SERVER_INTERNAL_PORT": settings.code_server_internal_port,
    }
    for instance in found[1:]:
        for name, port in taken.items():
            if port in (instance.public_port, instance.internal_port):
                raise ValueError(
                    f"{instance.program} would listen on port {port}, which is {name}: with {len(found)} ComfyUIs,"
                    f" COMFYUI_PORT and COMFYUI_INTERNAL_PORT each take {len(found)} ports in a row; move one"
                )
    return found, notes


def write(settings: Settings, found: list[Instance]) -> None:
    """The plan for every other process, and supervisord's program section of each instance."""
    run_dir = settings.run_dir
    body = {"comfyui_gpus": settings.comfyui_gpus, "instances": [{"index": i.index, "device": i.device} for i in found]}
    write_atomic(run_dir / PLAN_FILE, json.dumps(body) + "\n")
    template = (settings.app_dir / "config" / "supervisor" / "comfyui.conf").read_text()
    sections = [fill(template, {"program": i.program, "instance": str(i.index)}) for i in found]
    write_atomic(run_dir / SUPERVISOR_FILE, "\n".join(sections))


def supervisor_file(settings: Settings) -> Path:
    return settings.run_dir / SUPERVISOR_FILE


def current(settings: Settings) -> list[Instance]:
    """The instances startup planned; before it (or for another COMFYUI_GPUS) the plan without GPUs."""
    try:
        body = json.loads((settings.run_dir / PLAN_FILE).read_text())
        if body["comfyui_gpus"] == settings.comfyui_gpus:
            listed = body["instances"]
            return [_instance(settings, e["index"], len(listed), e["device"]) for e in listed]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        return plan(settings, None)[0]
    except ValueError:
        return [_instance(settings, 0, 1, None)]  # startup refused this plan: nothing more runs


def programs(settings: Settings) -> list[str]:
    return [i.program for i in current(settings)]


def services(settings: Settings) -> list[str]:
    """The stack's programs, with as many ComfyUIs as run."""
    return ["redis", *programs(settings), "front-door", "dashboard", "worker", "health"]


def named(settings: Settings, program: str) -> Instance | None:
    return next((i for i in current(settings) if i.program == program), None)
