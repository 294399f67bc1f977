"""Each check returns a Result with a status, a reason a person can act on, and its duration."""

from __future__ import annotations

import concurrent.futures
import shutil
import threading
import time
import urllib.error
import urllib.request
import xmlrpc.client
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import celery.exceptions
import kombu.exceptions
import redis

from services.common import (
    bus,
    comfyui,
    door,
    gpu,
    gpucheck,
    instances,
    jobs,
    logs,
    messages,
    modelpaths,
    nodes,
    queue,
    safemode,
    supervisor,
    timeouts,
    unixhttp,
    volume,
)
from services.common.files import write_error
from services.common.instances import Instance
from services.common.paths import ALL_FOLDERS
from services.common.settings import Settings

GB = 1024**3
CHECK_TIMEOUT = 8.0
# Checks whose failure means the control plane itself cannot act (liveness).
LIVENESS = ("workspace", "redis", "supervisor")
# Checks that must pass before the stack can do its job (readiness), besides liveness.
READINESS = ("worker", "comfyui", "dashboard", "front_door")
CRASH_LOOP_COUNT = 3
CRASH_LOOP_WINDOW = 300.0


@dataclass
class Result:
    name: str
    status: str  # ok | warn | fail
    reason: str
    ms: float = 0.0
    data: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def check_workspace(settings: Settings) -> Result:
    ws = settings.workspace
    if not ws.is_dir():
        return Result("workspace", "fail", f"{ws} does not exist or is not a folder")
    exc = write_error(ws)
    if exc is not None:
        return Result("workspace", "fail", f"{ws} is not writable: {exc.strerror}")
    usage = shutil.disk_usage(ws)
    found = {**volume.detect(settings).as_dict(), **(volume.read(settings) or {})}
    data = {"free": usage.free, "total": usage.total, "mounted": volume.is_mount_point(ws), "volume": found}
    free_gb = usage.free / GB
    kind = f" · {found['label']}" + (
        "" if found.get("free_trusted", True) else " (its free space may be the storage's)"
    )
    if free_gb < settings.workspace_critical_free_gb:
        return Result(
            "workspace", "fail", f"{ws} has {free_gb:.2f} GB free: delete models or grow the volume", data=data
        )
    if free_gb < settings.workspace_warn_free_gb:
        return Result("workspace", "warn", f"{ws} has only {free_gb:.1f} GB free", data=data)
    if not data["mounted"]:
        return Result("workspace", "warn", f"{ws} is container-local storage: it is lost with the container", data=data)
    return Result("workspace", "ok", f"{free_gb:.1f} GB free{kind}", data=data)


def check_model_paths(settings: Settings) -> Result:
    path = settings.paths.extra_model_paths
    trouble = modelpaths.problem(path)
    if trouble:
        return Result("model_paths", "fail", f"{trouble}: restart the stack to regenerate it")
    missing = [f for f in ALL_FOLDERS if not (settings.paths.models / f).is_dir()]
    if missing:
        return Result("model_paths", "warn", f"model folders missing: {', '.join(missing[:5])}; restart to recreate")
    return Result("model_paths", "ok", f"{path} loads; {len(ALL_FOLDERS)} folders present")


def _log_tail(settings: Settings, program: str, lines: int = 5) -> str:
    try:
        found = logs.tail(settings.paths.log_file(program), lines)
    except OSError:
        return ""
    return " | ".join(line for line in found if line.strip())


def _recent_crashes(settings: Settings) -> dict[str, int]:
    try:
        raw = bus.connect(settings, timeout=timeouts.REDIS_QUICK).lrange(messages.crashes_key(), 0, 50)
    except (redis.RedisError, OSError):
        return {}
    counts: dict[str, int] = {}
    now = time.time()
    for item in raw:
        try:
            event = messages.parse_event(item)
        except messages.BadEvent:
            continue
        if isinstance(event, messages.ServiceState) and now - event.ts < CRASH_LOOP_WINDOW:
            counts[event.name] = counts.get(event.name, 0) + 1
    return counts


def check_supervisor(settings: Settings) -> Result:
    try:
        infos = supervisor.rpc(settings, timeout=timeouts.SUPERVISOR_QUERY).supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Error) as exc:
        return Result("supervisor", "fail", f"supervisord unreachable on {settings.paths.supervisor_socket}: {exc}")
    states = {i["name"]: i["statename"] for i in infos}
    wanted = [s for s in instances.services(settings) if s != "redis" or settings.local_redis]
    data = {"programs": states}
    fatal = [n for n in wanted if states.get(n) == "FATAL"]
    if fatal:
        name = fatal[0]
        return Result(
            "supervisor", "fail", f"{name} is FATAL (gave up restarting): {_log_tail(settings, name)}", data=data
        )
    loops = {n: c for n, c in _recent_crashes(settings).items() if c >= CRASH_LOOP_COUNT and n in wanted}
    if loops:
        name = next(iter(loops))
        window = int(CRASH_LOOP_WINDOW)
        reason = f"{name} is crash-looping ({loops[name]} crashes in {window} s): {_log_tail(settings, name)}"
        return Result("supervisor", "fail", reason, data=data)
    down = [n for n in wanted if states.get(n) not in ("RUNNING", "STARTING")]
    if down:
        return Result(
            "supervisor",
            "warn",
            "not running: " + ", ".join(f"{n} ({states.get(n, 'absent')})" for n in down),
            data=data,
        )
    return Result("supervisor", "ok", f"{len(wanted)} programs running", data=data)


def check_redis(settings: Settings, samples: int = 3) -> Result:
    """The quickest of a few PINGs after one that connects: a single sample on busy CPUs measures the
    scheduler (the other checks share this process), while a Redis that is really slow is slow each time."""
    client = bus.connect(settings, timeout=timeouts.REDIS_CALL)
    times = []
    try:
        client.ping()
        for _ in range(samples):
            begin = time.perf_counter()
            client.ping()
            times.append(time.perf_counter() - begin)
    except (redis.RedisError, OSError) as exc:
        return Result("redis", "fail", f"Redis does not answer: {exc}")
    finally:
        client.close()
    ms = min(times) * 1000
    return Result("redis", "ok" if ms < 100 else "warn", f"answers in {ms:.1f} ms", data={"latency_ms": ms})


def check_worker(settings: Settings, timeout: float = timeouts.WORKER_PING) -> Result:
    """A real no-op task through the queue: a worker alive but not consuming fails here."""
    try:
        # Celery's publish retries a broker that is gone for seconds on end: ask Redis itself first, with the
        # redis check's own bound (a slow shared Redis is slow here too, not "down").
        bus.connect(settings, timeout=timeouts.REDIS_CALL).ping()
    except (redis.RedisError, OSError):
        return Result("worker", "fail", "cannot reach the queue: Redis does not answer")
    app = queue.client(settings)
    try:
        sent = time.time()
        reply = app.send_task(messages.TASK_PING, args=[sent], expires=timeout * 2)
        reply.get(timeout=timeout)
        reply.forget()
    except celery.exceptions.TimeoutError:
        busy = _busy_downloads(settings)
        if not busy:
            return Result("worker", "fail", f"no worker took a no-op task within {timeout:.0f} s: see the worker log")
        # Every pool process is on a download. Fresh heartbeats prove the downloads run, not that the worker
        # still takes jobs: its main process must answer on the broker and name the queue it consumes.
        if _consuming(app):
            return Result("worker", "ok", f"busy: {busy} download(s) running; it consumes its queue, new jobs wait")
        reason = f"{busy} download(s) running, but the worker does not consume its queue: new jobs will not start"
        return Result("worker", "fail", reason)
    except (kombu.exceptions.OperationalError, redis.RedisError, OSError) as exc:
        return Result("worker", "fail", f"cannot reach the queue: {exc}")
    finally:
        app.close()
    rtt = (time.time() - sent) * 1000
    return Result("worker", "ok", f"no-op task round trip {rtt:.0f} ms", data={"round_trip_ms": rtt})


def _consuming(app) -> bool:
    try:
        answers = app.control.inspect(timeout=timeouts.WORKER_INSPECT).active_queues() or {}
    except (kombu.exceptions.OperationalError, redis.RedisError, OSError):
        return False
    return any(q.get("name") == queue.QUEUE for queues in answers.values() for q in queues)


def _busy_downloads(settings: Settings) -> int:
    try:
        every = jobs.all_jobs(bus.connect(settings, timeout=timeouts.REDIS_CALL))
        running = [j for j in every if j.state in ("running", "verifying")]
    except (redis.RedisError, OSError):
        return 0
    return sum(1 for j in running if time.time() - (j.heartbeat or 0) < 30)


def _http_get(url: str, timeout: float, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as response:  # noqa: S310 - loopback URL we build
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def check_dashboard(settings: Settings) -> Result:
    """The dashboard itself, on the socket the front door talks to."""
    socket_path = str(settings.paths.dashboard_socket)
    try:
        status = unixhttp.get_status(socket_path, "/livez", timeouts.HTTP_CHECK)
    except OSError as exc:
        return Result("dashboard", "fail", f"dashboard does not answer on {socket_path}: {exc}")
    if status != 200:
        return Result("dashboard", "fail", f"dashboard liveness answered {status}")
    return Result("dashboard", "ok", "answers behind the front door")


def check_front_door(settings: Settings) -> Result:
    """nginx answers on every public port, and a request without credentials gets no further than it."""
    ports = door.ports(settings)
    data = {"ports": [p.as_dict() for p in ports], "unprotected": [p.name for p in ports if not p.protected]}
    for p in door.served(settings):
        address = door.listen_address(settings, p)
        host = "127.0.0.1" if address in ("0.0.0.0", "::") else address
        url = f"http://{host}:{p.public}" + ("/livez" if p.name == "dashboard" else "/")
        try:
            status = _http_get(url, timeouts.HTTP_CHECK, {"Accept": "application/json"})
        except OSError as exc:
            return Result("front_door", "fail", f"the front door does not answer on port {p.public}: {exc}", data=data)
        if p.name == "dashboard" or status == 401:
            continue
        if status == 503:
            # Still refusing, but every request: the dashboard that checks logins is not answering.
            reason = f"{p.title}'s port {p.public} refuses every request: the login check does not answer"
            return Result("front_door", "warn", reason, data=data)
        reason = f"{p.title}'s port {p.public} answered {status} to a request without login (401 expected)"
        return Result("front_door", "fail", reason, data=data)
    reason = "every port behind the login"
    if data["unprotected"]:
        open_ports = ", ".join(f"{p.name} :{p.public}" for p in ports if not p.protected)
        reason = f"no login on {open_ports} (FRONT_DOOR_OFF)"
    return Result("front_door", "ok", reason, data=data)


def check_comfyui(settings: Settings) -> Result:
    """Each ComfyUI (one per GPU with COMFYUI_GPUS): the worst of them decides, each is named."""
    if not comfyui.installed(settings):
        reason = f"not installed (no main.py in {settings.comfyui_dir})"
        return Result("comfyui", "warn", reason, data={"state": "not_installed"})
    each = [(i, _one_comfyui(settings, i, status)) for i, status in comfyui.probe_each(settings, timeouts.HTTP_CHECK)]
    if len(each) == 1:
        return each[0][1]
    worst = max((r.status for _, r in each), key=("ok", "warn", "fail").index)
    listed = [
        {"name": i.program, "device": i.device, "port": i.public_port, "status": r.status, "reason": r.reason, **r.data}
        for i, r in each
    ]
    if worst == "ok":
        ports = ", ".join(str(i.public_port) for i, _ in each)
        reason = f"{len(each)} ComfyUIs {each[0][1].data.get('version')} ready on ports {ports}"
    else:
        reason = "; ".join(f"{i.program}: {r.reason}" for i, r in each if r.status != "ok")
    return Result("comfyui", worst, reason, data={"instances": listed})


def _one_comfyui(settings: Settings, instance: Instance, status: comfyui.Status) -> Result:
    if status.state == "ready":
        reason = f"ComfyUI {status.version} ready on port {instance.public_port}"
        return Result("comfyui", "ok", reason, data=status.as_dict())
    if status.state == "error":
        return Result("comfyui", "fail", status.message, data={"state": "error"})
    try:
        rpc = supervisor.rpc(settings, timeout=timeouts.COMFYUI_PROBE)
        info = rpc.supervisor.getProcessInfo(instance.program)
    except (OSError, xmlrpc.client.Error):
        info = {}
    if info.get("statename") in ("STARTING", "RUNNING"):
        # ComfyUI opens its port only when start-up is done: custom nodes can take minutes.
        since = time.time() - info.get("start", time.time())
        return Result("comfyui", "warn", f"starting ({since:.0f} s so far)", data={"state": "starting"})
    reason = f"down ({info.get('statename', 'unknown')}): see the {instance.program} log"
    return Result("comfyui", "fail", reason, data={"state": "down"})


def check_nodes(settings: Settings) -> Result:
    """Custom nodes that failed to import at ComfyUI's last start, or one that ended a start."""
    found = nodes.report(settings)
    mode = safemode.current(settings)
    data = {**found.as_dict(), "safe_mode": mode.as_dict() if mode else None}
    if mode is not None:
        reason = f"safe mode: custom node {mode.node} left out ({mode.error}); retry with all nodes on the dashboard"
        return Result("nodes", "warn", reason, data=data)
    if found.killed_by and found.state != "loaded":
        reason = f"custom node {found.killed_by.name} ended ComfyUI's last start while it was imported"
        return Result("nodes", "warn", reason, data=data)
    if found.failed:
        named = ", ".join(f"{n.name} ({n.error})" for n in found.failed)
        return Result("nodes", "warn", f"custom nodes that failed to import: {named}", data=data)
    if found.state == "loaded":
        return Result("nodes", "ok", f"{len(found.nodes)} custom node(s) loaded", data=data)
    return Result("nodes", "ok", f"ComfyUI's start: {found.state}", data=data)


def check_gpu(settings: Settings) -> Result:
    report = gpu.probe()
    verdict = gpucheck.last(settings)
    if report.gpus and verdict is not None and verdict.status != "ok":
        # The launcher's preflight: a driver or architecture mismatch, with the tag that fixes it.
        return Result("gpu", verdict.status, verdict.message, data={"preflight": verdict.as_dict()})
    if report.gpus:
        first = report.gpus[0]
        return Result(
            "gpu",
            "ok",
            f"{len(report.gpus)} x {first.name}, driver {report.driver}, CUDA {report.cuda}",
            data={"gpus": [g.as_dict() for g in report.gpus], "driver": report.driver, "cuda": report.cuda},
        )
    if settings.health_expect_gpu:
        return Result("gpu", "fail", f"no GPU visible: {report.error}. Start the container with --gpus all")
    return Result("gpu", "ok", "no GPU: ComfyUI runs on the CPU", data={"gpus": []})


CHECKS: dict[str, Callable[[Settings], Result]] = {
    "workspace": check_workspace,
    "model_paths": check_model_paths,
    "supervisor": check_supervisor,
    "redis": check_redis,
    "worker": check_worker,
    "dashboard": check_dashboard,
    "front_door": check_front_door,
    "comfyui": check_comfyui,
    "nodes": check_nodes,
    "gpu": check_gpu,
}


def run_checks(settings: Settings, names: list[str] | None = None, timeout: float = CHECK_TIMEOUT) -> list[Result]:
    """Every check in parallel, each bounded by `timeout`; a check that raises is a failure, not a crash."""
    names = names or list(CHECKS)
    futures: dict[str, concurrent.futures.Future] = {}
    for name in names:
        future: concurrent.futures.Future = concurrent.futures.Future()
        # Daemon threads, not an executor's: a hung check must hold neither the round nor the CLI's exit
        # (an executor's threads are joined when the process ends, and Docker's HEALTHCHECK would then
        # kill the CLI at its own timeout with no output at all).
        threading.Thread(
            target=lambda f=future, c=CHECKS[name]: f.set_result(_timed(c, settings)), name=f"check-{name}", daemon=True
        ).start()
        futures[name] = future
    deadline = time.monotonic() + timeout
    results = []
    for name, future in futures.items():
        try:
            results.append(future.result(timeout=max(0.0, deadline - time.monotonic())))
        except concurrent.futures.TimeoutError:
            results.append(Result(name, "fail", f"check timed out after {timeout:.0f} s", timeout * 1000))
    return results


def _timed(check: Callable[[Settings], Result], settings: Settings) -> Result:
    begin = time.perf_counter()
    try:
        result = check(settings)
    except Exception as exc:  # noqa: BLE001 - a broken check must not take the health service down
        result = Result(check.__name__.removeprefix("check_"), "fail", f"check error: {type(exc).__name__}: {exc}")
    result.ms = round((time.perf_counter() - begin) * 1000, 2)
    return result


def overall(results: list[Result]) -> tuple[str, bool]:
    """(healthy | degraded | unhealthy, ready). See the README's table."""
    by_name = {r.name: r for r in results}
    if any(by_name[n].status == "fail" for n in LIVENESS if n in by_name):
        state = "unhealthy"
    elif any(r.status != "ok" for r in results):
        state = "degraded"
    else:
        state = "healthy"
    ready = (
        state != "unhealthy"
        and all(by_name[n].status == "ok" for n in READINESS if n in by_name)
        and not any(r.status == "fail" for r in results)
    )
    return state, ready


def report(results: list[Result]) -> dict:
    state, ready = overall(results)
    body = {"state": state, "ready": ready, "checks": [r.as_dict() for r in results]}
    for r in results:
        if r.name == "front_door" and "unprotected" in r.data:
            body["unprotected"] = r.data["unprotected"]  # ports left without the login, in plain sight
    return body
