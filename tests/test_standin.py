"""The ComfyUI stand-in answers like ComfyUI 0.33 (docs/comfyui.md says what we rely on)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
import websocket

from tests.helpers.procs import STANDIN_DIR, VENV_PYTHON, free_port, wait_for


class Standin:
    def __init__(self, tmp_path: Path, *flags: str, startup: str = "0.2") -> None:
        self.port = free_port()
        self.models = tmp_path / "models"
        for folder in ("checkpoints", "loras", "clip", "text_encoders"):
            (self.models / folder).mkdir(parents=True, exist_ok=True)
        self.yaml = tmp_path / "extra.yaml"
        self.yaml.write_text(
            f"ws:\n  base_path: {self.models}\n  is_default: true\n  checkpoints: checkpoints\n"
            "  loras: loras\n  clip: clip\n"
        )
        self.output = tmp_path / "output"
        self.argv = [
            str(VENV_PYTHON),
            str(STANDIN_DIR / "main.py"),
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--cpu",
            "--output-directory",
            str(self.output),
            "--input-directory",
            str(tmp_path / "input"),
            "--extra-model-paths-config",
            str(self.yaml),
            *flags,
        ]
        self.env = {"STANDIN_STARTUP_SECONDS": startup, "PATH": "/usr/bin:/bin"}
        self.proc: subprocess.Popen | None = None

    def start(self) -> Standin:
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, object]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=5) as r:
                body = r.read()
                return r.status, json.loads(body) if body else None
        except urllib.error.HTTPError as exc:
            body = exc.read()
            return exc.code, json.loads(body) if body.startswith(b"{") else body

    def post(self, path: str, payload: object) -> tuple[int, object]:
        req = urllib.request.Request(
            self.url(path),
            data=json.dumps(payload).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                body = r.read()
                return r.status, json.loads(body) if body else None
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def ready(self) -> Standin:
        wait_for(lambda: self.get("/system_stats")[0] == 200, 20, what="stand-in ready")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def standin(tmp_path):
    s = Standin(tmp_path).start().ready()
    yield s
    s.stop()


PROMPT = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}},
    "3": {"class_type": "KSampler", "inputs": {}},
}


def test_routes_answer_with_and_without_api_prefix(standin):
    for path in ("/system_stats", "/queue", "/prompt", "/history", "/models", "/embeddings", "/features"):
        assert standin.get(path)[0] == 200, path
        assert standin.get("/api" + path)[0] == 200, path
    assert standin.get("/api/jobs")[0] == 200 and standin.get("/jobs")[0] == 404
    assert standin.get("/internal/logs/raw")[0] == 200 and standin.get("/api/internal/logs/raw")[0] == 404
    stats = standin.get("/system_stats")[1]
    assert stats["system"]["comfyui_version"] and stats["devices"][0]["type"] == "cpu"


def test_models_are_listed_from_the_real_folders(standin):
    (standin.models / "checkpoints" / "sub").mkdir()
    (standin.models / "checkpoints" / "b.safetensors").write_bytes(b"1")
    (standin.models / "checkpoints" / "sub" / "a.ckpt").write_bytes(b"1")
    (standin.models / "checkpoints" / "notes.txt").write_text("not a model")
    (standin.models / "clip" / "t5.safetensors").write_bytes(b"1")
    assert standin.get("/models/checkpoints") == (200, ["b.safetensors", "sub/a.ckpt"])
    assert standin.get("/models/text_encoders") == (200, ["t5.safetensors"])
    assert standin.get("/models/clip")[0] == 404 and standin.get("/models/unet")[0] == 404
    assert standin.get("/models/nope")[0] == 404
    assert "checkpoints" in standin.get("/models")[1]


def test_prompt_errors_have_comfyuis_shapes(standin):
    code, body = standin.post("/prompt", {"prompt": PROMPT})
    assert code == 400 and body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["4"]["errors"][0]["type"] == "value_not_in_list"
    assert standin.post("/prompt", {})[1]["error"]["type"] == "no_prompt"
    nodes = {"1": {"class_type": "KSampler", "inputs": {}}}
    assert standin.post("/prompt", {"prompt": nodes})[1]["error"]["type"] == "prompt_no_outputs"
    nodes = {"1": {"class_type": "NoSuchNode", "inputs": {}}}
    assert standin.post("/prompt", {"prompt": nodes})[1]["error"]["type"] == "missing_node_type"


def test_a_run_as_its_submitter_sees_it(standin):
    (standin.models / "checkpoints" / "sd15.safetensors").write_bytes(b"1")
    ws = websocket.create_connection(f"ws://127.0.0.1:{standin.port}/ws?clientId=me", timeout=10)
    first = json.loads(ws.recv())
    assert first["type"] == "status" and first["data"]["sid"] == "me"
    code, body = standin.post("/prompt", {"prompt": PROMPT, "client_id": "me"})
    assert code == 200 and body["node_errors"] == {}
    prompt_id = body["prompt_id"]
    types = []
    while True:
        msg = json.loads(ws.recv())
        types.append(msg["type"])
        if msg["type"] == "executing" and msg["data"]["node"] is None:
            break
    ws.close()
    for expected in ("execution_start", "execution_cached", "executing", "progress", "executed", "execution_success"):
        assert expected in types
    history = standin.get(f"/history/{prompt_id}")[1][prompt_id]
    assert history["status"]["status_str"] == "success"
    image = history["outputs"]["9"]["images"][0]
    assert (standin.output / image["filename"]).exists()
    jobs = standin.get("/api/jobs?status=completed")[1]
    assert jobs["jobs"][0]["id"] == prompt_id and jobs["pagination"]["total"] == 1
    assert standin.get("/history/nope") == (200, {})


def test_sigint_stops_cleanly_and_sigterm_kills(tmp_path):
    s = Standin(tmp_path).start().ready()
    s.proc.send_signal(signal.SIGINT)
    _, err = s.proc.communicate(timeout=10)
    assert s.proc.returncode == 0 and "Stopped server" in err
    s = Standin(tmp_path).start().ready()
    s.proc.send_signal(signal.SIGTERM)
    s.proc.wait(5)
    assert s.proc.returncode == -signal.SIGTERM


def test_a_taken_port_is_found_only_after_start_up(tmp_path):
    s = Standin(tmp_path, startup="1")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", s.port))
        holder.listen()
        s.start()
        _, err = s.proc.communicate(timeout=20)
    assert s.proc.returncode == 1 and f"Port {s.port} is already in use" in err
    assert "Import times for custom nodes" in err  # it did its whole start-up first


@pytest.mark.parametrize("content", ["", "a: [1\n", "- a\n", "x:\n  loras: [a]\n", "x:\n  loras: 5\n"])
def test_a_bad_yaml_ends_start_up(tmp_path, content):
    s = Standin(tmp_path)
    s.yaml.write_text(content)
    s.start()
    s.proc.communicate(timeout=20)
    assert s.proc.returncode == 1


def test_base_directory_needs_custom_nodes(tmp_path):
    s = Standin(tmp_path, "--base-directory", str(tmp_path / "base"))
    (tmp_path / "base").mkdir()
    s.start()
    s.proc.communicate(timeout=20)
    assert s.proc.returncode == 1


def test_uploads_the_page_and_comfyuis_origin_guard(standin, tmp_path):
    import requests

    url = standin.url
    first = requests.post(url("/upload/image"), files={"image": ("a.png", b"one")}, timeout=10).json()
    again = requests.post(url("/api/upload/image"), files={"image": ("a.png", b"two")}, timeout=10).json()
    assert first == {"name": "a.png", "subfolder": "", "type": "input"} and again["name"] == "a (1).png"
    assert (tmp_path / "input" / "a (1).png").read_bytes() == b"two"
    assert requests.post(url("/upload/image"), data={"x": "1"}, timeout=10).status_code == 400
    outside = {"image": ("b.png", b"x")}
    assert (
        requests.post(url("/upload/image"), files=outside, data={"subfolder": "../.."}, timeout=10).status_code == 400
    )
    page = requests.get(url("/"), timeout=10)
    assert page.status_code == 200 and "<title>ComfyUI</title>" in page.text and requests.get(url("/api/")).ok
    # Like ComfyUI: a cross-site browser request, or a foreign Origin on a loopback Host, is a bare 403.
    assert requests.get(url("/queue"), headers={"Sec-Fetch-Site": "cross-site"}, timeout=10).status_code == 403
    assert requests.post(url("/prompt"), json={}, headers={"Origin": "http://evil.example"}).status_code == 403
