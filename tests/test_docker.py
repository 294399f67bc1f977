"""Static checks of the Docker files (no Docker engine here): lint, the bake matrix, the Dockerfile."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from tests.helpers.bake import Bake
from tests.helpers.procs import REPO

BIN = REPO / ".venv" / "bin"
BAKE = Bake(REPO / "docker-bake.hcl")
IMAGES = BAKE.matrix_targets["image"]


def dockerfile() -> DockerfileParser:
    parser = DockerfileParser(path=str(REPO / "docker" / "Dockerfile"))
    return parser


def stages() -> dict[str, list[dict]]:
    """Instructions per stage name."""
    out: dict[str, list[dict]] = {}
    current = None
    for instr in dockerfile().structure:
        if instr["instruction"] == "FROM":
            match = re.search(r"\bAS\s+(\S+)", instr["value"], flags=re.I)
            current = match.group(1) if match else instr["value"]
            out[current] = [instr]
        elif current:
            out[current].append(instr)
    return out


def stage_chain(name: str) -> list[dict]:
    """A stage's instructions with those of the stages it is built FROM."""
    all_stages = stages()
    instrs = all_stages[name]
    parent = instrs[0]["value"].split()[0]
    return (stage_chain(parent) if parent in all_stages else []) + instrs


def test_hadolint():
    result = subprocess.run(
        [
            str(BIN / "hadolint"),
            "--no-color",
            "--config",
            str(REPO / ".hadolint.yaml"),
            str(REPO / "docker" / "Dockerfile"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_every_shell_script():
    scripts = [p for p in REPO.rglob("*.sh") if ".venv" not in p.parts] + [REPO / ".ci" / "run"]
    assert len(scripts) >= 3
    result = subprocess.run([str(BIN / "shellcheck"), *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_matrix_is_sixteen_images_with_unique_tags():
    assert len(IMAGES) == 16
    tags = [tag for name in IMAGES for tag in BAKE.resolved(name)["tags"]]
    assert len(tags) == len(set(tags)) == 32
    assert BAKE.resolved("latest")["tags"] == ["ghcr.io/comfyui-docker/comfyui:latest"]
    assert "ghcr.io/comfyui-docker/comfyui:standard-cu128" in BAKE.resolved("standard-cu128")["tags"]


def test_every_cuda_version_has_a_base_and_a_torch_index():
    cudas = BAKE.variables["CUDA"]
    assert [c["version"] for c in cudas] == ["12.4", "12.6", "12.8", "13.0"]
    for cuda in cudas:
        assert cuda["base"].startswith("nvidia/cuda:" + cuda["version"])
        assert cuda["torch_index"] == "https://download.pytorch.org/whl/" + cuda["name"]
        assert all(cuda[k] for k in ("torch", "torchvision", "torchaudio"))


def test_every_variant_node_list_exists_and_is_pinned():
    for variant in BAKE.variables["VARIANTS"]:
        for name in variant["nodes"].split():
            path = REPO / "config" / "nodes" / f"{name}.txt"
            assert path.is_file(), path
            for line in path.read_text().splitlines():
                if line.strip() and not line.startswith("#"):
                    url, commit = line.split()
                    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), line
                    assert re.fullmatch(r"[0-9a-f]{40}", commit), line


def test_groups_cover_the_matrix():
    assert sorted(BAKE.group_targets("all")) == sorted([*IMAGES, "latest"])
    for group in ("minimal", "standard", "full", "dev", "cu124", "cu126", "cu128", "cu130"):
        members = BAKE.group_targets(group)
        assert members and all(m in IMAGES for m in members) and all(group in m for m in members)
    assert all(t in BAKE.targets for t in BAKE.group_targets("default"))


def test_bake_args_are_declared_and_targets_are_stages():
    declared = {i["value"].split("=")[0].strip() for i in dockerfile().structure if i["instruction"] == "ARG"}
    names = stages()
    for name in [*IMAGES, "latest", "test"]:
        target = BAKE.resolved(name)
        assert target["dockerfile"] == "docker/Dockerfile"
        assert set(target["args"]) <= declared, set(target["args"]) - declared
        assert target["target"] in names


def test_every_copy_source_exists():
    for instr in dockerfile().structure:
        if instr["instruction"] not in ("COPY", "ADD"):
            continue
        parts = instr["value"].split()
        if any(p.startswith("--from") for p in parts) or parts[0].startswith("http"):
            continue
        for source in [p for p in parts if not p.startswith("--")][:-1]:
            assert (REPO / source).exists(), source


@pytest.mark.parametrize("stage", ["runtime", "dev"])
def test_shipped_stages_have_healthcheck_entrypoint_and_compilers_only_on_request(stage):
    chain = stage_chain(stage)
    kinds = [i["instruction"] for i in chain]
    assert "HEALTHCHECK" in kinds and "ENTRYPOINT" in kinds and "STOPSIGNAL" in kinds and "EXPOSE" in kinds
    entry = [i for i in chain if i["instruction"] == "ENTRYPOINT"][-1]["value"]
    assert "docker/entrypoint.sh" in entry
    health = [i for i in chain if i["instruction"] == "HEALTHCHECK"][-1]["value"]
    assert '"services.health", "check", "--docker"' in health
    # A compiler only where the variant asks for one: BUILD_TOOLS picks the parent stage.
    assert "build-essential" not in " ".join(i["value"] for i in stages()[stage])
    labels = " ".join(i["value"] for i in chain if i["instruction"] == "LABEL")
    for label in ("version", "revision", "source"):
        assert f"org.opencontainers.image.{label}" in labels


def test_a_compiler_ships_in_every_variant_but_minimal():
    all_stages = stages()
    assert all_stages["runtime"][0]["value"].startswith("base-build-tools-${BUILD_TOOLS} ")
    assert "build-essential" in " ".join(i["value"] for i in all_stages["base-build-tools-true"])
    assert "build-essential" not in " ".join(i["value"] for i in all_stages["base-build-tools-false"])
    tools = {v["name"]: v["build_tools"] for v in BAKE.variables["VARIANTS"]}
    assert tools == {"minimal": "false", "standard": "true", "full": "true", "dev": "true"}
    assert BAKE.resolved("minimal-cu128")["args"]["BUILD_TOOLS"] == "false"


def test_readme_shows_the_healthcheck_line():
    readme = (REPO / "README.md").read_text()
    assert '"services.health", "check", "--docker"' in readme
    assert "HEALTHCHECK --interval=30s --timeout=20s --start-period=30s --retries=3" in readme
    text = (REPO / "docker" / "Dockerfile").read_text()
    assert "HEALTHCHECK --interval=30s --timeout=20s --start-period=30s --retries=3" in text


def test_nothing_is_copied_to_the_workspace_at_start():
    for path in [REPO / "docker" / "entrypoint.sh", *Path(REPO / "services" / "startup").glob("*.py")]:
        text = path.read_text()
        for tool in ("rsync", "shutil.copytree", "cp -r", "cp -a", "tar "):
            assert tool not in text, (path, tool)


def ref(name: str) -> str:
    """The pin in config/<name>: its one line that is not a comment."""
    lines = [line for line in (REPO / "config" / name).read_text().splitlines() if not line.startswith("#")]
    assert len(lines) == 1 and re.fullmatch(r"[0-9a-f]{40}", lines[0]), lines
    return lines[0]


def test_the_comfyui_commit_is_written_once():
    """config/comfyui.ref is the pin; the Makefile reads it, the Dockerfile and the bake file default to it."""
    pinned = ref("comfyui.ref")
    dockerfile_default = re.search(r"^ARG COMFYUI_REF=(\S+)$", (REPO / "docker" / "Dockerfile").read_text(), re.M)
    bake = (REPO / "docker-bake.hcl").read_text()
    bake_default = re.search(r'variable "COMFYUI_REF" \{\s*default = "([^"]+)"', bake)
    assert dockerfile_default and dockerfile_default.group(1) == pinned
    assert bake_default and bake_default.group(1) == pinned
    made = subprocess.run(["make", "-s", "-n", "-p"], cwd=REPO, capture_output=True, text=True, check=False).stdout
    assert "COMFYUI_REF = $(shell grep -v '^\\#' config/comfyui.ref)" in made or f"COMFYUI_REF = {pinned}" in made
    shown = subprocess.run(
        ["make", "-s", "--eval", "shown: ; @echo $(COMFYUI_REF)", "shown"], cwd=REPO, capture_output=True, text=True
    )
    assert shown.stdout.strip() == pinned


def test_the_legacy_line_runs_the_pinned_legacy_comfyui_and_the_others_the_current_one():
    assert BAKE.variables["COMFYUI_LEGACY_REF"] == ref("comfyui-legacy.ref")
    for cuda in BAKE.variables["CUDA"]:
        expected = ref("comfyui-legacy.ref") if cuda["name"] == "cu124" else ref("comfyui.ref")
        assert cuda["comfyui"] == expected, cuda["name"]
        assert BAKE.resolved(f"minimal-{cuda['name']}")["args"]["COMFYUI_REF"] == expected


def test_node_pins_are_unique_and_each_says_what_it_is():
    """One line per node across every list, each a 40-hex commit under a comment naming the node."""
    seen: dict[str, str] = {}
    for path in sorted((REPO / "config" / "nodes").glob("*.txt")):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if not line.strip() or line.startswith("#"):
                continue
            url, commit = line.split()
            name = url.rsplit("/", 1)[-1]
            assert url not in seen, f"{url} pinned in {seen.get(url)} and {path.name}"
            seen[url] = path.name
            assert lines[number - 1].startswith(f"# {name} "), f"{path.name}: no comment above {name}"
    assert len(seen) == 15


def test_the_readme_matrix_is_the_bake_files():
    readme = (REPO / "README.md").read_text()
    for cuda in BAKE.variables["CUDA"]:
        row = f"| {cuda['version']} | `{cuda['name']}` | {cuda['driver']} | {cuda['gpus']} | {cuda['torch']} |"
        assert row in readme, row


def _git(cwd: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_make_pins_resolves_branch_heads_and_the_newest_release(tmp_path):
    """docker/pins.py against a real git repository (git ls-remote on a local path, no network)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pins", REPO / "docker" / "pins.py")
    pins = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pins)
    remote = tmp_path / "node"
    remote.mkdir()
    _git(remote, "init", "-q", "-b", "trunk")
    for version in ("v0.9.0", "v0.10.0", "v0.10.1-rc1"):
        _git(remote, "commit", "-q", "--allow-empty", "-m", version)
        _git(remote, "tag", "-a", version, "-m", version)
    release = _git(remote, "rev-parse", "v0.10.0^{commit}")
    _git(remote, "commit", "-q", "--allow-empty", "-m", "after")
    tip = _git(remote, "rev-parse", "HEAD")
    assert pins.head(str(remote)) == ("trunk", tip)
    # The highest vX.Y.Z (0.10 above 0.9; a pre-release is not a release), followed to its commit.
    assert pins.newest_release(str(remote)) == ("v0.10.0", release)
    text = f"# a list\n# node old comment\n{remote} {'0' * 40}\n"
    rewritten = pins.rewrite_list(text, pins.head, "2026-12-01")
    assert rewritten == f"# a list\n# node trunk, resolved 2026-12-01\n{remote} {tip}\n"
