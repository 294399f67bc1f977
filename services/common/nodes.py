"""What happened to each custom node at ComfyUI's last start: loaded, failed (with its error), or ended
the process.

Three sources, none of them ComfyUI's code: the trace its sitecustomize writes (each node as its import
begins), the same trace of the start before, and ComfyUI's own log, where each failure is a traceback
then `Cannot import <path> module for custom nodes: <error>`, and a finished start prints the table
`Import times for custom nodes:` (`(IMPORT FAILED)` marks the failures). The launcher logs `exec ...`
before each start: that line divides the log into starts.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.common import instances
from services.common.settings import Settings

# How much of the end of ComfyUI's log to read: a start with a few hundred nodes fits many times.
TAIL_BYTES = 2 * 1024 * 1024
START = re.compile(r"^comfyui \S+ INFO comfyui: exec ", re.M)
TABLE = "Import times for custom nodes:"
ROW = re.compile(r"^(?:\[\w+\])?\s*([\d.]+) seconds( \(IMPORT FAILED\))?: (.+?)\s*$")
FAILED = re.compile(r"Cannot import (.+?) module for custom nodes: (.*)$")
FRAME = re.compile(r'^\s*File "(.+)", line (\d+), in (.+)$')


@dataclass
class Node:
    name: str
    path: str
    status: str  # loaded | failed | importing | ended the process
    seconds: float | None = None
    error: str | None = None
    where: str | None = None  # the last frame of its traceback


@dataclass
class Report:
    state: str  # loaded (the table was printed) | loading | unknown (no start seen)
    nodes: list[Node] = field(default_factory=list)
    killed_by: Node | None = None  # the node that ended the start before this one

    @property
    def failed(self) -> list[Node]:
        return [n for n in self.nodes if n.status == "failed"]

    def as_dict(self) -> dict:
        return {
            "state": self.state,
            "nodes": [asdict(n) for n in self.nodes],
            "failed": [n.name for n in self.failed],
            "killed_by": asdict(self.killed_by) if self.killed_by else None,
        }


def tail(path: Path) -> str:
    try:
        with open(path, "rb") as stream:
            stream.seek(max(0, os.path.getsize(path) - TAIL_BYTES))
            return stream.read().decode(errors="replace")
    except OSError:
        return ""


def read_trace(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text(errors="replace").splitlines() if line]
    except OSError:
        return []


def _errors(segment: list[str]) -> dict[str, tuple[str, str | None]]:
    """Each failed node's path -> (its error, the last frame of its traceback)."""
    found: dict[str, tuple[str, str | None]] = {}
    last_frame = None
    for line in segment:
        frame = FRAME.match(line)
        if frame:
            last_frame = f"{frame.group(1)}:{frame.group(2)} in {frame.group(3)}"
            continue
        failed = FAILED.search(line)
        if failed:
            found[failed.group(1)] = (failed.group(2), last_frame)
            last_frame = None
    return found


def last_start(log: str) -> str | None:
    """The log of the latest start (from the launcher's `exec` line on), or None."""
    starts = [m.start() for m in START.finditer(log)]
    return log[starts[-1] :] if starts else None


def parse(log: str, trace: list[str], trace_before: list[str]) -> Report:
    starts = [m.start() for m in START.finditer(log)]
    if not starts:
        return Report("unknown")
    this = log[starts[-1] :].splitlines()
    before = log[starts[-2] : starts[-1]] if len(starts) > 1 else None
    errors = _errors(this)
    report = Report("loading")
    if TABLE in "\n".join(this):
        report.state = "loaded"
        rows = this[next(i for i, line in enumerate(this) if line.endswith(TABLE)) + 1 :]
        for line in rows:
            row = ROW.match(line)
            if not row:
                if report.nodes:
                    break
                continue
            path = row.group(3)
            error, where = errors.get(path, (None, None))
            status = "failed" if row.group(2) else "loaded"
            report.nodes.append(Node(os.path.basename(path), path, status, float(row.group(1)), error, where))
    else:
        for path in trace:
            if path in errors:
                report.nodes.append(Node(os.path.basename(path), path, "failed", None, *errors[path]))
            else:
                report.nodes.append(Node(os.path.basename(path), path, "loaded"))
        if report.nodes and report.nodes[-1].status == "loaded":
            report.nodes[-1].status = "importing"
    # The start before never reached its table: the node it was importing ended it.
    if before is not None and TABLE not in before and trace_before:
        culprit = trace_before[-1]
        report.killed_by = Node(os.path.basename(culprit), culprit, "ended the process")
    return report


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_size, found.st_mtime_ns


# The last report and what it was read from: the overview and health ask every second or so, and the
# log's tail is megabytes; it is read again only when one of the three files changed.
_last: tuple[tuple, Report] | None = None


def report(settings: Settings) -> Report:
    global _last
    paths = settings.paths
    first = instances.current(settings)[0]  # every ComfyUI loads the same nodes: the first one tells
    files = (paths.log_file(first.program), first.trace(paths), first.trace_before(paths))
    key = (files, tuple(_stamp(f) for f in files))
    if _last is not None and _last[0] == key:
        return _last[1]
    found = parse(tail(files[0]), read_trace(files[1]), read_trace(files[2]))
    _last = (key, found)
    return found
