"""The long-running health service: checks on an interval, changes on the bus, /health and /ready on loopback."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis

from services.common import bus, comfyui, messages, timeouts, volume
from services.common.settings import Settings
from services.health.checks import LIVENESS, Result, overall, report, run_checks

log = logging.getLogger("health")


class Monitor:
    """Keeps the latest results and publishes what changed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.results: list[Result] = []
        self._published: dict[str, tuple[str, str]] = {}
        self._state: tuple[str, bool] | None = None
        self._lock = threading.Lock()
        self._measured = False

    def round(self) -> None:
        results = run_checks(self.settings)
        comfyui_done = any(r.name == "comfyui" and r.status == "ok" for r in results)
        if not self._measured and (comfyui_done or not comfyui.installed(self.settings)):
            # Once, after ComfyUI is up: the reads it does at start are not slowed by ours.
            self._measured = True
            threading.Thread(target=measure_volume, args=(self.settings,), name="volume", daemon=True).start()
        # Published before /ready serves them: whoever sees a result there finds it on the bus too.
        self._publish_changes(results)
        with self._lock:
            self.results = results

    def _publish_changes(self, results: list[Result]) -> None:
        try:
            client = bus.connect(self.settings, timeout=timeouts.REDIS_CALL)
            if not client.exists(messages.snapshot_key(messages.HealthCheck.kind)):
                # Redis restarted empty (it persists nothing) or was flushed: publish everything again.
                self._published.clear()
                self._state = None
            events = self._changes(results)
            for event in events:
                bus.publish(client, event)
        except (redis.RedisError, OSError) as exc:
            log.warning("cannot publish health changes (will retry next round): %s", exc)
            return
        for event in events:
            if isinstance(event, messages.HealthCheck):
                self._published[event.name] = (event.status, event.reason if event.status != "ok" else "")
            else:
                self._state = (event.state, event.ready)

    def _changes(self, results: list[Result]) -> list[messages.Event]:
        events: list[messages.Event] = []
        for r in results:
            # Durations and free bytes change every round; only status and reason are news.
            key = (r.status, r.reason if r.status != "ok" else "")
            if self._published.get(r.name) != key:
                events.append(messages.HealthCheck(name=r.name, status=r.status, reason=r.reason, ms=r.ms))
        state = overall(results)
        if state != self._state:
            events.append(messages.HealthState(state=state[0], ready=state[1]))
            log.info("health: %s, ready=%s", *state)
        return events

    def liveness(self) -> tuple[int, dict]:
        with self._lock:
            results = [r for r in self.results if r.name in LIVENESS]
        if not results:
            return 503, {"state": "starting", "checks": []}
        body = report(results)
        return (503 if body["state"] == "unhealthy" else 200), body

    def readiness(self) -> tuple[int, dict]:
        with self._lock:
            results = list(self.results)
        if not results:
            return 503, {"state": "starting", "ready": False, "checks": []}
        body = report(results)
        return (200 if body["ready"] else 503), body

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.round()
            stop.wait(self.settings.health_interval)


def measure_volume(settings: Settings) -> None:
    """The workspace's read speed, measured once on a bounded sample, added to RUN_DIR/volume.json."""
    found = volume.detect(settings)
    found.read_mb_s, found.sample = volume.measure(settings)
    found.measured_at = time.time()
    try:
        volume.write(settings, found)
    except OSError as exc:
        log.warning("cannot record the volume's read speed: %s", exc)
        return
    log.info("workspace: %s", found.label)


def make_handler(monitor: Monitor) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/health":
                status, body = monitor.liveness()
            elif path == "/ready":
                status, body = monitor.readiness()
            else:
                status, body = 404, {"error": {"code": "not_found", "message": "try /health or /ready"}}
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            return  # Docker polls every few seconds: no access log

    return Handler


def serve(settings: Settings, stop: threading.Event) -> None:
    monitor = Monitor(settings)
    server = ThreadingHTTPServer(("127.0.0.1", settings.health_port), make_handler(monitor))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.1,), name="http", daemon=True).start()
    log.info("serving /health and /ready on 127.0.0.1:%d", settings.health_port)
    # The rounds run beside the main thread: a stop never waits for a check still in its timeout (a no-op
    # task waits up to 5 s), so the health service is gone within a tenth of a second of SIGTERM.
    threading.Thread(target=monitor.run_forever, args=(stop,), name="rounds", daemon=True).start()
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
