"""The one WebSocket, /ws: the snapshot first, then events as they happen, and a followed service's log.

`/ws` sends JSON (API clients); `/ws?format=html` sends rendered fragments that htmx swaps by element
id (the pages). The handler is thin: everything it sends comes from plain functions.
"""

from __future__ import annotations

import json
import logging

import redis
from flask import render_template, request
from flask_sock import ConnectionClosed, Sock

from services.common import bus, jobs, messages, presets
from services.common.errors import NotFound, Unavailable
from services.common.settings import Settings
from services.dashboard import state
from services.dashboard.context import shared

log = logging.getLogger("dashboard.ws")

sock = Sock()


def snapshot_messages(settings: Settings, client: redis.Redis, html: bool) -> list[str]:
    """What a (re)connecting client needs before the stream: the current state of everything."""
    try:
        services = state.services(settings)
    except Unavailable:
        services = []
    downloads = jobs.all_seen(client)
    health = state.health(client)
    preset_states = {
        k: v for k, v in bus.snapshot(client, messages.PresetState.kind).items() if isinstance(v, messages.PresetState)
    }
    if html:
        return [
            render_template("partials/services_rows.html", services=services, oob=True),
            render_template("partials/downloads_rows.html", downloads=downloads, oob=True),
            render_template("partials/health.html", health=health, oob=True),
            render_template("partials/connection.html", connected=True),
        ]
    snapshot = {
        "type": "snapshot",
        "services": services,
        "downloads": [j.model_dump() for j in downloads],
        "presets": {k: v.model_dump() for k, v in preset_states.items()},
        "health": health,
    }
    return [json.dumps(snapshot)]


def event_messages(settings: Settings, client: redis.Redis, event: messages.Event, html: bool) -> list[str]:
    if not html:
        return [event.to_json()]
    if isinstance(event, messages.ServiceState):
        try:
            return [render_template("partials/services_rows.html", services=state.services(settings), oob=True)]
        except Unavailable:
            return []
    if isinstance(event, messages.DownloadProgress):
        return [render_template("partials/download_row.html", job=event.job, oob=True)]
    if isinstance(event, messages.DownloadEvent):
        out = [render_template("partials/downloads_rows.html", downloads=jobs.all_seen(client), oob=True)]
        if event.job.terminal and event.job.filename:
            # A file of a preset ended (done, or failed with a reason): its cards show it at once.
            for p in state.presets_with(settings, client, event.job.folder, event.job.filename):
                out.append(render_template("partials/preset_files.html", p=p, oob=True))
        return out
    if isinstance(event, messages.PresetState):
        out = [render_template("partials/preset_state.html", id=event.id, state=event.state, oob=True)]
        try:
            p = state.with_failures(client, [presets.show(settings, client, event.id)])[0]
        except NotFound:
            return out
        return [*out, render_template("partials/preset_files.html", p=p, oob=True)]
    if isinstance(event, messages.HealthCheck | messages.HealthState):
        return [render_template("partials/health.html", health=state.health(client), oob=True)]
    return []


class LogFollower:
    """Tails one service's log file from its current end."""

    def __init__(self, settings: Settings, name: str) -> None:
        if name not in state.known_logs(settings):
            raise NotFound(f"no log for {name!r}")
        self.name = name
        self.path = settings.paths.log_file(name)
        try:
            self.position = self.path.stat().st_size
        except FileNotFoundError:
            self.position = 0

    def new_lines(self) -> list[str]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.position:  # rotated
            self.position = 0
        if size == self.position:
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self.position)
            data = handle.read(min(size - self.position, 256 * 1024))
        cut = data.rfind(b"\n") + 1
        self.position += cut
        return data[:cut].decode(errors="replace").splitlines()


def log_messages(follower: LogFollower, lines: list[str], html: bool) -> list[str]:
    if html:
        return [render_template("partials/log_lines.html", lines=lines, oob=True)]
    return [json.dumps({"type": "log.lines", "service": follower.name, "lines": lines})]


def handle_incoming(settings: Settings, raw: str | None, follower: LogFollower | None) -> LogFollower | None:
    """A client message: {"follow": "<service>"} or {"follow": null}; anything else is ignored."""
    if not raw:
        return follower
    try:
        data = json.loads(raw)
    except ValueError:
        return follower
    if isinstance(data, dict) and "follow" in data:
        name = data.get("follow")
        if not name:
            return None
        try:
            return LogFollower(settings, str(name))
        except NotFound:
            return follower
    return follower


@sock.route("/ws")
def websocket(ws) -> None:
    settings = shared().settings
    html = request.args.get("format") == "html"
    follower = None
    try:
        client = shared().redis
        subscription = bus.subscribe(client)  # before the snapshot: no gap
        for message in snapshot_messages(settings, client, html):
            ws.send(message)
        for event in bus.listen(subscription, timeout=0.25):
            if event is not None:
                for message in event_messages(settings, client, event, html):
                    ws.send(message)
            follower = handle_incoming(settings, ws.receive(timeout=0), follower)
            if follower is not None:
                lines = follower.new_lines()
                if lines:
                    for message in log_messages(follower, lines, html):
                        ws.send(message)
    except ConnectionClosed:
        return
    except (redis.RedisError, OSError) as exc:
        log.warning("websocket closed: %s", exc)
        try:
            ws.close(reason=1011, message="Redis unavailable: reconnect shortly")
        except (ConnectionClosed, OSError):
            pass


def init_app(app) -> None:
    sock.init_app(app)
    app.config.setdefault("SOCK_SERVER_OPTIONS", {"ping_interval": 25})
