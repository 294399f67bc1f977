"""Front door benchmark on the real stack (nginx, the dashboard's auth check, the ComfyUI stand-in), loopback.

Side by side in one run, interleaved so both paths see the same machine:
1. Added latency per request: `GET /prompt` on one keep-alive connection, straight to ComfyUI's internal
   port vs through the front door with a bearer token and with a session cookie: p50 / p99.
2. WebSocket event throughput: a prompt of many nodes run by the stand-in with no delay per step, its
   events received on `/ws` straight vs through the front door: events per second.
3. Memory of the front door: resident memory of nginx's master and workers, and their peak.
Run: `make bench` or `.venv/bin/python bench/frontdoor.py`.
"""

from __future__ import annotations

import http.client
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests
import websocket

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.procs import peak_rss, wait_for
from tests.helpers.stack import PASSWORD, Stack

REQUESTS, BLOCK = 3000, 100
NODES, ROUNDS = 400, 4


def p50_p99(values: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(values, n=100)
    return statistics.median(values), cuts[98]


def timed_gets(port: int, headers: dict[str, str], count: int) -> list[float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    try:
        for _ in range(count):
            begin = time.perf_counter()
            connection.request("GET", "/prompt", headers=headers)
            response = connection.getresponse()
            response.read()
            out.append((time.perf_counter() - begin) * 1000)
            assert response.status == 200, response.status
    finally:
        connection.close()
    return out


def latency(stack: Stack, cookie: str) -> dict[str, list[float]]:
    s = stack.settings
    paths = {
        "direct": (s.comfyui_internal_port, {}),
        "bearer": (s.comfyui_port, {"Authorization": f"Bearer {PASSWORD}"}),
        "cookie": (s.comfyui_port, {"Cookie": f"comfyui_docker_session={cookie}"}),
    }
    results: dict[str, list[float]] = {name: [] for name in paths}
    for port, headers in paths.values():
        timed_gets(port, headers, 200)  # warm-up: connections, caches
    for _ in range(REQUESTS // BLOCK):
        for name, (port, headers) in paths.items():
            results[name] += timed_gets(port, headers, BLOCK)
    return results


def prompt(nodes: int) -> dict:
    graph = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "bench.safetensors"}}}
    for i in range(nodes):
        graph[str(i + 2)] = {"class_type": "KSampler", "inputs": {}}
    graph["9999"] = {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}}
    return graph


def ws_rate(stack: Stack, through_door: bool, client_id: str) -> tuple[float, int]:
    s = stack.settings
    port = s.comfyui_port if through_door else s.comfyui_internal_port
    header = [f"Authorization: Bearer {PASSWORD}"] if through_door else []
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws?clientId={client_id}", header=header, timeout=60)
    try:
        ws.recv()  # the status greeting
        posted = requests.post(
            f"{s.comfyui_url}/prompt", json={"prompt": prompt(NODES), "client_id": client_id}, timeout=30
        )
        assert posted.status_code == 200, posted.text
        count, first = 0, None
        while True:
            message = json.loads(ws.recv())
            if message["type"] == "execution_start":
                first = time.perf_counter()
            elif first is not None:
                count += 1
            if message["type"] == "execution_success":
                return count / (time.perf_counter() - first), count
    finally:
        ws.close()


def nginx_memory(stack: Stack) -> tuple[int, int]:
    master = psutil.Process(stack.states()["front-door"]["pid"])
    procs = [master, *master.children()]
    return sum(p.memory_info().rss for p in procs), sum(peak_rss(p.pid) for p in procs)


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="bench-door-"))
    stack = Stack(root, STANDIN_STEP_SECONDS="0", LOG_LEVEL="WARNING").start()
    try:
        stack.wait_running()
        s = stack.settings
        base = f"http://127.0.0.1:{s.comfyui_port}"
        wait_for(lambda: requests.get(f"{s.comfyui_url}/system_stats", timeout=2).ok, 60, what="ComfyUI stand-in")
        login = requests.post(
            f"{base}/_frontdoor/login", data={"password": PASSWORD}, headers={"Origin": base}, allow_redirects=False
        )
        cookie = login.cookies["comfyui_docker_session"]
        (s.paths.models / "checkpoints" / "bench.safetensors").write_bytes(b"1")

        times = latency(stack, cookie)
        direct50, direct99 = p50_p99(times["direct"])
        print(f"\nAdded latency per request, GET /prompt, {REQUESTS} requests per path, one keep-alive connection:")
        print("| path | p50 | p99 | added p50 | added p99 |")
        print("|---|---|---|---|---|")
        print(f"| straight to ComfyUI (127.0.0.1) | {direct50:.2f} ms | {direct99:.2f} ms | | |")
        for name, label in (("bearer", "front door, bearer token"), ("cookie", "front door, session cookie")):
            p50, p99 = p50_p99(times[name])
            print(f"| {label} | {p50:.2f} ms | {p99:.2f} ms | {p50 - direct50:.2f} ms | {p99 - direct99:.2f} ms |")

        rates: dict[bool, list[float]] = {False: [], True: []}
        events = 0
        for round_ in range(ROUNDS):
            for through in (False, True):
                rate, events = ws_rate(stack, through, f"bench-{round_}-{int(through)}")
                rates[through].append(rate)
        direct, door = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"\nWebSocket events, a {NODES}-node prompt ({events} events), median of {ROUNDS} runs per path:")
        print("| path | events/s | ratio |")
        print("|---|---|---|")
        print(f"| straight to ComfyUI | {direct:,.0f} | 1.00x |")
        print(f"| through the front door | {door:,.0f} | {door / direct:.2f}x |")

        rss, peak = nginx_memory(stack)
        workers = len(psutil.Process(stack.states()["front-door"]["pid"]).children())
        print(f"\nFront door memory (nginx master + {workers} workers): {rss / 2**20:.1f} MiB resident now,")
        print(f"{peak / 2**20:.1f} MiB at its peak over the run (sum of each process's high-water mark).")
        return 0
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
