"""Download benchmark: our engine side by side with curl and aria2c, in one run, sha256 included.

1. Loopback: one file from a local nginx; bare `curl -o`, curl then `sha256sum`, curl then `openssl dgst
   -sha256`; ours called directly (the engine's own time, in its process) and ours queued through the
   dashboard's API on a running stack (from the POST to the job's end, as its record says).
2. CDN-like: nginx with `limit_rate 20m` per connection and a 40 ms round trip, in a network namespace
   made for the run (NFQUEUE delay, see bench/netdelay.py); ours vs `aria2c -x16 -s16 -k1M` (checksum on)
   at several file sizes, and single-stream curl once.
3. Resume: ours killed (-9) at 50 % over the CDN-like link, then run again; bytes fetched twice, counted
   by nginx's access log.

Run as root (network namespaces, iptables): `make bench` or `.venv/bin/python bench/downloads.py
[--size-mb 2048] [--cdn-sizes-mb 16,64,256,2048] [--runs 3]`. Traffic stays on loopback inside this
machine and the namespace.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.helpers.stack import PASSWORD, Stack  # noqa: E402

PYTHON = sys.executable
MIB = 1024 * 1024

NGINX_CONF = """
user root;
daemon off;
worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
    log_format bench '$request_uri $status $body_bytes_sent';
    access_log {dir}/access.log bench;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {dir}/tmp;
    proxy_temp_path {dir}/tmp;
    fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp;
    scgi_temp_path {dir}/tmp;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ limit_rate {rate}; }}
    }}
}}
"""


def in_ns(ns: str | None, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv] if ns else argv


def wait_port(ns: str | None, port: int, timeout: float = 10) -> None:
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 1).close()"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(in_ns(ns, [PYTHON, "-c", probe]), capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


class Nginx:
    def __init__(self, root: Path, work: Path, rate: str, ns: str | None = None, port: int = 18099) -> None:
        self.dir = work
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "tmp").mkdir(exist_ok=True)
        self.port, self.ns = port, ns
        conf = self.dir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=self.dir, port=port, root=root, rate=rate))
        self.proc = subprocess.Popen(in_ns(ns, ["nginx", "-p", str(self.dir), "-c", str(conf)]))
        wait_port(ns, port)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def bytes_sent(self) -> int:
        log = self.dir / "access.log"
        return sum(int(line.split()[2]) for line in log.read_text().splitlines()) if log.exists() else 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Namespace:
    """A network namespace with loopback at MTU 1500 and a 40 ms round trip to the server port."""

    def __init__(self, port: int, delay_ms: int) -> None:
        self.name = f"cdbench{os.getpid()}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "mtu", "1500", "up"], check=True)
        rule = [
            "-A",
            "OUTPUT",
            "-o",
            "lo",
            "-p",
            "tcp",
            "--dport",
            str(port),
            "-j",
            "NFQUEUE",
            "--queue-num",
            "1",
            "--queue-bypass",
        ]
        subprocess.run(in_ns(self.name, ["iptables", *rule]), check=True)
        self.delay = subprocess.Popen(
            in_ns(self.name, [PYTHON, str(HERE / "netdelay.py"), "1", str(delay_ms)]), stdout=subprocess.PIPE, text=True
        )
        assert self.delay.stdout and self.delay.stdout.readline().strip() == "ready"

    def close(self) -> None:
        self.delay.terminate()
        self.delay.wait(10)
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        written = 0
        while written < size:
            block = os.urandom(min(16 * MIB, size - written))
            handle.write(block)
            digest.update(block)
            written += len(block)
    return digest.hexdigest()


def run_curl(url: str, out: Path, ns: str | None, expected: str) -> tuple[float, float, float]:
    """Seconds for curl alone, then with `sha256sum`, then with `openssl dgst -sha256` after it (what
    verifying the file costs a curl user: coreutils' hash is several times slower than OpenSSL's here)."""
    out.unlink(missing_ok=True)
    begin = time.perf_counter()
    subprocess.run(in_ns(ns, ["curl", "-s", "-f", "-o", str(out), url]), check=True)
    fetched = time.perf_counter() - begin
    digest = subprocess.run(["sha256sum", str(out)], capture_output=True, text=True, check=True).stdout.split()[0]
    with_sha256sum = time.perf_counter() - begin
    assert digest == expected, "curl: wrong bytes"
    begin = time.perf_counter()
    openssl = subprocess.run(["openssl", "dgst", "-sha256", "-r", str(out)], capture_output=True, text=True, check=True)
    assert openssl.stdout.split()[0] == expected, "curl: wrong bytes (openssl)"
    return fetched, with_sha256sum, fetched + time.perf_counter() - begin


def run_aria(url: str, out: Path, ns: str | None, expected: str) -> float:
    out.unlink(missing_ok=True)
    begin = time.perf_counter()
    subprocess.run(
        in_ns(
            ns,
            [
                "aria2c",
                "-q",
                "-x16",
                "-s16",
                "-k1M",
                "--file-allocation=none",
                "--allow-overwrite=true",
                "--auto-file-renaming=false",
                f"--checksum=sha-256={expected}",
                "-d",
                str(out.parent),
                "-o",
                out.name,
                url,
            ],
        ),
        check=True,
    )
    return time.perf_counter() - begin


def run_ours(url: str, workspace: Path, ns: str | None, expected: str) -> float:
    """The engine called directly: its own time in its process (the interpreter's start is not counted)."""
    shutil.rmtree(workspace, ignore_errors=True)
    result = subprocess.run(
        in_ns(ns, [PYTHON, str(HERE / "fetch_one.py"), url, str(workspace)]), capture_output=True, text=True, check=True
    )
    done = [line for line in result.stdout.splitlines() if line.startswith("done ")][-1]
    assert done.split()[2] == expected, "ours: wrong bytes"
    return float(done.split()[1])


def api(stack: Stack, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.settings.dashboard_port}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {PASSWORD}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def run_api(stack: Stack, url: str, expected: str) -> float:
    """Queued through the API of a running stack: from the POST to the job's end (its own timestamps)."""
    target = stack.settings.paths.models / "checkpoints" / "model.bin"
    target.unlink(missing_ok=True)
    begin = time.time()
    job = api(stack, "POST", "/api/downloads", {"url": url, "folder": "checkpoints", "filename": "model.bin"})
    deadline = time.monotonic() + 600
    while job["state"] not in ("done", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.05)
        job = api(stack, "GET", f"/api/downloads/{job['id']}")
    assert job["state"] == "done" and job["sha256"] == expected, ("ours via the API", job)
    return job["finished"] - begin


def resume(url: str, workspace: Path, ns: str | None, nginx: Nginx, size: int, expected: str) -> tuple[int, int]:
    """Kill ours at 50 %, run again; return (bytes nginx sent in all, bytes the second run had to fetch)."""
    shutil.rmtree(workspace, ignore_errors=True)
    before = nginx.bytes_sent()
    proc = subprocess.Popen(
        in_ns(ns, [PYTHON, str(HERE / "fetch_one.py"), url, str(workspace)]),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout
    for line in proc.stdout:
        parts = line.split()
        if parts[0] == "progress" and int(parts[1]) >= size // 2:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # nginx logs the dropped requests
    first = nginx.bytes_sent() - before
    result = subprocess.run(
        in_ns(ns, [PYTHON, str(HERE / "fetch_one.py"), url, str(workspace)]), capture_output=True, text=True, check=True
    )
    assert f" {expected} " in result.stdout, "resume: wrong bytes"
    time.sleep(0.5)
    total = nginx.bytes_sent() - before
    return total, total - first


def rate(size: int, seconds: list[float]) -> float:
    return size / statistics.median(seconds) / MIB


def loopback(root: Path, served: Path, size: int, runs: int, expected: str) -> None:
    nginx = Nginx(served, root / "nginx-lo", rate="0")
    url = nginx.url("model.bin")
    stack = Stack(root / "stack", DOWNLOADS_ALLOW_PRIVATE_HOSTS="true", DOWNLOADS_RESERVE_MB="0").start()
    try:
        stack.wait_running()
        curl = [run_curl(url, root / "curl.bin", None, expected) for _ in range(runs)]
        (root / "curl.bin").unlink(missing_ok=True)
        ours = [run_ours(url, root / "ours-ws", None, expected) for _ in range(runs)]
        shutil.rmtree(root / "ours-ws", ignore_errors=True)
        via_api = [run_api(stack, url, expected) for _ in range(runs)]
    finally:
        stack.stop()
        nginx.stop()
    bare = statistics.median(c[0] for c in curl)
    print(f"\n1. loopback, {size // MIB} MiB from nginx, sha256 checked, median of {runs}")
    print(f"{'tool':36} {'MiB/s':>8} {'vs bare curl':>13}")
    rows = [
        ("curl -o (no check)", [c[0] for c in curl]),
        ("curl -o, then sha256sum", [c[1] for c in curl]),
        ("curl -o, then openssl dgst -sha256", [c[2] for c in curl]),
        ("ours, the engine called directly", ours),
        ("ours, queued through the API", via_api),
    ]
    for name, seconds in rows:
        print(f"{name:36} {rate(size, seconds):8.0f} {bare / statistics.median(seconds):12.2f}x")


def cdn(root: Path, served: Path, sizes: list[int], runs: int, curl_runs: int, expected: dict[int, str]) -> None:
    port = 18099
    ns = Namespace(port, delay_ms=40)
    try:
        nginx = Nginx(served, root / "nginx-cdn", rate="20m", ns=ns.name, port=port)
        print(f"\n2. CDN-like: limit_rate 20m per connection, 40 ms round trip, median of {runs}")
        print(f"{'size':>9} {'aria2c -x16 MiB/s':>18} {'ours MiB/s':>11} {'ours/aria2c':>12}")
        for size in sizes:
            url = nginx.url(f"model-{size // MIB}.bin")
            aria = [run_aria(url, root / "aria.bin", ns.name, expected[size]) for _ in range(runs)]
            ours = [run_ours(url, root / "ours-ws", ns.name, expected[size]) for _ in range(runs)]
            ratio = statistics.median(aria) / statistics.median(ours)
            print(f"{size // MIB:>5} MiB {rate(size, aria):18.0f} {rate(size, ours):11.0f} {ratio:11.2f}x")
        smallest = sizes[0] if len(sizes) == 1 else sizes[-2]
        url = nginx.url(f"model-{smallest // MIB}.bin")
        curl = [run_curl(url, root / "curl.bin", ns.name, expected[smallest]) for _ in range(curl_runs)]
        print(f"curl, one stream, {smallest // MIB} MiB: {rate(smallest, [c[0] for c in curl]):.0f} MiB/s")

        size = sizes[-1]
        url = nginx.url(f"model-{size // MIB}.bin")
        total, second = resume(url, root / "ours-ws", ns.name, nginx, size, expected[size])
        twice = total - size
        print(f"\n3. resume: ours killed (-9) at 50 % of {size // MIB} MiB over the CDN-like link, then run again")
        print(f"bytes sent by nginx in all: {total / MIB:.1f} MiB for a {size / MIB:.0f} MiB file")
        print(f"fetched by the second run:  {second / MIB:.1f} MiB")
        print(f"fetched twice:              {twice / MIB:.1f} MiB = {100 * twice / size:.2f} % of the file")
        nginx.stop()
    finally:
        ns.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=2048, help="the loopback file")
    parser.add_argument("--cdn-sizes-mb", default="16,64,256,2048", help="files over the CDN-like link")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--curl-cdn-runs", type=int, default=1, help="single-stream curl at 20 MiB/s is slow")
    parser.add_argument("--only", choices=["loopback", "cdn"], help="run one part")
    args = parser.parse_args()
    for tool in ("nginx", "curl", "aria2c", "iptables", "ip", "openssl"):
        if not shutil.which(tool):
            print(f"{tool} is missing: run `make bench`, which installs it", file=sys.stderr)
            return 2
    size = args.size_mb * MIB
    sizes = [int(x) * MIB for x in args.cdn_sizes_mb.split(",")]
    root = Path(tempfile.mkdtemp(prefix="cd-bench-", dir="/var/tmp"))
    served = root / "www"
    served.mkdir()
    try:
        if args.only in (None, "loopback"):
            print(f"making a {args.size_mb} MiB file ...", flush=True)
            expected = make_file(served / "model.bin", size)
            loopback(root, served, size, args.runs, expected)
            (served / "model.bin").unlink()
        if args.only in (None, "cdn"):
            digests = {n: make_file(served / f"model-{n // MIB}.bin", n) for n in sizes}
            cdn(root, served, sizes, args.runs, args.curl_cdn_runs, digests)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
