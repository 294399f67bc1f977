"""create_app: the dashboard built from Settings, one blueprint per area."""

from __future__ import annotations

import datetime
import logging
import socket
import time
import urllib.parse

from flask import Flask, jsonify, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.exceptions import HTTPException

from services.common import credentials, door
from services.common.settings import Settings, load_settings
from services.dashboard import api, auth, context, pages, router, state, workflows, ws
from services.dashboard.auth import error

log = logging.getLogger("dashboard")

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _size(value: int | None) -> str:
    if value is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class _SessionInterface(SecureCookieSessionInterface):
    """The cookie is Secure whenever the browser used https: RunPod's proxy terminates TLS in front of us.

    Decided per request here, rather than by changing the app's config, which every thread shares.
    """

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.headers.get("X-Forwarded-Proto", request.scheme) == "https"


class _BehindFrontDoor:
    """Only our own nginx reaches the dashboard's unix socket: only its requests may say who the client
    is (X-Real-IP, the address nginx saw, or the one a trusted proxy named) and that the page is served
    under the front door's prefix on another port. From anywhere else those headers mean nothing."""

    def __init__(self, wsgi_app) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        sock = environ.get("gunicorn.socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            environ["REMOTE_ADDR"] = environ.get("HTTP_X_REAL_IP") or "unknown"
            if environ.get("HTTP_X_FORWARDED_PREFIX") == door.PREFIX:
                environ["SCRIPT_NAME"] = door.PREFIX
        return self.wsgi_app(environ, start_response)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    app = Flask(__name__)
    key = credentials.session_key(settings)
    if key is None:
        raise RuntimeError(f"no session key in {settings.paths.session_key_file}: run services.startup first")
    app.config.update(
        SECRET_KEY=key,
        DASHBOARD_PASSWORD=credentials.dashboard_password(settings),
        AUTH_ENABLED=settings.dashboard_auth,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_NAME=door.COOKIE,
        PERMANENT_SESSION_LIFETIME=datetime.timedelta(days=7),
        MAX_CONTENT_LENGTH=256 * 1024,
    )
    if not settings.dashboard_auth:
        log.warning("DASHBOARD_AUTH=off: anyone who reaches the dashboard or ComfyUI controls the stack")
    app.jinja_env.filters["size"] = _size
    # Pods sharing one Redis share one queue: download rows then say which pod runs each.
    app.jinja_env.globals["shared_queue"] = settings.redis_url is not None
    app.jinja_env.filters["presets_of"] = lambda job: state.presets_of(settings, job.folder, job.filename)
    # Where a file comes from, with its port (a 404 from a mirror on :8080 must say which).
    app.jinja_env.filters["host"] = lambda url: urllib.parse.urlsplit(url or "").netloc.rsplit("@", 1)[-1]
    app.jinja_env.filters["duration"] = _duration
    app.jinja_env.filters["clock"] = lambda ts: time.strftime("%H:%M:%S", time.localtime(ts))
    app.session_interface = _SessionInterface()
    app.wsgi_app = _BehindFrontDoor(app.wsgi_app)
    context.init_app(app, settings)
    auth.init_app(app, settings)
    app.register_blueprint(api.bp)
    app.register_blueprint(workflows.bp)
    app.register_blueprint(router.bp)
    app.register_blueprint(pages.bp)
    ws.init_app(app)

    @app.after_request
    def security_headers(response):
        # Our pages load only our own scripts and styles (htmx and app.js, vendored): nothing inline, no eval.
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.get("/livez")
    def livez():
        return jsonify(status="ok")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if request.path.startswith("/api/") or request.path == "/ws":
            codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 400: "bad_request"}
            return error(codes.get(exc.code or 500, "error"), exc.description or exc.name, exc.code or 500)
        return exc

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        # The one place an unforeseen error ends: logged in full, answered without a traceback.
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error("internal", "unexpected error: see the dashboard log", 500)

    return app
