"""Packages a custom node pip-installs at run time land on the volume and survive a restart (host mode)."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.helpers.procs import VENV_PYTHON, wait_for

pytestmark = pytest.mark.timeout(240)


def make_wheel(directory: Path, name: str, version: str, module_text: str) -> Path:
    """A minimal pure-Python wheel, built by hand so the test needs no network and no build backend."""
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": module_text.encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
        record.append(f"{dist}/RECORD,,")
        zf.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return wheel


def comfyui_env(stack) -> dict[str, str]:
    """The environment of the running ComfyUI process: what a node's `pip install` inherits."""
    pid = stack.states()["comfyui"]["pid"]
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def run_in_comfyui(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_PYTHON), *args], env=env, capture_output=True, text=True, timeout=120)


def test_node_packages_survive_a_restart_and_never_shadow_the_venv(stack_factory, tmp_path):
    first = stack_factory().start()
    first.wait_running()
    workspace = first.workspace
    env = comfyui_env(first)
    assert env["PIP_TARGET"] == str(workspace / "python")

    # What ComfyUI-Manager does for a node's requirements: `python -m pip install ...` in ComfyUI's env.
    wheel = make_wheel(tmp_path, "tinynode_dep", "1.0", "ANSWER = 42\n")
    install = run_in_comfyui(
        env, "-m", "pip", "install", "--no-index", "--no-deps", "--disable-pip-version-check", str(wheel)
    )
    assert install.returncode == 0, install.stderr
    assert (workspace / "python" / "tinynode_dep.py").exists()
    # A node that drags in its own copy of a package the venv already has must not replace it.
    (workspace / "python" / "yaml.py").write_text("raise ImportError('the volume shadowed the venv')\n")
    first.stop()

    second = stack_factory(WORKSPACE=str(workspace)).start()
    second.wait_running()
    wait_for(lambda: comfyui_env(second), 10)
    env = comfyui_env(second)
    probe = run_in_comfyui(env, "-c", "import tinynode_dep, yaml; print(tinynode_dep.ANSWER, yaml.__file__)")
    assert probe.returncode == 0, probe.stderr
    answer, yaml_file = probe.stdout.split()
    assert answer == "42" and str(workspace) not in yaml_file
