"""`make pins`: re-resolve every pin on a machine with network, and rewrite where each is written.

- ComfyUI: the commit of its newest release tag (vX.Y.Z) into config/comfyui.ref, the Dockerfile's
  `ARG COMFYUI_REF` default and the bake file's COMFYUI_REF default.
- Each node of config/nodes/*.txt: the head of its default branch, with a comment line naming the
  branch and the day it was resolved.

The legacy line's ComfyUI (config/comfyui-legacy.ref) is left alone: it is chosen by hand for what its
torch can run. Only `git ls-remote` is used: nothing is cloned. Review the diff and build before
committing it.
"""

from __future__ import annotations

import argparse
import datetime
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMFYUI_REPO = "https://github.com/comfyanonymous/ComfyUI"
SHA = re.compile(r"[0-9a-f]{40}")


def ls_remote(url: str, option: str, *patterns: str) -> list[tuple[str, str]]:
    out = subprocess.run(
        ["git", "ls-remote", option, url, *patterns], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    return [tuple(line.split("\t", 1)) for line in out.splitlines() if "\t" in line]


def head(url: str) -> tuple[str, str]:
    """(default branch, its head commit) of a remote repository."""
    branch, commit = "HEAD", None
    for left, right in ls_remote(url, "--symref", "HEAD"):
        if left.startswith("ref: refs/heads/"):
            branch = left.removeprefix("ref: refs/heads/")
        elif right == "HEAD":
            commit = left
    if commit is None:
        raise RuntimeError(f"{url} has no HEAD")
    return branch, commit


def newest_release(url: str) -> tuple[str, str]:
    """(tag, commit) of the highest vX.Y.Z tag; an annotated tag is followed to its commit."""
    tags: dict[str, str] = {}
    for commit, ref in ls_remote(url, "--tags"):
        name = ref.removeprefix("refs/tags/")
        peeled = name.endswith("^{}")
        name = name.removesuffix("^{}")
        if re.fullmatch(r"v\d+\.\d+\.\d+", name) and (peeled or name not in tags):
            tags[name] = commit
    if not tags:
        raise RuntimeError(f"{url} has no release tag")
    tag = max(tags, key=lambda t: tuple(int(n) for n in t[1:].split(".")))
    return tag, tags[tag]


def rewrite_list(text: str, resolve, today: str) -> str:
    """A node list with each pin replaced by its branch head and the comment above it renewed."""
    out: list[str] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#") and SHA.fullmatch(parts[1]):
            branch, commit = resolve(parts[0])
            name = parts[0].rstrip("/").rsplit("/", 1)[-1]
            if out and out[-1].startswith(f"# {name} "):
                out.pop()
            out += [f"# {name} {branch}, resolved {today}", f"{parts[0]} {commit}"]
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def write_comfyui(tag: str, commit: str, today: str) -> None:
    (REPO / "config" / "comfyui.ref").write_text(
        f"# ComfyUI {tag} (resolved {today}), the commit of its release. `make pins` re-resolves it.\n{commit}\n"
    )
    for path, pattern, replacement in (
        (REPO / "docker" / "Dockerfile", r"^ARG COMFYUI_REF=\S+$", f"ARG COMFYUI_REF={commit}"),
        (
            REPO / "docker-bake.hcl",
            r'(variable "COMFYUI_REF" \{\s*default = )"[^"]+"',
            rf'\g<1>"{commit}"',
        ),
    ):
        text = path.read_text()
        path.write_text(re.sub(pattern, replacement, text, count=1, flags=re.M))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    today = datetime.date.today().isoformat()
    try:
        tag, commit = newest_release(COMFYUI_REPO)
        write_comfyui(tag, commit, today)
        print(f"ComfyUI {tag} {commit}")
        for path in sorted((REPO / "config" / "nodes").glob("*.txt")):
            path.write_text(rewrite_list(path.read_text(), head, today))
            print(f"rewrote {path.relative_to(REPO)}")
    except (subprocess.SubprocessError, RuntimeError, OSError) as exc:
        print(f"pins: {exc} (this needs network access to GitHub)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
