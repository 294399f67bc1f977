"""Presets: one YAML per model bundle, validated by one model, their state derived from the volume.

Built-in presets live in `<app>/presets/`, the user's in `<workspace>/config/presets/` (same id: the
user's wins, and says so). Files several presets share are declared once, in `_shared_files.yaml`
beside the built-in presets, and referenced by id (`- ref: t5xxl_fp16`). Nothing about a preset's
state is stored: it is read from the files on the volume (and the hash cache), every time.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import redis
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.common import bus, jobs, messages
from services.common.hashing import RedisHashCache, cached_sha256
from services.common.paths import ALL_FOLDERS, check_filename
from services.common.settings import Settings

SHARED_FILES = "_shared_files.yaml"
Category = Literal["image", "video", "audio", "upscale", "controlnet", "adapter", "vae", "text_encoder", "other"]
_UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


@functools.lru_cache(maxsize=4096)
def approx_bytes(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?i?B)\s*", text, flags=re.I)
    if not match:
        raise ValueError(f"{text!r} is not a size such as '6.94 GB' or '335 MB'")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


class ModelFile(BaseModel):
    """One file of a preset: where it comes from and where it goes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    folder: str
    filename: str
    size: int | None = Field(None, ge=1, description="exact bytes, when known")
    approx_size: str | None = Field(None, description="'6.94 GB' when the exact size is not known")
    sha256: str | None = None
    token: Literal["huggingface", "civitai"] | None = None
    licence: str | None = None

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("must be an https:// URL")
        return value

    @field_validator("folder")
    @classmethod
    def _known_folder(cls, value: str) -> str:
        if value not in ALL_FOLDERS:
            raise ValueError(f"unknown ComfyUI model folder {value!r}")
        return value

    @field_validator("filename")
    @classmethod
    def _bare_name(cls, value: str) -> str:
        return check_filename(value)

    @field_validator("sha256")
    @classmethod
    def _hex64(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-f]{64}", value.lower()):
            raise ValueError("must be 64 hexadecimal characters")
        return value.lower() if value else value

    @field_validator("approx_size")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            approx_bytes(value)
        return value

    @model_validator(mode="after")
    def _has_a_size(self) -> ModelFile:
        if self.size is None and self.approx_size is None:
            raise ValueError("give `size` (exact bytes) or `approx_size` (e.g. '6.94 GB')")
        return self

    @property
    def key(self) -> str:
        return f"{self.folder}/{self.filename}"

    @property
    def expected_bytes(self) -> int:
        return self.size if self.size is not None else approx_bytes(self.approx_size or "0 B")


class FileRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    ref: str


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{1,63}$")
    name: str = Field(min_length=1)
    description: str = ""
    category: Category
    base: str = Field(min_length=1, description="base model family, e.g. SDXL, FLUX.1, Wan 2.1")
    tags: list[str] = []
    files: list[ModelFile | FileRef] = Field(min_length=1)
    custom_nodes: list[str] = []
    workflow: str | None = None
    licence: str | None = None

    def resolved(self, shared: dict[str, ModelFile]) -> list[ModelFile]:
        out = []
        for item in self.files:
            if isinstance(item, FileRef):
                if item.ref not in shared:
                    raise ValueError(f"files: unknown shared file {item.ref!r}")
                out.append(shared[item.ref])
            else:
                out.append(item)
        return out


@dataclass
class PresetError:
    path: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = (
            f"{self.path}" + (f", line {self.line}" if self.line else "") + (f", {self.field}" if self.field else "")
        )
        return f"{where}: {self.message}"


@dataclass
class Entry:
    preset: Preset
    files: list[ModelFile]
    source: Literal["builtin", "user"]
    path: str
    note: str | None = None


@dataclass
class Catalogue:
    entries: dict[str, Entry] = field(default_factory=dict)
    errors: list[PresetError] = field(default_factory=list)


# --- loading ----------------------------------------------------------------------------------------


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """The line of the YAML node at a pydantic error location (1-based), as close as it can get."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if match is None:
                key = next((k for k, v in node.value if getattr(k, "value", None) == part), None)
                return key.start_mark.line + 1 if key is not None else line
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            continue
        line = node.start_mark.line + 1
    return line


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ten times faster when present


class _Parsed:
    """A YAML file's data; its node tree (for line numbers) is built only when an error needs it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader

    @functools.cached_property
    def node(self) -> yaml.Node | None:
        return yaml.compose(self.text, Loader=_Loader)


def _parse(path: Path) -> _Parsed:
    return _Parsed(path.read_text())


def _validation_errors(path: Path, exc: ValidationError, node: yaml.Node | None) -> list[PresetError]:
    out = []
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p in ("ModelFile", "FileRef")))
        loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith(("function-", "tagged-union"))))
        out.append(
            PresetError(
                str(path),
                _line_of(node, loc),
                ".".join(str(p) for p in loc) or None,
                error["msg"].removeprefix("Value error, "),
            )
        )
    return out


def load_shared(directory: Path) -> tuple[dict[str, ModelFile], list[PresetError]]:
    path = directory / SHARED_FILES
    if not path.exists():
        return {}, []
    try:
        parsed = _parse(path)
    except (OSError, yaml.YAMLError) as exc:
        return {}, [_yaml_error(path, exc)]
    shared, errors = {}, []
    for key, value in (parsed.data or {}).items():
        try:
            shared[str(key)] = ModelFile.model_validate(value)
        except ValidationError as exc:
            errors += [
                PresetError(e.path, e.line, f"{key}.{e.field}" if e.field else key, e.message)
                for e in _validation_errors(path, exc, _child(parsed.node, key))
            ]
    return shared, errors


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        return next((v for k, v in node.value if getattr(k, "value", None) == key), None)
    return None


def _yaml_error(path: Path, exc: Exception) -> PresetError:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    return PresetError(str(path), mark.line + 1 if mark else None, None, f"YAML syntax error: {problem}")


def _load_dir(
    directory: Path, source: Literal["builtin", "user"], shared: dict[str, ModelFile], catalogue: Catalogue
) -> None:
    if not directory.is_dir():
        return
    seen_here: set[str] = set()
    for path in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml")):
        if path.name.startswith("_"):
            continue
        try:
            parsed = _parse(path)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            catalogue.errors.append(_yaml_error(path, exc))
            continue
        data = parsed.data
        if not isinstance(data, dict):
            catalogue.errors.append(PresetError(str(path), 1, None, "a preset file holds one mapping (id, name, ...)"))
            continue
        try:
            preset = Preset.model_validate(data)
            files = preset.resolved(shared)
        except ValidationError as exc:
            catalogue.errors += _validation_errors(path, exc, parsed.node)
            continue
        except ValueError as exc:
            catalogue.errors.append(PresetError(str(path), _line_of(parsed.node, ("files",)), "files", str(exc)))
            continue
        if preset.id in seen_here:
            catalogue.errors.append(
                PresetError(
                    str(path),
                    _line_of(parsed.node, ("id",)),
                    "id",
                    f"preset id {preset.id!r} is already used by another file here",
                )
            )
            continue
        seen_here.add(preset.id)
        note = None
        if preset.id in catalogue.entries and source == "user":
            note = f"overrides the built-in preset {preset.id!r}"
        catalogue.entries[preset.id] = Entry(preset, files, source, str(path), note)


_cache: dict[tuple, Catalogue] = {}


def _signature(*directories: Path) -> tuple:
    """What the catalogue was read from: a file added, removed or edited changes it."""
    entries = []
    for directory in directories:
        try:
            with os.scandir(directory) as it:
                for item in it:
                    if item.name.endswith((".yaml", ".yml")):
                        stat = item.stat()
                        entries.append((item.path, stat.st_mtime_ns, stat.st_size))
        except OSError:
            continue
    return tuple(sorted(entries))


def load(settings: Settings) -> Catalogue:
    """Built-in presets, then the user's; a broken user file is an error entry, never a stop.

    Parsed once and kept while no preset file changes (a stat per file tells), so listing stays cheap.
    """
    builtin = settings.app_dir / "presets"
    signature = _signature(builtin, settings.paths.user_presets)
    if signature in _cache:
        return _cache[signature]
    catalogue = _read(settings, builtin)
    _cache.clear()
    _cache[signature] = catalogue
    return catalogue


def _read(settings: Settings, builtin: Path) -> Catalogue:
    shared, errors = load_shared(builtin)
    catalogue = Catalogue(errors=list(errors))
    _load_dir(builtin, "builtin", shared, catalogue)
    _load_dir(settings.paths.user_presets, "user", shared, catalogue)
    return catalogue


# --- state ------------------------------------------------------------------------------------------

FileState = Literal["verified", "present", "downloading", "wrong", "missing"]


def _file_states(settings: Settings, client: redis.Redis | None, files: list[ModelFile]) -> dict[str, FileState]:
    """One stat per file, one Redis round trip for all: no hashing, no walk of the volume."""
    unique = {f.key: f for f in files}
    # The hash cache is keyed by real path (as the engine writes it): resolve each folder once, not each file.
    real = {folder: Path(os.path.realpath(settings.paths.models / folder)) for folder in {f.folder for f in files}}
    paths = {key: real[f.folder] / f.filename for key, f in unique.items()}
    stats = {}
    for key, path in paths.items():
        try:
            stats[key] = path.stat()
        except OSError:
            stats[key] = None
    cached: dict[str, str | None] = {}
    active: dict[str, str | None] = {}
    if client is not None:
        try:
            pipe = client.pipeline(transaction=False)
            keys = list(unique)
            for key in keys:
                pipe.get(messages.verified_key(str(paths[key])))
            for key in keys:
                pipe.get(messages.download_dedupe_key(unique[key].folder, unique[key].filename))
            replies = pipe.execute()
            cached = dict(zip(keys, replies[: len(keys)], strict=True))
            active = dict(zip(keys, replies[len(keys) :], strict=True))
        except redis.RedisError:
            pass
    states: dict[str, FileState] = {}
    for key, f in unique.items():
        stat = stats[key]
        if stat is None:
            part = paths[key].with_name(paths[key].name + ".part")
            states[key] = "downloading" if active.get(key) or part.exists() else "missing"
            continue
        if f.size is not None and stat.st_size != f.size:
            states[key] = "wrong"
            continue
        if f.sha256 is None:
            states[key] = "verified" if f.size is not None else "present"
            continue
        try:
            record = json.loads(cached.get(key) or "null")
        except ValueError:
            record = None
        fresh = record and record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns
        if fresh:
            states[key] = "verified" if record.get("sha256") == f.sha256 else "wrong"
        else:
            states[key] = "present"  # not hashed yet: `verify` checks it
    return states


def preset_state(files: list[ModelFile], states: dict[str, FileState]) -> str:
    mine = [states[f.key] for f in files]
    if all(s in ("verified", "present") for s in mine):
        return "installed"
    if any(s != "missing" for s in mine):
        return "partial"
    return "missing"


def describe(settings: Settings, entry: Entry, states: dict[str, FileState], free: int) -> dict:
    todo = [f for f in entry.files if states[f.key] in ("missing", "wrong")]
    need = sum(f.expected_bytes for f in {f.key: f for f in todo}.values())
    p = entry.preset
    return {
        "id": p.id,
        "name": p.name,
        "description": p.description,
        "category": p.category,
        "base": p.base,
        "tags": p.tags,
        "custom_nodes": p.custom_nodes,
        "workflow": p.workflow,
        "licence": p.licence,
        "source": entry.source,
        "note": entry.note,
        "state": preset_state(entry.files, states),
        "files": [
            {
                "url": f.url,
                "folder": f.folder,
                "filename": f.filename,
                "size": f.size,
                "approx_size": f.approx_size,
                "sha256": f.sha256,
                "token": f.token,
                "licence": f.licence,
                "state": states[f.key],
            }
            for f in entry.files
        ],
        "total_bytes": sum(f.expected_bytes for f in entry.files),
        "bytes_to_download": need,
        "fits": need + settings.downloads_reserve_mb * 1024 * 1024 <= free,
    }


def _free(settings: Settings) -> int:
    try:
        return shutil.disk_usage(settings.paths.models if settings.paths.models.exists() else settings.workspace).free
    except OSError:
        return 0


def list_presets(
    settings: Settings,
    client: redis.Redis | None,
    category: str | None = None,
    tag: str | None = None,
    text: str | None = None,
    catalogue: Catalogue | None = None,
) -> list[dict]:
    catalogue = catalogue or load(settings)
    entries = list(catalogue.entries.values())
    if category:
        entries = [e for e in entries if e.preset.category == category]
    if tag:
        entries = [e for e in entries if tag in e.preset.tags]
    if text:
        needle = text.lower()
        entries = [
            e
            for e in entries
            if needle
            in " ".join([e.preset.id, e.preset.name, e.preset.description, e.preset.base, *e.preset.tags]).lower()
        ]
    states = _file_states(settings, client, [f for e in entries for f in e.files])
    free = _free(settings)
    return [describe(settings, e, states, free) for e in sorted(entries, key=lambda e: e.preset.id)]


class PresetProblem(ValueError):
    """An operation on a preset that cannot be done as asked; the message says why."""


def show(settings: Settings, client: redis.Redis | None, preset_id: str, catalogue: Catalogue | None = None) -> dict:
    catalogue = catalogue or load(settings)
    entry = catalogue.entries.get(preset_id)
    if entry is None:
        raise PresetProblem(f"no preset {preset_id!r}")
    return describe(settings, entry, _file_states(settings, client, entry.files), _free(settings))


def install(settings: Settings, client: redis.Redis, preset_id: str) -> list[messages.DownloadJob]:
    """Queue one download per missing file; installing twice queues nothing new."""
    catalogue = load(settings)
    entry = catalogue.entries.get(preset_id)
    if entry is None:
        raise PresetProblem(f"no preset {preset_id!r}")
    states = _file_states(settings, client, entry.files)
    todo = [f for f in entry.files if states[f.key] in ("missing", "wrong", "downloading")]
    for f in todo:
        # `token` names which token a file needs; it never holds one.
        if f.token == "huggingface" and settings.hf_token is None:  # noqa: S105
            raise PresetProblem(
                f"{f.filename} needs a Hugging Face token: accept the licence at {_repo_page(f.url)}"
                " and set HF_TOKEN (dashboard settings or environment)"
            )
        if f.token == "civitai" and settings.civitai_token is None:  # noqa: S105
            raise PresetProblem(f"{f.filename} needs a Civitai account: set CIVITAI_TOKEN")
    wrong = [f.filename for f in todo if states[f.key] == "wrong"]
    if wrong:
        raise PresetProblem(f"{', '.join(wrong)} already exist with another size or sha256: delete them first")
    queued = []
    for f in todo:
        job, _ = jobs.submit(settings, client, f.url, f.folder, f.filename, f.sha256, f.size)
        queued.append(job)
    publish_states(settings, client, catalogue)
    return queued


def remove(settings: Settings, client: redis.Redis, preset_id: str) -> dict[str, list[str]]:
    """Delete this preset's files, except those another installed preset still uses (reference counted)."""
    catalogue = load(settings)
    entry = catalogue.entries.get(preset_id)
    if entry is None:
        raise PresetProblem(f"no preset {preset_id!r}")
    all_files = [f for e in catalogue.entries.values() for f in e.files]
    states = _file_states(settings, client, all_files)
    in_use: set[str] = set()
    for other in catalogue.entries.values():
        if other.preset.id != preset_id and preset_state(other.files, states) == "installed":
            in_use |= {f.key for f in other.files if states[f.key] != "missing"}
    removed, kept = [], []
    for f in {f.key: f for f in entry.files}.values():
        if f.key in in_use:
            kept.append(f.key)
            continue
        job_id = client.get(messages.download_dedupe_key(f.folder, f.filename))
        if job_id:
            jobs.cancel(client, job_id)
        path = settings.paths.models / f.folder / f.filename
        if path.is_file() and not path.is_symlink():
            path.unlink()
            removed.append(f.key)
    publish_states(settings, client, catalogue)
    return {"removed": removed, "kept": kept}


def verify(settings: Settings, client: redis.Redis, preset_id: str) -> dict:
    """Hash this preset's files that have a known sha256 and no fresh cache entry (slow: reads them)."""
    catalogue = load(settings)
    entry = catalogue.entries.get(preset_id)
    if entry is None:
        raise PresetProblem(f"no preset {preset_id!r}")
    for f in entry.files:
        path = settings.paths.models / f.folder / f.filename
        if f.sha256 and path.is_file():
            cached_sha256(path, RedisHashCache(client))
    publish_states(settings, client, catalogue)
    return show(settings, client, preset_id, catalogue)


def publish_states(
    settings: Settings, client: redis.Redis, catalogue: Catalogue | None = None, file_key: str | None = None
) -> None:
    """Publish the presets whose state changed (only those using `file_key`, when given)."""
    catalogue = catalogue or load(settings)
    entries = [e for e in catalogue.entries.values() if file_key is None or file_key in {f.key for f in e.files}]
    if not entries:
        return
    states = _file_states(settings, client, [f for e in entries for f in e.files])
    snapshot = bus.snapshot(client, messages.PresetState.kind)
    for e in entries:
        state = preset_state(e.files, states)
        done = sum(1 for f in e.files if states[f.key] in ("verified", "present"))
        before = snapshot.get(e.preset.id)
        if isinstance(before, messages.PresetState) and (before.state, before.files_done) == (state, done):
            continue
        bus.publish(
            client,
            messages.PresetState(
                id=e.preset.id, state=state, files_done=done, files_total=len(e.files), ts=time.time()
            ),
        )


def _repo_page(url: str) -> str:
    match = re.match(r"(https://[^/]+/(?:datasets/)?[^/]+/[^/]+)/", url)
    return match.group(1) if match else url
