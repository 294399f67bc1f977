"""What a workflow uses: its node types, and the model files its loaders name (with the URLs its author
embedded, where the UI format has them). Only reading: nothing here looks at the volume."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from services.common.paths import LEGACY_FOLDERS
from services.common.workflows.formats import Workflow

# The loaders of ComfyUI's core: each model input in the order of the node's widgets (a loader's model
# widgets come first), so the UI format's `widgets_values[i]` and the API format's `inputs[name]` agree.
LOADERS: dict[str, tuple[tuple[str, str], ...]] = {
    "CheckpointLoaderSimple": (("ckpt_name", "checkpoints"),),
    "CheckpointLoader": (("config_name", "configs"), ("ckpt_name", "checkpoints")),
    "ImageOnlyCheckpointLoader": (("ckpt_name", "checkpoints"),),
    "unCLIPCheckpointLoader": (("ckpt_name", "checkpoints"),),
    "VAELoader": (("vae_name", "vae"),),
    "LoraLoader": (("lora_name", "loras"),),
    "LoraLoaderModelOnly": (("lora_name", "loras"),),
    "UNETLoader": (("unet_name", "diffusion_models"),),
    "CLIPLoader": (("clip_name", "text_encoders"),),
    "DualCLIPLoader": (("clip_name1", "text_encoders"), ("clip_name2", "text_encoders")),
    "TripleCLIPLoader": tuple((f"clip_name{i}", "text_encoders") for i in (1, 2, 3)),
    "QuadrupleCLIPLoader": tuple((f"clip_name{i}", "text_encoders") for i in (1, 2, 3, 4)),
    "CLIPVisionLoader": (("clip_name", "clip_vision"),),
    "ControlNetLoader": (("control_net_name", "controlnet"),),
    "DiffControlNetLoader": (("control_net_name", "controlnet"),),
    "StyleModelLoader": (("style_model_name", "style_models"),),
    "GLIGENLoader": (("gligen_name", "gligen"),),
    "HypernetworkLoader": (("hypernetwork_name", "hypernetworks"),),
    "UpscaleModelLoader": (("model_name", "upscale_models"),),
    "LatentUpscaleModelLoader": (("model_name", "latent_upscale_models"),),
    "PhotoMakerLoader": (("photomaker_model_name", "photomaker"),),
    "ModelPatchLoader": (("name", "model_patches"),),
    "AudioEncoderLoader": (("audio_encoder_name", "audio_encoders"),),
    "LTXAVTextEncoderLoader": (("text_encoder", "text_encoders"), ("ckpt_name", "checkpoints")),
    "LTXVAudioVAELoader": (("ckpt_name", "checkpoints"),),
    "LoadBackgroundRemovalModel": (("bg_removal_name", "background_removal"),),
    "LoadMoGeModel": (("model_name", "geometry_estimation"),),
    "LoadDA3Model": (("model_name", "geometry_estimation"),),
    "FrameInterpolationModelLoader": (("model_name", "frame_interpolation"),),
    "IPAdapterModelLoader": (("ipadapter_file", "ipadapter"),),
}

# Types the frontend draws but ComfyUI never runs: no node pack provides them.
FRONTEND_ONLY = frozenset({"Note", "MarkdownNote", "PrimitiveNode", "Reroute", "Label (rgthree)"})

# Values of a loader's input that are not files: ComfyUI's own choices.
NOT_FILES = frozenset({"", "none", "None", "pixel_space"})
# VAELoader's tiny preview decoders: each name stands for an encoder and a decoder in vae_approx.
TAESD = frozenset({"taesd", "taesdxl", "taesd3", "taef1"})

# What a model file's name ends with, for names in nodes this table does not know.
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".sft", ".gguf", ".onnx", ".pkl")


@dataclass
class Node:
    id: str
    type: str
    widgets: list | None = None  # UI format
    inputs: dict | None = None  # API format
    properties: dict = field(default_factory=dict)


@dataclass
class Ref:
    """One model file a workflow needs, as the workflow names it."""

    name: str
    folder: str | None  # None: the node is not one whose folder we know
    nodes: list[str] = field(default_factory=list)  # the node types that use it
    url: str | None = None  # the workflow's own, when its author embedded one
    sha256: str | None = None


def nodes(workflow: Workflow) -> list[Node]:
    """Every node, subgraphs' included; subgraph instances and frontend-only types left out."""
    if workflow.format == "api":
        return [
            Node(
                str(key),
                value["class_type"],
                inputs=value.get("inputs") if isinstance(value.get("inputs"), dict) else {},
            )
            for key, value in workflow.data.items()
        ]
    raw: list = []
    subgraphs: set[str] = set()
    pending = [workflow.data]
    while pending:  # a subgraph may define subgraphs of its own
        graph = pending.pop()
        raw += [n for n in graph.get("nodes") or [] if isinstance(n, dict)]
        definitions = graph.get("definitions") if isinstance(graph.get("definitions"), dict) else {}
        for sub in definitions.get("subgraphs") or []:
            if isinstance(sub, dict):
                subgraphs.add(str(sub.get("id")))
                pending.append(sub)
    out = []
    for node in raw:
        kind = node.get("type")
        if not isinstance(kind, str) or kind in subgraphs or kind in FRONTEND_ONLY or kind.startswith("workflow>"):
            continue
        widgets = node.get("widgets_values")
        properties = node.get("properties") if isinstance(node.get("properties"), dict) else {}
        out.append(
            Node(
                str(node.get("id")), kind, widgets=widgets if isinstance(widgets, list) else None, properties=properties
            )
        )
    return out


def _looks_like_model(value: object) -> bool:
    return isinstance(value, str) and os.path.splitext(value)[1].lower() in MODEL_EXTENSIONS and len(value) < 1024


def models(found: list[Node]) -> tuple[list[Ref], list[str]]:
    """The model files the nodes name, one per (folder, name), and a line per embedded entry unusable."""
    refs: dict[tuple[str | None, str], Ref] = {}
    problems: list[str] = []

    def add(name: str, folder: str | None, node: Node) -> Ref:
        folder = LEGACY_FOLDERS.get(folder, folder) if folder else folder
        ref = refs.setdefault((folder, name), Ref(name, folder))
        if node.type not in ref.nodes:
            ref.nodes.append(node.type)
        return ref

    def loader(value: object, folder: str, node: Node) -> None:
        if not isinstance(value, str) or value in NOT_FILES:
            return
        if node.type == "VAELoader" and value in TAESD:
            for part in ("encoder", "decoder"):
                add(f"{value}_{part}.pth", "vae_approx", node)
            return
        add(value, folder, node)

    for node in found:
        table = LOADERS.get(node.type)
        if node.inputs is not None:
            for key, value in node.inputs.items():
                if table and key in dict(table):
                    loader(value, dict(table)[key], node)
                elif _looks_like_model(value):
                    add(value, None, node)
        elif node.widgets is not None:
            for index, value in enumerate(node.widgets):
                if table and index < len(table):
                    loader(value, table[index][1], node)
                elif not table and _looks_like_model(value):
                    add(value, None, node)
        for item in node.properties.get("models") or []:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                problems.append(f"node {node.id} ({node.type}): a `models` entry without a name, ignored")
                continue
            folder = item.get("directory") if isinstance(item.get("directory"), str) else None
            ref = refs.pop((None, item["name"]), None)
            merged = add(item["name"], folder, node)
            if ref is not None:
                merged.nodes += [n for n in ref.nodes if n not in merged.nodes]
            if isinstance(item.get("url"), str):
                merged.url = merged.url or item["url"]
            if str(item.get("hash_type", "")).lower() == "sha256" and isinstance(item.get("hash"), str):
                merged.sha256 = item["hash"].lower()
    # A name also seen with its folder known needs no second, folder-less line.
    for folder, name in [k for k in refs if k[0] is None]:
        if any(k[1] == name and k[0] is not None for k in refs):
            refs.pop((folder, name))
    return list(refs.values()), problems
