"""Presets: one YAML per model bundle, validated by one model, their state derived from the volume.

Built-in presets live in `<app>/presets/`, the user's in `<workspace>/config/presets/`. Nothing about a
preset's state is stored: it is read from the files on the volume (and the hash cache), every time.

- `model`: what a preset file may say; `catalogue`: loading, with errors at their line;
- `state`: installed / partial / missing, from one stat per file; `actions`: install, remove, verify.
"""

from services.common.presets.actions import install, publish_states, remove, verify
from services.common.presets.catalogue import SHARED_FILES, Catalogue, Entry, PresetError, entry, load
from services.common.presets.model import ModelFile, Preset, approx_bytes
from services.common.presets.state import describe, file_states, list_presets, preset_state, show

__all__ = [
    "SHARED_FILES",
    "Catalogue",
    "Entry",
    "ModelFile",
    "Preset",
    "PresetError",
    "approx_bytes",
    "describe",
    "entry",
    "file_states",
    "install",
    "list_presets",
    "load",
    "preset_state",
    "publish_states",
    "remove",
    "show",
    "verify",
]
