"""The comfyui program: argv from Settings, a taken port refused early, a missing ComfyUI said once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest
from pydantic import SecretStr

from services.comfyui.launcher import build_argv, environment, model_path_configs
from services.common import instances, packages
from services.startup.__main__ import run_steps
from tests.helpers.procs import REPO, VENV_PYTHON, wait_for


def launch(settings, **extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFYUI_", "DASHBOARD_"))}
    env.update(
        {
            "WORKSPACE": str(settings.workspace),
            "RUN_DIR": str(settings.run_dir),
            "COMFYUI_DIR": str(settings.comfyui_dir),
            "COMFYUI_PYTHON": str(settings.comfyui_python),
            "COMFYUI_LISTEN": "127.0.0.1",
            "COMFYUI_PORT": str(settings.comfyui_port),
            "COMFYUI_INTERNAL_PORT": str(settings.comfyui_internal_port),
            "STANDIN_STARTUP_SECONDS": "0.2",
            **extra,
        }
    )
    return subprocess.Popen(
        [str(VENV_PYTHON), "-m", "services.comfyui"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_argv_from_settings(settings):
    settings = settings.model_copy(update={"comfyui_args": "--preview-method auto"})
    one = instances.current(settings)[0]
    argv = build_argv(settings, one, gpu=False, model_configs=["/a.yaml", "/b.yaml"])
    p = settings.paths
    assert argv[:2] == [str(settings.comfyui_python), str(settings.comfyui_dir / "main.py")]
    pairs = dict(zip(argv[2::2], argv[3::2], strict=False))
    # Behind the front door: loopback, on the internal port.
    assert pairs["--listen"] == "127.0.0.1" and pairs["--port"] == str(settings.comfyui_internal_port)
    assert pairs["--output-directory"] == str(p.output) and pairs["--user-directory"] == str(p.user)
    assert pairs["--database-url"] == f"sqlite:///{p.comfyui_database}"
    assert argv.count("--extra-model-paths-config") == 2
    assert "--cpu" in argv and argv[-2:] == ["--preview-method", "auto"]
    assert "--cpu" not in build_argv(settings, one, gpu=True, model_configs=[])
    assert "--cuda-device" not in argv and "--temp-directory" not in argv  # one ComfyUI: its own defaults
    # FRONT_DOOR_OFF=comfyui: ComfyUI itself on the public address and port.
    open_door = settings.model_copy(update={"front_door_off": "comfyui", "comfyui_listen": "0.0.0.0"})
    pairs = dict(zip(*[iter(build_argv(open_door, one, gpu=True, model_configs=[])[2:])] * 2, strict=False))
    assert pairs["--listen"] == "0.0.0.0" and pairs["--port"] == str(settings.comfyui_port)


def test_comfyui_gets_no_secret_of_the_stack(settings):
    inherited = {
        "PATH": "/usr/bin",
        "DASHBOARD_PASSWORD": "pw-sentinel",
        "HF_TOKEN": "hf_sentinel",
        "CIVITAI_TOKEN": "civ-sentinel",
        "REDIS_URL": "redis://:redis-sentinel@example.com/0",
        "SUPERVISOR_SERVER_URL": "unix:///run/supervisor.sock",
        "RUN_DIR": "/run/x",
        "RUNPOD_POD_ID": "pod123",
    }
    one = instances.current(settings)[0]
    env = environment(settings, one, inherited)
    assert "COMFYUI_OUTPUT_PREFIX" not in env  # one ComfyUI: its file names as ComfyUI makes them
    assert env["RUNPOD_POD_ID"] == "pod123"  # RunPod's, a setting of ours too, but no secret: nodes keep it
    assert env["PATH"] == f"/usr/bin:{packages.prefix(settings) / 'bin'}"
    assert not any("sentinel" in v for v in env.values())
    assert not {"SUPERVISOR_SERVER_URL", "RUN_DIR", "REDIS_URL"} & set(env)
    # COMFYUI_SOURCE_TOKENS=on: the two source tokens, and only they, for custom nodes that download.
    given = settings.model_copy(update={"comfyui_source_tokens": True, "hf_token": SecretStr("hf_sentinel")})
    env = environment(given, one, inherited)
    assert env["HF_TOKEN"] == "hf_sentinel" and "CIVITAI_TOKEN" not in env and "DASHBOARD_PASSWORD" not in env


def test_a_bad_user_yaml_is_left_out(settings):
    run_steps(settings)
    settings.paths.user_extra_model_paths.write_text("- not a mapping\n")
    files, notes = model_path_configs(settings)
    assert files == [str(settings.paths.extra_model_paths)]
    assert "the file is a list" in notes[0]
    settings.paths.user_extra_model_paths.write_text("mine:\n  loras: /data/loras\n")
    assert len(model_path_configs(settings)[0]) == 2


def test_launch_execs_comfyui_which_serves_the_volume(settings):
    run_steps(settings)
    (settings.paths.models / "loras" / "a.safetensors").write_bytes(b"1")
    proc = launch(settings)
    try:
        url = settings.comfyui_url
        loras = wait_for(lambda: json.loads(urllib.request.urlopen(f"{url}/models/loras", timeout=2).read()), 30)
        assert loras == ["a.safetensors"]
        # exec: the launcher's pid is now ComfyUI's.
        assert open(f"/proc/{proc.pid}/cmdline", "rb").read().split(b"\0")[1].endswith(b"main.py")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0 and "Stopped server" in out
    finally:
        proc.kill()


def test_a_taken_port_is_refused_before_comfyui_starts(settings):
    run_steps(settings)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", settings.comfyui_internal_port))
        holder.listen()
        proc = launch(settings, STANDIN_STARTUP_SECONDS="10")
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert f"port {settings.comfyui_internal_port} on 127.0.0.1 is already in use" in out
    assert "set COMFYUI_INTERNAL_PORT to a free port" in out and "Traceback" not in out
    # ComfyUI itself was never started (it would have spent its start-up time first).
    assert "ComfyUI version" not in out


@pytest.mark.parametrize("what", ["empty dir", "missing python"])
def test_missing_comfyui_is_said_once_and_the_program_stays_up(settings, tmp_path, what):
    run_steps(settings)
    empty = tmp_path / "empty-comfyui"
    empty.mkdir()
    if what == "empty dir":
        proc = launch(settings, COMFYUI_DIR=str(empty))
        expected = f"ComfyUI is not installed: no main.py in COMFYUI_DIR={empty}"
    else:
        proc = launch(settings, COMFYUI_PYTHON=str(tmp_path / "nope" / "python"))
        expected = "COMFYUI_PYTHON="
    time.sleep(6.5)  # past one recheck interval: still running, still said only once
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert out.count(expected) == 1, out


def test_comfyui_appearing_later_is_started(settings, tmp_path):
    run_steps(settings)
    later = tmp_path / "later"
    later.mkdir()
    proc = launch(settings, COMFYUI_DIR=str(later))
    try:
        time.sleep(1)
        (later / "folder_paths.py").write_text((settings.comfyui_dir / "folder_paths.py").read_text())
        (later / "main.py").write_text((settings.comfyui_dir / "main.py").read_text())
        url = f"{settings.comfyui_url}/system_stats"
        wait_for(lambda: urllib.request.urlopen(url, timeout=2).status == 200, 30, what="ComfyUI started later")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
