"""ComfyUI's own work on the dashboard: its queue, its last prompts, interrupt and clear, through the
real stack and the stand-in's queue (which runs prompts as ComfyUI does, one at a time)."""

from __future__ import annotations

import pytest
import requests

from tests.helpers.procs import wait_for
from tests.helpers.stack import PASSWORD, Stack

pytestmark = pytest.mark.timeout(300)

BEARER = {"Authorization": f"Bearer {PASSWORD}"}
PROMPT = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "work.safetensors"}},
    "3": {"class_type": "KSampler", "inputs": {}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}},
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    # Half a second per step: a prompt runs for about 3 s, so the ones behind it wait in the queue.
    stack = Stack(tmp_path_factory.mktemp("work"), STANDIN_STEP_SECONDS="0.5")
    stack.start()
    stack.wait_running()
    (stack.settings.paths.models / "checkpoints" / "work.safetensors").write_bytes(b"1")
    wait_for(lambda: requests.get(f"{stack.settings.comfyui_url}/system_stats", timeout=2).ok, 30)
    yield stack
    stack.stop()


def dashboard(stack, method: str, path: str) -> requests.Response:
    url = f"http://127.0.0.1:{stack.settings.dashboard_port}{path}"
    return requests.request(method, url, headers=BEARER, timeout=30)


def queue_prompt(stack) -> str:
    # As a script would: through the front door with a bearer token.
    answer = requests.post(
        f"http://127.0.0.1:{stack.settings.comfyui_port}/prompt", json={"prompt": PROMPT}, headers=BEARER, timeout=10
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["prompt_id"]


def test_the_queue_the_last_prompts_and_the_two_controls(stack):
    first, second, third = (queue_prompt(stack) for _ in range(3))
    work = wait_for(lambda: (w := dashboard(stack, "GET", "/api/comfyui/queue").json())["running"] and w, 30)
    assert work["running"][0]["prompt_id"] == first and work["running"][0]["nodes"] == 3
    assert [p["prompt_id"] for p in work["pending"]] == [second, third]
    page = dashboard(stack, "GET", "/").text
    assert 'data-testid="queue-pending">2<' in page and 'data-testid="clear-queue"' in page

    # Clear: the waiting ones go, the running one finishes.
    assert dashboard(stack, "POST", "/api/comfyui/queue/clear").json() == {"cleared": True}
    assert dashboard(stack, "GET", "/api/comfyui/queue").json()["pending"] == []
    assert dashboard(stack, "POST", "/api/comfyui/interrupt").json() == {"interrupted": True}

    def finished():
        recent = dashboard(stack, "GET", "/api/comfyui/queue").json()["recent"]
        return recent and recent[0]["prompt_id"] == first and recent[0]

    done = wait_for(finished, 30, what="the first prompt in the history")
    assert done["status"] == "success" and done["images"] == 1 and done["seconds"] > 0 and done["error"] is None


def test_comfyui_down_is_a_clear_503_and_the_page_says_so(stack):
    stack.rpc().supervisor.stopProcess("comfyui")
    try:
        for method, path in (("GET", "/api/comfyui/queue"), ("POST", "/api/comfyui/interrupt")):
            answer = dashboard(stack, method, path)
            assert answer.status_code == 503 and "ComfyUI is not answering" in answer.json()["error"]["message"]
        page = wait_for(lambda: "ComfyUI is not answering." in (t := dashboard(stack, "GET", "/").text) and t, 10)
        assert "Traceback" not in page
    finally:
        stack.rpc().supervisor.startProcess("comfyui")
