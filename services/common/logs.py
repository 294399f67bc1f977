"""Logging for every service: one line per record, the service name first, on stderr."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from pathlib import Path


class OneLineFormatter(logging.Formatter):
    """Folds tracebacks and newlines into the record's line, so a log file is one record per line."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        text = record.getMessage()
        if record.exc_info:
            text = f"{text} | {self.formatException(record.exc_info)}"
        text = scrub(text.replace("\r", "").replace("\n", " | "))
        return f"{self.service} {stamp}Z {record.levelname} {record.name}: {text}"


# What a credential looks like in text a library may log (an exception quoting a header or a URL).
_SECRETS = re.compile(
    r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?(?:bearer\s+|basic\s+|token\s+)?|bearer\s+"
    r"|[?&](?:token|access_token|api_key|apikey|key)=)[^\s'\",&|]+"
)


def scrub(text: str) -> str:
    """The text with every bearer token, Authorization value and credential query parameter hidden."""
    return _SECRETS.sub(lambda m: m.group(1) + "<hidden>", text)


def setup_logging(service: str, level: str = "INFO") -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return logging.getLogger(service)


# Bytes read back per line asked for: a log line is one record, rarely longer.
TAIL_BYTES_PER_LINE = 400


def tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of a log file (none when it does not exist yet), read from its end only."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - lines * TAIL_BYTES_PER_LINE))
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    return text.splitlines()[-lines:]
