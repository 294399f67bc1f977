"""Startup: idempotent steps, the layout, extra_model_paths.yaml, secrets, and the messages users see."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from services.common import modelpaths
from services.common.paths import ALL_FOLDERS, WORKSPACE_DIRS
from services.startup.__main__ import run_steps
from tests.helpers.mounts import fill, tmpfs
from tests.helpers.procs import REPO, short_dir


def entrypoint(workspace: Path, run_dir: Path, **env: str) -> subprocess.CompletedProcess:
    """The real entrypoint, stopped before supervisord (--no-exec)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DASHBOARD_", "COMFYUI_", "REDIS_"))}
    return subprocess.run(
        [str(REPO / "docker" / "entrypoint.sh"), "--no-exec"],
        env={**base, "WORKSPACE": str(workspace), "RUN_DIR": str(run_dir), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def tree(root: Path) -> dict[str, str]:
    """Every file under root with its content hash, and every symlink with its target."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_layout_config_and_secrets_on_first_run(settings):
    report = run_steps(settings)
    paths = settings.paths
    for folder in ALL_FOLDERS:
        assert (paths.models / folder).is_dir()
    for name in WORKSPACE_DIRS:
        assert (paths.workspace / name).is_dir()
    assert modelpaths.problem(paths.extra_model_paths) is None
    config = yaml.safe_load(paths.extra_model_paths.read_text())
    assert config["workspace"]["base_path"] == str(paths.models) and config["workspace"]["is_default"] is True
    assert set(ALL_FOLDERS) <= set(config["workspace"])
    assert config["workspace"]["custom_nodes"] == str(paths.custom_nodes)
    for secret in (paths.session_key_file, paths.password_file):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    # One ComfyUI (the default): the program `comfyui`, as always, written for supervisord to include.
    programs = (settings.run_dir / "supervisor-comfyui.conf").read_text()
    assert programs.count("[program:") == 1 and "[program:comfyui]\n" in programs
    assert "-m services.comfyui --instance 0\n" in programs and "/comfyui.log\n" in programs
    assert [s["name"] for s in report["steps"]] == [
        "run_dir",
        "comfyuis",
        "volume",
        "layout",
        "model_paths",
        "manager_config",
        "redis_config",
        "front_door",
        "secrets",
        "pre_start",
    ]
    assert json.loads(paths.startup_report.read_text())["total_ms"] == report["total_ms"]


def test_a_second_run_changes_nothing(settings):
    run_steps(settings)
    before = {p: p.stat().st_mtime_ns for p in settings.workspace.rglob("*")}
    run_steps(settings)
    after = {p: p.stat().st_mtime_ns for p in settings.workspace.rglob("*")}
    assert before == after


def test_redis_config_has_no_tcp_port_and_persists_nothing(tmp_path, run_dir):
    result = entrypoint(tmp_path / "ws", run_dir)
    assert result.returncode == 0, result.stderr
    conf = (run_dir / "redis.conf").read_text()
    assert "port 0" in conf and f"unixsocket {run_dir}/redis.sock" in conf
    assert 'save ""' in conf and "appendonly no" in conf
    # Others may pass through to the front door's folder (nginx's unprivileged workers) but not list it;
    # the sockets inside keep their own modes.
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o711
    assert stat.S_IMODE((run_dir / "door").stat().st_mode) == 0o750
    assert "unixsocketperm 700" in conf


def test_generated_password_is_printed_once(tmp_path, run_dir):
    first = entrypoint(tmp_path / "ws", run_dir)
    password = (tmp_path / "ws" / "config" / "dashboard.password").read_text().strip()
    assert password and password in first.stderr
    second = entrypoint(tmp_path / "ws", run_dir)
    assert password not in second.stderr + second.stdout
    given = entrypoint(tmp_path / "ws2", run_dir, DASHBOARD_PASSWORD="from-env")
    assert not (tmp_path / "ws2" / "config" / "dashboard.password").exists()
    assert "from-env" not in given.stderr


def test_workspace_that_is_a_file(tmp_path, run_dir):
    (tmp_path / "ws").write_text("not a folder")
    result = entrypoint(tmp_path / "ws", run_dir)
    assert result.returncode == 1
    assert "is a file, not a folder. Point WORKSPACE at the volume's mount point" in result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "ws").read_text() == "not a folder"


def test_read_only_workspace(tmp_path, run_dir):
    with tmpfs(tmp_path / "ro", read_only=True) as ws:
        result = entrypoint(ws, run_dir)
    assert result.returncode == 1
    assert "is not writable (Read-only file system): mount the volume read-write" in result.stderr
    assert "Traceback" not in result.stderr


def test_full_workspace_first_start_fails_clearly_and_leaves_nothing_half_written(tmp_path, run_dir):
    with tmpfs(tmp_path / "full", size="1m") as ws:
        fill(ws)
        result = entrypoint(ws, run_dir)
        leftovers = [p.name for p in ws.rglob("*") if p.name.endswith(".tmp")]
    assert result.returncode == 1, result.stderr
    assert "Free space on the volume" in result.stderr and "Traceback" not in result.stderr
    assert leftovers == []


def test_full_workspace_after_first_start_still_starts_with_a_warning(tmp_path, run_dir):
    with tmpfs(tmp_path / "full", size="2m") as ws:
        assert entrypoint(ws, run_dir).returncode == 0
        fill(ws)
        result = entrypoint(ws, run_dir)
    assert result.returncode == 0, result.stderr
    assert "is full: downloads will fail until space is freed" in result.stderr


def test_unknown_and_malformed_settings(tmp_path, run_dir):
    bad = entrypoint(tmp_path / "ws", run_dir, COMFYUI_PORT="http")
    assert bad.returncode == 2 and "COMFYUI_PORT='http' is invalid" in bad.stderr
    assert not (tmp_path / "ws").exists()
    typo = entrypoint(tmp_path / "ws", run_dir, DASHBOARD_PASWORD="x")
    assert typo.returncode == 0 and "did you mean DASHBOARD_PASSWORD?" in typo.stderr


def test_run_dir_too_long_for_sockets(tmp_path):
    result = entrypoint(tmp_path / "ws", tmp_path / ("x" * 120))
    assert result.returncode == 1 and "too long for unix sockets" in result.stderr


def test_a_layout_entry_that_is_a_file_is_left_alone(settings):
    settings.paths.models.mkdir(parents=True)
    (settings.paths.models / "loras").write_text("mine")
    report = run_steps(settings)
    notes = [n for s in report["steps"] for n in s["notes"]]
    assert any("loras exists and is not a folder: left as it is" in n for n in notes)
    assert (settings.paths.models / "loras").read_text() == "mine"


def test_legacy_layout_with_symlinks_is_added_and_untouched(settings, tmp_path):
    legacy = settings.paths.legacy_models
    (legacy / "checkpoints").mkdir(parents=True)
    (legacy / "checkpoints" / "old.safetensors").write_bytes(b"old model")
    (legacy / "clip").mkdir()
    (legacy / "unet").mkdir()
    elsewhere = tmp_path / "elsewhere-loras"
    elsewhere.mkdir()
    (elsewhere / "style.safetensors").write_bytes(b"lora")
    (legacy / "loras").symlink_to(elsewhere)
    (legacy / "broken").symlink_to(tmp_path / "missing")
    before = tree(settings.workspace / "ComfyUI")
    report = run_steps(settings)
    assert tree(settings.workspace / "ComfyUI") == before
    config = yaml.safe_load(settings.paths.extra_model_paths.read_text())
    section = config["legacy_comfyui"]
    assert section["base_path"] == str(legacy)
    assert section["checkpoints"] == "checkpoints" and section["loras"] == "loras"
    assert section["text_encoders"] == "clip" and section["diffusion_models"] == "unet"
    assert "is_default" not in section
    assert any("legacy models found" in n for s in report["steps"] for n in s["notes"])


def test_a_corrupt_generated_yaml_is_regenerated_and_kept_as_bak(settings):
    run_steps(settings)
    target = settings.paths.extra_model_paths
    target.write_text("workspace: [broken\n")
    report = run_steps(settings)
    assert modelpaths.problem(target) is None
    assert target.with_name("extra_model_paths.yaml.bak").read_text() == "workspace: [broken\n"
    assert any("regenerated" in n for s in report["steps"] for n in s["notes"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a: [1\n", "YAML syntax error at line 2"),
        ("", "the file is empty"),
        ("- a\n- b\n", "the file is a list, not a mapping of sections"),
        ("mine:\n  checkpoints: [a, b]\n", "mine.checkpoints must be a path (text), not a list"),
        ("mine:\n  loras: 5\n", "mine.loras must be a path (text), not a int"),
    ],
)
def test_a_corrupt_user_yaml_is_reported_and_left_as_it_is(settings, content, message):
    settings.paths.config.mkdir(parents=True)
    user = settings.paths.user_extra_model_paths
    user.write_text(content)
    report = run_steps(settings)
    notes = [n for s in report["steps"] for n in s["notes"]]
    assert any(message in n and "ComfyUI starts without this file" in n for n in notes), notes
    assert user.read_text() == content


def test_workspace_is_not_a_mount_warns(tmp_path, run_dir):
    result = entrypoint(tmp_path / "ws", run_dir)
    assert "is not a mount of its own" in result.stderr
    with tmpfs(short_dir("cdm-") / "mnt") as ws:
        mounted = entrypoint(ws, run_dir)
    assert mounted.returncode == 0 and "is not a mount of its own" not in mounted.stderr
    # `docker run -v ./ws:/workspace`: a bind mount of a folder on the same file system (same device).
    source, target = tmp_path / "source", tmp_path / "bound"
    source.mkdir()
    target.mkdir()
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    try:
        bound = entrypoint(target, run_dir)
    finally:
        subprocess.run(["umount", str(target)], check=True)
    assert bound.returncode == 0 and "is not a mount of its own" not in bound.stderr, bound.stderr


def with_hook(tmp_path: Path, script: str) -> Path:
    """A workspace whose config/pre-start.sh is `script`."""
    workspace = tmp_path / "ws"
    (workspace / "config").mkdir(parents=True)
    (workspace / "config" / "pre-start.sh").write_text(script)
    return workspace


def test_the_pre_start_hook_runs_with_its_output_in_the_log_and_without_the_stacks_secrets(tmp_path, run_dir):
    workspace = with_hook(
        tmp_path,
        'echo "hello from $PWD"\n'
        'echo "password:${DASHBOARD_PASSWORD:-none} hf:${HF_TOKEN:-none}"\n'
        "touch made-by-hook\n",
    )
    out = entrypoint(workspace, run_dir, DASHBOARD_PASSWORD="pw-sentinel", HF_TOKEN="hf_for_the_hook")
    assert out.returncode == 0, out.stderr
    assert f"pre-start: hello from {workspace}" in out.stderr
    assert "pre-start: password:none hf:hf_for_the_hook" in out.stderr and "pw-sentinel" not in out.stderr
    assert (workspace / "made-by-hook").exists()
    report = json.loads((run_dir / "startup.json").read_text())
    assert [s for s in report["steps"] if s["name"] == "pre_start"][0]["notes"] == []


def test_a_failing_pre_start_hook_is_reported_and_the_stack_starts(tmp_path, run_dir):
    workspace = with_hook(tmp_path, "echo about to fail\nexit 3\n")
    out = entrypoint(workspace, run_dir, DASHBOARD_PASSWORD="x")
    assert out.returncode == 0, out.stderr
    assert "pre-start: about to fail" in out.stderr
    assert "pre-start.sh failed (exit status 3)" in out.stderr and "the stack starts anyway" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_pre_start_hook_past_its_time_is_stopped_with_its_children(tmp_path, run_dir):
    workspace = with_hook(
        tmp_path, "sleep 300 &\necho $! > child.pid\necho waiting\ntrap '' TERM\nwhile true; do sleep 0.1; done\n"
    )
    out = entrypoint(workspace, run_dir, DASHBOARD_PASSWORD="x", PRE_START_TIMEOUT="1")
    assert out.returncode == 0, out.stderr
    assert "pre-start: waiting" in out.stderr
    assert "still running after 1 s (PRE_START_TIMEOUT) and was stopped" in out.stderr
    child = int((workspace / "child.pid").read_text())
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


def test_the_start_banner_says_where_to_go_and_where_the_password_is(tmp_path, run_dir):
    workspace = tmp_path / "ws"
    first = entrypoint(workspace, run_dir, DASHBOARD_PORT="8080", COMFYUI_PORT="8188", DASHBOARD_LISTEN="0.0.0.0")
    assert "The dashboard    http://<this machine>:8080" in first.stderr
    assert "ComfyUI          http://<this machine>:8188" in first.stderr
    assert f"the generated one, in {workspace / 'config' / 'dashboard.password'}" in first.stderr
    generated = (workspace / "config" / "dashboard.password").read_text().strip()
    assert first.stderr.count(generated) == 1  # printed once, when made; the banner never shows it
    on_runpod = entrypoint(workspace, run_dir, RUNPOD_POD_ID="abc123", DASHBOARD_PASSWORD="pw-mine-sentinel")
    assert "https://abc123-8080.proxy.runpod.net" in on_runpod.stderr
    assert "the DASHBOARD_PASSWORD you set" in on_runpod.stderr and "pw-mine-sentinel" not in on_runpod.stderr
    # The generated password stopped working when DASHBOARD_PASSWORD was set: its file goes, and says so.
    assert not (workspace / "config" / "dashboard.password").exists()
    assert "DASHBOARD_PASSWORD is set: removed" in on_runpod.stderr


def test_a_model_cache_that_cannot_be_made_is_a_note_and_the_stack_starts(settings, tmp_path):
    """MODEL_CACHE_DIR under a file: startup says so, ComfyUI reads the volume, nothing else changes."""
    (tmp_path / "a-file").write_text("")
    broken = settings.model_copy(update={"model_cache_dir": tmp_path / "a-file" / "cache"})
    report = run_steps(broken)
    notes = [n for step in report["steps"] for n in step.get("notes", [])]
    assert any("cannot be created" in n and "no local model cache" in n for n in notes), notes
    assert list(yaml.safe_load(broken.paths.extra_model_paths.read_text())) == ["workspace"]
    good = settings.model_copy(update={"model_cache_dir": tmp_path / "cache"})
    run_steps(good)
    assert list(yaml.safe_load(good.paths.extra_model_paths.read_text())) == ["workspace", "model_cache"]
    assert (tmp_path / "cache" / "models" / "checkpoints").is_dir()
