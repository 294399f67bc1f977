"""The preset model: one YAML file per model bundle, validated by one model with unknown keys refused."""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from services.common.hashing import check_sha256
from services.common.paths import ALL_FOLDERS, check_filename

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
    def _https(cls, value: str, info: ValidationInfo) -> str:
        # http:// only where private hosts are allowed (a local mirror), and only in the user's presets.
        if (info.context or {}).get("allow_http") and value.startswith("http://"):
            return value
        if not value.startswith("https://"):
            raise ValueError(
                "must be an https:// URL (http:// is accepted in your own presets when"
                " DOWNLOADS_ALLOW_PRIVATE_HOSTS is on, for a mirror on your network)"
            )
        return value

    @field_validator("sha256", "filename", mode="before")
    @classmethod
    def _quoted(cls, value: Any) -> Any:
        # YAML reads a sha256 made only of digits as a number (and drops its leading zeros).
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError('YAML read it as a number: put it in quotes, e.g. sha256: "0123..."')
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
        return check_sha256(value) if value is not None else None

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


def _file_kind(value: Any) -> str:
    """A file entry with `ref` names a shared file; any other is a file of its own. Deciding first means
    one wrong field gives one message, not one for each kind of entry it fails to be."""
    return "FileRef" if isinstance(value, dict) and "ref" in value else "ModelFile"


FileEntry = Annotated[
    Annotated[ModelFile, Tag("ModelFile")] | Annotated[FileRef, Tag("FileRef")], Discriminator(_file_kind)
]


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{1,63}$")
    name: str = Field(min_length=1)
    description: str = ""
    category: Category
    base: str = Field(min_length=1, description="base model family, e.g. SDXL, FLUX.1, Wan 2.1")
    vram_gb: float | None = Field(None, gt=0, le=1024, description="GPU memory it needs, about, in GB")
    tags: list[str] = []
    files: list[FileEntry] = Field(min_length=1)
    custom_nodes: list[str] = []
    workflow: str | None = None
    licence: str | None = None

    @field_validator("workflow")
    @classmethod
    def _https_link(cls, value: str | None) -> str | None:
        # It becomes a link on the presets page: a `javascript:` or `data:` one would run in the dashboard.
        if value is not None and not re.fullmatch(r"https://[^\s\"'<>]+", value):
            raise ValueError("must be an https:// link to the workflow")
        return value

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
