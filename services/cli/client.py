"""The command line's one way to the stack: the dashboard's HTTP API and its WebSocket, with a bearer
token. No Redis, no supervisord socket: the same commands work inside the pod, on the host and from a
laptop against a pod's URL. Every failure becomes a `CliError` with one line and its exit code."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import urllib3
import websocket

# Exit codes (documented in the README): the operation failed; usage or connection; authentication.
FAILED, USAGE, AUTH, INTERRUPTED = 1, 2, 3, 130
CONFIG_FILE = Path.home() / ".config" / "comfyui-docker" / "cli.json"
TIMEOUT = urllib3.Timeout(connect=5.0, read=60.0)


class CliError(Exception):
    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.message, self.code = message, code


@dataclass(frozen=True)
class Target:
    url: str
    token: str | None


def read_config(path: Path = CONFIG_FILE) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}; remove it and run `comfyui-docker login` again", USAGE) from None
    return data if isinstance(data, dict) else {}


def write_config(target: Target, path: Path = CONFIG_FILE) -> Path:
    """The URL and token for later commands, readable by this user only (0600 from its first byte)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as handle:
        json.dump({"url": target.url, "token": target.token}, handle)
    os.replace(tmp, path)
    return path


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"{url!r} is not the dashboard's address: give one like http://127.0.0.1:8080", USAGE)
    return url.rstrip("/")


class Api:
    def __init__(self, target: Target) -> None:
        self.base = check_url(target.url)
        self.token = target.token
        self.http = urllib3.PoolManager(timeout=TIMEOUT, retries=False)

    def _headers(self, extra: dict | None = None) -> dict:
        headers = {"Accept": "application/json", **(extra or {})}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def call(
        self, method: str, path: str, body: object = None, raw: bytes | None = None, content_type: str = ""
    ) -> dict:
        """One API call; the decoded JSON answer, or CliError with the API's own message."""
        headers = self._headers()
        data = raw
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        elif raw is not None:
            headers["Content-Type"] = content_type or "application/octet-stream"
        try:
            response = self.http.request(method, self.base + path, body=data, headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            raise CliError(
                f"cannot reach the dashboard at {self.base} ({reason}): is the stack running? Set --url or"
                " COMFYUI_DOCKER_URL to its address",
                USAGE,
            ) from None
        try:
            answer = json.loads(response.data or b"{}")
        except ValueError:
            answer = None
        if response.status < 400 and isinstance(answer, dict):
            return answer
        message = _message(answer) or f"the dashboard answered {response.status} without JSON: is {self.base} it?"
        code = answer.get("error", {}).get("code") if isinstance(answer, dict) else None
        if response.status in (502, 504) or code == "not_answering":
            # The front door is up, the dashboard behind it is not: as unreachable as a refused connection.
            raise CliError(f"{message} ({self.base})", USAGE)
        if response.status in (401, 403, 429):
            hint = "" if self.token else " (no token given: pass --token, set COMFYUI_DOCKER_TOKEN or run login)"
            raise CliError(f"{message}{hint}", AUTH)
        raise CliError(message, FAILED if isinstance(answer, dict) else USAGE)

    def get(self, path: str) -> dict:
        return self.call("GET", path)

    def post(self, path: str, body: object = None, raw: bytes | None = None, content_type: str = "") -> dict:
        return self.call("POST", path, body if body is not None or raw is not None else {}, raw, content_type)

    def delete(self, path: str) -> dict:
        return self.call("DELETE", path)

    def socket(self) -> websocket.WebSocket:
        """The dashboard's WebSocket (JSON events: a snapshot, then every change)."""
        url = "ws" + self.base.removeprefix("http") + "/ws"
        header = [f"Authorization: Bearer {self.token}"] if self.token else []
        try:
            return websocket.create_connection(url, header=header, timeout=30, suppress_origin=True)
        except websocket.WebSocketBadStatusException as exc:
            code = AUTH if exc.status_code in (401, 403, 429) else FAILED
            raise CliError(f"the dashboard refused its WebSocket ({exc.status_code})", code) from None
        except (OSError, websocket.WebSocketException) as exc:
            raise CliError(f"cannot open the dashboard's WebSocket at {url}: {exc}", USAGE) from None


def _message(answer: object) -> str | None:
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        return str(answer["error"].get("message") or "") or None
    return None


def part(value: str) -> str:
    """One path segment of an API route, quoted."""
    return quote(value, safe="")
