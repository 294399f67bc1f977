"""The listener protocol and what it does with each event, as plain functions."""

from __future__ import annotations

import logging
from collections import deque
from typing import IO

import redis

from services.common import bus, messages

log = logging.getLogger("events")

PENDING_LIMIT = 200


def parse_tokens(line: str) -> dict[str, str]:
    return dict(token.split(":", 1) for token in line.split() if ":" in token)


def read_event(stdin: IO[str]) -> tuple[dict[str, str], str]:
    """One event from supervisord: its header tokens and its payload."""
    header = parse_tokens(stdin.readline())
    payload = stdin.read(int(header.get("len", "0")))
    return header, payload


def state_event(eventname: str, payload: str) -> messages.ServiceState:
    head = parse_tokens(payload.split("\n", 1)[0])
    expected = head.get("expected")
    pid = head.get("pid")
    return messages.ServiceState(
        name=head.get("processname", "?"),
        state=eventname.removeprefix("PROCESS_STATE_"),
        from_state=head.get("from_state"),
        pid=int(pid) if pid and pid.isdigit() else None,
        expected=None if expected is None else expected == "1",
    )


def log_lines(payload: str) -> list[str]:
    """The lines of a PROCESS_LOG event, each prefixed with its program unless it already says it."""
    head, _, data = payload.partition("\n")
    name = parse_tokens(head).get("processname", "?")
    lines = []
    for line in data.splitlines():
        if not line.strip():
            continue
        lines.append(line if line.startswith(f"{name} ") else f"{name} | {line}")
    return lines


class Publisher:
    """Publishes state events; while Redis is away (it is one of our programs) keeps them to send later."""

    def __init__(self, connect) -> None:
        self._connect = connect
        self._client: redis.Redis | None = None
        self.pending: deque[messages.Event] = deque(maxlen=PENDING_LIMIT)
        self._warned = False

    def send(self, event: messages.Event | None = None) -> None:
        if event is not None:
            self.pending.append(event)
        while self.pending:
            try:
                if self._client is None:
                    self._client = self._connect()
                bus.publish(self._client, self.pending[0])
            except (redis.RedisError, OSError) as exc:
                self._client = None
                if not self._warned:
                    log.warning("bus unreachable, keeping %d event(s) to send later: %s", len(self.pending), exc)
                    self._warned = True
                return
            self.pending.popleft()
            self._warned = False
