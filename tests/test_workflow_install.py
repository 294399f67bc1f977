"""A workflow made runnable through the real stack: one of ComfyUI's own templates installed from a local
Hugging Face mirror (HF_ENDPOINT: the templates' URLs are never edited), a node pack cloned from a real git
repository (git's own `insteadOf` points github.com at it), its requirements through ComfyUI's pip, one
ComfyUI restart, and the stand-in's import report saying it loaded."""

from __future__ import annotations

import hashlib
import io
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image

from services.common import comfyui
from services.common.workflows import analyze, catalog, formats, install
from tests.helpers.procs import wait_for
from tests.helpers.stack import PASSWORD, Stack

pytestmark = pytest.mark.timeout(300)

BEARER = {"Authorization": f"Bearer {PASSWORD}"}


def _pack_repo(root: Path, url: str, node_class: str) -> str:
    """A node pack at `url`'s path under root, as a git repository; returns its head commit."""
    repo = root / urlsplit(url).path.strip("/")
    repo.mkdir(parents=True)
    (repo / "__init__.py").write_text(f"NODE_CLASS_MAPPINGS = {{{node_class!r}: type('N', (), {{}})}}\n")
    (repo / "requirements.txt").write_text("pyyaml  # ComfyUI's venv has it: nothing new on the volume\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "pack"], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("github")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tls_file_server, repos):
    stack = Stack(
        tmp_path_factory.mktemp("wf"),
        DOWNLOADS_ALLOW_PRIVATE_HOSTS="1",
        DOWNLOADS_RESERVE_MB="0",
        WORKER_CONCURRENCY="2",
        HF_ENDPOINT=f"https://localhost:{tls_file_server.port}",  # a mirror: huggingface.co URLs come here
        SSL_CERT_FILE=str(tls_file_server.cert),
        # git's own mirror setting, in the environment git reads it from.
        GIT_CONFIG_COUNT="1",
        GIT_CONFIG_KEY_0=f"url.file://{repos}/.insteadOf",
        GIT_CONFIG_VALUE_0="https://github.com/",
    )
    stack.start()
    stack.wait_running()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def base(stack) -> str:
    return f"http://127.0.0.1:{stack.settings.dashboard_port}"


def _sample_template(settings) -> tuple[catalog.Template, list[analyze.ModelLine]]:
    """A small template of ComfyUI's: a few models, all from Hugging Face, no hashes (the mirror serves
    other bytes under the same names), every node known to the running ComfyUI."""
    known = comfyui.node_types(settings)
    for t in catalog.templates(settings):
        found = analyze.analyze(settings, None, formats.read(t.path.read_bytes()), known)
        lines = found.models
        if 2 <= len(lines) <= 4 and not found.packs and all(m.url and not m.sha256 for m in lines):
            if all(urlsplit(m.url).hostname == "huggingface.co" for m in lines):
                return t, lines
    raise AssertionError("no small template among ComfyUI's")


def _wait_finished(base: str, install_id: str, timeout: float = 120) -> dict:
    def finished():
        view = requests.get(f"{base}/api/workflows/installs/{install_id}", headers=BEARER, timeout=10).json()
        return view if view["finished"] else None

    return wait_for(finished, timeout, 0.3, what=f"workflow install {install_id} finished")


def test_a_template_installs_end_to_end_from_a_mirror_and_is_then_ready(stack, base, tls_file_server):
    settings = stack.settings
    template, lines = _sample_template(settings)
    for m in lines:  # the same file names at the same paths, on the mirror
        tls_file_server.add(urlsplit(m.url).path.lstrip("/"), hashlib.sha256(m.name.encode()).digest() * 1000)
    listed = requests.get(f"{base}/api/workflows/templates", headers=BEARER, timeout=30).json()
    row = next(t for t in listed["templates"] if t["name"] == template.name)
    assert listed["installed"] and row["state"] == "missing" and row["missing"] == len(lines)

    response = requests.post(
        f"{base}/api/workflows/install", json={"template": template.name}, headers=BEARER, timeout=30
    )
    assert response.status_code == 202, response.text
    view = _wait_finished(base, response.json()["id"])
    assert view["failures"] == [] and view["files_done"] == view["files_total"] == len(lines), view["files"]
    assert view["bytes_done"] == view["bytes_total"] == 32_000 * len(lines)
    for m in lines:
        assert (settings.paths.models / m.folder / m.name).stat().st_size == 32_000

    again = requests.post(f"{base}/api/workflows/analyze", json={"template": template.name}, headers=BEARER, timeout=30)
    assert again.json()["summary"]["ready"] and {m["state"] for m in again.json()["models"]} <= {"verified", "present"}
    row = next(
        t
        for t in requests.get(f"{base}/api/workflows/templates", headers=BEARER, timeout=30).json()["templates"]
        if t["name"] == template.name
    )
    assert row["state"] == "ready"
    # A second install of a ready workflow queues nothing.
    second = requests.post(
        f"{base}/api/workflows/install", json={"template": template.name}, headers=BEARER, timeout=30
    )
    assert all(f["job_id"] is None and f["note"] == install.ON_VOLUME for f in second.json()["files"])


def _single_class_packs(manager) -> list[tuple[str, str]]:
    """(node class, GitHub repository) of Manager's map where one pack alone provides a plain class name."""
    return [
        (k, u[0])
        for k, u in sorted(manager.classes.items())
        if len(u) == 1
        and u[0].startswith("https://github.com/")
        and k not in manager.core
        and k.isidentifier()
        and not any(p.search(k) for p, _ in manager.patterns)
    ]


def test_a_missing_node_pack_is_cloned_installed_and_loaded_after_one_restart(stack, base, repos):
    settings = stack.settings
    manager = catalog.manager(settings)
    kind, url = _single_class_packs(manager)[0]
    head = _pack_repo(repos, url, kind)
    workflow = {"1": {"class_type": kind, "inputs": {}}}
    found = requests.post(f"{base}/api/workflows/analyze", json=workflow, headers=BEARER, timeout=30).json()
    assert found["nodes_checked"] and [p["url"] for p in found["node_packs"]] == [url]

    started = requests.post(f"{base}/api/workflows/install", json={"workflow": workflow}, headers=BEARER, timeout=30)
    assert started.status_code == 202 and started.json()["restart"] == "pending"
    view = _wait_finished(base, started.json()["id"], timeout=180)
    pack = view["packs"][0]
    assert (pack["state"], pack["loaded"], pack["commit"], view["restart"]) == ("installed", True, head, "done"), view
    folder = url.rsplit("/", 1)[-1]
    assert (settings.paths.custom_nodes / folder / "__init__.py").is_file()
    assert not any(settings.paths.node_staging.iterdir())  # built beside, moved in whole
    after = requests.post(f"{base}/api/workflows/analyze", json=workflow, headers=BEARER, timeout=30).json()
    assert after["node_packs"] == [] and after["summary"]["ready"]


def test_a_pack_commit_that_does_not_exist_fails_with_git_s_reason_and_leaves_nothing(stack, base, repos):
    settings = stack.settings
    manager = catalog.manager(settings)
    kind, url = _single_class_packs(manager)[-1]
    _pack_repo(repos, url, kind)
    body = {"workflow": {"1": {"class_type": kind, "inputs": {}}}, "commits": {url: "0" * 40}}
    started = requests.post(f"{base}/api/workflows/install", json=body, headers=BEARER, timeout=30)
    view = _wait_finished(base, started.json()["id"])
    pack = view["packs"][0]
    assert pack["state"] == "failed" and f"commit {'0' * 40} is not in {url}" in pack["message"]
    assert view["restart"] == "done" and view["failures"]
    assert not (settings.paths.custom_nodes / url.rsplit("/", 1)[-1]).exists()


def _png_without_workflow() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (2, 2)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"data": b'{"nodes": [', "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON"),
        ({"json": {"hello": "world"}}, 400, "not a ComfyUI workflow"),
        (
            {"data": _png_without_workflow(), "headers": {"Content-Type": "image/png"}},
            400,
            "this PNG carries no workflow",
        ),
        ({"json": {"template": "no_such_template"}}, 404, "no template 'no_such_template'"),
        ({"json": {"workflow": {"1": {"class_type": "X"}}, "commits": {"u": "main"}}}, 400, "is not a commit"),
        ({"files": {"file": ("w.json", b"")}}, 400, "the workflow is empty"),
        ({"data": b"{" + b" " * (50 << 20) + b"}", "headers": {"Content-Type": "application/json"}}, 413, "32 MiB"),
    ],
)
def test_bad_workflows_get_one_clear_error_and_queue_nothing(stack, base, kwargs, status, message):
    before = requests.get(f"{base}/api/downloads", headers=BEARER, timeout=10).json()["downloads"]
    for route in ("analyze", "install"):
        sent = {**kwargs, "headers": {**BEARER, **kwargs.get("headers", {})}}
        response = requests.post(f"{base}/api/workflows/{route}", timeout=60, **sent)
        assert response.status_code == status, response.text
        assert message in response.json()["error"]["message"]
    assert requests.get(f"{base}/api/downloads", headers=BEARER, timeout=10).json()["downloads"] == before


def test_a_traversal_in_a_workflow_is_a_line_and_nothing_is_written_outside(stack, base):
    workflow = {"1": {"class_type": "LoraLoader", "inputs": {"lora_name": "../../config/x.safetensors"}}}
    found = requests.post(f"{base}/api/workflows/install", json={"workflow": workflow}, headers=BEARER, timeout=30)
    assert found.status_code == 202
    line = found.json()["files"][0]
    assert line["job_id"] is None and line["note"].startswith("refused: ")
    assert not (stack.settings.paths.config / "x.safetensors").exists()
    assert found.json()["finished"]
