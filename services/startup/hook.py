"""The user's own start-up hook: <workspace>/config/pre-start.sh, run before any program starts.

What every image people like offers (a script on the volume for the things a pod needs each time:
apt packages, a pip install, a model fetched by hand). Run with bash in the workspace, its output in
the startup log line by line, under a time limit (PRE_START_TIMEOUT). A failure or a timeout is
reported (a note on the startup report, the overview, the log), never fatal: the stack starts anyway,
so a bad script cannot lock the user out of the dashboard that would let them fix it.

Its environment is the container's without the stack's own settings (the dashboard password,
REDIS_URL); HF_TOKEN and CIVITAI_TOKEN are kept, for a script that downloads.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time

from services.common import supervisor
from services.common.settings import Settings, inherited_environment

log = logging.getLogger("startup")

# A script that ignores SIGTERM gets this long before SIGKILL.
KILL_AFTER_SECONDS = 3.0


def hook_environment(settings: Settings) -> dict[str, str]:
    env = supervisor.without_control_plane(settings, inherited_environment())
    for name, secret in (("HF_TOKEN", settings.hf_token), ("CIVITAI_TOKEN", settings.civitai_token)):
        if secret is not None:
            env[name] = secret.get_secret_value()
    env["WORKSPACE"] = str(settings.workspace)
    return env


def _stop(proc: subprocess.Popen) -> None:
    for signum, wait in ((signal.SIGTERM, KILL_AFTER_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _relay(stream) -> None:
    for line in stream:
        log.info("pre-start: %s", line.rstrip("\n"))


def run_pre_start(settings: Settings) -> list[str]:
    script = settings.paths.pre_start_script
    if not script.is_file():
        return []
    begin = time.monotonic()
    try:
        proc = subprocess.Popen(
            ["bash", str(script)],
            cwd=settings.workspace,
            env=hook_environment(settings),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # its children go with it on a timeout
        )
    except OSError as exc:
        return [f"{script} could not be run: {exc.strerror}; the stack starts without it"]
    relay = threading.Thread(target=_relay, args=(proc.stdout,), daemon=True)
    relay.start()
    try:
        code = proc.wait(settings.pre_start_timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        relay.join(1)
        return [
            f"{script} was still running after {settings.pre_start_timeout:.0f} s (PRE_START_TIMEOUT) and was"
            " stopped; the stack starts without it"
        ]
    relay.join(1)
    took = time.monotonic() - begin
    if code != 0:
        return [f"{script} failed (exit status {code}) after {took:.1f} s, output above; the stack starts anyway"]
    log.info("pre-start: %s finished in %.1f s", script, took)
    return []
