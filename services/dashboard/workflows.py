"""The workflow routes under /api/workflows: analyse a workflow, install what it lacks, follow the install,
and ComfyUI's own templates with their state. Documented in openapi.yaml."""

from __future__ import annotations

import threading

from flask import Blueprint, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from services.common import bus, comfyui, credentials, messages
from services.common.errors import BadInput, NotFound, Problem
from services.common.workflows import analyze, catalog, formats, install, refs
from services.dashboard.auth import error
from services.dashboard.context import client, send, send_packs, settings

bp = Blueprint("workflows", __name__, url_prefix="/api/workflows")

# Keys of the JSON wrapper; a JSON body without them is the workflow itself.
WRAPPER = {"workflow", "template", "name", "commits"}


@bp.errorhandler(Problem)
def problem(exc: Problem):
    return error(exc.code, exc.message, exc.status)


@bp.before_request
def allow_large_bodies():
    # Workflows and the images that carry them are larger than the API's other bodies.
    request.max_content_length = formats.MAX_BYTES
    request.max_form_memory_size = formats.MAX_BYTES
    if request.content_length is not None and request.content_length > formats.MAX_BYTES:
        raise Problem(formats.too_large(request.content_length).message, code="too_large", status=413)


def _read() -> tuple[formats.Workflow, str, dict]:
    """The workflow of this request (a JSON body, a JSON wrapper, a form's file or text, or the raw bytes
    of an image), its name, and the wrapper's options."""
    try:
        if request.mimetype == "multipart/form-data":
            return _from_form()
        raw = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise Problem(formats.too_large(formats.MAX_BYTES + 1).message, code="too_large", status=413) from None
    if request.mimetype == "application/json" and raw.lstrip().startswith(b"{"):
        data = formats.parse_json(raw)
        if isinstance(data, dict) and data and set(data) <= WRAPPER:
            return _from_wrapper(data)
        return formats.from_data(data), "workflow", {}
    return formats.read(raw), "workflow", {}


def _from_wrapper(data: dict) -> tuple[formats.Workflow, str, dict]:
    name = data.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise BadInput("name: a label for the workflow, up to 200 characters")
    options = {"commits": install.check_commits(data.get("commits"))}
    if "template" in data:
        return _template(data["template"]) + (options,)
    workflow = data.get("workflow")
    if isinstance(workflow, str):
        return formats.from_json(workflow, "json"), name or "workflow", options
    if workflow is None:
        raise BadInput("workflow: give the workflow (its JSON), or template: the name of one of ComfyUI's templates")
    return formats.from_data(workflow), name or "workflow", options


def _from_form() -> tuple[formats.Workflow, str, dict]:
    if template := request.form.get("template"):
        return _template(template) + ({},)
    upload = request.files.get("file")
    if upload is not None and upload.filename:
        return formats.read(upload.read(formats.MAX_BYTES + 1)), upload.filename, {}
    text = request.form.get("workflow", "")
    if not text.strip():
        raise BadInput("drop a workflow file (JSON, or a PNG/WebP/FLAC that ComfyUI saved) or paste its JSON")
    return formats.read(text.encode()), "pasted workflow", {}


def _template(name: object) -> tuple[formats.Workflow, str]:
    if not isinstance(name, str) or not name:
        raise BadInput("template: the name of one of ComfyUI's templates")
    item = catalog.template(settings(), name)
    if item is None:
        raise NotFound(f"no template {name[:100]!r} in the ComfyUI installed here")
    return formats.read(item.path.read_bytes()), item.title


def _analysis(workflow: formats.Workflow) -> analyze.Analysis:
    return analyze.analyze(credentials.effective(settings()), client(), workflow, comfyui.node_types(settings()))


@bp.post("/analyze")
def analyze_workflow():
    name, found = analysis_of_request()
    return jsonify({"name": name, **found})


@bp.post("/install")
def install_workflow():
    response = jsonify(install_of_request())
    response.status_code = 202
    return response


@bp.get("/installs")
def list_installs():
    records = [e for e in _snapshot() if isinstance(e, messages.WorkflowInstall)]
    records.sort(key=lambda r: r.created, reverse=True)
    return jsonify(installs=[install.view(client(), r) for r in records[:50]])


def _snapshot() -> list:
    return list(bus.snapshot(client(), messages.WorkflowInstall.kind).values())


@bp.get("/installs/<install_id>")
def show_install(install_id: str):
    record = install.get(client(), install_id)
    if record is None:
        raise NotFound(f"no workflow install {install_id!r}")
    return jsonify(install.view(client(), record))


class _TemplateRefs:
    """Each template's model references, read once per change of the templates (they are ~30 MB of JSON);
    their state is read from the volume on every request."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.refs: dict[str, list[refs.Ref]] = {}
        self.lock = threading.Lock()

    def get(self, items: list[catalog.Template]) -> dict[str, list[refs.Ref]]:
        key = tuple((t.name, str(t.path)) for t in items)
        with self.lock:
            if key != self.key:
                found = {}
                for t in items:
                    try:
                        found[t.name] = refs.models(refs.nodes(formats.read(t.path.read_bytes())))[0]
                    except (Problem, OSError):
                        continue  # not a workflow (an index beside them): not listed
                self.key, self.refs = key, found
            return self.refs


_template_refs = _TemplateRefs()


def template_states() -> list[dict]:
    """ComfyUI's templates, each with how many of its models are missing from the volume."""
    s = settings()
    items = catalog.templates(s)
    found = _template_refs.get(items)
    sources = analyze.sources(s)
    out = []
    for t in items:
        if t.name not in found:
            continue
        lines = analyze.model_lines(s, client(), found[t.name], sources)
        missing = [m for m in lines if m.state not in ("verified", "present")]
        out.append(
            {
                "name": t.name,
                "title": t.title,
                "category": t.category,
                "models": len(lines),
                "missing": len(missing),
                "bytes_to_download": sum(m.size or 0 for m in missing),
                "state": "ready" if not missing else "missing",
            }
        )
    return out


@bp.get("/templates")
def list_templates():
    return jsonify(templates=template_states(), installed=catalog.templates_dir(settings()) is not None)


def analysis_of_request() -> tuple[str, dict]:
    """For the page: the request's workflow analysed (name, the API's answer)."""
    workflow, name, _options = _read()
    return name, _analysis(workflow).as_dict(settings().downloads_reserve_mb << 20)


def install_of_request() -> dict:
    """For the page: the request's workflow installed (the install's view)."""
    workflow, name, options = _read()
    record = install.start(
        credentials.effective(settings()),
        client(),
        _analysis(workflow),
        name,
        options.get("commits", {}),
        send,
        send_packs,
    )
    return install.view(client(), record)
