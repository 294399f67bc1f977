"""The JSON API under /api: every operation of the dashboard, documented in openapi.yaml."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import kombu.exceptions
import redis
from flask import Blueprint, Response, current_app, jsonify, request
from gunicorn.http.errors import ParseException
from pydantic import ValidationError

from services.common import comfyui, credentials, history, instances, jobs, nodes, presets, safemode
from services.common.errors import BadInput, NotFound, Problem
from services.common.messages import DownloadSpec
from services.common.settings import Settings, check_token
from services.dashboard import state
from services.dashboard.auth import error
from services.dashboard.context import client, send, send_cache_sync, settings

bp = Blueprint("api", __name__, url_prefix="/api")

OPENAPI = Path(__file__).with_name("openapi.yaml")
# How old the overview may be before a request starts a refresh (pages get live changes by WebSocket),
# and the oldest one ever served: past it, the request computes a fresh one itself (each gunicorn worker
# has its own cache; neither may hand out a stale one, even while a refresh hangs).
STATUS_TTL = 1.0
STATUS_MAX_AGE = 2.0


def body() -> dict:
    try:
        data = request.get_json(silent=True)
    except RecursionError:
        raise BadInput("the JSON is nested too deeply: send a flat JSON object") from None
    except (OSError, ParseException):  # the body itself is broken (gunicorn reads chunked encoding lazily)
        raise BadInput("the request body is malformed (bad chunked encoding): send it again") from None
    if not isinstance(data, dict):
        raise BadInput("send a JSON object (Content-Type: application/json)")
    return data


def _int(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadInput(f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise BadInput(f"{name} must be between {low} and {high}")
    return value


def invalid_spec(exc: ValidationError) -> BadInput:
    """What is wrong with a body, as one message naming the field at fault."""
    errors = exc.errors()
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        return BadInput(f"unknown field(s): {', '.join(unknown)}")
    field = str(errors[0]["loc"][0])
    if field == "size":
        return BadInput("size: must be a whole number of bytes")
    required = DownloadSpec.model_fields[field].is_required()
    return BadInput(f"{field}: required, a string" if required else f"{field}: must be a string")


@bp.errorhandler(Problem)
def problem(exc: Problem):
    return error(exc.code, exc.message, exc.status)


@bp.errorhandler(redis.RedisError)
def redis_down(exc: Exception):
    return error("unavailable", "Redis is not answering: the stack is restarting it, try again shortly", 503)


@bp.get("/openapi.yaml")
def openapi():
    return Response(OPENAPI.read_text(), mimetype="application/yaml")


class _StatusCache:
    """The overview costs RPCs, an HTTP call and NVML: it is refreshed at most once a second per worker,
    in the background, while requests get the last one at once (pages get live changes over the
    WebSocket, so a second-old overview is fine). A request waits only when there is none yet or the
    last one is older than `max_age` (a refresh failed or hangs): then it computes its own."""

    def __init__(
        self, settings: Settings, client: redis.Redis, ttl: float = STATUS_TTL, max_age: float = STATUS_MAX_AGE
    ) -> None:
        self.settings, self.client = settings, client
        self.ttl, self.max_age = ttl, max_age
        self.body: bytes | None = None
        self.at = 0.0
        self.refreshing = False
        self.lock = threading.Lock()

    def _refresh(self) -> None:
        body = None
        try:
            body = json.dumps(state.status(self.settings, self.client)).encode()
        except (Problem, redis.RedisError, OSError):
            pass  # keep serving the last one until a refresh succeeds
        finally:
            with self.lock:
                if body is not None:
                    self.body, self.at = body, time.monotonic()
                self.refreshing = False

    def get(self) -> bytes:
        with self.lock:
            age = time.monotonic() - self.at if self.body is not None else None
            if age is not None and age <= self.max_age:
                if age > self.ttl and not self.refreshing:
                    self.refreshing = True
                    threading.Thread(target=self._refresh, daemon=True).start()
                return self.body
        # None yet, or too old to serve: compute it in this request (errors reach the caller as 503).
        body = json.dumps(state.status(self.settings, self.client)).encode()
        with self.lock:
            self.body, self.at = body, time.monotonic()
        return body


@bp.get("/status")
def status():
    cache = current_app.extensions.setdefault("status_cache", _StatusCache(settings(), client()))
    return Response(cache.get(), mimetype="application/json")


@bp.get("/comfyui/nodes")
def comfyui_nodes():
    """Each custom node's outcome at ComfyUI's last start (services/common/nodes.py), and safe mode."""
    mode = safemode.current(settings())
    return jsonify({**nodes.report(settings()).as_dict(), "safe_mode": mode.as_dict() if mode else None})


def _comfyui_base() -> str:
    """Where the ComfyUI of `?instance=` listens (COMFYUI_GPUS); without it, the first one."""
    name = request.args.get("instance")
    found = instances.current(settings())
    chosen = found[0] if name is None else instances.named(settings(), name)
    if chosen is None:
        raise NotFound(f"no ComfyUI {name!r}: one of {', '.join(i.program for i in found)}")
    return chosen.url(settings())


@bp.get("/comfyui/queue")
def comfyui_queue():
    """ComfyUI's own work: prompts running and waiting, and the last ones with status, time and error."""
    return jsonify(comfyui.work(settings(), _comfyui_base()))


@bp.post("/comfyui/interrupt")
def comfyui_interrupt():
    comfyui.interrupt(settings(), _comfyui_base())
    return jsonify(interrupted=True)


@bp.post("/comfyui/queue/clear")
def comfyui_clear_queue():
    comfyui.clear_queue(settings(), _comfyui_base())
    return jsonify(cleared=True)


@bp.delete("/comfyui/safe-mode")
def retry_all_nodes():
    """Leave safe mode: ComfyUI restarts with every custom node."""
    was_on = safemode.clear(settings())
    state.control(settings(), "comfyui", "restart")
    return jsonify(safe_mode=None, was_on=was_on, restarted="comfyui")


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
    try:
        spec = DownloadSpec.model_validate(body())
    except ValidationError as exc:
        raise invalid_spec(exc) from None
    # An empty name or hash from a form means "not given".
    spec = spec.model_copy(update={"filename": spec.filename or None, "sha256": spec.sha256 or None})
    job, created = jobs.submit(settings(), client(), spec, send)
    response = jsonify(job.model_dump())
    response.status_code = 202 if created else 200
    return response


def _job(job_id: str) -> dict:
    job = jobs.get(client(), job_id)
    if job is None:
        raise NotFound(f"no download {job_id!r}")
    return jobs.as_seen(job).model_dump()


@bp.get("/downloads/<job_id>")
def download(job_id: str):
    return jsonify(_job(job_id))


@bp.delete("/downloads/<job_id>")
def cancel_download(job_id: str):
    _job(job_id)
    return jsonify(jobs.cancel(client(), job_id).model_dump())


@bp.post("/downloads/<job_id>/retry")
def retry_download(job_id: str):
    job = jobs.retry(client(), job_id, send)
    if job is None:
        raise NotFound(f"no download {job_id!r}")
    response = jsonify(job.model_dump())
    response.status_code = 202
    return response


@bp.delete("/downloads")
def clear_history():
    finished = [j.id for j in jobs.all_jobs(client()) if j.terminal]
    jobs.forget(client(), finished)
    history.forget(settings().paths.download_history, finished)  # or the next start brings them back
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
    queued = presets.install(credentials.effective(settings()), client(), preset_id, send)
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


@bp.post("/models/<folder>/<name>/pin")
def pin_model(folder: str, name: str):
    """Keep this model on this pod's own disk (the local cache), where ComfyUI reads it first."""
    answer = state.pin_model(settings(), folder, name, True)
    try:
        send_cache_sync()
    except (kombu.exceptions.OperationalError, redis.RedisError, OSError):
        pass  # pinned all the same: the worker's next pass copies it
    return jsonify(answer)


@bp.delete("/models/<folder>/<name>/pin")
def unpin_model(folder: str, name: str):
    return jsonify(state.pin_model(settings(), folder, name, False))


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
        raise BadInput(f"unknown setting(s): {', '.join(sorted(unknown))}; only hf_token and civitai_token")
    tokens = {}
    for name, value in data.items():
        if value is not None and (not isinstance(value, str) or not value.strip() or len(value) > 512):
            raise BadInput(f"{name}: a token (text), or null to clear it")
        try:
            tokens[name] = check_token(value.strip()) if value is not None else None
        except ValueError as exc:
            raise BadInput(f"{name}: {exc}") from None
    for name, value in tokens.items():  # all checked first: one bad field stores nothing
        credentials.set_token(settings(), name, value)
    return jsonify(_settings_view())


@bp.post("/tokens")
def create_token():
    data = body()
    name = data.get("name", "")
    # Printable text only: a control character or a lone surrogate would break every page showing it.
    if not isinstance(name, str) or not name.strip() or len(name) > 64 or not name.isprintable():
        raise BadInput("name: a label for the token, 1 to 64 printable characters")
    token_id, token = credentials.create_api_token(settings(), name.strip())
    response = jsonify(
        id=token_id, name=name.strip(), token=token, created=time.time(), note="shown once: store it now"
    )
    response.status_code = 201
    return response


@bp.delete("/tokens/<token_id>")
def delete_token(token_id: str):
    if not credentials.delete_api_token(settings(), token_id):
        raise NotFound(f"no API token {token_id!r}")
    return jsonify(deleted=token_id)
