"""Plain functions of the launcher: what argv and what environment ComfyUI gets."""

from __future__ import annotations

import os

from services.common import modelpaths, packages, supervisor, volume
from services.common.instances import Instance
from services.common.settings import Settings


def model_path_configs(settings: Settings) -> tuple[list[str], list[str]]:
    """The YAML files to pass, and notes on any left out (ComfyUI exits 1 on a bad one)."""
    paths = settings.paths
    files, notes = [], []
    for path in (paths.extra_model_paths, paths.user_extra_model_paths):
        if path == paths.user_extra_model_paths and not path.exists():
            continue
        trouble = modelpaths.problem(path)
        if trouble:
            notes.append(f"left out: {trouble}")
        else:
            files.append(str(path))
    return files, notes


def build_argv(settings: Settings, instance: Instance, gpu: bool, model_configs: list[str]) -> list[str]:
    paths = settings.paths
    host, port = instance.listen(settings)
    argv = [
        str(settings.comfyui_python),
        str(settings.comfyui_dir / "main.py"),
        "--listen",
        host,
        "--port",
        str(port),
        "--output-directory",
        str(paths.output),
        "--input-directory",
        str(paths.input),
        "--user-directory",
        str(paths.user),
        # Its own database on the volume: the default lives in the ComfyUI tree, shared by every instance.
        "--database-url",
        f"sqlite:///{instance.database(paths)}",
    ]
    temp = instance.temp_root(paths)
    if temp is not None:
        argv += ["--temp-directory", str(temp)]  # each empties its own at start, not the others' previews
    for config in model_configs:
        argv += ["--extra-model-paths-config", config]
    extra = settings.comfyui_extra_args()
    if not gpu:
        argv.append("--cpu")
    elif instance.device is not None and "--cuda-device" not in extra:
        argv += ["--cuda-device", str(instance.device)]
    if settings.comfyui_manager and (settings.comfyui_dir / "manager_requirements.txt").exists():
        argv.append("--enable-manager")
    if not volume.mmap_choice(settings)[0] and "--disable-mmap" not in extra:
        argv.append("--disable-mmap")
    return argv + extra


def environment(settings: Settings, instance: Instance, inherited: dict[str, str]) -> dict[str, str]:
    """ComfyUI's environment: nothing of the control plane's, and pip installs by custom nodes go to the
    volume and are read back after a restart.

    Every custom node runs inside ComfyUI and can read its environment: the stack's settings (the
    dashboard password, REDIS_URL with its password, the source tokens) and supervisord's variables are
    taken out. HF_TOKEN and CIVITAI_TOKEN stay only with COMFYUI_SOURCE_TOKENS=on.

    The folder on PYTHONPATH holds only a sitecustomize that appends the volume's packages after the
    venv's own, so nothing installed at run time can shadow torch or the frontend; pip installs there
    with a prefix and the venv pinned (services/common/packages.py).
    """
    paths = settings.paths
    env = supervisor.without_control_plane(settings, inherited)
    if settings.comfyui_source_tokens:
        for name, secret in (("HF_TOKEN", settings.hf_token), ("CIVITAI_TOKEN", settings.civitai_token)):
            if secret is not None:
                env[name] = secret.get_secret_value()
    # Read by huggingface_hub in custom nodes: a mirror set for the stack is theirs too (not a secret).
    env["HF_ENDPOINT"] = settings.hf_endpoint
    env.update(packages.pip_environment(settings, inherited))
    # Where its sitecustomize records each custom node before importing it (services/common/nodes.py).
    env["COMFYUI_NODE_TRACE"] = str(instance.trace(paths))
    if instance.device is not None:
        # --cuda-device N becomes CUDA_VISIBLE_DEVICES=N, an index in CUDA's order, by default fastest
        # first; the N we pass, and show on the overview, is NVML's, in PCI bus order. One order for both.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    if instance.output_prefix:
        # Read by the same sitecustomize: what it saves starts with this (services/common/instances.py).
        env["COMFYUI_OUTPUT_PREFIX"] = instance.output_prefix
    env["COMFYUI_NODE_DIRS"] = os.pathsep.join((str(paths.custom_nodes), str(settings.comfyui_dir / "custom_nodes")))
    return env


def rotate_node_trace(settings: Settings, instance: Instance) -> None:
    """Keep the last start's trace (a node that killed it is its last line) and begin an empty one."""
    paths = settings.paths
    try:
        instance.trace(paths).replace(instance.trace_before(paths))
    except FileNotFoundError:
        pass
    instance.trace(paths).write_bytes(b"")
