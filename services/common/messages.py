"""Everything that crosses Redis: channel names, key builders, task names and versioned event models.

Nothing else in the project spells a Redis key, a channel or a task name by hand.
"""

from __future__ import annotations

import json
import time
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1

# Pub/sub: one channel carries every event; the `type` field says what it is.
EVENTS_CHANNEL = "events"

# Celery task names (stable: queued messages outlive a deploy).
TASK_PING = "worker.ping"

# How many crash records are kept.
CRASH_HISTORY = 200


def snapshot_key(kind: str) -> str:
    """Hash of the latest event per subject of one kind (pub/sub has no history)."""
    return f"snapshot:{kind}"


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


_EVENT_TYPES: dict[str, type[Event]] = {
    model.model_fields["type"].default: model for model in (ServiceState, HealthCheck, HealthState)
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
