"""Loading the catalogue: built-in presets, then the user's, with one error per mistake at its line.

Files several presets share are declared once, in `_shared_files.yaml` beside the built-in presets, and
referenced by id (`- ref: t5xxl_fp16`). A user preset with a built-in's id wins, and says so.
"""

from __future__ import annotations

import difflib
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import ValidationError

from services.common.errors import NotFound
from services.common.presets.model import ModelFile, Preset
from services.common.settings import Settings

SHARED_FILES = "_shared_files.yaml"


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


def _fields(loc: tuple) -> list[str]:
    """The fields allowed where an unknown one was found (a file entry's, or the preset's own)."""
    model = ModelFile if len(loc) > 1 and loc[0] == "files" else Preset
    return list(model.model_fields)


def _message(error: dict, loc: tuple) -> str:
    if error["type"] == "extra_forbidden" and loc:
        name, allowed = str(loc[-1]), _fields(loc[:-1])
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "the fields are " + ", ".join(allowed)
        return f"unknown field {name!r}: {hint}"
    return error["msg"].removeprefix("Value error, ")


def _validation_errors(path: Path, exc: ValidationError, node: yaml.Node | None) -> list[PresetError]:
    out = []
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p in ("ModelFile", "FileRef")))
        loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith(("function-", "tagged-union"))))
        out.append(
            PresetError(str(path), _line_of(node, loc), ".".join(str(p) for p in loc) or None, _message(error, loc))
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
    directory: Path,
    source: Literal["builtin", "user"],
    shared: dict[str, ModelFile],
    catalogue: Catalogue,
    allow_http: bool = False,
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
            preset = Preset.model_validate(data, context={"allow_http": allow_http})
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
    signature = (_signature(builtin, settings.paths.user_presets), settings.downloads_allow_private_hosts)
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
    _load_dir(settings.paths.user_presets, "user", shared, catalogue, settings.downloads_allow_private_hosts)
    return catalogue


def entry(catalogue: Catalogue, preset_id: str) -> Entry:
    found = catalogue.entries.get(preset_id)
    if found is None:
        raise NotFound(f"no preset {preset_id!r}")
    return found
