"""`python -m services.startup`: run the steps, write the report, then exec supervisord."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import time

from services.common import door, service, supervisor
from services.common.files import write_atomic
from services.common.settings import Settings, inherited_environment, unknown_settings
from services.startup.steps import STEPS, StepError

log = logging.getLogger("startup")


def run_steps(settings: Settings, t0_ns: int | None = None) -> dict:
    """Run every step in order, timed; raise StepError at the first that cannot go on."""
    started = time.perf_counter()
    report: dict = {"started_at": time.time(), "steps": []}
    if t0_ns:
        report["entrypoint_started_at"] = t0_ns / 1e9
    for name, step in STEPS:
        begin = time.perf_counter()
        try:
            notes = step(settings)
        finally:
            ms = round((time.perf_counter() - begin) * 1000, 2)
        report["steps"].append({"name": name, "ms": ms, "notes": notes})
        for note in notes:
            log.warning("%s: %s", name, note)
        log.info("step %s done in %.1f ms", name, ms)
    report["total_ms"] = round((time.perf_counter() - started) * 1000, 2)
    write_atomic(settings.paths.startup_report, json.dumps(report, indent=2) + "\n")
    return report


def address(settings: Settings, port: int) -> str:
    """Where a user opens a port: RunPod's proxy URL on a pod, else this machine's address."""
    if settings.runpod_pod_id:
        return f"https://{settings.runpod_pod_id}-{port}.proxy.runpod.net"
    host = settings.dashboard_listen
    return f"http://{'<this machine>' if host in ('0.0.0.0', '::') else host}:{port}"


def banner(settings: Settings) -> list[str]:
    """The lines a user looks for among hundreds: where to go and how to log in (never the password)."""
    if settings.dashboard_password is not None:
        login = "the DASHBOARD_PASSWORD you set"
    elif settings.dashboard_auth:
        login = f"the generated one, in {settings.paths.password_file} (cat it in a terminal)"
    else:
        login = "none: DASHBOARD_AUTH=off"
    lines = ["=" * 72]
    for port in door.ports(settings):
        lines.append(f"  {port.title:<16} {address(settings, port.public)}")
    lines += [f"  {'password':<16} {login}", "=" * 72]
    return lines


def supervisord_argv(settings: Settings) -> list[str]:
    """supervisord through services.supervise, which makes it hear signals at once (see there)."""
    if importlib.util.find_spec("supervisor") is None:
        raise StepError("supervisord is not installed: run `make run`, or pip install supervisor")
    return [sys.executable, "-m", "services.supervise", "-n", "-c", str(supervisor.config_file(settings))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.startup", description=__doc__)
    parser.add_argument("--no-exec", action="store_true", help="run the steps and stop (no supervisord)")
    args = parser.parse_args(argv)
    settings = service.start("startup")
    for note in unknown_settings():
        log.warning("%s", note)
    try:
        report = run_steps(settings, settings.entrypoint_t0_ns)
        command = supervisord_argv(settings)
    except StepError as exc:
        log.error("startup failed: %s", exc)
        return 1
    except OSError as exc:
        # A fault no step foresaw: still one clear line, never a traceback.
        log.error("startup failed: %s: %s", exc.strerror or type(exc).__name__, exc.filename or exc)
        return 1
    log.info("startup steps done in %.1f ms", report["total_ms"])
    for line in banner(settings):
        log.warning("%s", line)
    if args.no_exec:
        return 0
    env = {**inherited_environment(), **supervisor.environment(settings)}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
