"""Fixtures every test uses: real redis-server, real HTTP file server, Settings, the whole stack."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.common.settings import Settings
from tests.helpers.fileserver import FileServer, self_signed
from tests.helpers.procs import STANDIN_DIR, VENV_PYTHON, free_port, short_dir
from tests.helpers.redisserver import RedisServer
from tests.helpers.stack import Stack


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> redis.Redis:
    client = redis_server.client()
    client.flushall()
    return client


@pytest.fixture
def run_dir() -> Iterator[Path]:
    path = short_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def settings(tmp_path: Path, run_dir: Path, redis_server: RedisServer) -> Settings:
    return Settings(
        workspace=tmp_path / "workspace",
        run_dir=run_dir,
        redis_url=redis_server.url,
        comfyui_dir=STANDIN_DIR,
        comfyui_python=VENV_PYTHON,
        comfyui_listen="127.0.0.1",
        comfyui_port=free_port(),
        comfyui_internal_port=free_port(),
        dashboard_port=free_port(),
        health_port=free_port(),
    )


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    server = FileServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def module_file_server() -> Iterator[FileServer]:
    """One plain-http file server for a module's tests (beside a module-scoped stack)."""
    server = FileServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_file_server(tmp_path_factory) -> Iterator[FileServer]:
    """An https file server whose certificate a stack trusts through SSL_CERT_FILE=server.cert."""
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    server = FileServer(tls=(cert, key)).start()
    server.cert = cert
    yield server
    server.stop()


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator:
    stacks: list[Stack] = []

    def make(**env: str) -> Stack:
        stack = Stack(tmp_path / f"stack{len(stacks)}", **env)
        stacks.append(stack)
        return stack

    make.stacks = stacks  # type: ignore[attr-defined]  # for the failure report below
    yield make
    for stack in stacks:
        stack.stop()


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Debian's chromium (no browser download), quiet on a machine with no network."""
    return {
        **browser_type_launch_args,
        "executable_path": shutil.which("chromium") or "/usr/bin/chromium",
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
        ],
    }


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    # A test that fails on a stack shows what the stack logged: a CI run is the only record there is.
    report = yield
    if report.failed and call.when == "call":
        for value in getattr(item, "funcargs", {}).values():
            for stack in [value] if isinstance(value, Stack) else getattr(value, "stacks", []):
                report.sections.append((f"stack logs ({stack.workspace})", stack.log_tails()))
    return report
