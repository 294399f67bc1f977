"""The secrets that must exist on the volume (session key, dashboard password), stored 0600."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path

from pydantic import SecretStr

from services.common.files import write_atomic
from services.common.settings import Settings, check_token

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
    write_atomic(path, value + "\n", SECRET_MODE)
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


TOKEN_NAMES = ("hf_token", "civitai_token")


def _write_secret_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data), SECRET_MODE)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def stored_tokens(settings: Settings) -> dict[str, str]:
    """The tokens set from the dashboard; one that could not go into a header (stored before it was
    checked at input) counts as not set, so it never reaches a request, an exception or a log."""
    data = _read_json(settings.paths.tokens_file)
    return {k: v for k, v in data.items() if k in TOKEN_NAMES and isinstance(v, str) and _usable(v)}


def _usable(token: str) -> bool:
    try:
        check_token(token)
    except ValueError:
        return False
    return True


def set_token(settings: Settings, name: str, value: str | None) -> None:
    """Store (or clear, with None) a source token; it takes effect at the next download, no restart."""
    if name not in TOKEN_NAMES:
        raise ValueError(f"unknown token {name!r}")
    tokens = stored_tokens(settings)
    if value:
        tokens[name] = value
    else:
        tokens.pop(name, None)
    _write_secret_json(settings.paths.tokens_file, tokens)


def effective(settings: Settings) -> Settings:
    """Settings with the tokens stored from the dashboard over those of the environment."""
    stored = stored_tokens(settings)
    if not stored:
        return settings
    return settings.model_copy(update={name: SecretStr(value) for name, value in stored.items()})


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def api_tokens(settings: Settings) -> list[dict]:
    """The API tokens made on the settings page: ids, names and dates, never the tokens."""
    data = _read_json(settings.paths.api_tokens_file)
    # A name stored before names were checked must not break a page: what cannot be shown is replaced.
    return [
        {"id": k, "name": str(v.get("name", "")).encode("utf-8", "replace").decode(), "created": v.get("created")}
        for k, v in data.items()
    ]


def create_api_token(settings: Settings, name: str) -> tuple[str, str]:
    """A new API token: returns (id, token); the token is shown once and only its hash is kept."""
    data = _read_json(settings.paths.api_tokens_file)
    token_id, token = secrets.token_hex(4), "cdt_" + secrets.token_urlsafe(32)
    data[token_id] = {"name": name, "sha256": _digest(token), "created": time.time()}
    _write_secret_json(settings.paths.api_tokens_file, data)
    return token_id, token


def delete_api_token(settings: Settings, token_id: str) -> bool:
    data = _read_json(settings.paths.api_tokens_file)
    if data.pop(token_id, None) is None:
        return False
    _write_secret_json(settings.paths.api_tokens_file, data)
    return True


def api_token_valid(settings: Settings, token: str) -> bool:
    digest = _digest(token)
    entries = _read_json(settings.paths.api_tokens_file).values()
    # Compare against every entry (constant time each), so timing does not tell which one matched.
    return any([hmac.compare_digest(digest, str(v.get("sha256", ""))) for v in entries])
