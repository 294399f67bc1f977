"""Authentication on every route: a session after a password login, or a bearer token for API clients."""

from __future__ import annotations

import hmac
import logging

from flask import Blueprint, Flask, current_app, jsonify, redirect, render_template, request, session, url_for

log = logging.getLogger("dashboard.auth")

bp = Blueprint("auth", __name__)

# Reachable without credentials: the login form itself and a bare liveness route.
PUBLIC_ENDPOINTS = {"auth.login", "livez", "static"}


def password_matches(candidate: str | None) -> bool:
    expected = current_app.config["DASHBOARD_PASSWORD"]
    if not candidate or not expected:
        return False
    return hmac.compare_digest(candidate.encode(), expected.encode())


def authenticated() -> bool:
    if not current_app.config["AUTH_ENABLED"]:
        return True
    if session.get("user") == "admin":
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and password_matches(token.strip())


def require_auth():  # noqa: ANN201 - a Flask before_request hook
    if request.endpoint in PUBLIC_ENDPOINTS or authenticated():
        return None
    if request.path.startswith("/api/") or request.path == "/ws":
        response = jsonify(error={"code": "unauthorized", "message": "log in or send a bearer token"})
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="comfyui-docker"'
        return response
    return redirect(url_for("auth.login", next=request.path))


@bp.route("/login", methods=["GET", "POST"])
def login():  # noqa: ANN201
    error = None
    if request.method == "POST":
        if password_matches(request.form.get("password")):
            session.clear()
            session["user"] = "admin"
            target = request.args.get("next", "/")
            # Only local paths: an open redirect would hand the session page to another site.
            return redirect(target if target.startswith("/") and not target.startswith("//") else "/")
        error = "Wrong password."
        log.warning("failed login from %s", request.remote_addr)
    return render_template("login.html", error=error), 401 if error else 200


@bp.route("/logout", methods=["POST"])
def logout():  # noqa: ANN201
    session.clear()
    return redirect(url_for("auth.login"))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.before_request(require_auth)
