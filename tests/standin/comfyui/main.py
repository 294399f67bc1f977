"""A ComfyUI stand-in for tests: takes ComfyUI's flags and answers its API like ComfyUI 0.33 does.

Faithful to the real ComfyUI 0.33 as docs/comfyui.md describes it: the port opens only when start-up
is done, a taken port is found only after start-up (exit 1), SIGINT stops cleanly ("Stopped server"),
SIGTERM kills at once, a bad extra_model_paths.yaml exits 1, every route answers at /path and /api/path
(the WebSocket and the page at / too), uploads go to the input folder, browsers from other sites get a
403, custom nodes are loaded (and fail, and end the process) as ComfyUI loads them, with its log lines,
models are listed from the real folders.

Test knobs (environment): STANDIN_STARTUP_SECONDS (start-up time, default 1), STANDIN_STARTUP_CPU_SECONDS
(CPU time spent before the port opens, default 0), STANDIN_FAIL_STATUS (every HTTP route answers this
status), STANDIN_STEP_SECONDS (time per node).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import signal
import socket
import struct
import sys
import time
import traceback
import urllib.parse
import uuid
import zlib
from pathlib import Path

import folder_paths  # beside this file, as ComfyUI's own is beside its main.py
import yaml
from aiohttp import WSMsgType, web

VERSION = "0.33.0"
HERE = Path(__file__).resolve().parent

FOLDER_TYPES = [
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "latent_upscale_models",
    "custom_nodes",
    "datasets",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
    "background_removal",
    "frame_interpolation",
    "geometry_estimation",
    "optical_flow",
    "detection",
]
LEGACY = {"unet": "diffusion_models", "clip": "text_encoders"}
MODEL_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}

# The node classes this stand-in knows, with their required inputs and whether they are outputs.
NODES = {
    "CheckpointLoaderSimple": {"inputs": {"ckpt_name": "checkpoints"}, "output": False},
    "CLIPTextEncode": {"inputs": {}, "output": False},
    "EmptyLatentImage": {"inputs": {}, "output": False},
    "KSampler": {"inputs": {}, "output": False},
    "VAEDecode": {"inputs": {}, "output": False},
    "SaveImage": {"inputs": {}, "output": True},
    "PreviewImage": {"inputs": {}, "output": True},
}


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--listen", default="127.0.0.1", nargs="?", const="0.0.0.0,::")
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--base-directory")
    p.add_argument("--output-directory")
    p.add_argument("--input-directory")
    p.add_argument("--user-directory")
    p.add_argument("--temp-directory")
    p.add_argument("--models-directory")
    p.add_argument("--extra-model-paths-config", nargs="+", action="append")
    p.add_argument("--database-url")
    p.add_argument("--disable-all-custom-nodes", action="store_true")
    p.add_argument("--whitelist-custom-nodes", nargs="+", default=[])
    p.add_argument("--enable-manager", action="store_true")
    p.add_argument("--log-stdout", action="store_true")
    p.add_argument("--verbose", nargs="?", const="DEBUG")
    p.add_argument("--disable-mmap", action="store_true")  # as ComfyUI: read safetensors whole
    p.add_argument("--cuda-device", metavar="DEVICE_ID")  # as ComfyUI: it sets CUDA_VISIBLE_DEVICES to it
    return p.parse_args(argv)


class Folders:
    def __init__(self, base: Path) -> None:
        self.paths: dict[str, list[str]] = {t: [str(base / "models" / t)] for t in FOLDER_TYPES}
        self.paths["custom_nodes"] = [str(base / "custom_nodes")]

    def add(self, kind: str, path: str, is_default: bool) -> None:
        kind = LEGACY.get(kind, kind)
        entries = self.paths.setdefault(kind, [])
        if is_default:
            entries.insert(0, path)
        else:
            entries.append(path)

    def load_yaml(self, yaml_path: Path) -> None:
        """As ComfyUI's utils.extra_config.load_extra_path_config: exceptions end start-up."""
        with open(yaml_path) as stream:
            config = yaml.safe_load(stream)
        yaml_dir = os.path.dirname(os.path.abspath(yaml_path))
        for c in config:
            conf = config[c]
            if conf is None:
                continue
            base_path = None
            if "base_path" in conf:
                base_path = conf.pop("base_path")
                base_path = os.path.expandvars(os.path.expanduser(base_path))
                if not os.path.isabs(base_path):
                    base_path = os.path.abspath(os.path.join(yaml_dir, base_path))
            is_default = False
            if "is_default" in conf:
                is_default = conf.pop("is_default")
            for x in conf:
                for y in conf[x].split("\n"):
                    if len(y) == 0:
                        continue
                    full_path = y
                    if base_path:
                        full_path = os.path.join(base_path, full_path)
                    elif not os.path.isabs(full_path):
                        full_path = os.path.abspath(os.path.join(yaml_dir, y))
                    self.add(x, os.path.normpath(full_path), bool(is_default))

    def files(self, kind: str) -> list[str]:
        names: set[str] = set()
        for root in self.paths.get(kind, []):
            if not os.path.isdir(root):
                continue
            for dirpath, _dirs, filenames in os.walk(root, followlinks=True):
                for name in filenames:
                    if kind in ("configs",) and not name.endswith(".yaml"):
                        continue
                    if kind not in ("configs", "classifiers") and kind in FOLDER_TYPES:
                        if os.path.splitext(name)[1].lower() not in MODEL_EXTENSIONS:
                            continue
                    rel = os.path.relpath(os.path.join(dirpath, name), root)
                    names.add(rel)
        return sorted(names)

    def file_infos(self, kind: str) -> list[dict]:
        out = []
        for index, root in enumerate(self.paths.get(kind, [])):
            for rel in self.files_in(root, kind):
                st = os.stat(os.path.join(root, rel))
                out.append(
                    {
                        "name": rel,
                        "pathIndex": index,
                        "modified": st.st_mtime,
                        "created": st.st_ctime,
                        "size": st.st_size,
                    }
                )
        return out

    def files_in(self, root: str, kind: str) -> list[str]:
        saved = self.paths
        self.paths = {kind: [root]}
        try:
            return self.files(kind)
        finally:
            self.paths = saved


def tiny_png() -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"\x00\x00\x00\x00"
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


class Server:
    def __init__(self, args: argparse.Namespace, folders: Folders, base: Path) -> None:
        self.args = args
        self.folders = folders
        self.output = Path(args.output_directory or base / "output")
        self.input = Path(args.input_directory or base / "input")
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.queue: list[list] = []
        self.running: list | None = None
        self.history: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}
        self.number = 0
        self.logs: list[dict] = []
        self.fail_status = int(os.environ.get("STANDIN_FAIL_STATUS", "0") or 0)
        self.step_seconds = float(os.environ.get("STANDIN_STEP_SECONDS", "0.05"))
        self.wake = asyncio.Event()

    # --- helpers
    def queue_remaining(self) -> int:
        return len(self.queue) + (1 if self.running else 0)

    def status_message(self, sid: str | None = None) -> dict:
        data: dict = {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}}
        if sid:
            data["sid"] = sid
        return {"type": "status", "data": data}

    async def send(self, message: dict, client_id: str | None = None) -> None:
        targets = [self.sockets[client_id]] if client_id in self.sockets else []
        if client_id is None:
            targets = list(self.sockets.values())
        for ws in targets:
            if not ws.closed:
                await ws.send_str(json.dumps(message))

    # --- routes
    @web.middleware
    async def origin_middleware(self, request: web.Request, handler):
        # ComfyUI's own guard (without --enable-cors-header): a browser request from another site is a
        # bare 403, and on a loopback Host a foreign Origin is too.
        if request.headers.get("Sec-Fetch-Site") == "cross-site":
            return web.Response(status=403)
        host, origin = request.headers.get("Host", ""), request.headers.get("Origin")
        hostname = host.rsplit(":", 1)[0].strip("[]")
        if origin and hostname in ("localhost", "127.0.0.1", "::1"):
            parsed = urllib.parse.urlsplit(origin)
            if (parsed.netloc if parsed.port else parsed.hostname) != (host if parsed.port else hostname):
                return web.Response(status=403)
        if request.method == "OPTIONS":
            return web.Response()
        return await handler(request)

    @web.middleware
    async def fail_middleware(self, request: web.Request, handler):
        if self.fail_status and request.path != "/ws":
            return web.Response(status=self.fail_status, text="500 Internal Server Error")
        return await handler(request)

    async def system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "system": {
                    "os": sys.platform,
                    "ram_total": 24 * 1024**3,
                    "ram_free": 20 * 1024**3,
                    "comfyui_version": VERSION,
                    "required_frontend_version": "1.28.6",
                    "python_version": sys.version,
                    "pytorch_version": "2.9.1+cpu",
                    "embedded_python": False,
                    "argv": sys.argv,
                },
                "devices": [
                    {
                        "name": "cpu" if self.args.cpu else "cuda:0 stand-in",
                        "type": "cpu" if self.args.cpu else "cuda",
                        "index": None if self.args.cpu else 0,
                        "vram_total": 0,
                        "vram_free": 0,
                        "torch_vram_total": 0,
                        "torch_vram_free": 0,
                    }
                ],
            }
        )

    async def get_queue(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "queue_running": [self.running] if self.running else [],
                "queue_pending": list(self.queue),
            }
        )

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            for item in self.queue:
                self.jobs[item[1]]["status"] = "cancelled"
            self.queue.clear()
        for prompt_id in body.get("delete", []):
            self.queue = [q for q in self.queue if q[1] != prompt_id]
        await self.send(self.status_message())
        return web.Response(status=200)

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": self.queue_remaining()}})

    def validate(self, prompt: dict) -> tuple[dict | None, dict]:
        outputs = []
        node_errors: dict = {}
        for node_id, node in prompt.items():
            class_type = node.get("class_type") if isinstance(node, dict) else None
            if class_type not in NODES:
                return (
                    {
                        "type": "missing_node_type",
                        "message": f"Node '{class_type}' not found. The custom node may not be installed.",
                        "details": f"Node ID '#{node_id}'",
                        "extra_info": {"node_id": node_id, "class_type": class_type},
                    },
                    {},
                )
            if NODES[class_type]["output"]:
                outputs.append(node_id)
            for name, kind in NODES[class_type]["inputs"].items():
                value = node.get("inputs", {}).get(name)
                allowed = self.folders.files(kind)
                if value not in allowed:
                    node_errors[node_id] = {
                        "errors": [
                            {
                                "type": "value_not_in_list",
                                "message": "Value not in list",
                                "details": f"{name}: '{value}' not in {allowed}",
                                "extra_info": {"input_name": name, "input_config": [allowed], "received_value": value},
                            }
                        ],
                        "dependent_outputs": [],
                        "class_type": class_type,
                    }
        if not outputs:
            return (
                {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}},
                {},
            )
        if node_errors:
            return (
                {
                    "type": "prompt_outputs_failed_validation",
                    "message": "Prompt outputs failed validation",
                    "details": "",
                    "extra_info": {},
                },
                node_errors,
            )
        return None, {}

    @staticmethod
    def prompt_error(kind: str, message: str) -> web.Response:
        error = {"type": kind, "message": message, "details": message, "extra_info": {}}
        return web.json_response({"error": error, "node_errors": {}}, status=400)

    async def post_prompt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        prompt = body.get("prompt") if isinstance(body, dict) else None
        if not prompt:
            return self.prompt_error("no_prompt", "No prompt provided")
        if "prompt_id" in body and not isinstance(body["prompt_id"], str):
            return self.prompt_error("invalid_prompt_id", "Invalid prompt_id")
        error, node_errors = self.validate(prompt)
        if error:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        prompt_id = body.get("prompt_id") or str(uuid.uuid4())
        number = self.number
        self.number += 1
        extra = {"client_id": body.get("client_id")}
        self.queue.append(
            [number, prompt_id, prompt, extra, [k for k, v in prompt.items() if NODES[v["class_type"]]["output"]]]
        )
        self.jobs[prompt_id] = {
            "id": prompt_id,
            "status": "pending",
            "create_time": int(time.time() * 1000),
            "execution_start_time": None,
            "execution_end_time": None,
            "outputs_count": 0,
            "preview_output": None,
        }
        self.wake.set()
        await self.send(self.status_message())
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": {}})

    async def executor(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                item = self.queue.pop(0)
                self.running = item
                await self.run(item)
                self.running = None
                await self.send(self.status_message())

    async def run(self, item: list) -> None:
        number, prompt_id, prompt, extra, output_nodes = item
        client = extra.get("client_id")
        job = self.jobs[prompt_id]
        job.update(status="in_progress", execution_start_time=int(time.time() * 1000))
        await self.send(self.status_message())
        await self.send(
            {"type": "execution_start", "data": {"prompt_id": prompt_id, "timestamp": job["execution_start_time"]}},
            client,
        )
        await self.send({"type": "execution_cached", "data": {"nodes": [], "prompt_id": prompt_id}}, client)
        outputs: dict = {}
        for node_id, node in prompt.items():
            await self.send(
                {"type": "executing", "data": {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}},
                client,
            )
            if node["class_type"] == "KSampler":
                for step in range(1, 4):
                    await asyncio.sleep(self.step_seconds)
                    await self.send(
                        {
                            "type": "progress",
                            "data": {"value": step, "max": 3, "prompt_id": prompt_id, "node": node_id},
                        },
                        client,
                    )
            await asyncio.sleep(self.step_seconds)
            if NODES[node["class_type"]]["output"]:
                # As SaveImage: ComfyUI's folder_paths names the file (a wrapper the stack installs may prefix it).
                self.output.mkdir(parents=True, exist_ok=True)
                prefix = node.get("inputs", {}).get("filename_prefix") or "ComfyUI"
                folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, str(self.output))
                name = f"{filename}_{counter:05}_.png"
                (Path(folder) / name).write_bytes(tiny_png())
                outputs[node_id] = {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}]}
                await self.send(
                    {
                        "type": "executed",
                        "data": {
                            "node": node_id,
                            "display_node": node_id,
                            "output": outputs[node_id],
                            "prompt_id": prompt_id,
                        },
                    },
                    client,
                )
        end = int(time.time() * 1000)
        await self.send({"type": "execution_success", "data": {"prompt_id": prompt_id, "timestamp": end}}, client)
        self.history[prompt_id] = {
            "prompt": item,
            "outputs": outputs,
            "status": {
                "status_str": "success",
                "completed": True,
                # Each with the time ComfyUI added it (ms).
                "messages": [
                    ["execution_start", {"prompt_id": prompt_id, "timestamp": job["execution_start_time"]}],
                    ["execution_success", {"prompt_id": prompt_id, "timestamp": end}],
                ],
            },
        }
        first = next(iter(outputs.values()), {}).get("images", [None])[0]
        job.update(status="completed", execution_end_time=end, outputs_count=len(outputs), preview_output=first)
        self.running = None
        await self.send(self.status_message())
        await self.send({"type": "executing", "data": {"node": None, "prompt_id": prompt_id}}, client)

    async def get_history(self, request: web.Request) -> web.Response:
        # As ComfyUI: without an offset, max_items means the last ones.
        items = list(self.history.items())
        max_items = int(request.query["max_items"]) if "max_items" in request.query else None
        offset = int(request.query.get("offset", -1))
        if offset < 0 and max_items is not None:
            offset = len(items) - max_items
        items = items[max(offset, 0) :]
        return web.json_response(dict(items[:max_items] if max_items is not None else items))

    async def get_history_id(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        return web.json_response({prompt_id: self.history[prompt_id]} if prompt_id in self.history else {})

    async def post_history(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.history.clear()
        for prompt_id in body.get("delete", []):
            self.history.pop(prompt_id, None)
        return web.Response(status=200)

    async def api_jobs(self, request: web.Request) -> web.Response:
        jobs = list(self.jobs.values())
        if "status" in request.query:
            wanted = set(request.query["status"].split(","))
            jobs = [j for j in jobs if j["status"] in wanted]
        offset = int(request.query.get("offset", 0))
        limit = int(request.query.get("limit", 100))
        page = jobs[offset : offset + limit]
        return web.json_response(
            {
                "jobs": page,
                "pagination": {
                    "offset": offset,
                    "limit": limit,
                    "total": len(jobs),
                    "has_more": offset + limit < len(jobs),
                },
            }
        )

    async def interrupt(self, request: web.Request) -> web.Response:
        if self.running:
            await self.send(
                {
                    "type": "execution_interrupted",
                    "data": {"prompt_id": self.running[1], "node_id": None, "node_type": None, "executed": []},
                }
            )
        return web.Response(status=200)

    async def free(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(sorted(k for k in self.folders.paths if k not in LEGACY))

    async def models_type(self, request: web.Request) -> web.Response:
        kind = request.match_info["folder"]
        if kind not in self.folders.paths or kind in LEGACY:
            return web.Response(status=404)
        return web.json_response(self.folders.files(kind))

    async def experiment_models(self, request: web.Request) -> web.Response:
        kind = request.match_info["folder"]
        if kind not in self.folders.paths:
            return web.Response(status=404)
        return web.json_response(self.folders.file_infos(kind))

    async def embeddings(self, request: web.Request) -> web.Response:
        return web.json_response([os.path.splitext(f)[0] for f in self.folders.files("embeddings")])

    async def extensions(self, request: web.Request) -> web.Response:
        return web.json_response([])

    async def features(self, request: web.Request) -> web.Response:
        return web.json_response({"supports_preview_metadata": True, "max_upload_size": 104857600})

    async def object_info(self, request: web.Request) -> web.Response:
        info = {name: {"name": name, "output_node": False} for name in core_classes()}
        info.update({name: {"name": name, "output_node": spec["output"]} for name, spec in NODES.items()})
        return web.json_response(info)

    async def logs_raw(self, request: web.Request) -> web.Response:
        return web.json_response({"entries": self.logs, "size": {"cols": 80, "rows": 24}})

    async def view(self, request: web.Request) -> web.Response:
        kind = request.query.get("type", "output")
        root = {"output": self.output, "input": self.input}.get(kind)
        name = request.query.get("filename", "")
        if root is None or not name or "/" in name or name.startswith("."):
            return web.Response(status=404)
        path = root / request.query.get("subfolder", "") / name
        if not path.resolve().is_relative_to(root.resolve()) or not path.is_file():
            return web.Response(status=404)
        return web.FileResponse(path)

    async def index(self, request: web.Request) -> web.Response:
        # The real one serves the frontend's index.html, never cached.
        page = "<!doctype html><html><head><title>ComfyUI</title></head><body><div id='vue-app'></div></body></html>"
        headers = {"Cache-Control": "no-store, must-revalidate", "Pragma": "no-cache", "Expires": "0"}
        return web.Response(text=page, content_type="text/html", headers=headers)

    async def upload_image(self, request: web.Request) -> web.Response:
        # Like ComfyUI: multipart field `image`, optional `type` (input, default), `subfolder`, `overwrite`;
        # a name already taken gets " (1)"; a path out of the folder or no file is a bare 400.
        post = await request.post()
        image = post.get("image")
        if not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400)
        kind = post.get("type") or "input"
        root = {"output": self.output, "input": self.input}.get(str(kind), self.input)
        subfolder = str(post.get("subfolder", ""))
        folder = (root / os.path.normpath(subfolder)).resolve()
        target = (folder / image.filename).resolve()
        if os.path.commonpath((root.resolve(), target)) != str(root.resolve()):
            return web.Response(status=400)
        folder.mkdir(parents=True, exist_ok=True)
        name = image.filename
        if str(post.get("overwrite", "")) not in ("true", "1"):
            stem, ext = os.path.splitext(image.filename)
            i = 1
            while (folder / name).exists():
                name = f"{stem} ({i}){ext}"
                i += 1
        with open(folder / name, "wb") as out:
            while chunk := image.file.read(1 << 20):
                out.write(chunk)
        return web.json_response({"name": name, "subfolder": subfolder, "type": str(kind)})

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        self.sockets[sid] = ws
        try:
            await ws.send_str(json.dumps(self.status_message(sid)))
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.sockets.pop(sid, None)
        return ws

    def app(self) -> web.Application:
        # ComfyUI's --max-upload-size defaults to 100 MiB.
        app = web.Application(middlewares=[self.origin_middleware, self.fail_middleware], client_max_size=100 << 20)
        routes = [
            ("GET", "/system_stats", self.system_stats),
            ("GET", "/queue", self.get_queue),
            ("POST", "/queue", self.post_queue),
            ("GET", "/prompt", self.get_prompt),
            ("POST", "/prompt", self.post_prompt),
            ("GET", "/history", self.get_history),
            ("GET", "/history/{prompt_id}", self.get_history_id),
            ("POST", "/history", self.post_history),
            ("POST", "/interrupt", self.interrupt),
            ("POST", "/free", self.free),
            ("GET", "/models", self.models),
            ("GET", "/models/{folder}", self.models_type),
            ("GET", "/experiment/models/{folder}", self.experiment_models),
            ("GET", "/embeddings", self.embeddings),
            ("GET", "/extensions", self.extensions),
            ("GET", "/features", self.features),
            ("GET", "/object_info", self.object_info),
            ("GET", "/view", self.view),
            ("POST", "/upload/image", self.upload_image),
            ("GET", "/ws", self.websocket),
            ("GET", "/", self.index),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
            app.router.add_route(method, "/api" + path, handler)
        app.router.add_get("/api/jobs", self.api_jobs)
        app.router.add_get("/internal/logs/raw", self.logs_raw)
        return app


def core_classes() -> list[str]:
    """The real ComfyUI lists its ~900 built-in classes in /object_info: this stand-in lists those that
    ComfyUI-Manager's map (installed beside it, as in a real venv) records for ComfyUI itself."""
    spec = importlib.util.find_spec("comfyui_manager")
    if spec is None or not spec.submodule_search_locations:
        return []
    path = Path(next(iter(spec.submodule_search_locations))) / "extension-node-map.json"
    try:
        return json.loads(path.read_text())["https://github.com/comfyanonymous/ComfyUI"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return []


def load_custom_node(path: str) -> bool:
    """As ComfyUI's nodes.load_custom_node: the module executed from its file (a folder's __init__.py);
    an exception is logged and start-up goes on; SystemExit or os._exit ends the process, unsaid."""
    name = os.path.basename(path).removesuffix(".py")
    try:
        spec = importlib.util.spec_from_file_location(
            name, path if os.path.isfile(path) else os.path.join(path, "__init__.py")
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        for node_class, cls in (getattr(module, "NODE_CLASS_MAPPINGS", None) or {}).items():
            NODES[node_class] = {"inputs": {}, "output": bool(getattr(cls, "OUTPUT_NODE", False))}
        return True
    except Exception as exc:
        log("[WARNING] " + traceback.format_exc())
        log(f"[WARNING] Cannot import {path} module for custom nodes: {exc}")
        return False


def load_custom_nodes(folders: Folders, args: argparse.Namespace) -> None:
    """Every folder (with an __init__.py) or .py file under each custom_nodes path, timed, then ComfyUI's
    table of import times, quickest first, failures marked."""
    times = []
    for root in folders.paths.get("custom_nodes", []):
        if not os.path.isdir(root):
            continue
        for entry in sorted(os.listdir(root)):
            path = os.path.join(root, entry)
            if entry.startswith(".") or entry == "__pycache__" or entry.endswith(".disabled"):
                continue
            if os.path.isfile(path) and not entry.endswith(".py"):
                continue
            if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "__init__.py")):
                continue
            if args.disable_all_custom_nodes and entry not in args.whitelist_custom_nodes:
                log(f"[INFO] Skipping {entry} due to disable_all_custom_nodes and whitelist_custom_nodes")
                continue
            begin = time.perf_counter()
            ok = load_custom_node(path)
            times.append((time.perf_counter() - begin, path, ok))
    log("[INFO] \nImport times for custom nodes:")
    for seconds, path, ok in sorted(times):
        log(f"[INFO] {seconds:6.1f} seconds{'' if ok else ' (IMPORT FAILED)'}: {path}")
    log("[INFO] ")


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


async def serve(server: Server, host: str, port: int) -> None:
    runner = web.AppRunner(server.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    log(f"To see the GUI go to: http://{host}:{port}")
    executor = asyncio.create_task(server.executor())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    executor.cancel()
    await runner.cleanup()
    log("Stopped server")


def main() -> int:
    args = parse_args(sys.argv[1:])
    base = Path(args.base_directory).resolve() if args.base_directory else HERE
    if args.base_directory and not (base / "custom_nodes").is_dir():
        log(f"Error: {base / 'custom_nodes'} does not exist")
        return 1
    for flag in ("user_directory", "temp_directory", "models_directory"):
        value = getattr(args, flag)
        if value and not os.path.isdir(value):
            log(f"Error: --{flag.replace('_', '-')} {value} does not exist")
            return 1
    if args.cuda_device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.cuda_device)
        log(f"Set cuda device to: {args.cuda_device}")
    folders = Folders(base)
    log(f"Python version: {platform.python_version()}")
    log(f"ComfyUI version: {VERSION}")
    configs = [HERE / "extra_model_paths.yaml"] if (HERE / "extra_model_paths.yaml").exists() else []
    for group in args.extra_model_paths_config or []:
        configs += [Path(p) for p in group]
    for config in configs:
        log(f"Loading extra model paths config: {config}")
        try:
            folders.load_yaml(config)
        except Exception as exc:
            log(f"Traceback (most recent call last):\n  ...\n{type(exc).__name__}: {exc}")
            return 1
    if args.output_directory:
        Path(args.output_directory).mkdir(parents=True, exist_ok=True)
    input_dir = Path(args.input_directory) if args.input_directory else base / "input"
    input_dir.mkdir(parents=True, exist_ok=True)
    log("Device: " + ("cpu" if args.cpu else "cuda:0"))
    # Import of nodes and custom nodes: the port is not open yet.
    time.sleep(float(os.environ.get("STANDIN_STARTUP_SECONDS", "1")))
    # Real imports spend CPU (torch, the nodes): a benchmark's start-up competes for the cores.
    cpu_until = time.process_time() + float(os.environ.get("STANDIN_STARTUP_CPU_SECONDS", "0"))
    while time.process_time() < cpu_until:
        sum(range(10_000))
    load_custom_nodes(folders, args)
    host = args.listen.split(",")[0]
    if not port_free(host, args.port):
        log(f"Port {args.port} is already in use")
        return 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # asyncio installs its own handler
    asyncio.run(serve(Server(args, folders, base), host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
