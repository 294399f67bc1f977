"""What a workflow needs that this pod lacks: each model file (on the volume? where it can come from?) and
each node type the running ComfyUI does not know (which node pack provides it). Reads the volume with one
stat per file; never downloads, never hashes."""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import redis

from services.common import presets
from services.common.paths import ALL_FOLDERS, check_model_name
from services.common.settings import Settings
from services.common.workflows import catalog
from services.common.workflows.formats import Workflow
from services.common.workflows.refs import Node, Ref, models, nodes

NO_SOURCE = "no known source: paste a URL (Hugging Face, Civitai or any https address) to download it"
HF_HOSTS = frozenset({"huggingface.co", "hf.co", "www.huggingface.co"})
CIVITAI_HOSTS = frozenset({"civitai.com", "www.civitai.com"})


@dataclass
class Want:
    """A model file the workflow needs, resolved: the shape presets' file_states reads."""

    folder: str
    filename: str
    size: int | None = None
    sha256: str | None = None

    @property
    def key(self) -> str:
        return f"{self.folder}/{self.filename}"


@dataclass
class ModelLine:
    name: str
    folder: str | None
    nodes: list[str]
    state: str  # verified | present | downloading | wrong | missing | invalid
    source: str | None = None  # workflow | preset | manager
    url: str | None = None
    sha256: str | None = None
    size: int | None = None
    preset: str | None = None
    gated: str | None = None  # what the user must do first
    message: str | None = None


@dataclass
class PackLine:
    node_types: list[str]
    url: str | None
    title: str | None
    commit: str | None = None  # the one the workflow was saved with, when it says
    alternatives: int = 0
    core: bool = False
    message: str | None = None


@dataclass
class Analysis:
    format: str
    source: str
    models: list[ModelLine]
    packs: list[PackLine]
    nodes_checked: bool  # against the running ComfyUI (False: it was not answering)
    problems: list[str] = field(default_factory=list)
    free_bytes: int = 0

    def as_dict(self, reserve: int) -> dict:
        todo = [m for m in self.models if m.state in ("missing", "wrong") and m.url]
        known = sum(m.size for m in todo if m.size)
        unknown = sum(1 for m in todo if not m.size)
        return {
            "format": self.format,
            "source": self.source,
            "models": [asdict(m) for m in self.models],
            "node_packs": [asdict(p) for p in self.packs],
            "nodes_checked": self.nodes_checked,
            "problems": self.problems,
            "summary": {
                "models": len(self.models),
                "missing": sum(1 for m in self.models if m.state in ("missing", "wrong")),
                "no_source": sum(1 for m in self.models if m.state in ("missing", "wrong") and not m.url),
                "invalid": sum(1 for m in self.models if m.state == "invalid"),
                "node_packs": len(self.packs),
                "bytes_to_download": known,
                "sizes_unknown": unknown,
                "free_bytes": self.free_bytes,
                "fits": known + reserve <= self.free_bytes,
                "ready": all(m.state in ("verified", "present") for m in self.models) and not self.packs,
            },
        }


@dataclass
class Sources:
    """Every file name we know a source for, from presets and Manager's list."""

    preset: dict[str, list[tuple[presets.ModelFile, str]]]
    manager: catalog.Manager
    gated_repos: frozenset[str]


def sources(settings: Settings) -> Sources:
    by_name: dict[str, list[tuple[presets.ModelFile, str]]] = {}
    gated = set()
    for preset_id, item in presets.load(settings).entries.items():
        for f in item.files:
            by_name.setdefault(f.filename, []).append((f, preset_id))
            if f.token == "huggingface" and (repo := _hf_repo(f.url)):  # noqa: S105 - a source name, not a secret
                gated.add(repo)
    return Sources(by_name, catalog.manager(settings), frozenset(gated))


def _hf_repo(url: str) -> str | None:
    parts = urlsplit(url)
    if (parts.hostname or "") not in HF_HOSTS:
        return None
    match = re.match(r"^/([^/]+/[^/]+)/", parts.path)
    return match.group(1) if match else None


def _gate(settings: Settings, url: str, gated_repos: frozenset[str]) -> str | None:
    host = urlsplit(url).hostname or ""
    if host in CIVITAI_HOSTS and settings.civitai_token is None:
        return "Civitai asks for a login: set a Civitai token on the settings page first"
    repo = _hf_repo(url)
    if repo and repo in gated_repos:
        if settings.hf_token is None:
            return f"gated on Hugging Face: accept the licence at https://huggingface.co/{repo} and set an HF token"
        return f"gated on Hugging Face: your token must have accepted https://huggingface.co/{repo}"
    return None


def _resolve(ref: Ref, found: Sources) -> tuple[str | None, str | None, str | None, int | None, str | None, str | None]:
    """(folder, source, url, size, sha256, preset) for one reference, in the order of trust."""
    base = ref.name.rsplit("/", 1)[-1]
    folder = ref.folder
    if ref.url and urlsplit(ref.url).scheme in ("http", "https"):
        return folder, "workflow", ref.url, None, ref.sha256, None
    candidates = found.preset.get(base, [])
    match = next((c for c in candidates if c[0].folder == folder), None) or (
        candidates[0] if not folder and candidates else None
    )
    if match:
        f, preset_id = match
        return folder or f.folder, "preset", f.url, f.expected_bytes, ref.sha256 or f.sha256, preset_id
    listed = found.manager.models.get(base, [])
    item = next((m for m in listed if m.folder == folder), None) or (listed[0] if not folder and listed else None)
    if item and item.folder in ALL_FOLDERS:
        return folder or item.folder, "manager", item.url, item.size, ref.sha256, None
    return folder, None, None, None, ref.sha256, None


def model_lines(settings: Settings, client: redis.Redis | None, refs: list[Ref], found: Sources) -> list[ModelLine]:
    lines: list[ModelLine] = []
    wants: list[tuple[ModelLine, Want]] = []
    for ref in refs:
        try:
            name = check_model_name(ref.name)
        except ValueError as exc:
            lines.append(ModelLine(ref.name, ref.folder, ref.nodes, "invalid", message=f"refused: {exc}"))
            continue
        folder, source, url, size, sha256, preset_id = _resolve(
            Ref(name, ref.folder, ref.nodes, ref.url, ref.sha256), found
        )
        line = ModelLine(name, folder, ref.nodes, "missing", source, url, sha256, size, preset_id)
        if ref.url and source != "workflow":
            line.message = f"the workflow's URL {ref.url[:200]!r} is not http(s): ignored"
        if folder is None:
            line.state, line.message = "invalid", "no folder known for this node's files: download it by hand"
        elif folder not in ALL_FOLDERS:
            line.state, line.message = "invalid", f"folder {folder!r} is not one ComfyUI knows: nothing will be written"
        else:
            wants.append((line, Want(folder, name, size if source == "preset" else None, sha256)))
        if url:
            line.gated = _gate(settings, url, found.gated_repos)
        elif line.state != "invalid":
            line.message = line.message or NO_SOURCE
        lines.append(line)
    states = presets.file_states(settings, client, [w for _, w in wants])  # type: ignore[arg-type]
    for line, want in wants:
        line.state = states[want.key]
    return lines


def pack_lines(found: list[Node], known: set[str] | None, manager: catalog.Manager) -> list[PackLine]:
    """The node types ComfyUI lacks, grouped by the pack that provides them."""
    # A type saved as ComfyUI's own on one node is so on every node (older saves leave `cnr_id` out).
    core_types = {node.type for node in found if _core(node)}
    missing: dict[str, Node] = {}
    for node in found:
        if known is not None and node.type in known:
            continue
        if known is None and (node.type in manager.core or node.type in core_types):
            continue  # ComfyUI is not answering: assume its own classes are there
        missing.setdefault(node.type, node)
    by_pack: dict[str | None, PackLine] = {}
    for kind, node in sorted(missing.items()):
        urls = list(dict.fromkeys(manager.classes.get(kind, []) + [u for p, u in manager.patterns if p.search(kind)]))
        if kind in manager.core or kind in core_types:
            line = by_pack.setdefault("core", PackLine([], catalog.CORE_REPOSITORY, "ComfyUI", core=True))
            saved = f" (it was saved with ComfyUI {node.properties['ver']})" if node.properties.get("ver") else ""
            line.message = f"core nodes this ComfyUI does not have: the workflow needs a newer ComfyUI{saved}"
            line.node_types.append(kind)
            continue
        url = _pick(urls, node, manager)
        if url is None and known is None:
            continue  # neither ComfyUI (not answering) nor Manager's map can tell: said once, in `nodes_checked`
        if url is None:
            line = by_pack.setdefault(None, PackLine([], None, None))
            line.message = "no node pack known to provide these: install the pack by hand (see the workflow's notes)"
            line.node_types.append(kind)
            continue
        pack = manager.packs.get(url)
        line = by_pack.setdefault(url, PackLine([], url, pack.title if pack else url))
        line.node_types.append(kind)
        line.alternatives = max(line.alternatives, len(urls) - 1)
        ver = str(node.properties.get("ver") or "")
        if re.fullmatch(r"[0-9a-f]{7,40}", ver) and line.commit is None:
            line.commit = ver
    return list(by_pack.values())


def _core(node: Node) -> bool:
    """The UI format names each node's pack: `comfy-core` is ComfyUI itself."""
    return node.properties.get("cnr_id") == "comfy-core"


def _pick(urls: list[str], node: Node, manager: catalog.Manager) -> str | None:
    """The pack the workflow's author used (its `cnr_id` / `aux_id`), else the most starred."""
    if not urls:
        return None
    cnr, aux = str(node.properties.get("cnr_id") or ""), str(node.properties.get("aux_id") or "")
    for url in urls:
        pack = manager.packs.get(url)
        if (pack and cnr and pack.id == cnr) or (aux and url.lower().endswith("/" + aux.lower())):
            return url
    return max(urls, key=lambda u: manager.packs[u].stars if u in manager.packs else 0)


def free_space(settings: Settings) -> int:
    try:
        return shutil.disk_usage(settings.paths.models if settings.paths.models.exists() else settings.workspace).free
    except OSError:
        return 0


def analyze(settings: Settings, client: redis.Redis | None, workflow: Workflow, known: set[str] | None) -> Analysis:
    found = nodes(workflow)
    refs, problems = models(found)
    found_sources = sources(settings)
    if known is None:
        problems.append("ComfyUI is not answering: node types were checked against ComfyUI-Manager's map only")
    if not found_sources.manager.found:
        problems.append("ComfyUI-Manager's lists are not installed in ComfyUI's venv: fewer sources and node packs")
    return Analysis(
        workflow.format,
        workflow.source,
        model_lines(settings, client, refs, found_sources),
        pack_lines(found, known, found_sources.manager),
        known is not None,
        problems,
        free_space(settings),
    )


def template_path(settings: Settings, name: str) -> Path | None:
    item = catalog.template(settings, name)
    return item.path if item else None
