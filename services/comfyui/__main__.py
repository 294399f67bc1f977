"""`python -m services.comfyui [--instance N]`: check, build the argv, exec ComfyUI (or wait quietly when
it is absent). N is which of the ComfyUIs startup planned (COMFYUI_GPUS; services/common/instances.py)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from services.comfyui.launcher import build_argv, environment, model_path_configs, rotate_node_trace
from services.common import accel, gpu, gpucheck, instances, packages, safemode, service
from services.common.comfyui import missing
from services.common.ports import port_taken
from services.common.settings import inherited_environment

log = logging.getLogger("comfyui")

RECHECK_SECONDS = 5.0


def main() -> int:
    args = service.arguments("services.comfyui", __doc__, options=_options)
    settings = service.start("comfyui")
    planned = instances.current(settings)
    if args.instance >= len(planned):
        log.error("no ComfyUI %d: COMFYUI_GPUS=%s plans %d", args.instance, settings.comfyui_gpus, len(planned))
        return 2
    instance = planned[args.instance]
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    reason = missing(settings)
    if reason:
        # Say it once and stay RUNNING: a crash loop would bury the message and end FATAL.
        log.warning("%s", reason)
        while reason and not stop.wait(RECHECK_SECONDS):
            reason = missing(settings)
        if stop.is_set():
            return 0
        log.info("ComfyUI found in %s: starting it", settings.comfyui_dir)
    entries = safemode.record_previous_start(settings, instance)
    wait = safemode.backoff(entries)
    if wait:
        log.warning(
            "ComfyUI's last %d start(s) ended before its custom nodes were loaded: starting again in %.0f s",
            safemode.failed_in_a_row(entries),
            wait,
        )
        if stop.wait(wait):
            return 0
    mode = safemode.decide(settings, entries)
    host, port = instance.listen(settings)
    if port_taken(host, port):
        variable = "COMFYUI_PORT" if settings.door_open("comfyui") else "COMFYUI_INTERNAL_PORT"
        if not instance.single:
            variable += f" (+{instance.index} for {instance.program})"
        log.error("port %d on %s is already in use: stop what holds it or set %s to a free port", port, host, variable)
        return 1
    if settings.door_open("comfyui"):
        log.warning("FRONT_DOOR_OFF=comfyui: ComfyUI listens on %s:%d with no login in front of it", host, port)
    configs, notes = model_path_configs(settings)
    for note in notes:
        log.warning("%s", note)
    report = gpu.probe()
    verdict = gpucheck.check(settings, report)
    use_gpu = bool(report.gpus)
    if not report.gpus:
        log.info("no NVIDIA GPU (%s): starting ComfyUI with --cpu", report.error or "none found")
    elif verdict.status == "fail":
        # A mismatch would crash deep inside ComfyUI ("no kernel image"): say it once, run on the CPU.
        log.error("%s ComfyUI starts on the CPU until then.", verdict.message)
        use_gpu = False
    else:
        mine = [g for g in report.gpus if instance.device in (None, g.index)]
        log.info("GPU: %s", ", ".join(g.name for g in mine))
        if verdict.status == "warn":
            log.warning("%s", verdict.message)
    argv = build_argv(settings, instance, gpu=use_gpu, model_configs=configs)
    env = environment(settings, instance, inherited_environment())
    if use_gpu:
        # triton and SageAttention, each with a real kernel launch; a flag only for what passed.
        try:
            found = accel.probe(settings, report, env, instance.device)
        except OSError as exc:
            found = {"cuda": None, "error": f"the probe's answer could not be written: {exc}"}
        log.info("accelerators: %s", accel.summary(found))
        argv += accel.flags(found, settings.comfyui_extra_args())
    if mode is not None:
        others = safemode.whitelist(settings, mode)
        argv += ["--disable-all-custom-nodes", *(["--whitelist-custom-nodes", *others] if others else [])]
        log.warning(
            "safe mode: custom node %s is left out (it %s); the others load. Remove or fix it, or retry with"
            " all nodes from the dashboard",
            mode.node,
            mode.error,
        )
    rotate_node_trace(settings, instance)
    temp = instance.temp_root(settings.paths)
    if temp is not None:
        temp.mkdir(exist_ok=True)  # ComfyUI refuses a --temp-directory that does not exist
    try:
        packages.prepare(settings)
    except OSError as exc:
        # The volume read-only or full: ComfyUI still starts; pip is then left without the venv's pins.
        log.warning("could not prepare %s for custom nodes' packages: %s", packages.prefix(settings), exc)
    log.info("exec %s", " ".join(argv))
    if settings.comfyui_source_tokens:
        log.info("COMFYUI_SOURCE_TOKENS=on: ComfyUI's custom nodes can read HF_TOKEN and CIVITAI_TOKEN")
    sys.stderr.flush()
    os.execve(argv[0], argv, env)
    return 0  # not reached


def _options(parser) -> None:
    parser.add_argument("--instance", type=int, default=0, metavar="N", help="which ComfyUI (0: the first)")


if __name__ == "__main__":
    sys.exit(main())
