"""Presets: the built-in catalogue, user files gone wrong, state derived from the volume, install, remove."""

from __future__ import annotations

import functools
import hashlib
import json
import re

import pytest
import yaml

from services.common import jobs, messages, presets
from services.common.errors import Problem
from services.common.paths import ALL_FOLDERS
from services.common.settings import Settings
from tests.helpers.procs import REPO


def catalogue(settings: Settings) -> presets.Catalogue:
    return presets.load(settings)


def test_every_built_in_preset_loads_and_is_well_formed(settings):
    cat = catalogue(settings)
    assert cat.errors == []
    assert len(cat.entries) >= 25
    destinations: dict[str, str] = {}
    for entry in cat.entries.values():
        assert entry.source == "builtin"
        for f in entry.files:
            assert f.url.startswith("https://") and f.folder in ALL_FOLDERS
            assert "/" not in f.filename and not f.filename.startswith(".")
            assert f.size or f.approx_size
            assert f.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", f.sha256)
            # One destination, one source: a shared file is declared once and referenced.
            assert destinations.setdefault(f.key, f.url) == f.url, f.key
            if "huggingface.co/black-forest-labs/FLUX.1-dev" in f.url or "stabilityai/stable-diffusion-3.5" in f.url:
                assert f.token == "huggingface", f.key
    ids = list(cat.entries)
    assert len(ids) == len(set(ids))
    files = list((REPO / "presets").glob("*.yaml"))
    assert len(files) == len(ids) + 1  # plus _shared_files.yaml


def test_the_catalogue_covers_what_people_run():
    text = " ".join(p.read_text() for p in (REPO / "presets").glob("*.yaml")).lower()
    for needle in (
        "v1-5-pruned",
        "sd_xl_base",
        "sd_xl_refiner",
        "sd3.5_large",
        "flux1-schnell",
        "flux1-dev-fp8",
        "flux1-fill",
        "flux1-canny",
        "flux1-redux",
        "qwen_image",
        "wan2.1_t2v",
        "wan2.1_i2v",
        "wan2.2_t2v",
        "wan2.2_i2v",
        "hunyuan_video",
        "ltx-video",
        "mochi",
        "stable-audio",
        "ace_step",
        "ultrasharp",
        "control_v11p_sd15",
        "control-lora",
        "ip-adapter",
        "sdxl_vae",
        "t5xxl_fp16",
    ):
        assert needle in text, needle


def test_shared_files_are_reused_not_copied():
    shared = yaml.safe_load((REPO / "presets" / presets.SHARED_FILES).read_text())
    for path in (REPO / "presets").glob("[!_]*.yaml"):
        for f in yaml.safe_load(path.read_text())["files"]:
            if "url" in f:
                assert f["url"] not in {s["url"] for s in shared.values()}, (path.name, f["url"])


def write_user(settings: Settings, name: str, body: str) -> None:
    settings.paths.user_presets.mkdir(parents=True, exist_ok=True)
    (settings.paths.user_presets / name).write_text(body)


GOOD = """\
id: my-model
name: My model
category: image
base: SDXL
files:
  - url: https://example.com/m.safetensors
    folder: checkpoints
    filename: m.safetensors
    size: 1234
"""


@pytest.mark.parametrize(
    ("body", "line", "field", "message"),
    [
        ("id: x\nname: [unclosed\n", 3, None, "YAML syntax error"),
        (GOOD + "colour: blue\n", 10, "colour", "unknown field 'colour': the fields are id, name"),
        (
            GOOD.replace("    size: 1234", "    sha265: abc"),
            9,
            "files.0.sha265",
            "unknown field 'sha265': did you mean 'sha256'?",
        ),
        (GOOD + "    sha256: 1234567890\n", 10, "files.0.sha256", "YAML read it as a number: put it in quotes"),
        (GOOD.replace("folder: checkpoints", "folder: models"), 7, "files.0.folder", "unknown ComfyUI model folder"),
        (GOOD.replace("filename: m.safetensors", "filename: ../../m.safetensors"), 8, "files.0.filename", "is a path"),
        (GOOD.replace("https://example.com", "http://example.com"), 6, "files.0.url", "DOWNLOADS_ALLOW_PRIVATE_HOSTS"),
        (GOOD + "    sha256: abc123\n", 10, "files.0.sha256", "64 hexadecimal"),
        (GOOD.replace("    size: 1234\n", ""), 6, "files.0", "give `size`"),
        ("- just\n- a list\n", 1, None, "one mapping"),
        (GOOD + "workflow: javascript:alert(1)\n", 10, "workflow", "must be an https:// link"),
        (GOOD + "workflow: data:text/html,x\n", 10, "workflow", "must be an https:// link"),
        (GOOD.replace("files:", "files:\n  - ref: nope\nold:"), None, None, "unknown field 'old'"),
    ],
)
def test_a_broken_user_preset_is_reported_and_built_ins_still_load(settings, body, line, field, message):
    write_user(settings, "mine.yaml", body)
    cat = catalogue(settings)
    assert len([e for e in cat.entries.values() if e.source == "builtin"]) >= 25
    assert "my-model" not in cat.entries
    assert len(cat.errors) == 1, [str(e) for e in cat.errors]  # one mistake, one message
    error = cat.errors[0]
    assert error.path.endswith("mine.yaml") and message in error.message, str(error)
    if line:
        assert error.line == line, str(error)
    if field:
        assert error.field == field, str(error)


def test_unknown_shared_reference(settings):
    write_user(settings, "mine.yaml", GOOD.replace("files:\n", "files:\n  - ref: no_such_file\n"))
    error = catalogue(settings).errors[0]
    assert "unknown shared file 'no_such_file'" in error.message and error.field == "files"


def test_duplicate_ids_and_overrides(settings):
    write_user(settings, "a.yaml", GOOD)
    write_user(settings, "b.yaml", GOOD)
    write_user(settings, "sdxl.yaml", GOOD.replace("id: my-model", "id: sdxl"))
    cat = catalogue(settings)
    assert any("already used by another file here" in e.message for e in cat.errors)
    assert cat.entries["sdxl"].source == "user" and cat.entries["sdxl"].note == "overrides the built-in preset 'sdxl'"


def test_state_is_read_from_the_volume(settings, redis_client):
    data = b"model bytes"
    body = GOOD.replace("size: 1234", f"size: {len(data)}\n    sha256: {hashlib.sha256(data).hexdigest()}")
    write_user(settings, "mine.yaml", body)
    folder = settings.paths.models / "checkpoints"
    folder.mkdir(parents=True)
    assert presets.show(settings, redis_client, "my-model")["state"] == "missing"
    (folder / "m.safetensors.part").write_bytes(b"mo")
    assert presets.show(settings, redis_client, "my-model")["state"] == "partial"
    (folder / "m.safetensors.part").unlink()
    (folder / "m.safetensors").write_bytes(b"x" * len(data))  # right size, wrong bytes, not hashed yet
    assert presets.show(settings, redis_client, "my-model")["files"][0]["state"] == "present"
    assert presets.verify(settings, redis_client, "my-model")["state"] == "partial"  # hashed: wrong
    (folder / "m.safetensors").write_bytes(data)
    shown = presets.verify(settings, redis_client, "my-model")
    assert shown["state"] == "installed" and shown["files"][0]["state"] == "verified"
    (folder / "m.safetensors").write_bytes(b"short")
    assert presets.show(settings, redis_client, "my-model")["files"][0]["state"] == "wrong"


def test_listing_filters_and_sizes(settings, redis_client):
    listed = presets.list_presets(settings, redis_client, category="video")
    assert listed and all(p["category"] == "video" for p in listed)
    assert {p["id"] for p in presets.list_presets(settings, redis_client, tag="gated")} >= {"flux-dev", "sd35-large"}
    flux = presets.list_presets(settings, redis_client, text="schnell")
    assert {p["id"] for p in flux} == {"flux-schnell", "flux-schnell-fp8"}
    sdxl = presets.show(settings, redis_client, "sdxl")
    assert sdxl["state"] == "missing" and sdxl["bytes_to_download"] == sdxl["total_bytes"] > 7 * 10**9
    assert isinstance(sdxl["fits"], bool)


def test_install_needs_the_token_it_names(settings, redis_client):
    sent: list[str] = []
    with pytest.raises(Problem) as err:
        presets.install(settings, redis_client, "flux-dev", sent.append)
    text = str(err.value)
    assert "set HF_TOKEN" in text and "https://huggingface.co/black-forest-labs/FLUX.1-dev" in text
    assert jobs.all_jobs(redis_client) == []


def test_install_queues_once_and_remove_keeps_shared_files(settings, redis_client, file_server):
    shared_data, a_data, b_data = b"shared encoder", b"model a", b"model b"
    allow = settings.model_copy(update={"downloads_allow_private_hosts": True})

    def preset(pid: str, name: str, data: bytes) -> str:
        return yaml.safe_dump(
            {
                "id": pid,
                "name": pid,
                "category": "image",
                "base": "test",
                "files": [
                    {
                        "url": f"https://127.0.0.1:{file_server.port}/{name}",
                        "folder": "checkpoints",
                        "filename": name,
                        "size": len(data),
                    },
                    {
                        "url": f"https://127.0.0.1:{file_server.port}/enc.safetensors",
                        "folder": "text_encoders",
                        "filename": "enc.safetensors",
                        "size": len(shared_data),
                    },
                ],
            }
        )

    write_user(allow, "a.yaml", preset("preset-a", "a.safetensors", a_data))
    write_user(allow, "b.yaml", preset("preset-b", "b.safetensors", b_data))
    sent: list[str] = []
    queued = presets.install(allow, redis_client, "preset-a", sent.append)
    assert len(queued) == 2 and sorted(sent) == sorted(j.id for j in queued)
    assert [j.id for j in presets.install(allow, redis_client, "preset-a", sent.append)] == [j.id for j in queued]
    assert len(jobs.all_jobs(redis_client)) == 2  # installing twice queued nothing new
    # Land the files as the worker would, then B shares the encoder.
    for folder, name, data in (
        ("checkpoints", "a.safetensors", a_data),
        ("checkpoints", "b.safetensors", b_data),
        ("text_encoders", "enc.safetensors", shared_data),
    ):
        (allow.paths.models / folder).mkdir(parents=True, exist_ok=True)
        (allow.paths.models / folder / name).write_bytes(data)
    for job in queued:
        job.state = "done"
        jobs.save(redis_client, job)
        jobs.release(redis_client, job)
    assert presets.show(allow, redis_client, "preset-b")["state"] == "installed"
    result = presets.remove(allow, redis_client, "preset-a")
    assert result == {"removed": ["checkpoints/a.safetensors"], "kept": ["text_encoders/enc.safetensors"]}
    assert (allow.paths.models / "text_encoders" / "enc.safetensors").exists()
    assert presets.show(allow, redis_client, "preset-a")["state"] == "partial"
    assert presets.show(allow, redis_client, "preset-b")["state"] == "installed"
    states = {
        e.id: e.state
        for e in (messages.parse_event(v) for v in redis_client.hgetall(messages.snapshot_key("presets")).values())
    }
    assert states["preset-b"] == "installed" and states["preset-a"] == "partial"
    presets.remove(allow, redis_client, "preset-b")
    assert not (allow.paths.models / "text_encoders" / "enc.safetensors").exists()


def test_unknown_preset(settings, redis_client):
    install = functools.partial(presets.install, send=lambda job_id: None)
    for operation in (presets.show, install, presets.remove):
        with pytest.raises(Problem, match="no preset 'nope'"):
            operation(settings, redis_client, "nope")


def test_preset_events_round_trip():
    event = messages.PresetState(id="sdxl", state="partial", files_done=1, files_total=2)
    assert messages.parse_event(json.dumps(event.model_dump())) == event


def test_a_user_preset_may_use_http_when_private_hosts_are_allowed(settings):
    write_user(settings, "mine.yaml", GOOD.replace("https://example.com", "http://10.0.0.5:8000"))
    assert "my-model" not in catalogue(settings).entries
    allow = settings.model_copy(update={"downloads_allow_private_hosts": True})
    found = catalogue(allow)
    assert found.errors == [] and found.entries["my-model"].files[0].url.startswith("http://10.0.0.5:8000/")


def test_a_preset_may_say_how_much_gpu_memory_it_needs(settings):
    write_user(settings, "mine.yaml", GOOD.replace("base: SDXL\n", "base: SDXL\nvram_gb: 8\n"))
    assert presets.show(settings, None, "my-model")["vram_gb"] == 8
    write_user(settings, "mine.yaml", GOOD.replace("base: SDXL\n", "base: SDXL\nvram_gb: -1\n"))
    assert catalogue(settings).errors[0].field == "vram_gb"
    assert presets.show(settings, None, "sdxl")["vram_gb"] == 8
