"""`comfyui-docker`, the command line: every dashboard operation through the API (services/cli/commands.py)."""
