"""ComfyUI-Docker's control plane: startup, launcher, dashboard, worker, health."""
