"""Authentication on every route and the WebSocket: a session after a password login, or a bearer token.

State-changing requests also need a same-origin `Origin` (when the browser sends one) and, with a
session cookie, the CSRF token of that session. Failed logins are counted in Redis per client address
(gunicorn runs several workers), and too many in a window are refused.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from urllib.parse import urlencode, urlsplit

import redis
from flask import Blueprint, Flask, current_app, g, jsonify, redirect, render_template, request, session, url_for

from services.common import credentials, door, messages
from services.common.settings import Settings
from services.dashboard.context import client as redis_client
from services.dashboard.context import settings
from services.dashboard.sessions import Store, fingerprint, new_id

log = logging.getLogger("dashboard.auth")

bp = Blueprint("auth", __name__)

# Reachable without credentials: the login form, static assets and a bare liveness route.
PUBLIC_ENDPOINTS = {"auth.login", "auth.front_door", "livez", "static"}
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


def session_valid() -> bool:
    """A session made at login with the current password, in the current epoch, not revoked."""
    if session.get("user") != "admin":
        return False
    if session.get("pw") != fingerprint(current_app.config["SECRET_KEY"], current_app.config["DASHBOARD_PASSWORD"]):
        return False  # made with another password: a password change ends every session
    return store().valid(session.get("sid"), session.get("epoch"))


def bearer_valid() -> bool:
    token = bearer_token()
    return bool(token) and (password_matches(token) or credentials.api_token_valid(settings(), token))


def store() -> Store:
    return current_app.extensions["sessions"]


def error(code: str, message: str, status: int):
    response = jsonify(error={"code": code, "message": message})
    response.status_code = status
    return response


def same_origin() -> bool:
    """A browser names the page a request comes from; it must be this dashboard."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser: API clients send no Origin and carry no ambient cookie
    try:
        return urlsplit(origin).netloc == request.host
    except ValueError:
        return False  # an Origin that does not even parse names no page of ours


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def _refused(message: str, status: int):
    if request.path.startswith("/api/") or request.path == "/ws":
        response = error("too_many_attempts" if status == 429 else "unavailable", message, status)
    else:
        response = current_app.make_response((render_template("login.html", error=message), status))
    if status == 429:
        response.headers["Retry-After"] = str(LOGIN_WINDOW)
    return response


def require_auth():
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    # How the request is authenticated: "open" (auth off), "session", "bearer", or None.
    how: str | None = None
    if not current_app.config["AUTH_ENABLED"]:
        how = "open"
    elif session_valid():
        how = "session"
    else:
        # Guessing through `Authorization: Bearer` counts against the same limit as the login form, and
        # an address over it is refused everywhere, the right password included.
        try:
            client = redis_client()
            if _too_many(client):
                return _refused("Too many failed logins: wait a few minutes.", 429)
            if bearer_valid():
                how = "bearer"
            elif bearer_token() is not None:
                _count_failure(client)
                log.warning("wrong token in an Authorization header from %s", _client_address())
        except (redis.RedisError, OSError):
            if bearer_token() is not None:  # without the counters, no guess is checked
                return _refused("Redis is not answering: the stack is restarting it, try again shortly", 503)
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
    # A random id per login: two logins in the same second get different cookies, and each can be revoked.
    session.update(
        user="admin",
        sid=new_id(),
        epoch=store().epoch,
        pw=fingerprint(current_app.config["SECRET_KEY"], current_app.config["DASHBOARD_PASSWORD"]),
    )
    session.permanent = True
    return redirect(safe_next(request.args.get("next", "/")))


def safe_next(target: str) -> str:
    """Only a path of this site: an open redirect would hand the fresh session page to another site.

    Browsers drop tabs and newlines from a URL and read `/\\` like `//`, so any of those refuses it."""
    if (
        not target.startswith("/")
        or target.startswith(("//", "/\\"))
        or any(c.isspace() or ord(c) < 32 or ord(c) == 127 or c == "\\" for c in target)
    ):
        return "/"
    return target


@bp.get(door.PREFIX + "/auth")
def front_door():
    """nginx asks here before every request to a protected port (ComfyUI, the dev tools).

    204 lets the request through; 401 (no or wrong credentials, with X-Door-Login: where a browser
    logs in) and 403 (X-Door-Reason: origin, locked, unavailable) refuse it. No body: nginx drops it,
    and answers the client itself from the reason."""
    if not current_app.config["AUTH_ENABLED"]:
        return _door()
    if session_valid():
        return _door() if _from_this_site() else _door(403, "origin")
    try:
        client = redis_client()
        if _too_many(client):
            return _door(403, "locked")
        if bearer_valid():
            return _door()
        if bearer_token() is not None:
            _count_failure(client)
            log.warning("wrong token in an Authorization header (front door) from %s", _client_address())
    except (redis.RedisError, OSError):
        if bearer_token() is not None:
            return _door(403, "unavailable")
    return _door(401, "login")


def _door(status: int = 204, reason: str | None = None):
    response = current_app.response_class(status=status)
    if reason:
        response.headers["X-Door-Reason"] = reason
    if status == 401:
        target = request.headers.get("X-Original-URI", "/")
        response.headers["X-Door-Login"] = f"{door.PREFIX}/login?{urlencode({'next': target})}"
    return response


def _from_this_site() -> bool:
    """A cookie rides along on every request the browser makes to this host, whichever page asked.

    Refused: a state change or WebSocket whose Origin is another site, and anything but opening a
    page (a link, a bookmark) that the browser says comes from another site or another pod."""
    method = request.headers.get("X-Original-Method", "GET")
    upgrade = request.headers.get("X-Original-Upgrade", "").lower() == "websocket"
    if (method not in SAFE_METHODS or upgrade) and not same_origin():
        return False
    fetched_from = request.headers.get("Sec-Fetch-Site")
    opening_a_page = method == "GET" and request.headers.get("Sec-Fetch-Mode") == "navigate"
    return fetched_from not in ("cross-site", "same-site") or opening_a_page


@bp.route("/logout", methods=["POST"])
def logout():
    sid = session.get("sid")
    if isinstance(sid, str):
        store().revoke(sid)  # the cookie alone no longer works, even if someone kept a copy
    session.clear()
    return redirect(url_for("auth.login"))


@bp.route("/api/sessions", methods=["DELETE"])
def sign_out_everywhere():
    """Ends every dashboard session, this one included (API tokens and the password stay valid)."""
    store().revoke_all()
    session.clear()
    return jsonify(signed_out="all")


def init_app(app: Flask, settings: Settings) -> None:
    app.extensions["sessions"] = Store(settings)
    app.register_blueprint(bp)
    app.before_request(require_auth)
    app.jinja_env.globals["csrf_token"] = csrf_token
