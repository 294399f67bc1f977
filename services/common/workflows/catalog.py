"""What others publish that a workflow analysis reads, where ComfyUI's venv has it installed: ComfyUI's
workflow templates (`comfyui_workflow_templates_json`, a dependency of ComfyUI) and ComfyUI-Manager's lists
(`comfyui_manager`: its curated model list and its map of node class -> node pack). Read once per change
of the files; absent packages give empty lists (the analysis says which source it lacked)."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from services.common import packages
from services.common.settings import Settings

log = logging.getLogger("workflows.catalog")

TEMPLATES_PACKAGE = "comfyui_workflow_templates_json"
MANAGER_PACKAGE = "comfyui_manager"
# ComfyUI itself, as Manager's map names it: its node classes are the core ones.
CORE_REPOSITORY = "https://github.com/comfyanonymous/ComfyUI"


@dataclass(frozen=True)
class ManagerModel:
    name: str
    filename: str
    folder: str  # the first part of Manager's save_path, or the folder its type goes to
    subfolder: str
    url: str
    size: int | None


@dataclass(frozen=True)
class Pack:
    """A node pack as Manager knows it."""

    url: str
    title: str
    id: str | None = None  # the registry id a workflow's node names in `cnr_id`
    stars: int = 0


@dataclass
class Manager:
    models: dict[str, list[ManagerModel]] = field(default_factory=dict)  # by file name
    classes: dict[str, list[str]] = field(default_factory=dict)  # node class -> pack URLs
    patterns: list[tuple[re.Pattern, str]] = field(default_factory=list)
    packs: dict[str, Pack] = field(default_factory=dict)  # by URL
    core: frozenset[str] = frozenset()
    found: bool = False


# Where Manager's `save_path: default` puts each of its model types.
_DEFAULT_FOLDERS = {
    "checkpoint": "checkpoints",
    "checkpoints": "checkpoints",
    "unclip": "checkpoints",
    "lora": "loras",
    "vae": "vae",
    "taesd": "vae_approx",
    "upscale": "upscale_models",
    "embedding": "embeddings",
    "embeddings": "embeddings",
    "controlnet": "controlnet",
    "t2i-adapter": "controlnet",
    "clip": "text_encoders",
    "clip_vision": "clip_vision",
    "gligen": "gligen",
    "diffusion_model": "diffusion_models",
    "unet": "diffusion_models",
    "hypernetwork": "hypernetworks",
    "photomaker": "photomaker",
    "ip-adapter": "ipadapter",
}
_LEGACY = {"unet": "diffusion_models", "clip": "text_encoders", "t2i_adapter": "controlnet"}


def _site(settings: Settings) -> Path | None:
    return packages.venv_site(settings.comfyui_python)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None


def _size(text: object) -> int | None:
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)i?B\s*", str(text or ""), flags=re.I)
    if not match:
        return None
    try:
        return int(float(match.group(1)) * 1000 ** " KMGT".index(match.group(2).upper() or " "))
    except ValueError:
        return None


def manager(settings: Settings) -> Manager:
    site = _site(settings)
    root = site / MANAGER_PACKAGE if site else None
    files = ("model-list.json", "extension-node-map.json", "custom-node-list.json", "github-stats.json")
    stamps = tuple(_stamp(root / name) if root else None for name in files)
    return _manager(str(root) if root else "", stamps)


@functools.lru_cache(maxsize=2)
def _manager(root: str, stamps: tuple) -> Manager:
    if not root or stamps[0] is None:
        return Manager()
    base = Path(root)
    out = Manager(found=True)
    for item in (_load_json(base / "model-list.json") or {}).get("models", []):
        if not isinstance(item, dict) or not item.get("filename") or not item.get("url"):
            continue
        save = str(item.get("save_path") or "default").strip("/")
        top, _, sub = save.partition("/")
        if top == "default":
            top = _DEFAULT_FOLDERS.get(str(item.get("type", "")).lower(), "")
        top = _LEGACY.get(top, top)
        model = ManagerModel(item.get("name", ""), item["filename"], top, sub, item["url"], _size(item.get("size")))
        out.models.setdefault(item["filename"], []).append(model)
    stars = _load_json(base / "github-stats.json") or {}
    ids = {}
    for item in (_load_json(base / "custom-node-list.json") or {}).get("custom_nodes", []):
        if isinstance(item, dict) and item.get("reference") and item.get("id"):
            ids[item["reference"].rstrip("/")] = item["id"]
    mapping = _load_json(base / "extension-node-map.json") or {}
    for url, entry in mapping.items() if isinstance(mapping, dict) else ():
        if not isinstance(entry, list) or len(entry) != 2:
            continue
        names, meta = entry
        url = url.rstrip("/")
        meta = meta if isinstance(meta, dict) else {}
        star = stars.get(url, {}).get("stars", 0) if isinstance(stars.get(url), dict) else 0
        out.packs[url] = Pack(url, meta.get("title_aux") or meta.get("title") or url, ids.get(url), int(star or 0))
        if url == CORE_REPOSITORY:
            out.core = frozenset(names)
            continue
        for name in names:
            out.classes.setdefault(name, []).append(url)
        if pattern := meta.get("nodename_pattern"):
            try:
                out.patterns.append((re.compile(pattern), url))
            except re.error:
                pass
    return out


@dataclass(frozen=True)
class Template:
    name: str
    title: str
    category: str
    path: Path


def templates_dir(settings: Settings) -> Path | None:
    site = _site(settings)
    folder = site / TEMPLATES_PACKAGE / "templates" if site else None
    return folder if folder and folder.is_dir() else None


def templates(settings: Settings) -> list[Template]:
    """ComfyUI's templates as its venv holds them, with the titles of their index; [] when not installed."""
    folder = templates_dir(settings)
    if folder is None:
        return []
    return _templates(str(folder), _stamp(folder), _stamp(folder / "index.json"))


@functools.lru_cache(maxsize=2)
def _templates(folder: str, stamp: tuple | None, index_stamp: tuple | None) -> list[Template]:
    base = Path(folder)
    titles: dict[str, tuple[str, str]] = {}
    for category in _load_json(base / "index.json") or []:
        if not isinstance(category, dict):
            continue
        for item in category.get("templates") or []:
            if isinstance(item, dict) and item.get("name"):
                titles[item["name"]] = (str(item.get("title") or item["name"]), str(category.get("title") or ""))
    out = []
    for entry in sorted(os.scandir(base), key=lambda e: e.name):
        name = entry.name.removesuffix(".json")
        # index*.json and the search options sit beside the workflows; the index names every workflow.
        if entry.name.endswith(".json") and (name in titles or not name.startswith(("index", "fuse_options"))):
            title, category = titles.get(name, (name, ""))
            out.append(Template(name, title, category, Path(entry.path)))
    return out


def template(settings: Settings, name: str) -> Template | None:
    return next((t for t in templates(settings) if t.name == name), None)
