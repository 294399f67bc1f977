"""The `comfyui-docker` command line against the real stack, through the real API: every subcommand
once, `--wait` drawing progress bars in a pseudo-terminal, the exit codes (0 done, 1 failed, 2 usage or
connection, 3 authentication), `--json` matching the OpenAPI schema of its route, and `--help` of every
`python -m services.X` answering at once without opening a socket."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

import jsonschema_rs
import pytest
import yaml

from tests.helpers.procs import REPO, VENV_PYTHON, free_port
from tests.helpers.stack import PASSWORD, Stack

pytestmark = pytest.mark.timeout(300)

CLI = REPO / ".venv" / "bin" / "comfyui-docker"
OPENAPI = yaml.safe_load((REPO / "services" / "dashboard" / "openapi.yaml").read_text())
MIB = 1024 * 1024


def blob(size: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 2048
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture(scope="module")
def server(module_file_server):
    return module_file_server


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("cli"), DOWNLOADS_ALLOW_PRIVATE_HOSTS="1", DOWNLOADS_RESERVE_MB="0")
    stack.start()
    stack.wait_running()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def env(stack, home) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("COMFYUI_", "DASHBOARD_", "WORKSPACE"))}
    return {
        **base,
        "HOME": str(home),
        "COMFYUI_DOCKER_URL": f"http://127.0.0.1:{stack.settings.dashboard_port}",
        "COMFYUI_DOCKER_TOKEN": PASSWORD,
    }


def run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, timeout=timeout)


def as_json(env: dict[str, str], *args: str) -> object:
    done = run(env, "--json", *args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return json.loads(done.stdout)


def _resolve(node: object) -> object:
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            section = "responses" if "/responses/" in node["$ref"] else "schemas"
            return _resolve(OPENAPI["components"][section][name])
        return {k: _resolve(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v) for v in node]
    return node


def matches_schema(answer: object, path: str, method: str, status: str = "200") -> None:
    response = _resolve(OPENAPI["paths"][path][method]["responses"][status])
    schema = response["content"]["application/json"]["schema"]
    errors = [str(e) for e in jsonschema_rs.validator_for(schema).iter_errors(answer)]
    assert not errors, (path, errors[:3])


def test_every_subcommand_through_the_api(stack, server, env, home, tmp_path):
    s = stack.settings
    status = as_json(env, "status")
    matches_schema(status, "/api/status", "get")
    assert run(env, "status").returncode == 0 and "worker" in run(env, "status").stdout
    assert run(env, "health").returncode in (0, 1)
    services = as_json(env, "services", "list")
    matches_schema(services, "/api/services", "get")
    restarted = as_json(env, "services", "restart", "health")
    assert restarted["name"] == "health" and restarted["state"] == "RUNNING"
    assert as_json(env, "services", "stop", "health")["state"] == "STOPPED"
    assert as_json(env, "services", "start", "health")["state"] == "RUNNING"
    logs = as_json(env, "logs", "worker", "-n", "5")
    matches_schema(logs, "/api/logs/{name}", "get")
    assert len(logs["lines"]) <= 5

    url = server.add("cli/small.safetensors", blob(100_000, 1))
    job = as_json(env, "downloads", "add", url, "--folder", "loras", "--wait")
    matches_schema(job, "/api/downloads", "post", "202")
    assert (s.paths.models / "loras" / "small.safetensors").stat().st_size == 100_000
    listed = as_json(env, "downloads", "list")
    matches_schema(listed, "/api/downloads", "get")
    shown = as_json(env, "downloads", "show", job["id"])
    assert shown["state"] == "done"
    server.fault("cli/slow.bin", rate=50_000)
    slow = as_json(env, "downloads", "add", server.add("cli/slow.bin", blob(2 * MIB, 2)), "--folder", "vae")
    cancelled = as_json(env, "downloads", "cancel", slow["id"])
    assert cancelled["id"] == slow["id"]
    waited = run(env, "downloads", "wait", slow["id"])
    assert waited.returncode == 1 and "cancelled" in waited.stdout
    server.clear_faults()
    retried = as_json(env, "downloads", "retry", slow["id"])
    assert retried["state"] == "queued"
    assert run(env, "downloads", "wait", slow["id"]).returncode == 0

    preset = {
        "id": "cli-pack",
        "name": "Zyxw pack",
        "category": "other",
        "base": "test",
        "files": [{"url": server.add("cli/p.bin", b"p" * 5000), "folder": "vae", "filename": "p.bin", "size": 5000}],
    }
    (s.paths.user_presets / "cli-pack.yaml").write_text(yaml.safe_dump(preset))
    presets = as_json(env, "presets", "list", "--search", "Zyxw")
    matches_schema(presets, "/api/presets", "get")
    assert [p["id"] for p in presets["presets"]] == ["cli-pack"]
    assert as_json(env, "presets", "show", "cli-pack")["state"] == "missing"
    assert run(env, "presets", "install", "cli-pack", "--wait").returncode == 0
    assert as_json(env, "presets", "show", "cli-pack")["state"] == "installed"
    assert "p.bin" in run(env, "models", "list", "vae").stdout
    assert "loras" in as_json(env, "models", "list")["folders"]
    assert as_json(env, "presets", "remove", "cli-pack")["removed"]
    pinned = run(env, "models", "pin", "loras", "small.safetensors")  # this stack has no MODEL_CACHE_DIR
    assert pinned.returncode == 1 and "no model cache on this pod: set MODEL_CACHE_DIR" in pinned.stderr
    assert run(env, "models", "unpin", "loras", "small.safetensors").returncode == 1
    assert as_json(env, "models", "rm", "loras", "small.safetensors") == {"deleted": "loras/small.safetensors"}

    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps({"1": {"class_type": "LoraLoader", "inputs": {"lora_name": "own.safetensors"}}}))
    analysis = as_json(env, "workflow", "analyze", str(workflow))
    matches_schema(analysis, "/api/workflows/analyze", "post")
    assert analysis["models"][0]["message"].startswith("no known source")
    installed = run(env, "workflow", "install", str(workflow), "--wait")
    assert installed.returncode == 0, installed.stderr

    made = as_json(env, "tokens", "create", "ci")
    assert made["token"] and made["id"] in run(env, "tokens", "list").stdout
    with_token = {**env, "COMFYUI_DOCKER_TOKEN": made["token"]}
    assert run(with_token, "services", "list").returncode == 0
    assert as_json(env, "tokens", "revoke", made["id"]) == {"deleted": made["id"]}
    assert run(with_token, "services", "list").returncode == 3

    # login keeps the address and token (0600); later commands need neither.
    bare = {k: v for k, v in env.items() if not k.startswith("COMFYUI_DOCKER_")}
    logged = run(bare, "login", env["COMFYUI_DOCKER_URL"], "--token", PASSWORD)
    assert logged.returncode == 0, logged.stderr
    config = home / ".config" / "comfyui-docker" / "cli.json"
    assert config.stat().st_mode & 0o777 == 0o600 and PASSWORD not in logged.stdout
    assert run(bare, "services", "list").returncode == 0


def _pty_run(env: dict[str, str], *args: str, timeout: float = 120) -> tuple[int, str]:
    """The command on a pseudo-terminal (Rich draws its bars only for a terminal): exit code, output."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [str(CLI), *args],
        env={**env, "COLUMNS": "140", "TERM": "xterm"},
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the other end closed
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(primary)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode(errors="replace"))  # colours and cursor moves
    return proc.wait(timeout=10), text


def test_wait_draws_bytes_and_speed_and_ends_0_and_a_wrong_sha256_ends_1(stack, server, env):
    data = blob(3 * MIB, 3)
    server.fault("cli/throttled.safetensors", rate=600_000)  # about 5 s: the bar is drawn many times
    url = server.add("cli/throttled.safetensors", data)
    code, out = _pty_run(env, "downloads", "add", url, "--folder", "checkpoints", "--wait")
    assert code == 0, out
    assert "checkpoints/throttled.safetensors" in out and "/s" in out and "MB" in out and "(done)" in out
    wrong = "0" * 64
    url = server.add("cli/wrong.safetensors", blob(200_000, 4))
    code, out = _pty_run(env, "downloads", "add", url, "--folder", "loras", "--sha256", wrong, "--wait")
    assert code == 1 and "sha256 mismatch" in out, out
    assert not (stack.settings.paths.models / "loras" / "wrong.safetensors").exists()


def test_logs_follow_prints_new_lines_until_ctrl_c(stack, server, env):
    follower = subprocess.Popen(
        [str(CLI), "logs", "worker", "-n", "1", "-f"], env=env, stdout=subprocess.PIPE, text=True
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(follower.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        # New files until one shows up: the first may be logged before the follower's socket is open.
        for i in range(30):
            url = server.add(f"cli/followed-{i}.bin", b"f" * 1000)
            assert run(env, "downloads", "add", url, "--folder", "vae", "--wait").returncode == 0
            if any("followed-" in line for line in seen):
                break
            time.sleep(0.5)
        assert any("followed-" in line for line in seen), seen[-5:]
        # The dashboard restarts under the follow: the stream is opened again, new lines keep coming.
        # The command returns once a new dashboard answers, not while the old one is still on its way down.
        restarted = run(env, "services", "restart", "dashboard")
        assert restarted.returncode == 0 and "dashboard: RUNNING" in restarted.stdout, restarted.stdout
        for i in range(30):
            url = server.add(f"cli/after-{i}.bin", b"g" * 1000)
            if run(env, "downloads", "add", url, "--folder", "vae", "--wait").returncode == 0 and any(
                "after-" in line for line in seen
            ):
                break
            time.sleep(0.5)
        assert any("after-" in line for line in seen), seen[-5:]
    finally:
        follower.send_signal(signal.SIGINT)
    assert follower.wait(timeout=10) == 130


def test_exit_codes_name_the_fix(stack, env):
    wrong = run({**env, "COMFYUI_DOCKER_TOKEN": "not-the-password"}, "status")
    assert wrong.returncode == 3 and wrong.stderr.startswith("error: ") and "Traceback" not in wrong.stderr
    nobody = run({**env, "COMFYUI_DOCKER_URL": f"http://127.0.0.1:{free_port()}"}, "status")
    assert nobody.returncode == 2 and "cannot reach the dashboard at http://127.0.0.1:" in nobody.stderr
    assert "is the stack running?" in nobody.stderr and "Traceback" not in nobody.stderr
    assert run({**env, "COMFYUI_DOCKER_URL": "127.0.0.1:8080"}, "status").returncode == 2
    usage = run(env, "downloads", "add", "https://example.com/x")
    assert usage.returncode == 2 and "Missing option '--folder'" in usage.stderr
    refused = run(env, "downloads", "add", "ftp://example.com/x", "--folder", "loras")
    assert refused.returncode == 1 and "only http and https" in refused.stderr
    assert run(env, "downloads", "show", "0123456789abcdef").returncode == 1
    # The dashboard stopped, its front door still up: a connection error, said plainly.
    assert stack.ctl("stop", "dashboard").returncode == 0
    try:
        down = run(env, "status")
        assert down.returncode == 2 and "not answering" in down.stderr, down.stderr
    finally:
        stack.ctl("start", "dashboard")


MODULES = (
    "startup",
    "supervise",
    "comfyui",
    "dashboard",
    "worker",
    "health",
    "events",
    "frontdoor",
    "devtools",
    "ctl",
    "cli",
)


def test_every_entry_point_answers_help_at_once_without_a_socket(tmp_path):
    """`--help` exits 0 with its usage; an unknown argument exits 2; neither opens a socket or runs a
    program (a sitecustomize records any attempt)."""
    record = tmp_path / "attempts"
    (tmp_path / "sitecustomize.py").write_text(
        "import os, socket\n"
        f"LOG = {str(record)!r}\n"
        "def _deny(what):\n"
        "    def call(*a, **k):\n"
        "        with open(LOG, 'a') as f: f.write(what + '\\n')\n"
        "        raise OSError(what + ' refused by the test')\n"
        "    return call\n"
        "socket.socket.connect = _deny('connect')\n"
        "socket.socket.listen = _deny('listen')\n"
        # urllib3 binds ::1 port 0 at import to learn whether IPv6 works: a probe, not a service.
        "_bind = socket.socket.bind\n"
        "def _bind_port_0(self, address):\n"
        "    if isinstance(address, tuple) and address[1] == 0: return _bind(self, address)\n"
        "    _deny('bind')(address)\n"
        "socket.socket.bind = _bind_port_0\n"
        "os.execv = _deny('execv')\n"
        "os.execve = _deny('execve')\n"
        "os.posix_spawn = _deny('posix_spawn')\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "WORKSPACE": str(tmp_path / "ws"),
        "RUN_DIR": str(tmp_path / "run"),
    }

    def call(module: str, option: str) -> subprocess.CompletedProcess:
        # Bounded by its timeout: one that started a service would never return.
        argv = [str(VENV_PYTHON), "-m", f"services.{module}", option]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)

    for module in MODULES:
        shown = call(module, "--help")
        assert shown.returncode == 0, (module, shown.stderr)
        assert "usage" in shown.stdout.lower(), (module, shown.stdout)
        wrong = call(module, "--no-such-option")
        assert wrong.returncode == 2, (module, wrong.stdout, wrong.stderr)
    assert not record.exists(), record.read_text()
