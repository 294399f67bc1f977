"""Workflows in, ready pod out: what a ComfyUI workflow needs and how this pod gets it.

- `formats`: the workflow from JSON (UI or API format) or from a PNG/WebP/FLAC ComfyUI saved;
- `refs`: its node types and the model files its loaders name (with the URLs embedded by its author);
- `catalog`: ComfyUI's templates and ComfyUI-Manager's lists, read where ComfyUI's venv installed them;
- `analyze`: on the volume or not, where each file can come from, which node pack a type needs;
- `install`: queue the downloads and the node packs, and one view of the whole install.
"""
