"""Everything that crosses Redis: channel names, key builders, task names and versioned event models.

Nothing else in the project spells a Redis key, a channel or a task name by hand.
"""

from __future__ import annotations

import json
import time
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

SCHEMA_VERSION = 1

# Pub/sub: one channel carries every event; the `type` field says what it is.
EVENTS_CHANNEL = "events"

# Celery task names (stable: queued messages outlive a deploy).
TASK_PING = "worker.ping"
TASK_DOWNLOAD = "downloads.fetch"
TASK_RECONCILE = "downloads.reconcile"
TASK_NODE_PACKS = "workflows.node_packs"
TASK_CACHE_SYNC = "models.cache_sync"

# How many crash records are kept.
CRASH_HISTORY = 200


def snapshot_key(kind: str) -> str:
    """Hash of the latest event per subject of one kind (pub/sub has no history)."""
    return f"snapshot:{kind}"


def download_dedupe_key(folder: str, name: str) -> str:
    """The job that owns a destination while it is queued or running (dedupe at enqueue)."""
    return f"downloads:dest:{folder}:{name}"


def download_cancel_key(job_id: str) -> str:
    """Set when a user cancels a running job; the worker polls it."""
    return f"downloads:cancel:{job_id}"


def download_held_key(pod: str) -> str:
    """The download jobs one pod's worker holds (taken from the queue, not finished), republished every few
    seconds with an expiry: a pod that went away holds nothing once it expires."""
    return f"downloads:held:{pod}"


DOWNLOAD_HELD_PATTERN = "downloads:held:*"


def login_failures_key(address: str) -> str:
    """Failed logins from one client address in the current window (counted across gunicorn workers)."""
    return f"login:failures:{address}"


def reconcile_lock_key() -> str:
    """Held while one reconciler pass runs, so workers and pods never reconcile at once."""
    return "downloads:reconcile:lock"


def verified_key(path: str) -> str:
    """Size, mtime and sha256 of a file already hashed, so a check does not read it again."""
    return f"verified:{path}"


def crashes_key() -> str:
    """List of recent crash / FATAL events, newest first."""
    return "services:crashes"


class Event(BaseModel):
    """Base of every event; `kind` groups the snapshot, `subject` is the id within it."""

    model_config = ConfigDict(extra="forbid")
    kind: ClassVar[str] = "event"

    v: int = SCHEMA_VERSION
    type: str
    ts: float = Field(default_factory=time.time)

    @property
    def subject(self) -> str:
        return self.type

    def to_json(self) -> str:
        return self.model_dump_json()


class ServiceState(Event):
    """A supervisord program changed state (from the event listener)."""

    kind: ClassVar[str] = "services"
    type: Literal["service.state"] = "service.state"
    name: str
    state: str
    from_state: str | None = None
    pid: int | None = None
    # supervisord's `expected` for EXITED: False means it died on its own.
    expected: bool | None = None

    @property
    def subject(self) -> str:
        return self.name

    @property
    def crashed(self) -> bool:
        return self.state == "FATAL" or (self.state in ("EXITED", "BACKOFF") and self.expected is False)


class HealthCheck(Event):
    """One health check changed status (from the health service)."""

    kind: ClassVar[str] = "health"
    type: Literal["health.check"] = "health.check"
    name: str
    status: Literal["ok", "warn", "fail"]
    reason: str
    ms: float

    @property
    def subject(self) -> str:
        return self.name


class HealthState(Event):
    """The stack's overall health changed."""

    kind: ClassVar[str] = "health"
    type: Literal["health.state"] = "health.state"
    state: Literal["healthy", "degraded", "unhealthy"]
    ready: bool

    @property
    def subject(self) -> str:
        return "_overall"


DownloadState = Literal["queued", "running", "verifying", "done", "failed", "cancelled"]
TERMINAL = ("done", "failed", "cancelled")


class DownloadSpec(BaseModel):
    """What to download, and where: the one description of a download, from the API through the job, the
    engine and the manifest on the volume. Types are checked here (strictly: `"5"` is not a size, `true`
    not a number); the address, the folder and the name are checked by `jobs.validate`."""

    model_config = ConfigDict(extra="forbid")

    url: StrictStr
    folder: StrictStr
    filename: StrictStr | None = None
    sha256: StrictStr | None = None
    size: StrictInt | None = None

    @property
    def spec(self) -> DownloadSpec:
        """Only the spec's fields (of a job, too)."""
        return DownloadSpec(**{name: getattr(self, name) for name in DownloadSpec.model_fields})


class DownloadJob(DownloadSpec):
    """A download: its spec, and how far it got. No token is ever part of it."""

    id: str
    state: DownloadState = "queued"
    bytes_done: int = 0
    total: int | None = None
    speed: float = 0.0  # bytes/s: now while running, the average once done
    eta: float | None = None
    error: str | None = None
    attempts: int = 0
    resumed_from: int = 0
    pod: str | None = None  # the pod whose worker runs (or ran) it: many pods may share one queue
    already_present: bool = False
    created: float = Field(default_factory=time.time)
    updated: float = Field(default_factory=time.time)
    finished: float | None = None
    heartbeat: float | None = None
    # Set only when a job is shown (jobs.as_seen), never stored: a running job whose worker went silent.
    waiting_since: float | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


class DownloadEvent(Event):
    """A download changed state (`download.state`) or made progress (`download.progress`)."""

    kind: ClassVar[str] = "downloads"
    type: Literal["download.state", "download.progress"] = "download.state"
    job: DownloadJob

    @property
    def subject(self) -> str:
        return self.job.id


class DownloadProgress(DownloadEvent):
    type: Literal["download.progress"] = "download.progress"


class PresetState(Event):
    """A preset's state, derived from the volume, changed (missing -> partial -> installed)."""

    kind: ClassVar[str] = "presets"
    type: Literal["preset.state"] = "preset.state"
    id: str
    state: Literal["installed", "partial", "missing"]
    files_done: int
    files_total: int

    @property
    def subject(self) -> str:
        return self.id


PackState = Literal["queued", "cloning", "installing", "installed", "skipped", "failed"]


class NodePackInstall(BaseModel):
    """One node pack a workflow install puts into custom_nodes (services/worker/nodepacks.py)."""

    model_config = ConfigDict(extra="forbid")

    url: StrictStr
    title: StrictStr
    commit: StrictStr | None = None  # asked for, then the one checked out
    state: PackState = "queued"
    message: StrictStr | None = None
    loaded: bool | None = None  # ComfyUI's import report after the restart


class WorkflowFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    folder: StrictStr | None
    filename: StrictStr
    job_id: StrictStr | None = None  # its download (queued now, or one already queued for the same file)
    note: StrictStr | None = None  # why nothing was queued (on the volume, no source, refused)


class WorkflowInstall(Event):
    """A workflow being made runnable: the downloads it queued and the node packs it installs."""

    kind: ClassVar[str] = "workflows"
    type: Literal["workflow.install"] = "workflow.install"
    id: StrictStr
    name: StrictStr
    created: float = Field(default_factory=time.time)
    files: list[WorkflowFile] = []
    packs: list[NodePackInstall] = []
    restart: Literal["none", "pending", "restarting", "done", "failed"] = "none"
    message: StrictStr | None = None

    @property
    def subject(self) -> str:
        return self.id


_EVENT_TYPES: dict[str, type[Event]] = {
    model.model_fields["type"].default: model
    for model in (ServiceState, HealthCheck, HealthState, DownloadEvent, DownloadProgress, PresetState, WorkflowInstall)
}


class BadEvent(ValueError):
    """A message on the bus that is not an event we know."""


def parse_event(raw: str | bytes) -> Event:
    try:
        data = json.loads(raw)
        model = _EVENT_TYPES[data["type"]]
        return model.model_validate(data)
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise BadEvent(f"not a known event: {exc}") from None
