"""create_app: the dashboard built from Settings."""

from __future__ import annotations

import json
import logging
import xmlrpc.client

from flask import Flask, jsonify, render_template

from services.common import credentials, supervisor
from services.common.settings import Settings, load_settings
from services.dashboard import auth

log = logging.getLogger("dashboard")


def services_state(settings: Settings) -> tuple[list[dict], str | None]:
    """Each program's state from supervisord, or an error text when it cannot be reached."""
    try:
        infos = supervisor.rpc(settings, timeout=2).supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Error) as exc:
        return [], f"supervisord unreachable: {exc}"
    return [
        {"name": i["name"], "state": i["statename"], "pid": i["pid"] or None, "description": i["description"]}
        for i in infos
    ], None


def startup_report(settings: Settings) -> dict | None:
    try:
        return json.loads(settings.paths.startup_report.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    app = Flask(__name__)
    key = credentials.session_key(settings)
    if key is None:
        raise RuntimeError(f"no session key in {settings.paths.session_key_file}: run services.startup first")
    app.config.update(
        SECRET_KEY=key,
        SETTINGS=settings,
        DASHBOARD_PASSWORD=credentials.dashboard_password(settings),
        AUTH_ENABLED=settings.dashboard_auth,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        MAX_CONTENT_LENGTH=1024 * 1024,
    )
    if not settings.dashboard_auth:
        log.warning("DASHBOARD_AUTH=off: anyone who reaches this port controls the stack")
    auth.init_app(app)

    @app.get("/livez")
    def livez():  # noqa: ANN202
        return jsonify(status="ok")

    @app.get("/api/status")
    def api_status():  # noqa: ANN202
        services, error = services_state(settings)
        return jsonify(services=services, services_error=error, startup=startup_report(settings))

    @app.get("/")
    def overview():  # noqa: ANN202
        services, error = services_state(settings)
        return render_template("overview.html", services=services, error=error)

    return app
