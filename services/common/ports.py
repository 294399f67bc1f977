"""Is a TCP port free? Asked before a program starts, so that a taken port is one clear line at once."""

from __future__ import annotations

import errno
import socket


def port_taken(host: str, port: int) -> bool:
    """ComfyUI only finds a taken port after its whole start-up (~14 s), nginx after its config: we look first."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Same option as ComfyUI's server and nginx, so a socket in TIME_WAIT does not count as taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False
