"""The HTML pages: server-rendered with the same functions as the API; actions are API calls via htmx."""

from __future__ import annotations

import redis
from flask import Blueprint, render_template, request

from services.common import credentials, gpu, instances, jobs, modelcache, presets
from services.common.errors import Problem, Unavailable
from services.common.workflows import catalog
from services.common.workflows import install as workflow_installs
from services.dashboard import state, workflows
from services.dashboard.auth import error
from services.dashboard.context import client, settings

bp = Blueprint("pages", __name__)


def _page(template: str, **context: object) -> str:
    return render_template(template, settings=settings(), comfyui_up=_comfyui_up(), **context)


def _comfyui_up() -> bool | None:
    """What the last health round said of ComfyUI (one Redis read): the header's link says when it is down."""
    try:
        check = state.health(client())["checks"].get("comfyui")
    except (redis.RedisError, OSError, Unavailable):
        return None
    return None if check is None else check["status"] == "ok"  # warn: starting, or not installed


@bp.errorhandler(redis.RedisError)
@bp.errorhandler(Unavailable)
def reconnecting(exc: Exception):
    # A Redis stopped by hand stays stopped: "the stack restarts it" would be untrue then.
    stopped = state.program_state(settings(), "redis") in ("STOPPED", "EXITED", "FATAL")
    return render_template("reconnecting.html", settings=settings(), message=str(exc), redis_stopped=stopped), 503


@bp.get("/")
def overview():
    return _page("overview.html", status=state.status(settings(), client()))


@bp.get("/services")
def services():
    return _page("services.html", services=state.services(settings()))


@bp.get("/logs")
@bp.get("/logs/<name>")
def logs(name: str | None = None):
    if name not in state.known_logs(settings()):
        name = instances.programs(settings())[0]  # the first ComfyUI's
    return _page("logs.html", name=name, names=state.log_names(settings()), lines=state.log_tail(settings(), name, 300))


@bp.get("/downloads")
def downloads():
    return _page(
        "downloads.html",
        downloads=jobs.all_seen(client()),
        folders=state.folders(),
        # Queued jobs with no worker to run them must say so, not sit at "queued".
        worker_state=state.program_state(settings(), "worker"),
    )


@bp.get("/presets")
def presets_page():
    catalogue = presets.load(settings())
    listed = presets.list_presets(
        settings(), client(), request.args.get("category") or None, None, request.args.get("q") or None, catalogue
    )
    return _page(
        "presets.html",
        presets=state.with_failures(client(), listed),
        # The largest GPU's memory, against each preset's vram_gb (None without a GPU).
        gpu_memory=max((g.memory_total for g in gpu.probe().gpus), default=None),
        errors=catalogue.errors,
        category=request.args.get("category", ""),
        q=request.args.get("q", ""),
    )


@bp.get("/models")
@bp.get("/models/<folder>")
def models(folder: str = "checkpoints"):
    if folder not in state.folders():
        folder = "checkpoints"
    return _page(
        "models.html",
        folder=folder,
        folders=state.folders(),
        models=state.models(settings(), folder),
        cache=modelcache.summary(settings()),
    )


@bp.get("/settings")
def settings_page():
    effective = credentials.effective(settings())
    return _page(
        "settings.html",
        hf=effective.hf_token is not None,
        civitai=effective.civitai_token is not None,
        tokens=credentials.api_tokens(settings()),
    )


@bp.get("/workflows")
def workflows_page():
    return _page(
        "workflows.html",
        templates=workflows.template_states(),
        templates_installed=catalog.templates_dir(settings()) is not None,
    )


@bp.post("/workflows/analyze")
def workflow_analysis():
    try:
        name, found = workflows.analysis_of_request()
    except Problem as exc:  # shown in the form's error line, as the API's errors are
        return error(exc.code, exc.message, exc.status)
    return render_template("partials/workflow_analysis.html", name=name, a=found)


@bp.post("/workflows/install")
def workflow_install():
    try:
        view = workflows.install_of_request()
    except Problem as exc:
        return error(exc.code, exc.message, exc.status)
    return render_template("partials/workflow_install.html", i=view)


@bp.get("/workflows/installs/<install_id>")
def workflow_install_view(install_id: str):
    record = workflow_installs.get(client(), install_id)
    if record is None:
        return error("not_found", f"no workflow install {install_id!r}", 404)
    return render_template("partials/workflow_install.html", i=workflow_installs.view(client(), record))
