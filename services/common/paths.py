"""The one map of the volume and the run dir: every path the stack uses is named here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Model folder types of ComfyUI 0.33 (`GET /models`), custom_nodes aside: it is not under models/.
MODEL_FOLDERS: tuple[str, ...] = (
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "latent_upscale_models",
    "datasets",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
    "background_removal",
    "frame_interpolation",
    "geometry_estimation",
    "optical_flow",
    "detection",
)

# Folders that popular custom nodes read (they register these types themselves); created and mapped too.
NODE_FOLDERS: tuple[str, ...] = ("ipadapter", "animatediff_models", "insightface", "ultralytics", "sams")

# Every folder a download or a preset may target.
ALL_FOLDERS: tuple[str, ...] = MODEL_FOLDERS + NODE_FOLDERS

# Older folder names ComfyUI still reads as YAML keys, and the type each one feeds.
LEGACY_FOLDERS: dict[str, str] = {"unet": "diffusion_models", "clip": "text_encoders", "t2i_adapter": "controlnet"}

# Top-level folders of the workspace besides models/.
WORKSPACE_DIRS: tuple[str, ...] = (
    "output",
    "input",
    "user",
    "workflows",
    "custom_nodes",
    "python",
    "config",
    "config/presets",
    "logs",
)

# Names the download engine writes beside a model (bytes, manifest, progress journal, lock): never a
# model's own name, and never listed as a model.
PART, MANIFEST, JOURNAL, LOCK = ".part", ".part.json", ".part.progress", ".lock"
WORK_SUFFIXES = (PART, MANIFEST, JOURNAL, LOCK)


@dataclass(frozen=True)
class WorkFiles:
    """The work files of one download target, named in this one place."""

    target: Path

    @classmethod
    def of_manifest(cls, manifest: Path) -> WorkFiles:
        return cls(manifest.with_name(manifest.name.removesuffix(MANIFEST)))

    def _with(self, suffix: str) -> Path:
        return self.target.with_name(self.target.name + suffix)

    @property
    def part(self) -> Path:
        return self._with(PART)

    @property
    def manifest(self) -> Path:
        return self._with(MANIFEST)

    @property
    def journal(self) -> Path:
        return self._with(JOURNAL)

    @property
    def lock(self) -> Path:
        return self._with(LOCK)

    def all(self) -> tuple[Path, ...]:
        return tuple(self._with(suffix) for suffix in WORK_SUFFIXES)

    def remove_partial(self) -> int:
        """Delete the bytes and what describes them (not the lock: its holder releases it); returns how many."""
        removed = 0
        for path in (self.part, self.manifest, self.journal):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed += 1
        return removed


def check_filename(name: str) -> str:
    """A model file name: one plain path component. Raises ValueError with the reason."""
    if not name or not name.strip():
        raise ValueError("the file name is empty")
    if "/" in name or "\\" in name:
        raise ValueError(f"{name!r} is a path: give a bare file name")
    if "\0" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError("the file name contains control characters")
    if name in (".", "..") or name.startswith("."):
        raise ValueError(f"{name!r} starts with a dot: hidden and relative names are refused")
    if len(name.encode()) > 255:
        raise ValueError("the file name is longer than 255 bytes")
    if name.endswith(WORK_SUFFIXES):
        raise ValueError(f"{name!r} ends like the download's own work files ({', '.join(WORK_SUFFIXES)})")
    return name


# ComfyUI lists files in subfolders of a model folder as `sub/name`; a workflow names them so.
MAX_SUBFOLDERS = 4


def check_model_name(name: str) -> str:
    """A model's name inside its folder: a bare file name, or `sub/dir/name` (ComfyUI reads subfolders),
    each part a plain name, so the path cannot leave the folder. `\\` (a workflow saved on Windows) reads
    as `/`. Returns the name with `/`; raises ValueError with the reason."""
    if not name or not name.strip():
        raise ValueError("the file name is empty")
    parts = name.replace("\\", "/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"{name!r} is not a name inside the folder: no '..', no leading or doubled '/'")
    if len(parts) > MAX_SUBFOLDERS + 1:
        raise ValueError(f"{name!r} has more than {MAX_SUBFOLDERS} subfolders")
    for part in parts:
        check_filename(part)
    return "/".join(parts)


def check_folder(folder: str) -> str:
    if folder not in ALL_FOLDERS:
        raise ValueError(f"unknown model folder {folder!r}: use one of {', '.join(ALL_FOLDERS)}")
    return folder


@dataclass(frozen=True)
class Paths:
    workspace: Path
    run_dir: Path
    # This pod's name on a volume several pods may share: its logs and ComfyUI's database are its own.
    pod: str = "local"

    @property
    def models(self) -> Path:
        return self.workspace / "models"

    def model_file(self, folder: str, name: str) -> Path:
        """Where a model file lives: a known folder (resolved: it may link to another disk) and a name
        inside it (plain parts, no dot start: `check_model_name`), so the result cannot leave the folder.
        Raises ValueError."""
        check_folder(folder)
        return Path(os.path.realpath(self.models / folder)) / check_model_name(name)

    def model_folder(self, folder: str) -> Path:
        if folder not in ALL_FOLDERS:
            raise ValueError(f"unknown model folder {folder!r}")
        return self.models / folder

    @property
    def output(self) -> Path:
        return self.workspace / "output"

    @property
    def input(self) -> Path:
        return self.workspace / "input"

    @property
    def user(self) -> Path:
        return self.workspace / "user"

    @property
    def custom_nodes(self) -> Path:
        return self.workspace / "custom_nodes"

    @property
    def node_staging(self) -> Path:
        """Where a node pack is cloned before it moves into custom_nodes whole (same volume: one rename)."""
        return self.workspace / "custom_nodes.incoming"

    @property
    def python_packages(self) -> Path:
        """pip's prefix for run-time custom nodes' packages, layered after ComfyUI's venv."""
        return self.workspace / "python"

    @property
    def config(self) -> Path:
        return self.workspace / "config"

    @property
    def accelerators_cache(self) -> Path:
        """The accelerator probe's answers per GPU, driver and build (services/common/accel.py)."""
        return self.config / "accelerators.json"

    @property
    def pre_start_script(self) -> Path:
        """The user's hook, run by startup before any program (services/startup/hook.py)."""
        return self.config / "pre-start.sh"

    @property
    def user_presets(self) -> Path:
        return self.config / "presets"

    @property
    def logs(self) -> Path:
        """This pod's logs (two pods on one volume would otherwise write and rotate the same files)."""
        return self.workspace / "logs" / self.pod

    @property
    def download_history(self) -> Path:
        """Finished downloads, one JSON line each (services/common/history.py): the history survives restarts."""
        return self.logs / "downloads-history.jsonl"

    def log_file(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    @property
    def extra_model_paths(self) -> Path:
        """Ours: regenerated at every start."""
        return self.config / "extra_model_paths.yaml"

    @property
    def user_extra_model_paths(self) -> Path:
        """The user's own additions, passed to ComfyUI when valid, never written by us."""
        return self.config / "extra_model_paths.user.yaml"

    @property
    def legacy_models(self) -> Path:
        """The models tree of older images (`/workspace/ComfyUI/models`)."""
        return self.workspace / "ComfyUI" / "models"

    @property
    def comfyui_database(self) -> Path:
        """ComfyUI's SQLite database, one per pod: SQLite over a network file system takes one writer."""
        return self.user / f"comfyui.{self.pod}.db"

    @property
    def legacy_comfyui_database(self) -> Path:
        """The one database of earlier versions, copied as this pod's first when there is none yet."""
        return self.user / "comfyui.db"

    @property
    def session_key_file(self) -> Path:
        return self.config / "session.key"

    @property
    def password_file(self) -> Path:
        return self.config / "dashboard.password"

    @property
    def tokens_file(self) -> Path:
        """HF_TOKEN / CIVITAI_TOKEN set from the dashboard (0600); they win over the environment."""
        return self.config / "tokens.json"

    @property
    def sessions_file(self) -> Path:
        """Revoked dashboard sessions and the sign-out-everywhere epoch (0600): they outlive Redis."""
        return self.config / "sessions.json"

    @property
    def api_tokens_file(self) -> Path:
        """API tokens made on the settings page, stored as sha256 hashes (0600)."""
        return self.config / "api_tokens.json"

    @property
    def comfyui_manager_config(self) -> Path:
        return self.user / "__manager" / "config.ini"

    @property
    def redis_socket(self) -> Path:
        return self.run_dir / "redis.sock"

    @property
    def redis_conf(self) -> Path:
        return self.run_dir / "redis.conf"

    @property
    def front_door(self) -> Path:
        """The front door's folder: its config, pid file, temp files, and the dashboard's socket it talks to.
        nginx's workers run unprivileged: this folder is the only part of RUN_DIR they may enter."""
        return self.run_dir / "door"

    @property
    def nginx_conf(self) -> Path:
        return self.front_door / "nginx.conf"

    @property
    def dashboard_socket(self) -> Path:
        return self.front_door / "dashboard.sock"

    @property
    def comfyui_constraints(self) -> Path:
        """Every package of ComfyUI's venv pinned, written at each start (services/common/packages.py)."""
        return self.run_dir / "comfyui-constraints.txt"

    @property
    def supervisor_socket(self) -> Path:
        return self.run_dir / "supervisor.sock"

    @property
    def volume_report(self) -> Path:
        """What the workspace sits on and how fast it reads (services/common/volume.py)."""
        return self.run_dir / "volume.json"

    @property
    def startup_report(self) -> Path:
        return self.run_dir / "startup.json"
