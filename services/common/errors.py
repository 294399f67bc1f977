"""The one error type every layer raises for what a user or a server got wrong: a code, a status, a message.

The dashboard turns any of them into its JSON error (`{"error": code, "message": ...}`) with the status;
nothing tells errors apart by their text.
"""

from __future__ import annotations


class Problem(Exception):
    """Something the caller can fix; the message says what was wrong and what to do."""

    code = "bad_request"
    status = 400

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    @property
    def message(self) -> str:
        return str(self)


class BadInput(Problem):
    """A request with a wrong or missing field."""


class NotFound(Problem):
    code = "not_found"
    status = 404


class Conflict(Problem):
    """The request is valid but not in the state the thing is in (retrying a running download)."""

    code = "conflict"
    status = 409


class Unavailable(Problem):
    """A dependency (Redis, supervisord, ComfyUI) is not answering; the message says which."""

    code = "unavailable"
    status = 503
