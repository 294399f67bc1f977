"""The startup steps. Each can run twice and change nothing the second time; each returns its notes."""

from __future__ import annotations

import errno
import logging
import shutil
from string import Template

from services.common import credentials, door, gpu, instances, modelcache, modelpaths, volume
from services.common.files import write_atomic, write_error
from services.common.paths import ALL_FOLDERS, WORKSPACE_DIRS
from services.common.settings import Settings
from services.startup.hook import run_pre_start

log = logging.getLogger("startup")

GB = 1024**3


class StepError(Exception):
    """The stack cannot start; the message says what is wrong and what to do."""


def prepare_run_dir(settings: Settings) -> list[str]:
    run_dir = settings.run_dir
    if len(str(settings.paths.supervisor_socket)) > 100:
        raise StepError(f"RUN_DIR={run_dir} is too long for unix sockets (limit ~100 bytes): use a shorter path")
    if any(c.isspace() for c in str(run_dir)):
        raise StepError(
            f"RUN_DIR={run_dir!r} holds a space: supervisord splits its include list on spaces. Use another path"
        )
    try:
        # Others may pass through (nginx's unprivileged workers reach the front door's folder) but not
        # list it; every socket and file inside carries its own mode.
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        run_dir.chmod(0o711)
    except OSError as exc:
        raise StepError(
            f"RUN_DIR={run_dir} cannot be created: {exc.strerror}. Point RUN_DIR at a writable folder."
        ) from exc
    return []


def plan_comfyuis(settings: Settings) -> list[str]:
    """How many ComfyUIs, on which GPUs (COMFYUI_GPUS), and supervisord's program for each."""
    visible, masked = None, []
    if settings.comfyui_gpus != "1":
        # NVML's indexes (what --cuda-device takes), less those CUDA_VISIBLE_DEVICES hides.
        visible, masked = gpu.cuda_visible(gpu.probe().gpus, settings.cuda_visible_devices)
    try:
        found, notes = instances.plan(settings, visible)
    except ValueError as exc:
        raise StepError(str(exc)) from None
    notes = masked + notes
    try:
        instances.write(settings, found)
    except OSError as exc:
        raise StepError(f"cannot write ComfyUI's programs in RUN_DIR={settings.run_dir}: {exc.strerror}") from exc
    if len(found) > 1:
        shown = ", ".join(f"{i.title} :{i.public_port}" for i in found)
        log.info("%d ComfyUIs: %s", len(found), shown)
    return notes


def check_volume(settings: Settings) -> list[str]:
    """Is the workspace a folder, writable, a mount of its own, with room? Warn, die only when unusable."""
    ws = settings.workspace
    notes: list[str] = []
    if ws.exists() and not ws.is_dir():
        raise StepError(f"WORKSPACE={ws} is a file, not a folder. Point WORKSPACE at the volume's mount point.")
    try:
        ws.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StepError(
            f"WORKSPACE={ws} cannot be created: {exc.strerror}. Create it or point WORKSPACE elsewhere."
        ) from exc
    exc = write_error(ws)
    if exc is not None and exc.errno == errno.ENOSPC:
        notes.append(f"WORKSPACE={ws} is full: downloads will fail until space is freed")
    elif exc is not None:
        raise StepError(
            f"WORKSPACE={ws} is not writable ({exc.strerror}): mount the volume read-write and check its owner."
        ) from exc
    free = shutil.disk_usage(ws).free
    if free < settings.workspace_warn_free_gb * GB and not notes:
        notes.append(f"WORKSPACE={ws} has only {free / GB:.1f} GB free")
    if not volume.is_mount_point(ws):
        notes.append(
            f"WORKSPACE={ws} is not a mount of its own: models and outputs live in the container"
            " and are lost with it (on RunPod, attach a network volume at /workspace)"
        )
    found = volume.detect(settings)
    volume.write(settings, found)  # its read speed is measured later, by health, once ComfyUI is up
    if found.network:
        how = {"auto": "reads safetensors whole (--disable-mmap)", "on": "still mmaps them (COMFYUI_MMAP=on)"}
        notes.append(
            f"WORKSPACE={ws} is a {found.label}: ComfyUI {how.get(settings.comfyui_mmap, how['auto'])}; its free"
            " space may be the whole storage's, not your volume's"
        )
    return notes


def make_layout(settings: Settings) -> list[str]:
    """Create every folder ComfyUI and the stack use. Nothing existing is moved or deleted."""
    paths = settings.paths
    wanted = [paths.workspace / name for name in WORKSPACE_DIRS]
    wanted += [paths.models / folder for folder in ALL_FOLDERS] + [paths.logs]
    notes = []
    for folder in wanted:
        if folder.is_dir():
            continue
        if folder.exists() or folder.is_symlink():
            notes.append(f"{folder} exists and is not a folder: left as it is")
            continue
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            continue  # another pod on the same volume made it just now
        except OSError as exc:
            raise StepError(
                f"cannot create {folder}: {exc.strerror}. Free space on the volume or fix its owner."
            ) from exc
    legacy, mine = paths.legacy_comfyui_database, paths.comfyui_database
    if legacy.is_file() and not mine.exists() and paths.user.is_dir():
        # The database of an earlier version becomes this pod's (copied: another pod may claim it too).
        try:
            shutil.copy2(legacy, mine)
            notes.append(f"ComfyUI's database is now one per pod: {legacy.name} copied to {mine.name}")
        except OSError as exc:
            notes.append(f"cannot copy {legacy.name} to {mine.name}: {exc.strerror}; ComfyUI starts a new one")
    return notes


def write_model_paths(settings: Settings) -> list[str]:
    """Render extra_model_paths.yaml; keep whatever it held before in a .bak when it differs."""
    paths = settings.paths
    target = paths.extra_model_paths
    cache = modelcache.of(settings)
    notes = []
    if cache is not None:
        try:
            for folder in ALL_FOLDERS:
                (cache.models / folder).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # A cache is a speed-up: without it ComfyUI reads the volume, as it would anyway.
            notes.append(f"MODEL_CACHE_DIR={cache.root} cannot be created ({exc.strerror}): no local model cache")
            cache = None
    text = modelpaths.render(paths, cache.models if cache else None)
    try:
        old = target.read_bytes()
    except FileNotFoundError:
        old = None
    if old is not None and old != text.encode():
        backup = target.with_name(target.name + ".bak")
        write_atomic(backup, old.decode(errors="replace"))
        notes.append(f"{target} was regenerated; its previous content is kept in {backup.name}")
    try:
        write_atomic(target, text)
    except OSError as exc:
        raise StepError(f"cannot write {target}: {exc.strerror}. Free space on the volume.") from exc
    user = paths.user_extra_model_paths
    if user.exists():
        trouble = modelpaths.problem(user)
        if trouble:
            notes.append(f"{trouble}. ComfyUI starts without this file until it is fixed")
    if paths.legacy_models.is_dir():
        notes.append(f"legacy models found in {paths.legacy_models}: ComfyUI reads them where they are")
    return notes


def write_redis_config(settings: Settings) -> list[str]:
    if not settings.local_redis:
        return ["REDIS_URL is set: no local Redis runs"]
    template = Template((settings.app_dir / "config" / "redis.conf").read_text())
    paths = settings.paths
    write_atomic(paths.redis_conf, template.substitute(socket=paths.redis_socket, run_dir=settings.run_dir), 0o600)
    return []


def write_front_door_config(settings: Settings) -> list[str]:
    """nginx.conf for every public web port, and a loud note for each port left without the login."""
    try:
        target = door.prepare(settings)
        write_atomic(target, door.render(settings, door.nginx_log_level(settings.log_level)), 0o600)
    except OSError as exc:
        raise StepError(f"cannot write the front door's config in {settings.paths.front_door}: {exc.strerror}") from exc
    return [
        f"FRONT_DOOR_OFF: {p.title}'s port {p.public} has no login: anyone who reaches it controls {p.title}"
        for p in door.unprotected(settings)
    ]


def ensure_secrets(settings: Settings) -> list[str]:
    paths = settings.paths
    notes = []
    try:
        credentials.ensure_secret(paths.session_key_file, 48)
        if settings.dashboard_password is not None and paths.password_file.exists():
            # Its password stopped working when DASHBOARD_PASSWORD was set: leaving it would mislead.
            paths.password_file.unlink()
            notes.append(f"DASHBOARD_PASSWORD is set: removed {paths.password_file}, whose password no longer works")
        if settings.dashboard_password is None:
            password, created = credentials.ensure_secret(paths.password_file, 18)
            if created:
                # The one time the generated password is shown: the user needs it to log in.
                log.warning("dashboard password (generated, stored in %s): %s", paths.password_file, password)
            else:
                notes.append(f"dashboard password: the one stored in {paths.password_file}")
    except OSError as exc:
        raise StepError(f"cannot write secrets under {paths.config}: {exc.strerror}") from exc
    if not settings.dashboard_auth:
        notes.append(
            "DASHBOARD_AUTH=off: the dashboard and every port behind the front door accept anyone."
            " Local development only"
        )
    return notes


def write_manager_config(settings: Settings) -> list[str]:
    """ComfyUI-Manager's settings on the volume, written once: the user's own are never overwritten."""
    target = settings.paths.comfyui_manager_config
    if target.exists():
        return []
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, (settings.app_dir / "config" / "comfyui-manager.ini").read_text())
    except OSError as exc:
        raise StepError(f"cannot write {target}: {exc.strerror}. Free space on the volume.") from exc
    return []


STEPS = (
    ("run_dir", prepare_run_dir),
    ("comfyuis", plan_comfyuis),
    ("volume", check_volume),
    ("layout", make_layout),
    ("model_paths", write_model_paths),
    ("manager_config", write_manager_config),
    ("redis_config", write_redis_config),
    ("front_door", write_front_door_config),
    ("secrets", ensure_secrets),
    ("pre_start", run_pre_start),
)
