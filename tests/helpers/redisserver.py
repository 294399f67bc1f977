"""A real redis-server on a private unix socket in a temp dir."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import redis

from tests.helpers.procs import free_port, short_dir, wait_for


class RedisServer:
    """By default on a unix socket only; with `password`, also on a loopback TCP port behind that password
    (a Redis several stacks share, as pods share one in a cluster)."""

    def __init__(self, password: str | None = None) -> None:
        self.dir = short_dir("cdr-")
        self.socket = self.dir / "redis.sock"
        self.proc: subprocess.Popen | None = None
        self.password = password
        self.port = free_port() if password else 0

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def tcp_url(self) -> str:
        """redis://:<password>@127.0.0.1:<port>/0, what a shared Redis's users are given."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed: run `make test`, which installs it"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                *(["--requirepass", self.password] if self.password else []),
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: self.client().ping(), 10, what="redis-server to answer")
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(
            unix_socket_path=str(self.socket), password=self.password, decode_responses=True, socket_timeout=5
        )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def kill(self) -> None:
        assert self.proc
        self.proc.kill()
        self.proc.wait(10)
        Path(self.socket).unlink(missing_ok=True)
