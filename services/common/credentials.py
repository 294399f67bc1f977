"""The secrets that must exist on the volume (session key, dashboard password), stored 0600."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from services.common.settings import Settings

SECRET_MODE = 0o600


def ensure_secret(path: Path, length: int) -> tuple[str, bool]:
    """Read the secret at `path`, creating it (0600, never world-readable even briefly) when missing.

    Returns the value and whether it was created now.
    """
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if value:
        if (path.stat().st_mode & 0o777) != SECRET_MODE:
            path.chmod(SECRET_MODE)
        return value, False
    value = secrets.token_urlsafe(length)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, SECRET_MODE)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return value, True


def dashboard_password(settings: Settings) -> str | None:
    """DASHBOARD_PASSWORD when set, else the one startup generated (None before startup ran)."""
    if settings.dashboard_password is not None:
        return settings.dashboard_password.get_secret_value()
    try:
        return settings.paths.password_file.read_text().strip() or None
    except FileNotFoundError:
        return None


def session_key(settings: Settings) -> str | None:
    try:
        return settings.paths.session_key_file.read_text().strip() or None
    except FileNotFoundError:
        return None
