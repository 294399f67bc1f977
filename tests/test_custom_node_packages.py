"""Packages a custom node pip-installs at run time land on the volume, once, and survive a restart."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

import pytest
import requests

from services.common import packages
from services.common.settings import load_settings
from tests.helpers.procs import VENV_PYTHON, wait_for
from tests.helpers.stack import PASSWORD

pytestmark = pytest.mark.timeout(240)


def make_wheel(directory: Path, name: str, version: str, module_text: str, requires: str = "") -> Path:
    """A minimal pure-Python wheel, built by hand so the test needs no network and no build backend."""
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": module_text.encode(),
        f"{dist}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            + (f"Requires-Dist: {requires}\n" if requires else "")
        ).encode(),
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


def pip_install(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """What ComfyUI-Manager does for a node's requirements: `python -m pip install ...` in ComfyUI's env."""
    return run_in_comfyui(env, "-m", "pip", "install", "--no-index", "--disable-pip-version-check", *args)


def fake_dist(site: Path, name: str, version: str, files: dict[str, str]) -> None:
    """A distribution as pip leaves it: its files and a dist-info with their RECORD."""
    meta = site / f"{name}-{version}.dist-info"
    meta.mkdir(parents=True)
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    record = [f"{rel},," for rel in files] + [f"{meta.name}/METADATA,,", f"{meta.name}/RECORD,,"]
    (meta / "RECORD").write_text("\n".join(record) + "\n")


def test_node_packages_survive_a_restart_and_never_shadow_the_venv(stack_factory, tmp_path):
    first = stack_factory().start()
    first.wait_running()
    workspace = first.workspace
    site = packages.site_dir(first.settings)
    env = comfyui_env(first)
    assert env["PIP_PREFIX"] == str(packages.prefix(first.settings)) and "PIP_TARGET" not in env
    assert packages.prefix(first.settings).parent == workspace / "python"  # python/<python>-<cuda line>

    wheel = make_wheel(tmp_path, "tinynode_dep", "1.0", "ANSWER = 42\n")
    install = pip_install(env, "--no-deps", str(wheel))
    assert install.returncode == 0, install.stderr
    assert (site / "tinynode_dep.py").exists()
    # A node that drags in its own copy of a package the venv already has must not replace it.
    (site / "yaml.py").write_text("raise ImportError('the volume shadowed the venv')\n")
    first.stop()

    second = stack_factory(WORKSPACE=str(workspace)).start()
    second.wait_running()
    wait_for(lambda: comfyui_env(second), 10)
    env = comfyui_env(second)
    probe = run_in_comfyui(env, "-c", "import tinynode_dep, yaml; print(tinynode_dep.ANSWER, yaml.__file__)")
    assert probe.returncode == 0, probe.stderr
    answer, yaml_file = probe.stdout.split()
    assert answer == "42" and str(workspace) not in yaml_file


def test_what_the_venv_has_is_never_copied_and_a_conflict_is_named(stack_factory, tmp_path):
    """pip with PIP_TARGET copied every dependency again; now what the venv satisfies stays where it is,
    and a node that needs another version of a venv package gets pip's message, with nothing written."""
    stack = stack_factory().start()
    stack.wait_running()
    site = packages.site_dir(stack.settings)
    env = comfyui_env(stack)
    venv_yaml = packages.distributions(packages.venv_site(VENV_PYTHON))["pyyaml"][0]

    # A node asking for what the venv has: satisfied in place, no index needed, nothing on the volume.
    satisfied = pip_install(env, "pyyaml>=5", "requests")
    assert satisfied.returncode == 0, satisfied.stderr
    assert "Requirement already satisfied: pyyaml" in satisfied.stdout
    assert not site.exists() or not list(site.iterdir())

    # A new package whose dependency the venv has: only the new one lands on the volume.
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "withdeps", "1.0", "import yaml\n", requires="PyYAML>=5")
    added = pip_install(env, "--find-links", str(wheels), "withdeps")
    assert added.returncode == 0, added.stderr
    assert sorted(packages.distributions(site)) == ["withdeps"]

    # One that needs another PyYAML: pip refuses and names the pin; the venv's PyYAML is untouched.
    make_wheel(wheels, "needsnewyaml", "1.0", "", requires="PyYAML>=99")
    refused = pip_install(env, "--find-links", str(wheels), "needsnewyaml")
    assert refused.returncode != 0
    said = (refused.stdout + refused.stderr).lower()
    assert "conflicting dependencies" in said and "needsnewyaml 1.0 depends on pyyaml>=99" in said, said
    assert sorted(packages.distributions(site)) == ["withdeps"]
    assert packages.distributions(packages.venv_site(VENV_PYTHON))["pyyaml"][0] == venv_yaml
    constraints = stack.settings.paths.comfyui_constraints.read_text().splitlines()
    assert f"pyyaml=={venv_yaml}" in constraints
    # Build tools stay free: pip applies the pins to the environments it builds source packages in too.
    assert not [line for line in constraints if line.startswith(("setuptools==", "pip==", "packaging=="))]

    # The overview: the folder's size and which node asked for which package.
    node = stack.workspace / "custom_nodes" / "yaml-tools"
    node.mkdir(parents=True)
    (node / "requirements.txt").write_text("# what it needs\nwithdeps>=1.0  # the helper\nPyYAML\n")
    base = f"http://127.0.0.1:{stack.env['DASHBOARD_PORT']}"
    status = requests.get(f"{base}/api/status", headers={"Authorization": f"Bearer {PASSWORD}"}, timeout=30).json()
    assert status["packages"]["by_node"] == {"yaml-tools": ["withdeps"]}
    assert status["packages"]["packages"] == 1 and status["packages"]["bytes"] > 0


def test_the_old_layout_moves_and_duplicates_leave_the_volume(stack_factory, tmp_path):
    """A volume PIP_TARGET filled (packages at the top of <workspace>/python, copies of the venv's among
    them): at the next start the node's own packages move into site-packages and still import, the
    copies are removed (the venv's were the ones imported), and the log says what was freed."""
    workspace = tmp_path / "workspace"
    old = workspace / "python"
    fake_dist(old, "oldnode_dep", "2.0", {"oldnode_dep/__init__.py": "ANSWER = 7\n"})
    fake_dist(old, "PyYAML", "3.10", {"yaml/__init__.py": "raise ImportError('stale copy')\n", "_yaml.py": ""})
    (old / "bin").mkdir()
    (old / "bin" / "oldnode-cli").write_text("#!/bin/sh\n")
    stack = stack_factory(WORKSPACE=str(workspace)).start()
    stack.wait_running()
    site = packages.site_dir(stack.settings)
    wait_for(lambda: "removed pyyaml 3.10 from the volume" in stack.settings.paths.log_file("comfyui").read_text(), 30)
    assert sorted(packages.distributions(site)) == ["oldnode-dep"]
    assert not (site / "yaml").exists() and not (site / "_yaml.py").exists()
    assert (packages.prefix(stack.settings) / "bin" / "oldnode-cli").exists() and not (old / "oldnode_dep").exists()
    probe = run_in_comfyui(comfyui_env(stack), "-c", "import oldnode_dep, yaml; print(oldnode_dep.ANSWER)")
    assert probe.returncode == 0 and probe.stdout.strip() == "7", probe.stderr


def test_prune_removes_only_what_the_record_lists_inside_the_prefix(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    venv_site = venv / "lib" / "python3.11" / "site-packages"
    fake_dist(venv_site, "Six", "1.17.0", {"six.py": ""})
    settings = load_settings({"WORKSPACE": str(tmp_path / "ws"), "COMFYUI_PYTHON": str(venv / "bin" / "python")})
    site = packages.site_dir(settings)
    assert site == tmp_path / "ws" / "python" / "python3.11-cpu" / "lib" / "python3.11" / "site-packages"
    fake_dist(site, "six", "1.16.0", {"six.py": "x" * 100, "../../../../outside.txt": "kept"})
    fake_dist(site, "keeper", "1.0", {"keeper/__init__.py": ""})
    outside = tmp_path / "ws" / "python" / "outside.txt"
    removed = packages.prune(settings)
    assert [(r.name, r.version, r.venv_version) for r in removed] == [("six", "1.16.0", "1.17.0")]
    assert removed[0].size > 100  # six.py and its metadata
    assert sorted(packages.distributions(site)) == ["keeper"] and outside.read_text() == "kept"
    assert packages.requested(tmp_path) == set()


def test_two_images_on_one_volume_keep_their_packages_apart(tmp_path):
    """A cu126 and a cu130 image on one volume: each pip prefix is its own, so neither imports the
    other's compiled wheels; an earlier untagged layout goes to the first image that starts."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "lib" / "python3.12" / "site-packages").mkdir(parents=True)
    base = {"WORKSPACE": str(tmp_path / "ws"), "COMFYUI_PYTHON": str(venv / "bin" / "python")}
    found = {}
    for cuda in ("12.6", "13.0"):
        build = tmp_path / f"torch-{cuda}.json"
        build.write_text(json.dumps({"cuda": cuda, "arch_list": ["sm_80"]}))
        found[cuda] = load_settings({**base, "COMFYUI_TORCH_BUILD": str(build)})
    old = tmp_path / "ws" / "python" / "lib" / "python3.12" / "site-packages"
    fake_dist(old, "compiled_node", "1.0", {"compiled_node.so": "built for cu126"})
    assert packages.migrate(found["12.6"]) == ["lib"]
    first, second = (packages.site_dir(s) for s in found.values())
    assert (
        first.parent.parent.parent.name == "python3.12-cu126" and second.parent.parent.parent.name == "python3.12-cu130"
    )
    assert (first / "compiled_node.so").exists() and not second.exists()
    assert packages.migrate(found["13.0"]) == []
    env = packages.pip_environment(found["13.0"], {})
    assert env["PIP_PREFIX"].endswith("/python/python3.12-cu130") and env["COMFYUI_PACKAGES"] == str(second)
