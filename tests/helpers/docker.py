"""A real Docker engine for the container test, and what the image build needs that is not reachable here.

- dockerd from Debian's docker.io, as root, `vfs` storage, no bridge, no iptables: containers and
  builds use the host's network only (these machines must never send traffic to private ranges).
  Its data lives in CACHE, so the base image and the build's layers are reused by the next run.
- The substitutions, each for something these machines cannot reach (listed in the README):
  the CUDA base image -> Debian bookworm from `debootstrap` + `docker import` (with python3, which uv
  then uses instead of downloading its own, and this machine's extra CA certificates);
  ghcr.io's uv image -> the `uv` binary from PyPI's uv wheel, imported as an image;
  ComfyUI's repository -> the ComfyUI stand-in, committed to a git repository served by `git daemon`
  on 127.0.0.1; torch -> none (TORCH_VERSION=none); the node lists -> none.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

from tests.helpers.procs import REPO, STANDIN_DIR, VENV_PYTHON, free_port, wait_for

CACHE = Path(os.environ.get("CONTAINER_TEST_CACHE", "/var/lib/comfyui-docker-test"))
RUN = Path("/run/comfyui-docker-test")
SOCKET = RUN / "docker.sock"
DOCKER = "/usr/bin/docker"
BASE = "comfyui-docker-test/base:bookworm"
FRESH = "comfyui-docker-test/fresh:bookworm"
IMAGE = "comfyui-docker-test/image:runtime"
DEBIAN_MIRROR = "http://deb.debian.org/debian"


def env() -> dict[str, str]:
    return {**os.environ, "DOCKER_HOST": f"unix://{SOCKET}", "DOCKER_BUILDKIT": "1"}


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], env=env(), capture_output=True, text=True, timeout=timeout, check=check)


def _answering() -> bool:
    try:
        return docker("version", "--format", "{{.Server.Version}}", timeout=10, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def start_engine() -> subprocess.Popen | None:
    """dockerd on a socket of its own; None when one of ours already answers there."""
    if _answering():
        return None
    RUN.mkdir(parents=True, exist_ok=True)
    (CACHE / "docker").mkdir(parents=True, exist_ok=True)
    log = open(CACHE / "dockerd.log", "ab")
    proc = subprocess.Popen(
        [
            "dockerd",
            "--storage-driver=vfs",
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
            f"--data-root={CACHE / 'docker'}",
            f"--exec-root={RUN / 'exec'}",
            f"--pidfile={RUN / 'dockerd.pid'}",
            f"--host=unix://{SOCKET}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_for(lambda: proc.poll() is not None or _answering(), 60)
    if proc.poll() is not None:
        raise RuntimeError(f"dockerd exited {proc.returncode}: see {CACHE / 'dockerd.log'}")
    return proc


def stop_engine(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _has_image(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False).returncode == 0


def base_image() -> str:
    """The build's stand-in for the CUDA base: Debian with python3, which uv then uses."""
    return _debian(BASE, "ca-certificates,python3")


def fresh_image() -> str:
    """A fresh machine as the README means it: a minimal Debian with git, make and ca-certificates only."""
    return _debian(FRESH, "ca-certificates,git,make")


def _debian(tag: str, packages: str) -> str:
    """Debian bookworm from debootstrap, made once per machine (about 40 s) and kept in the engine, with
    this machine's extra CA certificates (it reaches PyPI through its own CA)."""
    if _has_image(tag):
        return tag
    rootfs = CACHE / f"rootfs-{tag.rsplit('/', 1)[-1].replace(':', '-')}"
    shutil.rmtree(rootfs, ignore_errors=True)  # a half-made one from an interrupted run
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={packages}", "bookworm", str(rootfs), DEBIAN_MIRROR],
        capture_output=True,
        check=True,
        timeout=900,
    )
    extra = Path("/usr/local/share/ca-certificates")
    for cert in extra.glob("*.crt") if extra.is_dir() else []:
        shutil.copy(cert, rootfs / "usr/local/share/ca-certificates" / cert.name)
    subprocess.run(["chroot", str(rootfs), "update-ca-certificates"], capture_output=True, check=True)
    shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
    (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    changes = ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    # uv and pip trust only their own roots unless told: point both at the system's bundle.
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    changes += [f"ENV SSL_CERT_FILE={bundle}", f"ENV PIP_CERT={bundle}"]
    command = [DOCKER, "import", *(arg for change in changes for arg in ("--change", change)), "-", tag]
    subprocess.run(command, stdin=tar.stdout, env=env(), capture_output=True, check=True, timeout=600)
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    return tag


def uv_version() -> str:
    """The uv release the Dockerfile's UV_IMAGE names."""
    text = (REPO / "docker" / "Dockerfile").read_text()
    return re.search(r"^ARG UV_IMAGE=\S+:(\S+)$", text, re.M).group(1)


def uv_image() -> str:
    """An image holding /uv, like ghcr.io's, from the same release of PyPI's uv wheel."""
    version = uv_version()
    tag = f"comfyui-docker-test/uv:{version}"
    if _has_image(tag):
        return tag
    wheels = CACHE / "uv"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(VENV_PYTHON), "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels)]
        + [f"uv=={version}"],
        capture_output=True,
        check=True,
        timeout=300,
    )
    wheel = next(wheels.glob(f"uv-{version}-*.whl"))
    tree = wheels / f"tree-{version}"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir()
    with zipfile.ZipFile(wheel) as zf:
        for name in ("uv", "uvx"):
            target = tree / name
            target.write_bytes(zf.read(f"uv-{version}.data/scripts/{name}"))
            target.chmod(0o755)
    tar = subprocess.Popen(["tar", "-C", str(tree), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run([DOCKER, "import", "-", tag], stdin=tar.stdout, env=env(), capture_output=True, check=True)
    tar.wait()
    return tag


class StandinRepo:
    """The ComfyUI stand-in as a git repository with what the Dockerfile expects of ComfyUI's
    (requirements.txt, manager_requirements.txt), served read-only by git daemon on 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "comfyui.git"
        work = root / "comfyui"
        shutil.copytree(STANDIN_DIR, work, ignore=shutil.ignore_patterns("__pycache__"))
        (work / "requirements.txt").write_text("aiohttp\npyyaml\n")
        (work / "manager_requirements.txt").write_text("")
        git = {
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        }
        for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "stand-in"]):
            subprocess.run(["git", *args], cwd=work, env={**os.environ, **git}, check=True, capture_output=True)
        self.commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True, check=True
        ).stdout.strip()
        subprocess.run(["git", "clone", "-q", "--bare", str(work), str(self.dir)], check=True)
        subprocess.run(["git", "-C", str(self.dir), "config", "uploadpack.allowAnySHA1InWant", "true"], check=True)
        self.port = free_port()
        self.daemon = subprocess.Popen(
            ["git", "daemon", "--export-all", "--reuseaddr", "--listen=127.0.0.1", f"--port={self.port}"]
            + [f"--base-path={root}", str(root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: subprocess.run(["git", "ls-remote", self.url], capture_output=True).returncode == 0, 30)

    @property
    def url(self) -> str:
        return f"git://127.0.0.1:{self.port}/comfyui.git"

    def close(self) -> None:
        self.daemon.terminate()
        self.daemon.wait(10)


# What a build takes on vfs (every layer a full copy): about 8 GB at its peak, freed by cleanup().
DISK_NEEDED = 12 * 1024**3


def cleanup() -> None:
    """Drop the test image and the build cache; keep the base and uv images (made once per machine)."""
    docker("image", "rm", "-f", IMAGE, check=False)
    docker("image", "prune", "-f", check=False, timeout=600)
    docker("builder", "prune", "-af", check=False, timeout=600)


def build(repo: StandinRepo, log: Path) -> float:
    """The real docker/Dockerfile, target runtime, with the substitutions; returns its seconds."""
    free = shutil.disk_usage(CACHE).free
    if free < DISK_NEEDED:
        raise AssertionError(
            f"the container test needs {DISK_NEEDED / 1024**3:.0f} GiB free under {CACHE} (vfs copies every"
            f" layer); {free / 1024**3:.1f} GiB are. Free space, or set CONTAINER_TEST_CACHE to a larger disk"
        )
    args = {
        "CUDA_BASE": base_image(),
        "UV_IMAGE": uv_image(),
        "PYTHON_VERSION": "3.11",
        "COMFYUI_REPO": repo.url,
        "COMFYUI_REF": repo.commit,
        "TORCH_VERSION": "none",
        "NODE_LISTS": "",
        "VARIANT": "container-test",
    }
    command = [
        DOCKER,
        "build",
        "--progress=plain",
        "--network=host",
        "--target=runtime",
        "-f",
        "docker/Dockerfile",
        "-t",
        IMAGE,
    ]
    for name, value in args.items():
        command += ["--build-arg", f"{name}={value}"]
    begin = time.monotonic()
    with open(log, "w") as out:
        done = subprocess.run([*command, "."], cwd=REPO, env=env(), stdout=out, stderr=subprocess.STDOUT, timeout=1800)
    if done.returncode != 0:
        raise AssertionError(f"docker build failed: see {log}:\n{log.read_text()[-3000:]}")
    return time.monotonic() - begin
