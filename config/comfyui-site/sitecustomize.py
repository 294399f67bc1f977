"""Loaded by ComfyUI's interpreter at start (the launcher puts this folder on PYTHONPATH).

Adds the volume's package folder (COMFYUI_PACKAGES, where custom nodes' pip installs go) *after* the
venv's site-packages: what nodes installed at run time survives a restart, and never shadows torch or
the frontend that the image pins.

Records each custom node as ComfyUI begins to import it (COMFYUI_NODE_TRACE): a node that ends the
process at import (SystemExit, os._exit) prints nothing, and is then the trace's last line. Python's
audit hook sees every module body executed; only the first one of each node under COMFYUI_NODE_DIRS
is written, with one os.write to an append-only file, which survives the process dying a moment later.

With one ComfyUI per GPU sharing one output folder (COMFYUI_OUTPUT_PREFIX), every file name a node asks
of ComfyUI's `folder_paths.get_save_image_path` (SaveImage, SaveVideo, SaveAudio and most custom savers)
starts with this instance's prefix: each counts its own files, and none overwrites another's.
"""

import os
import site
import sys

_trace = os.environ.get("COMFYUI_NODE_TRACE")
_dirs = tuple(os.path.join(d, "") for d in os.environ.get("COMFYUI_NODE_DIRS", "").split(os.pathsep) if d)
if _trace and _dirs:
    try:
        _fd = os.open(_trace, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError:
        _fd = None
    _last = [None]

    def _node_hook(event, args, _fd=_fd, _dirs=_dirs, _last=_last):
        if event != "exec" or _fd is None:
            return
        filename = getattr(args[0], "co_filename", "")
        if not filename.startswith(_dirs):
            return
        for root in _dirs:
            if filename.startswith(root):
                node = root + filename[len(root) :].split(os.sep, 1)[0]
                break
        if node != _last[0]:
            _last[0] = node
            try:
                os.write(_fd, (node + "\n").encode())
            except OSError:
                pass

    sys.addaudithook(_node_hook)

_packages = os.environ.get("COMFYUI_PACKAGES")
if _packages and os.path.isdir(_packages):
    site.addsitedir(_packages)

_prefix = os.environ.get("COMFYUI_OUTPUT_PREFIX")
if _prefix:
    import functools
    import importlib.machinery

    def _prefixed(original, prefix=_prefix):
        @functools.wraps(original)
        def get_save_image_path(filename_prefix, output_dir, image_width=0, image_height=0):
            folder, sep, name = str(filename_prefix).rpartition("/")
            if not name.startswith(prefix):
                filename_prefix = folder + sep + prefix + name
            return original(filename_prefix, output_dir, image_width, image_height)

        return get_save_image_path

    class _OutputPrefix:
        """Finds ComfyUI's folder_paths as the normal path finder does, and wraps it once it has run."""

        @staticmethod
        def find_spec(name, path=None, target=None):
            if name != "folder_paths":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or spec.loader is None:
                return spec
            run = spec.loader.exec_module

            def exec_module(module, run=run):
                run(module)
                if callable(getattr(module, "get_save_image_path", None)):
                    module.get_save_image_path = _prefixed(module.get_save_image_path)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _OutputPrefix)
