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
def test_shipped_stages_have_healthcheck_entrypoint_and_no_compilers(stage):
    chain = stage_chain(stage)
    kinds = [i["instruction"] for i in chain]
    assert "HEALTHCHECK" in kinds and "ENTRYPOINT" in kinds and "STOPSIGNAL" in kinds and "EXPOSE" in kinds
    entry = [i for i in chain if i["instruction"] == "ENTRYPOINT"][-1]["value"]
    assert "docker/entrypoint.sh" in entry
    health = [i for i in chain if i["instruction"] == "HEALTHCHECK"][-1]["value"]
    assert '"services.health", "check", "--docker"' in health
    assert "build-essential" not in " ".join(i["value"] for i in stages()[stage])
    labels = " ".join(i["value"] for i in chain if i["instruction"] == "LABEL")
    for label in ("version", "revision", "source"):
        assert f"org.opencontainers.image.{label}" in labels


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


def test_the_comfyui_commit_is_written_once():
    """config/comfyui.ref is the pin; the Makefile reads it, the Dockerfile and the bake file default to it."""
    pinned = (REPO / "config" / "comfyui.ref").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{40}", pinned)
    dockerfile_default = re.search(r"^ARG COMFYUI_REF=(\S+)$", (REPO / "docker" / "Dockerfile").read_text(), re.M)
    bake = (REPO / "docker-bake.hcl").read_text()
    bake_default = re.search(r'variable "COMFYUI_REF" \{\s*default = "([^"]+)"', bake)
    assert dockerfile_default and dockerfile_default.group(1) == pinned
    assert bake_default and bake_default.group(1) == pinned
    made = subprocess.run(["make", "-s", "-n", "-p"], cwd=REPO, capture_output=True, text=True, check=False).stdout
    assert "COMFYUI_REF = $(shell cat config/comfyui.ref)" in made or f"COMFYUI_REF = {pinned}" in made
