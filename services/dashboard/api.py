"""The JSON API under /api: every operation of the dashboard, documented in openapi.yaml."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import redis
from flask import Blueprint, Response, current_app, jsonify, request

from services.common import bus, credentials, jobs, presets
from services.common.settings import Settings
from services.dashboard import state
from services.dashboard.auth import error

bp = Blueprint("api", __name__, url_prefix="/api")

OPENAPI = Path(__file__).with_name("openapi.yaml")


def settings() -> Settings:
    return current_app.config["SETTINGS"]


def client() -> redis.Redis:
    return bus.connect(settings(), timeout=3)


def body() -> dict:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise BadBody("send a JSON object (Content-Type: application/json)")
    return data


class BadBody(ValueError):
    pass


def _int(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadBody(f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise BadBody(f"{name} must be between {low} and {high}")
    return value


@bp.errorhandler(BadBody)
@bp.errorhandler(jobs.BadRequest)
@bp.errorhandler(presets.PresetProblem)
def bad_request(exc: Exception):
    status = 404 if str(exc).startswith("no preset") else 400
    return error("not_found" if status == 404 else "bad_request", str(exc), status)


@bp.errorhandler(state.NotFound)
def not_found(exc: Exception):
    return error("not_found", str(exc), 404)


@bp.errorhandler(state.Unavailable)
def unavailable(exc: Exception):
    return error("unavailable", str(exc), 503)


@bp.errorhandler(redis.RedisError)
def redis_down(exc: Exception):
    return error("unavailable", "Redis is not answering: the stack is restarting it, try again shortly", 503)


@bp.get("/openapi.yaml")
def openapi():
    return Response(OPENAPI.read_text(), mimetype="application/yaml")


class _StatusCache:
    """The overview costs RPCs, an HTTP call and NVML: it is refreshed at most once a second per worker,
    in the background, while requests get the last one at once (pages get live changes over the
    WebSocket, so a second-old overview is fine). Only the first request ever waits."""

    def __init__(self, settings: Settings, ttl: float = 1.0) -> None:
        self.settings = settings
        self.ttl = ttl
        self.body: bytes | None = None
        self.at = 0.0
        self.refreshing = False
        self.lock = threading.Lock()

    def _refresh(self) -> None:
        body = None
        try:
            body = json.dumps(state.status(self.settings, bus.connect(self.settings, timeout=3))).encode()
        except (state.Unavailable, redis.RedisError, OSError):
            pass  # keep serving the last one until a refresh succeeds
        finally:
            with self.lock:
                if body is not None:
                    self.body, self.at = body, time.monotonic()
                self.refreshing = False

    def get(self) -> bytes:
        with self.lock:
            fresh = self.body is not None and time.monotonic() - self.at <= self.ttl
            if fresh or (self.body is not None and self.refreshing):
                return self.body
            if self.body is not None:
                self.refreshing = True
                threading.Thread(target=self._refresh, daemon=True).start()
                return self.body
        # Nothing yet: compute it in this request (errors reach the caller as 503).
        body = json.dumps(state.status(self.settings, client())).encode()
        with self.lock:
            self.body, self.at = body, time.monotonic()
        return body


@bp.get("/status")
def status():
    cache = current_app.extensions.setdefault("status_cache", _StatusCache(settings()))
    return Response(cache.get(), mimetype="application/json")


@bp.get("/services")
def services():
    return jsonify(services=state.services(settings()))


@bp.post("/services/<name>/<action>")
def control(name: str, action: str):
    if action not in ("start", "stop", "restart"):
        return error("not_found", "action must be start, stop or restart", 404)
    return jsonify(state.control(settings(), name, action))


@bp.get("/logs/<name>")
def logs(name: str):
    lines = _int("lines", 200, 1, 5000)
    return jsonify(service=name, lines=state.log_tail(settings(), name, lines))


@bp.get("/downloads")
def downloads():
    return jsonify(downloads=state.downloads(client()))


@bp.post("/downloads")
def queue_download():
    data = body()
    unknown = set(data) - {"url", "folder", "filename", "sha256", "size"}
    if unknown:
        raise BadBody(f"unknown field(s): {', '.join(sorted(unknown))}")
    for key in ("url", "folder"):
        if not isinstance(data.get(key), str):
            raise BadBody(f"{key}: required, a string")
    for key in ("filename", "sha256"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise BadBody(f"{key}: must be a string")
    size = data.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
        raise BadBody("size: must be a whole number of bytes")
    job, created = jobs.submit(
        settings(),
        client(),
        data["url"],
        data["folder"],
        data.get("filename") or None,
        data.get("sha256") or None,
        size,
    )
    response = jsonify(job.model_dump())
    response.status_code = 202 if created else 200
    return response


def _job(job_id: str) -> dict:
    job = jobs.get(client(), job_id)
    if job is None:
        raise state.NotFound(f"no download {job_id!r}")
    return job.model_dump()


@bp.get("/downloads/<job_id>")
def download(job_id: str):
    return jsonify(_job(job_id))


@bp.delete("/downloads/<job_id>")
def cancel_download(job_id: str):
    _job(job_id)
    return jsonify(jobs.cancel(client(), job_id).model_dump())


@bp.post("/downloads/<job_id>/retry")
def retry_download(job_id: str):
    before = _job(job_id)
    if before["state"] not in ("failed", "cancelled"):
        return error(
            "conflict", f"only a failed or cancelled download can be retried (this one is {before['state']})", 409
        )
    job = jobs.retry(settings(), client(), job_id)
    response = jsonify(job.model_dump())
    response.status_code = 202
    return response


@bp.delete("/downloads")
def clear_history():
    finished = [j.id for j in jobs.all_jobs(client()) if j.terminal]
    jobs.forget(client(), finished)
    return jsonify(cleared=len(finished))


@bp.get("/presets")
def list_presets():
    catalogue = presets.load(settings())
    listed = presets.list_presets(
        settings(), client(), request.args.get("category"), request.args.get("tag"), request.args.get("q"), catalogue
    )
    return jsonify(presets=listed, errors=[str(e) for e in catalogue.errors])


@bp.get("/presets/<preset_id>")
def show_preset(preset_id: str):
    return jsonify(presets.show(settings(), client(), preset_id))


@bp.post("/presets/<preset_id>/install")
def install_preset(preset_id: str):
    queued = presets.install(credentials.effective(settings()), client(), preset_id)
    response = jsonify(preset=preset_id, queued=[j.model_dump() for j in queued])
    response.status_code = 202
    return response


@bp.post("/presets/<preset_id>/remove")
def remove_preset(preset_id: str):
    return jsonify(presets.remove(settings(), client(), preset_id))


@bp.get("/models")
def model_folders():
    return jsonify(folders=state.folders())


@bp.get("/models/<folder>")
def models(folder: str):
    return jsonify(folder=folder, models=state.models(settings(), folder))


@bp.delete("/models/<folder>/<name>")
def delete_model(folder: str, name: str):
    state.delete_model(settings(), folder, name)
    return jsonify(deleted=f"{folder}/{name}")


def _settings_view() -> dict:
    s = credentials.effective(settings())
    return {
        "hf_token_set": s.hf_token is not None,
        "civitai_token_set": s.civitai_token is not None,
        "auth": settings().dashboard_auth,
        "api_tokens": credentials.api_tokens(settings()),
    }


@bp.get("/settings")
def get_settings():
    return jsonify(_settings_view())


@bp.put("/settings")
def put_settings():
    data = body()
    unknown = set(data) - set(credentials.TOKEN_NAMES)
    if unknown:
        raise BadBody(f"unknown setting(s): {', '.join(sorted(unknown))}; only hf_token and civitai_token")
    for name, value in data.items():
        if value is not None and (not isinstance(value, str) or not value.strip() or len(value) > 512):
            raise BadBody(f"{name}: a token (text), or null to clear it")
        credentials.set_token(settings(), name, value.strip() if value else None)
    return jsonify(_settings_view())


@bp.post("/tokens")
def create_token():
    data = body()
    name = data.get("name", "")
    if not isinstance(name, str) or not name.strip() or len(name) > 64:
        raise BadBody("name: a label for the token, 1 to 64 characters")
    token_id, token = credentials.create_api_token(settings(), name.strip())
    response = jsonify(
        id=token_id, name=name.strip(), token=token, created=time.time(), note="shown once: store it now"
    )
    response.status_code = 201
    return response


@bp.delete("/tokens/<token_id>")
def delete_token(token_id: str):
    if not credentials.delete_api_token(settings(), token_id):
        raise state.NotFound(f"no API token {token_id!r}")
    return jsonify(deleted=token_id)
