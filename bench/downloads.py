"""Download benchmark: our engine side by side with curl and aria2c, in one run, sha256 included.

1. Loopback: one file from a local nginx; ours vs `curl -o` + `sha256sum`.
2. CDN-like: nginx with `limit_rate 20m` per connection and a 40 ms round trip, in a network namespace
   made for the run (NFQUEUE delay, see bench/netdelay.py); ours vs `aria2c -x16 -s16 -k1M` (checksum on) vs
   single-stream curl.
3. Resume: ours killed (-9) at 50 % over the CDN-like link, then run again; bytes fetched twice, counted
   by nginx's access log.

Run as root (network namespaces, iptables): `make bench` or `.venv/bin/python bench/downloads.py
[--size-mb 2048] [--runs 3]`. Traffic stays on loopback inside this machine and the namespace.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
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


def run_curl(url: str, out: Path, ns: str | None, expected: str) -> tuple[float, float]:
    """Seconds for curl alone, and for curl then sha256sum (what verifying the file costs a curl user)."""
    out.unlink(missing_ok=True)
    begin = time.perf_counter()
    subprocess.run(in_ns(ns, ["curl", "-s", "-f", "-o", str(out), url]), check=True)
    fetched = time.perf_counter() - begin
    digest = subprocess.run(["sha256sum", str(out)], capture_output=True, text=True, check=True).stdout.split()[0]
    elapsed = time.perf_counter() - begin
    assert digest == expected, "curl: wrong bytes"
    return fetched, elapsed


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
    shutil.rmtree(workspace, ignore_errors=True)
    begin = time.perf_counter()
    result = subprocess.run(
        in_ns(ns, [PYTHON, str(HERE / "fetch_one.py"), url, str(workspace)]), capture_output=True, text=True, check=True
    )
    elapsed = time.perf_counter() - begin
    done = [line for line in result.stdout.splitlines() if line.startswith("done ")][-1]
    assert done.split()[2] == expected, "ours: wrong bytes"
    return elapsed


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--curl-cdn-runs", type=int, default=1, help="single-stream curl at 20 MiB/s is slow")
    args = parser.parse_args()
    for tool in ("nginx", "curl", "aria2c", "iptables", "ip"):
        if not shutil.which(tool):
            print(f"{tool} is missing: run `make bench`, which installs it", file=sys.stderr)
            return 2
    size = args.size_mb * MIB
    root = Path(tempfile.mkdtemp(prefix="cd-bench-", dir="/var/tmp"))
    served = root / "www"
    served.mkdir()
    try:
        print(f"making a {args.size_mb} MiB file ...", flush=True)
        expected = make_file(served / "model.bin", size)

        nginx = Nginx(served, root / "nginx-lo", rate="0")
        url = nginx.url("model.bin")
        curl = [run_curl(url, root / "curl.bin", None, expected) for _ in range(args.runs)]
        ours = [run_ours(url, root / "ours-ws", None, expected) for _ in range(args.runs)]
        nginx.stop()
        print(f"\n1. loopback, {args.size_mb} MiB from nginx, sha256 checked, median of {args.runs}")
        curl_only, curl_sha = [c[0] for c in curl], [c[1] for c in curl]
        print(f"{'tool':32} {'MiB/s':>8}")
        print(f"{'curl -o (no check)':32} {rate(size, curl_only):8.0f}")
        print(f"{'curl -o + sha256sum':32} {rate(size, curl_sha):8.0f}")
        print(
            f"{'ours (segmented, verified)':32} {rate(size, ours):8.0f}   ratio ours/curl: "
            f"{statistics.median(curl_only) / statistics.median(ours):.2f}x (no check), "
            f"{statistics.median(curl_sha) / statistics.median(ours):.2f}x (+ sha256sum)"
        )

        port = 18099
        ns = Namespace(port, delay_ms=40)
        try:
            nginx = Nginx(served, root / "nginx-cdn", rate="20m", ns=ns.name, port=port)
            url = nginx.url("model.bin")
            aria = [run_aria(url, root / "aria.bin", ns.name, expected) for _ in range(args.runs)]
            ours = [run_ours(url, root / "ours-ws", ns.name, expected) for _ in range(args.runs)]
            curl = [run_curl(url, root / "curl.bin", ns.name, expected) for _ in range(args.curl_cdn_runs)]
            print(f"\n2. CDN-like: limit_rate 20m per connection, 40 ms round trip, median of {args.runs}")
            print(f"{'tool':32} {'MiB/s':>8}")
            print(f"{'curl (one stream)':32} {rate(size, [c[0] for c in curl]):8.0f}   ({args.curl_cdn_runs} run)")
            print(f"{'aria2c -x16 -s16 -k1M':32} {rate(size, aria):8.0f}")
            print(
                f"{'ours (16 segments)':32} {rate(size, ours):8.0f}   ratio ours/aria2c: "
                f"{statistics.median(aria) / statistics.median(ours):.2f}x"
            )

            total, second = resume(url, root / "ours-ws", ns.name, nginx, size, expected)
            twice = total - size
            print("\n3. resume: ours killed (-9) at 50 % over the CDN-like link, then run again")
            print(f"bytes sent by nginx in all: {total / MIB:.1f} MiB for a {size / MIB:.0f} MiB file")
            print(f"fetched by the second run:  {second / MIB:.1f} MiB")
            print(
                f"fetched twice:              {twice / MIB:.1f} MiB = {100 * twice / size:.2f} % of the file"
                "   (goal: under 1 %)"
            )
            nginx.stop()
        finally:
            ns.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
