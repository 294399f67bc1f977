"""`--wait`: follow download jobs over the dashboard's WebSocket, one progress bar per file (bytes, speed,
ETA) and a total. Ctrl-C stops the waiting, never the downloads."""

from __future__ import annotations

import json
import time

import websocket
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from services.cli.client import FAILED, Api, CliError

TERMINAL = ("done", "failed", "cancelled")
RECONNECTS = 20  # a dashboard restart takes a few seconds: keep trying that long


def _bars(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}", justify="left"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class Waiter:
    def __init__(self, api: Api, job_ids: list[str], console: Console) -> None:
        self.api, self.console = api, console
        self.jobs: dict[str, dict] = {}
        self.ids = list(dict.fromkeys(job_ids))
        self.progress = _bars(console)
        self.tasks: dict[str, TaskID] = {}
        self.total = self.progress.add_task("total", total=None) if len(self.ids) > 1 else None

    def _update(self, job: dict) -> None:
        if job.get("id") not in self.ids:
            return
        self.jobs[job["id"]] = job
        name = escape(f"{job.get('folder')}/{job.get('filename') or '…'}")  # a file name is no Rich markup
        total = job.get("total") or job.get("size")
        if job["id"] not in self.tasks:
            self.tasks[job["id"]] = self.progress.add_task(name, total=total)
        done = job.get("bytes_done") or 0
        if job.get("state") == "done" and total is None:
            total = done
        self.progress.update(
            self.tasks[job["id"]], description=f"{name} ({job.get('state')})", completed=done, total=total
        )
        if self.total is not None:
            sizes = [j.get("total") or j.get("size") for j in self.jobs.values()]
            known = None if None in sizes or len(self.jobs) < len(self.ids) else sum(sizes)
            self.progress.update(
                self.total, completed=sum(j.get("bytes_done") or 0 for j in self.jobs.values()), total=known
            )

    def finished(self) -> bool:
        return all(self.jobs.get(i, {}).get("state") in TERMINAL for i in self.ids)

    def _follow(self) -> None:
        sock = self.api.socket()
        try:
            # The snapshot comes first: jobs already finished are known at once.
            while not self.finished():
                try:
                    raw = sock.recv()
                except websocket.WebSocketTimeoutException:
                    continue
                message = json.loads(raw) if raw else {}
                if message.get("type") == "snapshot":
                    for job in message.get("downloads", []):
                        self._update(job)
                elif isinstance(message.get("job"), dict):
                    self._update(message["job"])
        finally:
            sock.close()

    def run(self) -> list[dict]:
        """Wait until every job ends; returns them. Raises CliError when the dashboard stays away."""
        with self.progress:
            for job_id in self.ids:  # each job as it is now, in case the socket says nothing of it
                self._update(self.api.get(f"/api/downloads/{job_id}"))
            attempts = 0
            while not self.finished():
                try:
                    self._follow()
                except (CliError, OSError, websocket.WebSocketException, ValueError) as exc:
                    attempts += 1
                    if attempts > RECONNECTS:
                        raise CliError(f"lost the dashboard while waiting: {exc}") from None
                    time.sleep(1.0)
        return [self.jobs[i] for i in self.ids]


def wait(api: Api, job_ids: list[str], console: Console) -> int:
    """Follow the jobs to their end; print each failure's reason. 0 when all are done, else 1."""
    if not job_ids:
        console.print("nothing to wait for: every file is on the volume already")
        return 0
    try:
        jobs = Waiter(api, job_ids, console).run()
    except KeyboardInterrupt:
        console.print(
            "stopped waiting; the downloads go on (see `comfyui-docker downloads list`, cancel one with"
            " `comfyui-docker downloads cancel ID`)"
        )
        raise
    failed = [j for j in jobs if j.get("state") != "done"]
    for job in failed:
        console.print(
            f"{job.get('folder')}/{job.get('filename')}: {job.get('state')}: {job.get('error')}",
            style="red",
            markup=False,
        )
    return FAILED if failed else 0


INSTALL_POLL = 0.5


def wait_install(api: Api, install_id: str, console: Console) -> dict:
    """Follow a workflow install's node packs and ComfyUI restart to the end; returns its last view."""
    said: dict[str, str] = {}
    while True:
        view = api.get(f"/api/workflows/installs/{install_id}")
        for pack in view["packs"]:
            line = pack["state"] + (
                "" if pack["loaded"] is None else (", loaded" if pack["loaded"] else ", not loaded")
            )
            if said.get(pack["url"]) != line:
                said[pack["url"]] = line
                console.print(f"node pack {pack['title']}: {line}", markup=False)
        if view["finished"]:
            for failure in view["failures"]:
                console.print(failure, style="red", markup=False)
            return view
        time.sleep(INSTALL_POLL)
