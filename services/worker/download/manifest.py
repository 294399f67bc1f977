"""The record of a download in flight, on the volume beside its `.part`: the manifest and the journal.

The manifest (`<name>.part.json`) says where the bytes come from, their validator, and how far each
segment got *durably* (fsynced before it was claimed). The journal (`<name>.part.progress`) appends
each segment's written count without fsync: after a crash on the same boot the page cache kept those
bytes, so the journal makes the resume exact; after a reboot only the manifest's claims count.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from services.common.messages import DownloadSpec

MANIFEST_VERSION = 2
JOURNAL_RECORD = struct.Struct("<IQ")  # segment index, bytes written from its start


@dataclass
class Segment:
    start: int
    end: int  # inclusive
    done: int = 0  # bytes from start that were fsynced before the manifest claimed them
    written: int = field(default=0, compare=False)  # bytes written so far (in the page cache at least)

    def __post_init__(self) -> None:
        self.written = max(self.written, self.done)

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def remaining(self) -> int:
        return self.length - self.written


def boot_id() -> str:
    """Changes when the machine reboots: only then can written-but-unsynced bytes have been lost."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass
class Manifest:
    job_id: str
    spec: DownloadSpec  # its filename is the resolved one, its sha256 the one expected from any source
    total: int | None
    validator: str | None
    segments: list[Segment] | None  # None: one sequential stream
    done: int = 0  # sequential: bytes fsynced before this record claimed them
    boot_id: str = ""

    def to_json(self) -> str:
        segments = [[s.start, s.end, s.done] for s in self.segments] if self.segments is not None else None
        # The spec's fields sit at the top level: the file's format predates the spec model.
        return json.dumps(
            {
                "job_id": self.job_id,
                **self.spec.model_dump(),
                "total": self.total,
                "validator": self.validator,
                "segments": segments,
                "done": self.done,
                "boot_id": self.boot_id,
                "v": MANIFEST_VERSION,
            }
        )

    @classmethod
    def load(cls, path: Path) -> Manifest | None:
        try:
            data = json.loads(path.read_text())
            if data.pop("v", None) != MANIFEST_VERSION:
                return None
            spec = DownloadSpec.model_validate({k: data.pop(k) for k in DownloadSpec.model_fields if k in data})
            segments = data.pop("segments")
            return cls(**data, spec=spec, segments=[Segment(*s) for s in segments] if segments is not None else None)
        except (OSError, ValueError, TypeError, ValidationError):
            return None


def replay(journal: Path, segments: list[Segment]) -> None:
    """Raise each segment's written count to what the journal recorded."""
    try:
        raw = journal.read_bytes()
    except OSError:
        return
    usable = len(raw) - len(raw) % JOURNAL_RECORD.size
    for index, written in JOURNAL_RECORD.iter_unpack(raw[:usable]):
        if index < len(segments):
            segment = segments[index]
            segment.written = max(segment.written, min(written, segment.length))
