"""The dev image's tools: the password in their environment, never on a command line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from services.common import supervisor
from services.devtools.__main__ import command
from tests.helpers.procs import REPO, VENV_PYTHON


def test_password_goes_in_the_environment(settings):
    for tool, variable in (("jupyter", "JUPYTER_TOKEN"), ("code-server", "PASSWORD")):
        argv, env = command(settings, tool, "s3cret-sentinel")
        assert env[variable] == "s3cret-sentinel"
        assert not any("s3cret-sentinel" in arg for arg in argv)


def test_programs_only_where_installed(settings, tmp_path):
    env = supervisor.environment(settings.model_copy(update={"devtools_dir": tmp_path / "none"}))
    assert "[program:" not in Path(env["SUPERVISOR_INCLUDE"]).read_text()
    (tmp_path / "dev" / "bin").mkdir(parents=True)
    (tmp_path / "dev" / "bin" / "jupyter").touch()
    env = supervisor.environment(settings.model_copy(update={"devtools_dir": tmp_path / "dev"}))
    included = Path(env["SUPERVISOR_INCLUDE"]).read_text()
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
