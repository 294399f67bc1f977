"""The workspace on a real FUSE mount that behaves like a network volume (tests/helpers/slowfs.py: every
read request waits, read-ahead cut to a page): the stack says so, ComfyUI starts with --disable-mmap,
the read speed is measured once, and the local model cache copies pinned and recently used models to
this machine's disk, listed first for ComfyUI, least recently used out at the cap, never one in use."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
import requests
import yaml

from tests.helpers.procs import wait_for
from tests.helpers.slowfs import mounted
from tests.helpers.stack import PASSWORD, Stack

pytestmark = pytest.mark.timeout(300)

BEARER = {"Authorization": f"Bearer {PASSWORD}"}
MB = 1_000_000


def blob(size: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 2048
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    root = tmp_path_factory.mktemp("netvol")
    with mounted(root / "backing", root / "mnt", delay=0.0005) as mountpoint:
        yield mountpoint


@pytest.fixture(scope="module")
def stack(tmp_path_factory, volume):
    root = tmp_path_factory.mktemp("netstack")
    stack = Stack(
        root,
        WORKSPACE=str(volume),
        MODEL_CACHE_DIR=str(root / "local-cache"),
        MODEL_CACHE_GB="0.0025",  # 2.5 MB: two of the 1 MB models below, not three
        MODEL_CACHE_INTERVAL="0.5",
        HEALTH_INTERVAL="1",
    )
    stack.start()
    stack.wait_running()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def base(stack) -> str:
    return f"http://127.0.0.1:{stack.settings.dashboard_port}"


def api(base: str, method: str, path: str) -> dict:
    response = requests.request(method, base + path, headers=BEARER, timeout=30)
    assert response.status_code < 300, response.text
    return response.json()


def comfyui(stack) -> str:
    return f"http://127.0.0.1:{stack.settings.comfyui_internal_port}"


def run_prompt(stack, checkpoint: str) -> None:
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["4", 0]}},
    }
    sent = requests.post(comfyui(stack) + "/prompt", json={"prompt": prompt}, timeout=10)
    assert sent.status_code == 200, sent.text
    prompt_id = sent.json()["prompt_id"]
    wait_for(lambda: prompt_id in requests.get(comfyui(stack) + "/history", timeout=10).json(), 30)


def cached(stack) -> set[str]:
    folder = stack.settings.model_cache_dir / "models" / "checkpoints"
    return {p.name for p in folder.iterdir() if not p.name.endswith(".part")} if folder.is_dir() else set()


def test_the_stack_sees_a_network_volume_and_comfyui_reads_without_mmap(stack, base):
    host = api(base, "GET", "/api/status")["host"]
    assert host["volume"]["network"] and host["volume"]["fstype"] == "fuse"
    assert not host["volume"]["mmap"] and "network volume (fuse)" in host["volume"]["mmap_reason"]
    assert not host["volume"]["free_trusted"]
    stats = requests.get(comfyui(stack) + "/system_stats", timeout=10).json()
    assert "--disable-mmap" in stats["system"]["argv"]
    # Measured once, after ComfyUI is up, on a bounded sample.
    measured = wait_for(lambda: (v := api(base, "GET", "/api/status")["host"]["volume"])["read_mb_s"] and v, 60)
    assert measured["label"].startswith("network volume (fuse), reads ") and measured["label"].endswith(" MB/s")
    health = api(base, "GET", "/api/status")["health"]["checks"]["workspace"]["reason"]
    assert "network volume (fuse)" in health and "may be the storage's" in health
    assert "Volume: network volume (fuse)" in requests.get(base + "/", headers=BEARER, timeout=10).text


def test_the_cache_is_first_for_comfyui_and_fills_evicts_and_spares_what_is_in_use(stack, base):
    s = stack.settings
    models = s.paths.models / "checkpoints"
    data = {name: blob(MB, i) for i, name in enumerate(("a.safetensors", "b.safetensors", "c.safetensors"))}
    for name, body in data.items():
        (models / name).write_bytes(body)
    paths = yaml.safe_load(s.paths.extra_model_paths.read_text())
    assert list(paths) == ["workspace", "model_cache"] and paths["model_cache"]["is_default"]

    # Pinned: copied to local disk, byte for byte; ComfyUI lists the cache's copy first.
    api(base, "POST", "/api/models/checkpoints/a.safetensors/pin")
    api(base, "POST", "/api/models/checkpoints/b.safetensors/pin")
    wait_for(lambda: cached(stack) == {"a.safetensors", "b.safetensors"}, 30)
    assert (s.model_cache_dir / "models" / "checkpoints" / "a.safetensors").read_bytes() == data["a.safetensors"]
    listed = {m["name"]: m for m in api(base, "GET", "/api/models/checkpoints")["models"]}
    assert (
        listed["a.safetensors"]["cached"]
        and listed["a.safetensors"]["pinned"]
        and not listed["c.safetensors"]["cached"]
    )
    infos = requests.get(comfyui(stack) + "/experiment/models/checkpoints", timeout=10).json()
    first = {i["name"] for i in infos if i["pathIndex"] == 0}
    assert first == {"a.safetensors", "b.safetensors"}  # path 0 is the cache: ComfyUI loads these from it

    # A prompt uses c: it is wanted, the cap holds two, so the least recently used unpinned one leaves.
    api(base, "DELETE", "/api/models/checkpoints/a.safetensors/pin")
    run_prompt(stack, "c.safetensors")
    wait_for(lambda: cached(stack) == {"b.safetensors", "c.safetensors"}, 30)
    assert (models / "a.safetensors").read_bytes() == data["a.safetensors"]  # never from the volume

    # b unpinned but held open (as a loaded model is): a prompt using a cannot evict it.
    api(base, "DELETE", "/api/models/checkpoints/b.safetensors/pin")
    with open(s.model_cache_dir / "models" / "checkpoints" / "b.safetensors", "rb"):
        run_prompt(stack, "a.safetensors")
        time.sleep(3)  # several passes of the cache (every 0.5 s) while b is open
        assert "b.safetensors" in cached(stack)
    # Released: the next passes make room for a (c was used last, so b leaves).
    wait_for(lambda: cached(stack) == {"a.safetensors", "c.safetensors"}, 30)

    # A model deleted from the volume leaves the cache too (ComfyUI must not keep finding it).
    api(base, "DELETE", "/api/models/checkpoints/c.safetensors")
    wait_for(lambda: "c.safetensors" not in cached(stack), 30)
    cache = api(base, "GET", "/api/status")["host"]["model_cache"]
    assert cache["cap_bytes"] == 2_500_000 and cache["used_bytes"] <= cache["cap_bytes"]
    assert not any(name.endswith(".part") for name in os.listdir(s.model_cache_dir / "models" / "checkpoints"))
