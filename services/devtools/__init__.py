"""The dev image's JupyterLab and code-server, started behind the dashboard password."""
