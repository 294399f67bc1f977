"""Authentication on every route and the WebSocket: a session after a password login, or a bearer token.

State-changing requests also need a same-origin `Origin` (when the browser sends one) and, with a
session cookie, the CSRF token of that session. Failed logins are counted in Redis per client address
(gunicorn runs several workers), and too many in a window are refused.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from urllib.parse import urlsplit

import redis
from flask import Blueprint, Flask, current_app, g, jsonify, redirect, render_template, request, session, url_for

from services.common import credentials, messages
from services.dashboard.context import client as redis_client
from services.dashboard.context import settings

log = logging.getLogger("dashboard.auth")

bp = Blueprint("auth", __name__)

# Reachable without credentials: the login form, static assets and a bare liveness route.
PUBLIC_ENDPOINTS = {"auth.login", "livez", "static"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
LOGIN_WINDOW = 300
LOGIN_FAILURES = 10


def password_matches(candidate: str | None) -> bool:
    expected = current_app.config["DASHBOARD_PASSWORD"]
    if not candidate or not expected:
        return False
    return hmac.compare_digest(candidate.encode(), expected.encode())


def bearer_token() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def authenticate() -> str | None:
    """How this request is authenticated: "session", "bearer", "open" (auth off), or None."""
    if not current_app.config["AUTH_ENABLED"]:
        return "open"
    if session.get("user") == "admin":
        return "session"
    token = bearer_token()
    if token and (password_matches(token) or credentials.api_token_valid(settings(), token)):
        return "bearer"
    return None


def error(code: str, message: str, status: int):
    response = jsonify(error={"code": code, "message": message})
    response.status_code = status
    return response


def same_origin() -> bool:
    """A browser names the page a request comes from; it must be this dashboard."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser: API clients send no Origin and carry no ambient cookie
    return urlsplit(origin).netloc == request.host


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def require_auth():
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    how = authenticate()
    wants_json = request.path.startswith("/api/") or request.path == "/ws"
    if how is None:
        if wants_json:
            response = error("unauthorized", "log in, or send Authorization: Bearer <password or API token>", 401)
            response.headers["WWW-Authenticate"] = 'Bearer realm="comfyui-docker"'
            return response
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    g.auth = how
    if request.method not in SAFE_METHODS or request.path == "/ws":
        if not same_origin():
            return error("forbidden", "cross-site request refused (Origin does not match this dashboard)", 403)
        if how == "session" and request.path != "/ws":
            sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token", "")
            if not hmac.compare_digest(sent.encode(), csrf_token().encode()):
                return error("forbidden", "missing or wrong CSRF token: reload the page", 403)
    return None


def _client_address() -> str:
    return request.remote_addr or "unknown"


def _failures_key() -> str:
    return messages.login_failures_key(_client_address())


def _too_many(client: redis.Redis) -> bool:
    count = client.get(_failures_key())
    return count is not None and int(count) >= LOGIN_FAILURES


def _count_failure(client: redis.Redis) -> None:
    pipe = client.pipeline()
    pipe.incr(_failures_key())
    pipe.expire(_failures_key(), LOGIN_WINDOW, nx=True)
    pipe.execute()


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        return render_template("login.html", error=None)
    if not same_origin():
        return render_template("login.html", error="Cross-site login refused."), 403
    try:
        client = redis_client()
        if _too_many(client):
            page = render_template("login.html", error="Too many failed logins: wait a few minutes.")
            return page, 429, {"Retry-After": str(LOGIN_WINDOW)}
        ok = password_matches(request.form.get("password"))
        if not ok:
            _count_failure(client)
    except (redis.RedisError, OSError):
        # Without the counters, no login: brute force must not get through while Redis is away.
        return render_template("login.html", error="The dashboard is reconnecting: try again in a moment."), 503
    if not ok:
        log.warning("failed login from %s", _client_address())
        return render_template("login.html", error="Wrong password."), 401
    session.clear()
    session["user"] = "admin"
    session.permanent = True
    target = request.args.get("next", "/")
    # Only a local path: an open redirect would hand the fresh session page to another site.
    return redirect(target if target.startswith("/") and not target.startswith("//") else "/")


@bp.route("/logout", methods=["POST"])
def logout():
    session.clear()
    return redirect(url_for("auth.login"))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.before_request(require_auth)
    app.jinja_env.globals["csrf_token"] = csrf_token
