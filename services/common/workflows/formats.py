"""A ComfyUI workflow from what a user has: its JSON (UI or API format), or a file ComfyUI saved with the
workflow in its metadata (PNG text chunks, WebP EXIF, FLAC Vorbis comments). One clear error otherwise."""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from typing import Literal

from services.common.errors import BadInput

# The largest of ComfyUI's own templates is about 1 MB; an image carrying one is a few MB more.
MAX_BYTES = 32 * 1024 * 1024
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

Format = Literal["ui", "api"]


@dataclass(frozen=True)
class Workflow:
    data: dict
    format: Format
    source: str  # "json", "png", "webp" or "flac"


def too_large(size: int) -> BadInput:
    return BadInput(f"the workflow is {size / 1e6:.1f} MB; the most accepted is {MAX_BYTES // 2**20} MiB")


def read(raw: bytes) -> Workflow:
    """The workflow in `raw`, whichever of the accepted forms it is; raises BadInput naming what is wrong."""
    if len(raw) > MAX_BYTES:
        raise too_large(len(raw))
    if not raw.strip():
        raise BadInput("the workflow is empty: send its JSON, or an image ComfyUI saved")
    if raw.startswith(PNG_MAGIC):
        return _from_texts(_png_texts(raw), "png")
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return _from_texts(_webp_texts(raw), "webp")
    if raw[:4] == b"fLaC":
        return _from_texts(_flac_texts(raw), "flac")
    text = raw.decode("utf-8-sig", errors="replace").strip()
    if not text.startswith(("{", "[")):
        raise BadInput("this is neither a workflow's JSON nor a PNG, WebP or FLAC file that ComfyUI saved")
    return from_json(text, "json")


def parse_json(text: str | bytes, what: str = "the workflow") -> object:
    """The JSON value, or BadInput saying where it breaks."""
    try:
        return json.loads(text)
    except RecursionError:
        raise BadInput(f"{what}'s JSON is nested too deeply") from None
    except ValueError as exc:
        raise BadInput(f"{what} is not valid JSON: {exc}") from None


def from_json(text: str, source: str) -> Workflow:
    return from_data(parse_json(text), source)


def from_data(data: object, source: str = "json") -> Workflow:
    if not isinstance(data, dict):
        raise BadInput("the JSON is not a workflow: a workflow is a JSON object")
    if isinstance(data.get("nodes"), list):
        return Workflow(data, "ui", source)
    nodes = [v for v in data.values() if isinstance(v, dict)]
    if data and len(nodes) == len(data) and all(isinstance(v.get("class_type"), str) for v in nodes):
        return Workflow(data, "api", source)
    raise BadInput(
        "the JSON is not a ComfyUI workflow: it has no `nodes` list (the UI format, Workflow > Export) and its"
        " values are not nodes with a `class_type` (the API format, Export (API))"
    )


def _from_texts(texts: dict[str, str], source: str) -> Workflow:
    # ComfyUI writes both: `workflow` (UI format, with the models' URLs) and `prompt` (API format).
    for key in ("workflow", "prompt"):
        if texts.get(key):
            return from_json(texts[key], source)
    raise BadInput(
        f"this {source.upper()} carries no workflow: ComfyUI embeds one in what it saves, unless saving"
        " metadata is off (--disable-metadata) or another program rewrote the file"
    )


def _png_texts(raw: bytes) -> dict[str, str]:
    texts: dict[str, str] = {}
    at = len(PNG_MAGIC)
    while at + 8 <= len(raw):
        length, kind = struct.unpack(">I4s", raw[at : at + 8])
        data = raw[at + 8 : at + 8 + length]
        at += 12 + length
        try:
            if kind == b"tEXt":
                key, _, value = data.partition(b"\0")
                texts[key.decode("latin-1")] = value.decode("latin-1")
            elif kind == b"zTXt":
                key, _, rest = data.partition(b"\0")
                texts[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
            elif kind == b"iTXt":
                key, _, rest = data.partition(b"\0")
                compressed, rest = rest[0], rest[2:]
                _lang, _, rest = rest.partition(b"\0")
                _translated, _, value = rest.partition(b"\0")
                texts[key.decode("latin-1")] = (zlib.decompress(value) if compressed else value).decode("utf-8")
            elif kind == b"IEND":
                break
        except (zlib.error, UnicodeDecodeError, IndexError):
            continue  # one unreadable chunk: the others may still hold the workflow
    return texts


def _webp_texts(raw: bytes) -> dict[str, str]:
    # ComfyUI's WebP: an EXIF chunk whose ASCII tags hold "workflow:{...}" and "prompt:{...}".
    texts: dict[str, str] = {}
    at = 12
    while at + 8 <= len(raw):
        kind, length = raw[at : at + 4], struct.unpack("<I", raw[at + 4 : at + 8])[0]
        data = raw[at + 8 : at + 8 + length]
        at += 8 + length + (length & 1)
        if kind != b"EXIF":
            continue
        for value in data.split(b"\0"):
            key, sep, rest = value.partition(b":")
            if sep and key in (b"workflow", b"prompt"):
                texts[key.decode()] = rest.decode("utf-8", errors="replace")
    return texts


def _flac_texts(raw: bytes) -> dict[str, str]:
    # ComfyUI's audio: Vorbis comments `workflow=...` and `prompt=...` in the metadata blocks.
    texts: dict[str, str] = {}
    at = 4
    while at + 4 <= len(raw):
        header = raw[at]
        length = int.from_bytes(raw[at + 1 : at + 4], "big")
        block = raw[at + 4 : at + 4 + length]
        at += 4 + length
        if header & 0x7F == 4:
            try:
                vendor = struct.unpack("<I", block[:4])[0]
                pos = 4 + vendor
                count = struct.unpack("<I", block[pos : pos + 4])[0]
                pos += 4
                for _ in range(count):
                    size = struct.unpack("<I", block[pos : pos + 4])[0]
                    key, _, value = block[pos + 4 : pos + 4 + size].decode("utf-8", errors="replace").partition("=")
                    texts[key.lower()] = value
                    pos += 4 + size
            except struct.error:
                pass
        if header & 0x80:  # the last metadata block
            break
    return texts
