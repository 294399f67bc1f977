"""The pip packages custom nodes install at run time: on the volume, layered after ComfyUI's venv.

pip installs them with PIP_PREFIX=<workspace>/python, into `lib/pythonX.Y/site-packages` there. Not
PIP_TARGET: `--target` makes pip ignore what is already installed, so every dependency the venv has
was copied again (a node asking for torch would copy torch and every CUDA library). With a prefix,
pip sees the venv's packages, and the volume's (ComfyUI's sitecustomize puts them on sys.path), and
skips a requirement they satisfy.

The constraints file pins every package of the venv at its version: pip never replaces one (with a
prefix it would uninstall the venv's copy), its resolver picks versions of the new packages that work
with the venv, and a node that needs another torch or numpy gets pip's own message naming the
conflict instead of a copy the venv would shadow anyway.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from services.common import gpucheck
from services.common.files import write_atomic
from services.common.settings import Settings

log = logging.getLogger(__name__)

# The folders a prefix install writes besides site-packages; anything else at the top of the prefix
# is the flat layout PIP_TARGET wrote before (moved into site-packages once).
PREFIX_FOLDERS = {"lib", "lib64", "bin", "include", "share", "etc"}


def normalize(name: str) -> str:
    """A project name as pip compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def venv_site(python: Path) -> Path | None:
    """The site-packages of the venv `python` belongs to (its path, not resolved: venv pythons are links)."""
    root = python.parent.parent
    if not (root / "pyvenv.cfg").is_file():
        return None
    found = sorted(root.glob("lib/python3*/site-packages"))
    return found[0] if found else None


# One prefix per Python and CUDA line (`python3.12-cu128`): two images on one volume never import each
# other's compiled wheels.
ABI_TAG = re.compile(r"python3\.\d+-(?:cu\d+|cpu)")


def _python_version(settings: Settings) -> str:
    venv = venv_site(settings.comfyui_python)
    return venv.parent.name if venv else "python3"


def abi_tag(settings: Settings) -> str:
    """`pythonX.Y-cuNNN` (or `-cpu`) of ComfyUI's venv: what a compiled package on the volume was built for."""
    cuda, _ = gpucheck.torch_facts(settings)
    line = "cu" + cuda.replace(".", "") if cuda else "cpu"
    return f"{_python_version(settings)}-{line}"


def prefix(settings: Settings) -> Path:
    """pip's prefix for this image's run-time packages: <workspace>/python/<abi tag>."""
    return settings.paths.python_packages / abi_tag(settings)


def site_dir(settings: Settings) -> Path:
    """Where prefix installs by ComfyUI's interpreter land: the same `pythonX.Y` as its venv."""
    return prefix(settings) / "lib" / _python_version(settings) / "site-packages"


def distributions(site: Path) -> dict[str, tuple[str, str]]:
    """normalized name -> (version, metadata folder) of each distribution installed in `site`."""
    found = {}
    try:
        entries = list(os.scandir(site))
    except OSError:
        return found
    for entry in entries:
        stem, dot, kind = entry.name.rpartition(".")
        if kind not in ("dist-info", "egg-info") or not dot:
            continue
        name, _, rest = stem.partition("-")
        if name and rest:
            found[normalize(name)] = (rest.split("-", 1)[0], entry.name)
    return found


# Not pinned: pip hands PIP_CONSTRAINT on to the environments it builds source packages in, where a
# backend may need a newer setuptools or packaging than the venv has (insightface and other nodes ship
# sources); they are tools, not what ComfyUI imports.
BUILD_TOOLS = {"pip", "setuptools", "wheel", "packaging"}


def constraints_text(settings: Settings) -> str:
    venv = venv_site(settings.comfyui_python)
    pins = {k: v for k, v in (distributions(venv) if venv else {}).items() if k not in BUILD_TOOLS}
    lines = [
        "# Written by the ComfyUI launcher at each start: every package of ComfyUI's venv at its version,",
        "# so a custom node's pip install never replaces one (services/common/packages.py).",
        *(f"{name}=={version}" for name, (version, _) in sorted(pins.items())),
    ]
    if settings.comfyui_constraints.is_file():
        lines += ["# From COMFYUI_CONSTRAINTS:", settings.comfyui_constraints.read_text().strip()]
    return "\n".join(lines) + "\n"


def write_constraints(settings: Settings) -> Path:
    path = settings.paths.comfyui_constraints
    write_atomic(path, constraints_text(settings))
    return path


def migrate(settings: Settings) -> list[str]:
    """Earlier layouts at the top of <workspace>/python, moved under this image's ABI prefix (the first
    image to start after the upgrade takes them, as it was the one that installed them): a prefix layout
    without a tag (lib/, bin/), and the flat layout PIP_TARGET wrote (packages straight in the folder)."""
    root, mine, site = settings.paths.python_packages, prefix(settings), site_dir(settings)
    try:
        entries = [e for e in os.scandir(root) if not ABI_TAG.fullmatch(e.name)]
    except OSError:
        return []
    moved = []
    for entry in entries:
        target = (mine / entry.name) if entry.name in PREFIX_FOLDERS else (site / entry.name)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(entry.path, target)
        moved.append(entry.name)
    return moved


@dataclass(frozen=True)
class Removed:
    name: str
    version: str
    venv_version: str
    size: int


def _record(site: Path, meta: str) -> list[Path]:
    """The files a distribution installed (its RECORD), kept to those inside `site`'s prefix."""
    prefix = site.parents[2].resolve()
    files = []
    try:
        lines = (site / meta / "RECORD").read_text(errors="replace").splitlines()
    except OSError:
        return [site / meta]
    for line in lines:
        rel = line.rsplit(",", 2)[0] if line.count(",") >= 2 else line
        path = (site / rel).resolve()
        if rel and path.is_relative_to(prefix):
            files.append(path)
    return files


def _remove(site: Path, meta: str) -> int:
    size = 0
    folders = set()
    for path in _record(site, meta):
        try:
            size += path.stat().st_size
            path.unlink()
        except IsADirectoryError:
            folders.add(path)
        except OSError:
            continue
        folders.add(path.parent)
    shutil.rmtree(site / meta, ignore_errors=True)
    # Folders the package left empty (its package directory, __pycache__), deepest first.
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        while folder != site and folder.is_relative_to(site):
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent
    return size


def prune(settings: Settings) -> list[Removed]:
    """Remove from the volume each package the venv also has: the venv's copy is the one imported."""
    venv = venv_site(settings.comfyui_python)
    site = site_dir(settings)
    if venv is None or not site.is_dir():
        return []
    ours = distributions(venv)
    removed = []
    for name, (version, meta) in sorted(distributions(site).items()):
        if name in ours:
            removed.append(Removed(name, version, ours[name][0], _remove(site, meta)))
    return removed


def prepare(settings: Settings) -> Path:
    """Before each ComfyUI start: the layout, no duplicates, a fresh constraints file (a few ms)."""
    moved = migrate(settings)
    if moved:
        log.info("moved %d entries of the old layout into %s", len(moved), site_dir(settings))
    for gone in prune(settings):
        log.info(
            "removed %s %s from the volume (%.1f MB): the venv has %s, which is the one imported",
            gone.name,
            gone.version,
            gone.size / 1e6,
            gone.venv_version,
        )
    return write_constraints(settings)


def pip_environment(settings: Settings, inherited: dict[str, str]) -> dict[str, str]:
    """What makes ComfyUI's python (and pip run by it, from a node or from the worker) see the volume's
    packages after the venv's and install new ones onto the volume, the venv pinned."""
    paths = settings.paths
    site_folder = str(settings.app_dir / "config" / "comfyui-site")  # holds only a sitecustomize
    return {
        "PYTHONPATH": os.pathsep.join(p for p in (site_folder, inherited.get("PYTHONPATH", "")) if p),
        "COMFYUI_PACKAGES": str(site_dir(settings)),
        "PIP_PREFIX": str(prefix(settings)),
        "PIP_CONSTRAINT": str(paths.comfyui_constraints),
        # Their console scripts, after the image's own.
        "PATH": os.pathsep.join(p for p in (inherited.get("PATH", ""), str(prefix(settings) / "bin")) if p),
    }


def requested(node_dir: Path) -> set[str]:
    """The projects a custom node's requirements.txt names (what it asked pip for)."""
    try:
        lines = (node_dir / "requirements.txt").read_text(errors="replace").splitlines()
    except OSError:
        return set()
    names = set()
    for line in lines:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#", 1)[0])
        if match and not line.lstrip().startswith("-"):
            names.add(normalize(match.group(1)))
    return names


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


_last: tuple[tuple, dict] | None = None


def summary(settings: Settings) -> dict:
    """What is in <workspace>/python: its size and which custom node asked for which package.

    The overview asks every second: the walk runs again only when the folder's entries changed."""
    global _last
    root, site = prefix(settings), site_dir(settings)
    stamps = []
    for path in (root, site, settings.paths.custom_nodes):
        try:
            stamps.append(path.stat().st_mtime_ns)
        except OSError:
            stamps.append(None)
    key = (str(site), tuple(stamps))
    if _last is not None and _last[0] == key:
        return _last[1]
    installed = distributions(site)
    by_node = {}
    try:
        nodes = [e for e in os.scandir(settings.paths.custom_nodes) if e.is_dir()]
    except OSError:
        nodes = []
    claimed = set()
    for entry in sorted(nodes, key=lambda e: e.name):
        names = sorted(requested(Path(entry.path)) & installed.keys())
        if names:
            by_node[entry.name] = names
            claimed.update(names)
    found = {
        "path": str(root),
        "bytes": _size(root) if root.is_dir() else 0,
        "packages": len(installed),
        "by_node": by_node,
        "dependencies": len(installed.keys() - claimed),
    }
    _last = (key, found)
    return found
