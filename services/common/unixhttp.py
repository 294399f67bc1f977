"""HTTP over a unix socket: how the stack talks to supervisord and to the dashboard behind the front door."""

from __future__ import annotations

import http.client
import socket


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def get_status(path: str, url: str, timeout: float) -> int:
    """The status of `GET url` on the server at the unix socket `path`; OSError when none answers."""
    connection = UnixConnection(path, timeout)
    try:
        connection.request("GET", url)
        return connection.getresponse().status
    finally:
        connection.close()
