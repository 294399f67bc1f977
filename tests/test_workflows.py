"""Workflow analysis against real workflows: ComfyUI's own templates and ComfyUI-Manager's lists, both
from PyPI (test dependencies, read where pip installed them, the way the stack reads them from ComfyUI's
venv). Images are written with Pillow the way ComfyUI's savers write them."""

from __future__ import annotations

import io
import json
import random
import struct

import pytest
from PIL import Image, PngImagePlugin

from services.common.errors import BadInput
from services.common.paths import ALL_FOLDERS
from services.common.workflows import analyze, catalog, formats, refs
from tests.helpers.procs import VENV_PYTHON


@pytest.fixture
def s(settings):
    return settings.model_copy(update={"comfyui_python": VENV_PYTHON})


def _read(t: catalog.Template) -> formats.Workflow:
    return formats.read(t.path.read_bytes())


def test_every_template_analyses_and_every_embedded_model_has_a_url_and_a_folder_we_have(s):
    templates = catalog.templates(s)
    assert len(templates) > 500, "ComfyUI's templates are a test dependency: pip install -e .[test]"
    embedded = resolved = 0
    lacking = set()
    for t in templates:
        workflow = _read(t)
        found = analyze.analyze(s, None, workflow, None)
        for node in refs.nodes(workflow):
            for item in node.properties.get("models") or []:
                embedded += 1
                line = next(m for m in found.models if m.name == item["name"])
                assert line.url and line.source == "workflow", (t.name, item)
                if line.folder not in ALL_FOLDERS:
                    lacking.add(line.folder)
                resolved += 1
    print(f"{len(templates)} templates, {embedded} embedded model references, {resolved} resolved")
    assert embedded > 1000 and resolved == embedded
    assert not lacking, f"folders ComfyUI's templates use that our layout lacks: {lacking}"


def test_a_ui_workflow_names_its_models_with_urls_folders_and_hashes(s):
    t = next(t for t in catalog.templates(s) if t.name == "image_flux2")
    found = analyze.analyze(s, None, _read(t), None).as_dict(0)
    names = {m["name"]: m for m in found["models"]}
    vae = names["full_encoder_small_decoder.safetensors"]
    assert vae["folder"] == "vae" and vae["state"] == "missing" and vae["url"].startswith("https://huggingface.co/")
    assert found["summary"]["missing"] == len(names) and not found["summary"]["ready"]


def test_an_api_workflow_without_urls_resolves_names_through_presets_and_managers_list(s):
    manager, ours = catalog.manager(s), analyze.sources(s).preset
    listed = next(
        m
        for ms in manager.models.values()
        for m in ms
        if m.folder == "upscale_models" and not m.subfolder and m.filename not in ours
    )
    workflow = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": listed.filename}},
        "3": {"class_type": "LoraLoader", "inputs": {"lora_name": "my_own_lora.safetensors", "model": ["1", 0]}},
        "4": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}},
    }
    found = analyze.analyze(s, None, formats.from_data(workflow), None)
    by_name = {m.name: m for m in found.models}
    assert by_name["sd_xl_base_1.0.safetensors"].source == "preset"
    assert by_name["sd_xl_base_1.0.safetensors"].preset and by_name["sd_xl_base_1.0.safetensors"].size
    assert by_name[listed.filename].source == "manager" and by_name[listed.filename].url == listed.url
    own = by_name["my_own_lora.safetensors"]
    assert own.source is None and own.folder == "loras" and own.message == analyze.NO_SOURCE
    assert "pixel_space" not in by_name  # ComfyUI's own choice, not a file


def test_unknown_node_types_name_the_pack_managers_map_gives(s):
    manager = catalog.manager(s)
    unique = [
        (kind, urls[0])
        for kind, urls in manager.classes.items()
        if len(urls) == 1 and kind not in manager.core and not any(p.search(kind) for p, _ in manager.patterns)
    ]
    sample = random.Random(7).sample(unique, 40)
    workflow = {str(i): {"class_type": kind, "inputs": {}} for i, (kind, _) in enumerate(sample)}
    known = {"KSampler"}  # a running ComfyUI that knows none of them
    found = analyze.analyze(s, None, formats.from_data(workflow), known)
    named = {kind: line.url for line in found.packs for kind in line.node_types}
    assert named == dict(sample)
    assert found.nodes_checked


def test_the_pack_the_workflow_was_saved_with_wins_over_the_most_starred(s):
    manager = catalog.manager(s)
    kind, urls = next((k, u) for k, u in manager.classes.items() if len(u) > 1 and any(manager.packs[x].id for x in u))
    chosen = next(u for u in urls if manager.packs[u].id)
    node = {"id": 1, "type": kind, "properties": {"cnr_id": manager.packs[chosen].id, "ver": "a" * 40}}
    found = analyze.analyze(s, None, formats.from_data({"nodes": [node]}), set())
    assert [(p.url, p.commit, p.alternatives) for p in found.packs] == [(chosen, "a" * 40, len(urls) - 1)]


def test_core_nodes_of_a_newer_comfyui_say_so(s):
    node = {"id": 1, "type": "SomeNodeFromTheFuture", "properties": {"cnr_id": "comfy-core", "ver": "9.9.9"}}
    found = analyze.analyze(s, None, formats.from_data({"nodes": [node]}), {"KSampler"})
    assert found.packs[0].core and "needs a newer ComfyUI (it was saved with ComfyUI 9.9.9)" in found.packs[0].message


def _ui(name: str, url: str | None = None, directory: str = "loras") -> dict:
    item = {"name": name, "directory": directory}
    if url is not None:
        item["url"] = url
    return {
        "nodes": [{"id": 1, "type": "LoraLoader", "widgets_values": [name, 1, 1], "properties": {"models": [item]}}]
    }


def test_subfolders_are_kept_and_traversals_refused(s):
    found = analyze.analyze(s, None, formats.from_data(_ui("SDXL\\style/x.safetensors", "https://e.com/x")), None)
    assert found.models[0].name == "SDXL/style/x.safetensors" and found.models[0].state == "missing"
    for bad in ("../x.safetensors", "/etc/x.safetensors", "a/../../x.safetensors"):
        found = analyze.analyze(s, None, formats.from_data(_ui(bad, "https://e.com/x")), None)
        line = found.models[0]
        assert line.state == "invalid" and line.message.startswith("refused: "), line


def test_a_url_that_is_not_http_and_a_folder_comfyui_lacks_are_plain_lines(s):
    found = analyze.analyze(s, None, formats.from_data(_ui("x.safetensors", "javascript:alert(1)")), None)
    assert found.models[0].url is None and "is not http(s): ignored" in found.models[0].message
    found = analyze.analyze(s, None, formats.from_data(_ui("y.safetensors", "https://e.com/y", "secrets")), None)
    line = [m for m in found.models if m.folder == "secrets"][0]
    assert line.state == "invalid" and "folder 'secrets' is not one ComfyUI knows" in line.message


# --- the forms a workflow comes in -------------------------------------------------------------------------

WORKFLOW = _ui("from_the_image.safetensors", "https://huggingface.co/o/r/resolve/main/from_the_image.safetensors")
PROMPT = {"1": {"class_type": "LoraLoader", "inputs": {"lora_name": "from_the_prompt.safetensors"}}}


def _png(texts: dict[str, str], itxt: bool = False) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in texts.items():  # as ComfyUI's SaveImage: add_text per key
        info.add_itxt(key, value, zip=True) if itxt else info.add_text(key, value)
    out = io.BytesIO()
    Image.new("RGB", (4, 4)).save(out, "PNG", pnginfo=info)
    return out.getvalue()


def _webp(texts: dict[str, str]) -> bytes:
    image = Image.new("RGB", (4, 4))
    exif = image.getexif()
    tags = {"workflow": 0x010F, "prompt": 0x0110}  # as ComfyUI's SaveAnimatedWEBP: "key:json" in Make/Model
    for key, value in texts.items():
        exif[tags[key]] = f"{key}:{value}"
    out = io.BytesIO()
    image.save(out, "WEBP", exif=exif)
    return out.getvalue()


def _flac(texts: dict[str, str]) -> bytes:
    comments = [f"{k}={v}".encode() for k, v in texts.items()]
    vendor = b"Lavf"
    body = struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", len(comments))
    body += b"".join(struct.pack("<I", len(c)) + c for c in comments)
    streaminfo = bytes(34)
    return (
        b"fLaC"
        + bytes([0])
        + len(streaminfo).to_bytes(3, "big")
        + streaminfo
        + bytes([0x80 | 4])
        + len(body).to_bytes(3, "big")
        + body
    )


@pytest.mark.parametrize(
    ("make", "source"),
    [(_png, "png"), (lambda t: _png(t, itxt=True), "png"), (_webp, "webp"), (_flac, "flac")],
)
def test_a_file_comfyui_saved_gives_its_workflow_before_its_prompt(make, source):
    both = make({"prompt": json.dumps(PROMPT), "workflow": json.dumps(WORKFLOW)})
    workflow = formats.read(both)
    assert (workflow.source, workflow.format, workflow.data) == (source, "ui", WORKFLOW)
    only_prompt = formats.read(make({"prompt": json.dumps(PROMPT)}))
    assert (only_prompt.format, only_prompt.data) == ("api", PROMPT)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "the workflow is empty"),
        (b"   \n", "the workflow is empty"),
        (b'{"nodes": [', "the workflow is not valid JSON: Expecting value: line 1 column 12"),
        (b'{"hello": "world"}', "the JSON is not a ComfyUI workflow: it has no `nodes` list"),
        (b"[1, 2]", "the JSON is not a workflow: a workflow is a JSON object"),
        (b"GIF89a....", "neither a workflow's JSON nor a PNG, WebP or FLAC"),
        (_png({"parameters": "a photo, Steps: 20"}), "this PNG carries no workflow: ComfyUI embeds one"),
        (_webp({}), "this WEBP carries no workflow"),
        (_png({"workflow": "{not json"}), "the workflow is not valid JSON"),
        (b"{" + b" " * (50 * 1024 * 1024) + b"}", "the workflow is 52.4 MB; the most accepted is 32 MiB"),
    ],
)
def test_bad_input_gets_one_clear_message(raw, message):
    with pytest.raises(BadInput) as caught:
        formats.read(raw)
    assert message in caught.value.message
