"""The dev image's tools: behind the front door on loopback without a password of their own; with the
front door off for them, the password in their environment, never on a command line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from services.common import supervisor
from services.devtools.__main__ import command
from tests.helpers.procs import REPO, VENV_PYTHON


def test_behind_the_front_door_they_listen_on_loopback_and_get_no_password(settings):
    jupyter, env = command(settings, "jupyter", None)
    assert jupyter[jupyter.index("--ip") + 1] == "127.0.0.1"
    assert jupyter[jupyter.index("--port") + 1] == str(settings.jupyter_internal_port)
    assert "--IdentityProvider.token=" in jupyter and "JUPYTER_TOKEN" not in env
    code, env = command(settings, "code-server", None)
    assert code[code.index("--bind-addr") + 1] == f"127.0.0.1:{settings.code_server_internal_port}"
    assert code[code.index("--auth") + 1] == "none" and "PASSWORD" not in env


def test_with_the_front_door_off_the_password_goes_in_the_environment(settings):
    settings = settings.model_copy(update={"front_door_off": "jupyter,code-server"})
    for tool, variable in (("jupyter", "JUPYTER_TOKEN"), ("code-server", "PASSWORD")):
        argv, env = command(settings, tool, "s3cret-sentinel")
        assert env[variable] == "s3cret-sentinel"
        assert not any("s3cret-sentinel" in arg for arg in argv)
        assert not any("127.0.0.1" in arg for arg in argv)


def test_programs_only_where_installed(settings, tmp_path):
    # The include list: ComfyUI's programs (written by startup into RUN_DIR), then the dev tools' file.
    env = supervisor.environment(settings.model_copy(update={"devtools_dir": tmp_path / "none"}))
    assert "[program:" not in Path(env["SUPERVISOR_INCLUDE"].split()[-1]).read_text()
    (tmp_path / "dev" / "bin").mkdir(parents=True)
    (tmp_path / "dev" / "bin" / "jupyter").touch()
    env = supervisor.environment(settings.model_copy(update={"devtools_dir": tmp_path / "dev"}))
    included = Path(env["SUPERVISOR_INCLUDE"].split()[-1]).read_text()
    assert "[program:jupyter]" in included and "[program:code-server]" in included


def test_missing_tool_says_so(tmp_path):
    env = {**os.environ, "WORKSPACE": str(tmp_path), "DEVTOOLS_DIR": str(tmp_path / "none"), "DASHBOARD_PASSWORD": "x"}
    result = subprocess.run(
        [str(VENV_PYTHON), "-m", "services.devtools", "jupyter"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and "jupyter is not installed" in result.stderr
    assert "Traceback" not in result.stderr
