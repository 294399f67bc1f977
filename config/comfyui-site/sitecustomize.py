"""Loaded by ComfyUI's interpreter at start (the launcher puts this folder on PYTHONPATH).

Adds the volume's package folder (COMFYUI_PACKAGES, where custom nodes' pip installs go) *after* the
venv's site-packages: what nodes installed at run time survives a restart, and never shadows torch or
the frontend that the image pins.
"""

import os
import site

_packages = os.environ.get("COMFYUI_PACKAGES")
if _packages and os.path.isdir(_packages):
    site.addsitedir(_packages)
