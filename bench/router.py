"""Prompt router benchmark on the real stack with two ComfyUIs (COMFYUI_GPUS=2, the stand-in), loopback.

Side by side in one run:
1. Added latency per prompt: `POST /prompt` to the first ComfyUI through the front door with a bearer
   token (what a client does without the router) vs `POST /api/prompt` (the router asks both queues,
   then sends): p50 / p99 over interleaved blocks, one keep-alive connection each.
2. Work done: 40 prompts of a quarter second each sent to one ComfyUI (one port, as a pod without the
   router is used) vs through the router to both: seconds until both queues are empty.
Run: `make bench` or `.venv/bin/python bench/router.py`.
"""

from __future__ import annotations

import http.client
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.frontdoor import p50_p99
from tests.helpers.procs import free_ports, wait_for
from tests.helpers.stack import PASSWORD, Stack

PROMPTS, BLOCK, WORK = 600, 50, 40
BEARER = {"Authorization": f"Bearer {PASSWORD}", "Content-Type": "application/json"}
# One output node: the stand-in spends STANDIN_STEP_SECONDS on it, as a GPU would on a sampler.
PROMPT = {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "bench", "images": ["8", 0]}}}


def timed_posts(port: int, path: str, count: int) -> list[float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"prompt": PROMPT})
    out = []
    try:
        for _ in range(count):
            begin = time.perf_counter()
            connection.request("POST", path, body=body, headers=BEARER)
            response = connection.getresponse()
            response.read()
            out.append((time.perf_counter() - begin) * 1000)
            assert response.status == 200, response.status
    finally:
        connection.close()
    return out


def queues(stack: Stack) -> list[int]:
    s = stack.settings
    out = []
    for port in (s.comfyui_port, s.comfyui_port + 1):
        answer = requests.get(f"http://127.0.0.1:{port}/prompt", headers=BEARER, timeout=5).json()
        out.append(answer["exec_info"]["queue_remaining"])
    return out


def idle(stack: Stack) -> None:
    wait_for(lambda: queues(stack) == [0, 0], 300, 0.05, what="both queues empty")


def work(stack: Stack, port: int, path: str) -> float:
    idle(stack)
    begin = time.perf_counter()
    timed_posts(port, path, WORK)
    idle(stack)
    return time.perf_counter() - begin


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="bench-router-"))
    stack = Stack(
        root,
        COMFYUI_GPUS="2",
        COMFYUI_PORT=str(free_ports(2)),
        COMFYUI_INTERNAL_PORT=str(free_ports(2)),
        STANDIN_STEP_SECONDS="0.25",
        LOG_LEVEL="WARNING",
    ).start()
    try:
        stack.wait_running(("redis", "front-door", "comfyui-0", "comfyui-1", "dashboard", "worker", "health"))
        s = stack.settings
        wait_for(lambda: all(q == 0 for q in queues(stack)), 60, what="both ComfyUIs answering")
        times: dict[str, list[float]] = {"direct": [], "router": []}
        for _ in range(PROMPTS // BLOCK):
            times["direct"] += timed_posts(s.comfyui_port, "/prompt", BLOCK)
            times["router"] += timed_posts(s.dashboard_port, "/api/prompt", BLOCK)
        direct50, direct99 = p50_p99(times["direct"])
        router50, router99 = p50_p99(times["router"])
        print(f"\nAdded latency per prompt, {PROMPTS} prompts per path, one keep-alive connection each:")
        print("| path | p50 | p99 | added p50 | added p99 |")
        print("|---|---|---|---|---|")
        print(f"| POST /prompt to comfyui-0 (front door, bearer) | {direct50:.2f} ms | {direct99:.2f} ms | | |")
        print(
            f"| POST /api/prompt (router: both queues, then send) | {router50:.2f} ms | {router99:.2f} ms"
            f" | {router50 - direct50:.2f} ms | {router99 - direct99:.2f} ms |"
        )
        one = work(stack, s.comfyui_port, "/prompt")
        both = work(stack, s.dashboard_port, "/api/prompt")
        print(f"\n{WORK} prompts of 0.25 s each, from the first send until both queues are empty:")
        print("| path | seconds | ratio |")
        print("|---|---|---|")
        print(f"| all to comfyui-0 (one port, no router) | {one:.2f} | 1.00x |")
        print(f"| through the router to comfyui-0 and comfyui-1 | {both:.2f} | {one / both:.2f}x faster |")
        return 0
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
