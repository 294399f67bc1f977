"""Dashboard benchmark on the real stack (gunicorn gthread, Redis, supervisord), loopback only.

1. `GET /api/status` for 50 concurrent clients, each polling every 100 ms (an asyncio load loop with
   keep-alive, 10 s): p50 / p99 latency; and wrk's closed loop (50 connections) for throughput.
2. WebSocket delivery: events published on the bus by a worker-like publisher, received by 10
   connected API clients: p50 / p99 from publish to receipt.
Run: `make bench` or `.venv/bin/python bench/dashboard.py`.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import requests
import websocket

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common import bus, messages
from tests.helpers.stack import PASSWORD, Stack

CLIENTS, PERIOD, SECONDS = 50, 0.1, 10.0
SOCKETS, EVENTS = 10, 300


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def poll_status(session, url: str, offset: float, stop: float, out: list[float], errors: list[int]) -> None:
    loop = asyncio.get_running_loop()
    # Independent clients are not in step: each starts at its own point of the period.
    await asyncio.sleep(offset)
    next_at = loop.time()
    while loop.time() < stop:
        begin = time.perf_counter()
        async with session.get(url) as response:
            await response.read()
            if response.status != 200:
                errors.append(response.status)
        out.append((time.perf_counter() - begin) * 1000)
        next_at += PERIOD
        await asyncio.sleep(max(0.0, next_at - loop.time()))


async def load(url: str, headers: dict, latencies: list[float], errors: list[int], in_step: bool) -> None:
    """50 clients in one event loop: the load generator itself costs little CPU on these 2 cores."""
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        stop = asyncio.get_running_loop().time() + SECONDS
        offsets = [0.0 if in_step else i * PERIOD / CLIENTS for i in range(CLIENTS)]
        await asyncio.gather(*(poll_status(session, url, o, stop, latencies, errors) for o in offsets))


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="bench-dash-"))
    stack = Stack(root, DASHBOARD_WORKERS="2", DASHBOARD_THREADS="32").start()
    try:
        stack.wait_running()
        s = stack.settings
        url = f"http://127.0.0.1:{s.dashboard_port}/api/status"
        headers = {"Authorization": f"Bearer {PASSWORD}"}
        for _ in range(20):
            requests.get(url, headers=headers, timeout=10)
        for in_step in (False, True):
            latencies: list[float] = []
            errors: list[int] = []
            asyncio.run(load(url, headers, latencies, errors, in_step))
            how = "all in the same instant (worst case)" if in_step else "each at its own moment"
            print(
                f"1. GET /api/status, {CLIENTS} clients polling every {PERIOD * 1000:.0f} ms for {SECONDS:.0f} s, "
                f"{how} ({len(latencies)} requests, {len(errors)} errors)"
            )
            print(
                f"   p50 {statistics.median(latencies):6.1f} ms   p99 {percentile(latencies, 0.99):6.1f} ms"
                "   (goal: p99 under 20 ms)"
            )
        if shutil.which("wrk"):
            out = subprocess.run(
                ["wrk", "-t2", "-c50", "-d10s", "--latency", "-H", f"Authorization: Bearer {PASSWORD}", url],
                capture_output=True,
                text=True,
            ).stdout
            rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
            p50 = re.search(r"50%\s+([\d.]+\w+)", out)
            p99 = re.search(r"99%\s+([\d.]+\w+)", out)
            print(
                f"   wrk closed loop, 50 connections: {rps.group(1) if rps else '?'} req/s, "
                f"p50 {p50.group(1) if p50 else '?'}, p99 {p99.group(1) if p99 else '?'}"
            )

        ws_url = f"ws://127.0.0.1:{s.dashboard_port}/ws"
        sockets = [
            websocket.create_connection(ws_url, header=[f"Authorization: Bearer {PASSWORD}"], timeout=10)
            for _ in range(SOCKETS)
        ]
        for ws in sockets:
            ws.recv()  # the snapshot
        delays: list[float] = []
        lock = threading.Lock()

        def receive(ws: websocket.WebSocket) -> None:
            got = 0
            while got < EVENTS:
                event = json.loads(ws.recv())
                if event.get("type") == "health.check" and event.get("name", "").startswith("bench-"):
                    with lock:
                        delays.append((time.time() - event["ts"]) * 1000)
                    got += 1

        readers = [threading.Thread(target=receive, args=(ws,), daemon=True) for ws in sockets]
        for r in readers:
            r.start()
        client = bus.connect(s)
        for i in range(EVENTS):
            bus.publish(client, messages.HealthCheck(name=f"bench-{i % 5}", status="ok", reason=str(i), ms=0.0))
            time.sleep(0.01)
        for r in readers:
            r.join(30)
        for ws in sockets:
            ws.close()
        print(f"2. WebSocket delivery, publish -> {SOCKETS} clients, {EVENTS} events each ({len(delays)} deliveries)")
        print(
            f"   p50 {statistics.median(delays):6.1f} ms   p99 {percentile(delays, 0.99):6.1f} ms"
            "   (goal: p99 under 20 ms)"
        )
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
