"""`POST /api/prompt`: one address for every ComfyUI of the pod (one per GPU with COMFYUI_GPUS).

The body is what ComfyUI's own `POST /prompt` takes (`{"prompt": {...}, "client_id": ...}`); it goes to
the ComfyUI with the shortest queue, and the answer is ComfyUI's, plus which instance took it and its
public port, where the client follows the prompt (`/ws?clientId=...`, `/history/<prompt_id>`).
Documented in openapi.yaml.

Choosing and sending happen under one lock file shared by the dashboard's workers: two prompts sent at
the same moment would otherwise both see the same queue lengths and go to the same ComfyUI.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from flask import Blueprint, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from services.common import comfyui
from services.common.errors import BadInput, Problem, Unavailable
from services.common.files import locked
from services.common.instances import Instance
from services.common.settings import Settings
from services.common.workflows import formats
from services.dashboard.auth import error
from services.dashboard.context import settings

bp = Blueprint("router", __name__, url_prefix="/api")

# ComfyUI validates a prompt before it answers: a large one takes a moment.
SEND_TIMEOUT = 30.0


@bp.errorhandler(Problem)
def problem(exc: Problem):
    return error(exc.code, exc.message, exc.status)


@bp.post("/prompt")
def prompt():
    raw, data = _body()
    if not isinstance(data.get("prompt"), dict) or not data["prompt"]:
        raise BadInput(
            'prompt: ComfyUI\'s API-format prompt, an object of nodes ({"1": {"class_type": ..., "inputs": {...}}});'
            " ComfyUI's menu saves one with Export (API)"
        )
    s = settings()
    with locked(s.run_dir / "prompt-router.lock", mode=0o600):
        queues = comfyui.ask_each(s, lambda i: comfyui.queue_remaining(i.url(s)))
        answering = [(length, i.index, i) for i, length in queues if length is not None]
        if not answering:
            raise Unavailable("no ComfyUI is answering (starting, or down): see the overview and the comfyui logs")
        length, _, chosen = min(answering, key=lambda item: item[:2])
        status, answer = _send(s, chosen, raw)
    seen = {i.program: n for i, n in queues}
    where = {"instance": chosen.program, "port": chosen.public_port, "queues": seen}
    if status == 400:
        said = answer.get("error")
        reason = (said.get("message") if isinstance(said, dict) else None) or "see node_errors"
        refused = {"code": "prompt_refused", "message": f"{chosen.program} refused the prompt: {reason}"}
        return jsonify({"error": refused, "node_errors": answer.get("node_errors", {}), **where}), 400
    return jsonify({**answer, **where})


def _body() -> tuple[bytes, dict]:
    """The body as sent (passed on unchanged) and as read."""
    request.max_content_length = formats.MAX_BYTES  # a prompt may carry images inline
    try:
        raw = request.get_data(cache=False)
    except RequestEntityTooLarge:
        limit = f"the most accepted is {formats.MAX_BYTES // 2**20} MiB"
        raise Problem(f"the prompt is too large: {limit}", code="too_large", status=413) from None
    data = formats.parse_json(raw, "the prompt")
    if not isinstance(data, dict):
        raise BadInput('send a JSON object, as to ComfyUI\'s own /prompt: {"prompt": {...}, "client_id": "..."}')
    return raw, data


def _send(s: Settings, instance: Instance, payload: bytes) -> tuple[int, dict]:
    url = instance.url(s) + "/prompt"  # http on loopback, built here
    headers = {"Content-Type": "application/json"}
    sent = urllib.request.Request(url, data=payload, method="POST", headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(sent, timeout=SEND_TIMEOUT) as response:  # noqa: S310
            return response.status, _json(response.read(8 << 20))
    except urllib.error.HTTPError as exc:
        if exc.code == 400:  # ComfyUI's own refusal: which node, which input
            return 400, _json(exc.read(8 << 20))
        raise Unavailable(f"{instance.program} answered {exc.code} to the prompt: see its log") from None
    except OSError as exc:
        raise Unavailable(f"{instance.program} stopped answering ({exc}): send the prompt again") from None


def _json(raw: bytes) -> dict:
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
