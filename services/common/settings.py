"""The one typed Settings object: every knob of the stack, read from the environment once per process."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import shlex
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from services.common.paths import Paths

# The repository (or /app in the image): where services/, presets/, config/ and supervisord.conf live.
APP_DIR_DEFAULT = Path(__file__).resolve().parents[2]

# Environment names that look like ours; an unknown one among them is probably a typo.
_OUR_PREFIXES = ("COMFYUI_", "DASHBOARD_", "HEALTH_", "REDIS_", "LOG_", "WORKSPACE_", "DOWNLOADS_", "FRONT_DOOR_")

# ComfyUIs in one container (COMFYUI_GPUS): ports 8188.. and 18188.. stay clear of the others.
MAX_COMFYUIS = 16
# The web ports behind the front door; FRONT_DOOR_OFF may name any of them.
DOOR_PORTS = ("comfyui", "jupyter", "code-server")


class SettingsError(Exception):
    """A setting from the environment is invalid; the message names the variable and the fix."""


def check_token(value: str) -> str:
    """A source token goes into an Authorization header: printable ASCII without spaces, or the request
    fails (and a failing header could carry the token into an error message). Raises ValueError."""
    if not value or not all(33 <= ord(c) <= 126 for c in value):
        raise ValueError("a token is printable ASCII without spaces: copy it again from its site")
    return value


def _port(description: str, default: int) -> int:
    return Field(default, ge=1, le=65535, description=description)


class Settings(BaseModel):
    """Every setting of the stack. The environment variable of a field is its name in upper case."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workspace: Path = Field(
        Path("/workspace"),
        description="The persistent volume: models, outputs, custom nodes, config, logs.",
    )
    run_dir: Path = Field(
        Path("/run/comfyui-docker"),
        description="Runtime files: unix sockets, rendered Redis config, startup report. Keep the path short"
        " (unix socket paths are limited to 107 bytes).",
    )
    app_dir: Path = Field(APP_DIR_DEFAULT, description="Where this project is installed (`/app` in the image).")
    comfyui_dir: Path = Field(Path("/app/comfyui"), description="ComfyUI's source tree (the folder with `main.py`).")
    comfyui_python: Path = Field(
        Path("/app/venv/bin/python"),
        description="The interpreter that runs ComfyUI: its own venv, apart from the control plane's.",
    )
    comfyui_listen: str = Field(
        "0.0.0.0", description="Address of ComfyUI's public port (the front door's, or ComfyUI's own when it is off)."
    )
    comfyui_port: int = _port("ComfyUI's public HTTP and WebSocket port, behind the dashboard's login.", 8188)
    comfyui_internal_port: int = _port("Where ComfyUI itself listens, on 127.0.0.1 only, behind the front door.", 18188)
    comfyui_gpus: str = Field(
        "1",
        description="How many ComfyUIs, each on its own GPU and port (8188, 8189, ...): `1`; `auto`, one per"
        " visible GPU; a count (`2`); or the GPUs' indexes (`0,1,3`).",
    )
    cuda_visible_devices: str | None = Field(
        None,
        description="Not ours, honoured: with `COMFYUI_GPUS`, only the GPUs it names (indexes or `GPU-` UUIDs)"
        " get a ComfyUI; a single ComfyUI inherits it as it is.",
    )
    comfyui_source_tokens: bool = Field(
        False,
        description="Give ComfyUI HF_TOKEN and CIVITAI_TOKEN in its environment (for custom nodes that download"
        " gated models themselves); off, no custom node can read them.",
    )
    comfyui_args: str = Field("", description="Extra command-line flags for ComfyUI, shell-quoted.")
    comfyui_manager: bool = Field(
        True, description="Start ComfyUI with `--enable-manager` when its ComfyUI-Manager package is installed."
    )
    comfyui_mmap: Literal["auto", "on", "off"] = Field(
        "auto",
        description="How ComfyUI reads safetensors: auto reads them whole (`--disable-mmap`) when the workspace"
        " is on a network file system, where mmap's page faults each cost a round trip; on, off: always.",
    )
    model_cache_dir: Path | None = Field(
        None,
        description="A folder on this pod's own disk where the models in use are copied, found by ComfyUI"
        " before the volume's (off when unset). Per pod: it survives a restart, not a new pod.",
    )
    model_cache_gb: float = Field(
        50.0, gt=0, description="The most MODEL_CACHE_DIR may hold; least recently used models leave first."
    )
    model_cache_interval: float = Field(
        30.0, gt=0, description="Seconds between two looks at what to copy into MODEL_CACHE_DIR (pins act at once)."
    )
    comfyui_constraints: Path = Field(
        Path("/app/constraints.txt"),
        description="pip constraints the image adds for custom nodes' installs, besides every package of"
        " ComfyUI's venv, which is always pinned.",
    )
    comfyui_torch_build: Path = Field(
        Path("/app/torch-build.json"),
        description="What the image build recorded of ComfyUI's torch (CUDA version, GPU architectures), for the"
        " GPU preflight; without it (host mode) the CUDA version is read from the venv's torch.",
    )
    image_variant: str | None = Field(
        None, description="Set by the image (minimal, standard, full, dev) for the tag the GPU preflight names."
    )
    runpod_pod_id: str | None = Field(
        None, description="Set by RunPod on a pod; the start banner then prints the pod's proxy URLs."
    )
    pod_id: str | None = Field(
        None,
        description="This pod's name on a shared volume (its logs and ComfyUI database are its own); default"
        " RUNPOD_POD_ID, else the host name.",
    )
    devtools_dir: Path = Field(
        Path("/app/devtools"), description="JupyterLab and code-server of the dev image; absent elsewhere."
    )
    jupyter_port: int = _port("JupyterLab's public port (dev image), behind the dashboard's login.", 8888)
    jupyter_internal_port: int = _port("Where JupyterLab itself listens, on 127.0.0.1 only.", 18888)
    code_server_port: int = _port("code-server's public port (dev image), behind the dashboard's login.", 8443)
    code_server_internal_port: int = _port("Where code-server itself listens, on 127.0.0.1 only.", 18443)
    front_door_off: str = Field(
        "",
        description="Ports left without the login, comma-separated: `comfyui`, `jupyter`, `code-server`"
        " (a private network with its own auth). Warned at every start, shown on the overview and in `/ready`.",
    )
    front_door_trusted_proxies: str = Field(
        "",
        description="Addresses or CIDR ranges of proxies in front of this one (comma-separated): their"
        " X-Forwarded-For names the client, for the login's rate limit. Empty: the connecting address counts.",
    )
    front_door_nginx: str = Field("nginx", description="The nginx binary that runs the front door.")
    dashboard_listen: str = Field("0.0.0.0", description="Address of the dashboard's port and the dev tools' ports.")
    dashboard_port: int = _port("The dashboard's port (web pages, `/api`, `/ws`).", 8080)
    dashboard_password: SecretStr | None = Field(
        None,
        description="Dashboard password (also the API bearer token). When unset, one is generated, stored"
        " 0600 under `<workspace>/config/` and printed once to the log.",
    )
    dashboard_auth: bool = Field(
        True, description="`off` disables authentication: local development only, warned at every start."
    )
    dashboard_workers: int = Field(2, ge=1, le=32, description="gunicorn worker processes for the dashboard.")
    dashboard_threads: int = Field(
        16, ge=2, le=256, description="Threads per dashboard worker; each open WebSocket holds one."
    )
    health_port: int = _port("The health service's port, on 127.0.0.1 only (`/health`, `/ready`).", 8081)
    pre_start_timeout: float = Field(
        600.0,
        ge=1,
        le=86400,
        description="Seconds <workspace>/config/pre-start.sh may run before startup stops it and starts the stack"
        " anyway.",
    )
    health_interval: float = Field(10.0, ge=1, le=3600, description="Seconds between two rounds of health checks.")
    health_expect_gpu: bool = Field(
        False, description="Count a missing NVIDIA GPU as unhealthy (the CUDA images set it)."
    )
    workspace_critical_free_gb: float = Field(
        1.0, ge=0, description="Below this much free space (GB) the workspace check fails."
    )
    hf_token: SecretStr | None = Field(None, description="Hugging Face token, sent only to Hugging Face hosts.")
    civitai_token: SecretStr | None = Field(None, description="Civitai token, sent only to Civitai hosts.")
    hf_endpoint: str = Field(
        "https://huggingface.co",
        description="Hugging Face's address; a mirror's serves every huggingface.co URL. HF_TOKEN goes only here.",
    )
    civitai_endpoint: str = Field("https://civitai.com", description="Civitai's address; CIVITAI_TOKEN goes only here.")
    downloads_allow_private_hosts: bool = Field(
        False, description="Allow downloads from loopback and private addresses (local mirrors, tests)."
    )
    downloads_connections: int = Field(
        16, ge=1, le=64, description="Parallel ranged connections for one large file (CDNs cap each connection)."
    )
    downloads_segment_mb: int = Field(
        32,
        ge=1,
        le=1024,
        description="Largest ranged segment (MiB); segments are sized from the file and shrink towards its end.",
    )
    downloads_min_segmented_mb: int = Field(
        4, ge=1, description="Files smaller than this (MiB) download over one connection."
    )
    downloads_reserve_mb: int = Field(
        512, ge=0, description="Free space (MiB) a download must leave on the volume; checked before it starts."
    )
    downloads_read_timeout: float = Field(
        30.0, gt=0, le=600, description="Seconds without a byte before a connection counts as stalled."
    )
    downloads_retries: int = Field(
        5, ge=0, le=50, description="Retries of a network error or 5xx within one attempt (with backoff)."
    )
    downloads_backoff: float = Field(1.0, ge=0, le=60, description="First retry delay (s); doubles each retry.")
    downloads_max_attempts: int = Field(
        5, ge=1, le=100, description="Deliveries of one job (crashes included) before it is marked failed."
    )
    downloads_heartbeat_stale: float = Field(
        90.0,
        ge=5,
        description="A running job silent this long (s), or a queued one whose task no queue or worker has, "
        "is re-queued by the reconciler.",
    )
    downloads_reconcile_interval: float = Field(60.0, ge=1, description="Seconds between two reconciler runs.")
    downloads_stale_part_hours: float = Field(
        24.0, ge=0, description="A `.part` with no job, untouched this long (hours), is deleted."
    )
    downloads_history_days: float = Field(7.0, ge=0, description="Days finished downloads stay in the history.")
    downloads_history_max: int = Field(500, ge=1, description="Most finished downloads kept in the history.")
    worker_concurrency: int = Field(2, ge=1, le=32, description="Downloads the worker runs at once.")
    redis_url: str | None = Field(
        None,
        description="An external Redis (`redis://host:6379/0`); when set, no local redis program runs.",
    )
    redis_server: str = Field("redis-server", description="The redis-server binary for the local Redis.")
    log_level: str = Field("INFO", description="Log level of the control-plane services.")
    log_max_bytes: int = Field(
        10 * 1024 * 1024, ge=0, description="Size at which a service's log file is rotated (0: never)."
    )
    log_backups: int = Field(5, ge=0, le=100, description="Rotated log files kept per service.")
    workspace_warn_free_gb: float = Field(
        10.0, ge=0, description="Warn when the workspace has less free space than this (GB)."
    )
    entrypoint_t0_ns: int | None = Field(
        None, description="Set by `docker/entrypoint.sh` (when the container started, ns); not for users."
    )

    @field_validator("workspace", "run_dir", "app_dir", "comfyui_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Every program runs in its own directory: a relative path must not change meaning.
        return value.expanduser().absolute()

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("hf_token", "civitai_token")
    @classmethod
    def _header_safe(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_token(value.get_secret_value())
        return value

    @field_validator("hf_endpoint", "civitai_endpoint")
    @classmethod
    def _https_endpoint(cls, value: str) -> str:
        # Its token goes only to this origin: over https, or it would travel in clear.
        if not value.startswith("https://"):
            raise ValueError("must be an https:// address (its token is sent to it)")
        return value.rstrip("/")

    @field_validator("comfyui_args")
    @classmethod
    def _splittable(cls, value: str) -> str:
        try:
            shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot be split like a shell command line ({exc})") from exc
        return value

    @field_validator("comfyui_gpus")
    @classmethod
    def _gpus(cls, value: str) -> str:
        value = value.strip().lower().replace(" ", "")
        if value == "auto":
            return value
        if "," in value:
            parts = [p for p in value.split(",") if p]
            if not parts or not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
                raise ValueError("a list of GPUs is distinct indexes, like 0,1,3")
            if len(parts) > MAX_COMFYUIS:
                raise ValueError(f"at most {MAX_COMFYUIS} ComfyUIs")
            # One index keeps its comma: `3,` is GPU 3, where `3` is a count.
            return ",".join(str(int(p)) for p in parts) + ("," if len(parts) == 1 else "")
        if not value.isdigit() or not 1 <= int(value) <= MAX_COMFYUIS:
            raise ValueError(f"use auto, a count from 1 to {MAX_COMFYUIS}, or GPU indexes like 0,1,3")
        return str(int(value))

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("front_door_off")
    @classmethod
    def _door_names(cls, value: str) -> str:
        names = [n.strip().lower() for n in value.split(",") if n.strip()]
        unknown = [n for n in names if n not in DOOR_PORTS]
        if unknown:
            raise ValueError(f"unknown port name {unknown[0]!r}: use {', '.join(DOOR_PORTS)}")
        return ",".join(names)

    @field_validator("front_door_trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        for item in (n.strip() for n in value.split(",")):
            if item:
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(f"{item!r} is not an address or CIDR range (like 10.0.0.0/8)") from None
        return value

    def door_open(self, port: str) -> bool:
        """True when this port is left without the login (FRONT_DOOR_OFF)."""
        return port in self.front_door_off.split(",")

    @property
    def trusted_proxies(self) -> list[str]:
        return [n.strip() for n in self.front_door_trusted_proxies.split(",") if n.strip()]

    @property
    def comfyui_url(self) -> str:
        """Where the stack itself reaches ComfyUI (the first, with several)."""
        return self.comfyui_url_at(0)

    def comfyui_url_at(self, index: int) -> str:
        """Where the stack itself reaches ComfyUI number `index` (COMFYUI_GPUS): past the front door, on
        loopback; each takes the port after the one before it."""
        if self.door_open("comfyui"):
            host = "127.0.0.1" if self.comfyui_listen in ("0.0.0.0", "::") else self.comfyui_listen
            return f"http://{host}:{self.comfyui_port + index}"
        return f"http://127.0.0.1:{self.comfyui_internal_port + index}"

    @property
    def paths(self) -> Paths:
        return Paths(workspace=self.workspace, run_dir=self.run_dir, pod=self.pod_name)

    @property
    def pod_name(self) -> str:
        """POD_ID, RUNPOD_POD_ID or the host name, as one plain file-name part."""
        raw = self.pod_id or self.runpod_pod_id or socket.gethostname() or "local"
        return re.sub(r"[^A-Za-z0-9._-]", "_", raw)[:64].lstrip(".") or "local"

    @property
    def local_redis(self) -> bool:
        """True when the stack runs its own Redis (no REDIS_URL)."""
        return self.redis_url is None

    @property
    def effective_redis_url(self) -> str:
        """The URL redis-py understands, for the local socket or the external server."""
        return self.redis_url or f"unix://{self.paths.redis_socket}"

    @property
    def celery_broker_url(self) -> str:
        """Celery spells a unix socket `redis+socket://`; a TCP URL is the same for both."""
        if self.redis_url is None:
            return f"redis+socket://{self.paths.redis_socket}"
        if self.redis_url.startswith("unix://"):
            return "redis+socket://" + self.redis_url.removeprefix("unix://")
        return self.redis_url

    def comfyui_extra_args(self) -> list[str]:
        return shlex.split(self.comfyui_args)


def env_name(field: str) -> str:
    return field.upper()


def unknown_settings(environ: Mapping[str, str] | None = None) -> list[str]:
    """Names in the environment that look like ours but are no setting, each with a suggestion."""
    environ = os.environ if environ is None else environ
    known = [env_name(name) for name in Settings.model_fields]
    notes = []
    for name in sorted(environ):
        if name in known or not name.startswith(_OUR_PREFIXES):
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        notes.append(f"{name} is not a setting of this image and is ignored{hint}")
    return notes


def inherited_environment() -> dict[str, str]:
    """The process environment, for a program that execs another and passes it on."""
    return dict(os.environ)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment; a bad value raises SettingsError naming the variable."""
    environ = os.environ if environ is None else environ
    values = {}
    for name in Settings.model_fields:
        raw = environ.get(env_name(name))
        # An empty variable means "not set": RunPod templates often carry empty fields.
        if raw is not None and raw.strip() != "":
            values[name] = raw.strip()
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            shown = "<hidden>" if field in _SECRET_FIELDS else repr(values.get(field))
            problems.append(f"{env_name(field)}={shown} is invalid: {error['msg']}")
        raise SettingsError("; ".join(problems) + ". Fix or unset the variable and start again.") from None


_SECRET_FIELDS = {name for name, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)}
