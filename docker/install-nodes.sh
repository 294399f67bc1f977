#!/bin/sh
# Build step: install the custom nodes of the given lists (config/nodes/<list>.txt) at their pinned
# commits into DEST, and their requirements into ComfyUI's venv against the constraints file, so no
# node can replace torch or the frontend.
# Usage: install-nodes.sh DEST CONSTRAINTS PYTHON LIST...
set -eu
dest=$1
constraints=$2
python=$3
shift 3
lists_dir=${NODE_LISTS_DIR:-/app/config/nodes}
for list in "$@"; do
  file="$lists_dir/$list.txt"
  if [ ! -f "$file" ]; then
    echo "no node list $file" >&2
    exit 1
  fi
  grep -vE '^[[:space:]]*(#|$)' "$file" | while read -r url commit; do
    name=$(basename "$url" .git)
    echo "installing $name at $commit"
    git init -q "$dest/$name"
    git -C "$dest/$name" fetch -q --depth 1 "$url" "$commit"
    git -C "$dest/$name" checkout -q FETCH_HEAD
    # Some nodes keep code in submodules (UltimateSDUpscale's upscaler, Impact-Pack's subpack).
    git -C "$dest/$name" submodule update -q --init --recursive --depth 1
    if [ -f "$dest/$name/requirements.txt" ]; then
      uv pip install --python "$python" --no-cache --constraint "$constraints" \
        --requirement "$dest/$name/requirements.txt"
    fi
  done
done
