"""The ComfyUI launcher: Settings -> argv -> exec ComfyUI."""
