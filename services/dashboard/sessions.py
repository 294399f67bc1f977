"""Dashboard sessions the server can end: logout revokes one, "sign out everywhere" and a new password
end them all.

A session cookie carries a random id, the epoch it was made in, and a fingerprint of the password it
was made with. Revocations live on the volume (0600), not in Redis, which persists nothing: a Redis
restart must neither log everyone out nor bring a revoked session back.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from contextlib import contextmanager
from pathlib import Path

from services.common.credentials import SECRET_MODE
from services.common.files import locked, write_atomic
from services.common.settings import Settings

LIFETIME = 7 * 86400  # seconds a session lasts (the cookie's lifetime too)


def fingerprint(session_key: str, password: str | None) -> str:
    """Tells whether a session was made with the current password, without storing the password."""
    return hmac.new(session_key.encode(), (password or "").encode(), hashlib.sha256).hexdigest()[:32]


def new_id() -> str:
    return secrets.token_urlsafe(24)


class Store:
    """The revocations, read again only when the file changed (one stat per request)."""

    def __init__(self, settings: Settings) -> None:
        self.path: Path = settings.paths.sessions_file
        self._seen: tuple[int, int] | None = None
        self._data: dict = {"epoch": 0, "revoked": {}}

    def _load(self) -> dict:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {"epoch": 0, "revoked": {}}
        if self._seen != (stat.st_mtime_ns, stat.st_size):
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                data = {}
            revoked = data.get("revoked") if isinstance(data.get("revoked"), dict) else {}
            epoch = data.get("epoch") if isinstance(data.get("epoch"), int) else 0
            self._data, self._seen = {"epoch": epoch, "revoked": revoked}, (stat.st_mtime_ns, stat.st_size)
        return self._data

    @property
    def epoch(self) -> int:
        return self._load()["epoch"]

    def valid(self, sid: object, epoch: object) -> bool:
        data = self._load()
        return isinstance(sid, str) and epoch == data["epoch"] and sid not in data["revoked"]

    @contextmanager
    def _changing(self):
        """Read-modify-write under a lock file: gunicorn's workers may revoke at the same moment."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with locked(self.path.with_name(self.path.name + ".lock"), mode=SECRET_MODE):
            self._seen = None
            data = json.loads(json.dumps(self._load()))
            yield data
            now = time.time()
            data["revoked"] = {k: v for k, v in data["revoked"].items() if isinstance(v, (int, float)) and v > now}
            write_atomic(self.path, json.dumps(data), SECRET_MODE)

    def revoke(self, sid: str) -> None:
        with self._changing() as data:
            data["revoked"][sid] = time.time() + LIFETIME

    def revoke_all(self) -> None:
        with self._changing() as data:
            data["epoch"] += 1
            data["revoked"] = {}
