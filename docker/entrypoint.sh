#!/bin/sh
# The image's entrypoint, also `make run`'s: prepare the volume and config, then become supervisord.
set -eu
ENTRYPOINT_T0_NS=$(date +%s%N)
export ENTRYPOINT_T0_NS
APP_DIR=${APP_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
export APP_DIR
cd "$APP_DIR"
# services.startup ends by exec'ing supervisord, which becomes this process (PID 1 in a container).
exec "$APP_DIR/.venv/bin/python" -m services.startup "$@"
