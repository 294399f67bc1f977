"""Logging for every service: one line per record, the service name first, on stderr."""

from __future__ import annotations

import logging
import sys
import time


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
        text = text.replace("\r", "").replace("\n", " | ")
        return f"{self.service} {stamp}Z {record.levelname} {record.name}: {text}"


def setup_logging(service: str, level: str = "INFO") -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return logging.getLogger(service)
