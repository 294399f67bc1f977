"""One ComfyUI per GPU (COMFYUI_GPUS). The plan against the GPUs NVML would show (auto, a list, a count,
what cannot be had); then a real stack with a count of 2 on this GPU-less machine: two programs, two
ports behind the front door, both on the overview and in health, a database, temp folder and log each,
one output folder with a file-name prefix each, and the prompt router sending each prompt to the
shortest queue."""

from __future__ import annotations

import collections
import concurrent.futures
import json

import pytest
import requests

from services.comfyui.launcher import build_argv, environment
from services.common import instances
from services.common.gpu import Gpu, cuda_visible
from services.common.settings import SettingsError, load_settings
from tests.helpers.procs import free_port, free_ports, wait_for
from tests.helpers.stack import PASSWORD, Stack

pytestmark = pytest.mark.timeout(300)

BEARER = {"Authorization": f"Bearer {PASSWORD}"}
# Half a second per node (STANDIN_STEP_SECONDS below): one SaveImage is done at once, a long prompt stays queued.
SAVE = {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}}}
LONG = {
    **{str(n): {"class_type": "CLIPTextEncode", "inputs": {}} for n in range(1, 21)},
    "30": {"class_type": "KSampler", "inputs": {}},
    **SAVE,
}


def planned(settings, gpus: str, visible: list[int] | None):
    return instances.plan(settings.model_copy(update={"comfyui_gpus": gpus}), visible)


def test_the_plan_follows_the_setting_and_the_gpus_there_are(settings):
    one, notes = planned(settings, "1", [0, 1])
    assert [(i.program, i.device) for i in one] == [("comfyui", None)] and not notes
    assert one[0].public_port == settings.comfyui_port and one[0].output_prefix == ""
    four, _ = planned(settings, "auto", [0, 1, 2, 3])
    assert [(i.program, i.device, i.public_port - settings.comfyui_port) for i in four] == [
        (f"comfyui-{n}", n, n) for n in range(4)
    ]
    assert [i.internal_port for i in four] == [settings.comfyui_internal_port + n for n in range(4)]
    alone, notes = planned(settings, "auto", [])
    assert [i.program for i in alone] == ["comfyui"] and notes == [
        "COMFYUI_GPUS=auto and no GPU visible: one ComfyUI, on the CPU"
    ]
    listed, notes = planned(settings, "0,1,3", [0, 1, 2])
    assert [(i.program, i.device) for i in listed] == [("comfyui-0", 0), ("comfyui-1", 1)]
    assert notes == ["COMFYUI_GPUS lists GPU 3, not visible here (0, 1, 2): left out"]
    pinned, notes = planned(settings, load_settings({"COMFYUI_GPUS": "3,"}).comfyui_gpus, [0, 1, 2, 3])
    assert [(i.program, i.device) for i in pinned] == [("comfyui", 3)] and not notes  # `3,` is GPU 3
    assert load_settings({"COMFYUI_GPUS": " 0, 1 "}).comfyui_gpus == "0,1"
    capped, notes = planned(settings, "4", [0, 1])
    assert len(capped) == 2 and notes == ["COMFYUI_GPUS=4 but 2 GPU(s) visible: 2 ComfyUI(s)"]
    on_cpu, notes = planned(settings, "2", None)
    assert [(i.program, i.device) for i in on_cpu] == [("comfyui-0", None), ("comfyui-1", None)] and not notes
    clash = settings.model_copy(update={"comfyui_gpus": "3", "dashboard_port": settings.comfyui_port + 2})
    with pytest.raises(ValueError, match=r"comfyui-2 would listen on port \d+, which is DASHBOARD_PORT"):
        instances.plan(clash, None)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0,0", "distinct indexes"),
        ("one", "use auto, a count from 1 to 16"),
        ("0", "use auto, a count from 1 to 16"),
        ("17", "use auto, a count from 1 to 16"),
        ("0,x", "distinct indexes"),
    ],
)
def test_a_wrong_value_is_one_line(value, message):
    with pytest.raises(SettingsError, match=f"COMFYUI_GPUS.*{message}"):
        load_settings({"COMFYUI_GPUS": value})


def test_each_instance_has_its_gpu_port_database_temp_and_prefix(settings):
    settings = settings.model_copy(update={"comfyui_gpus": "auto"})
    second = instances.plan(settings, [0, 1])[0][1]
    argv = build_argv(settings, second, gpu=True, model_configs=[])
    pairs = dict(zip(argv[2::2], argv[3::2], strict=False))
    assert pairs["--port"] == str(settings.comfyui_internal_port + 1) and argv[argv.index("--cuda-device") + 1] == "1"
    assert argv[argv.index("--temp-directory") + 1] == str(settings.run_dir / "comfyui-1")
    assert pairs["--database-url"] == f"sqlite:///{settings.paths.user / f'comfyui.{settings.pod_name}.1.db'}"
    assert "--cuda-device" not in build_argv(settings, second, gpu=False, model_configs=[])  # no GPU: --cpu
    env = environment(settings, second, {"PATH": "/usr/bin"})
    assert env["COMFYUI_OUTPUT_PREFIX"] == "comfyui-1_"
    assert env["COMFYUI_NODE_TRACE"] == str(settings.run_dir / "comfyui-1-nodes.trace")


def test_cuda_visible_devices_limits_the_gpus_as_cuda_reads_it():
    gpus = [Gpu(n, "NVIDIA H200", 141 << 30, 0, None, None, uuid=f"GPU-{n}a1b2c3-0000") for n in range(4)]
    assert cuda_visible(gpus, None) == ([0, 1, 2, 3], [])
    assert cuda_visible(gpus, "2,3") == ([2, 3], [])
    assert cuda_visible(gpus, " GPU-3a1b, 1") == ([3, 1], [])  # a UUID's unique prefix will do
    assert cuda_visible(gpus, "") == ([], [])  # CUDA sees no GPU
    assert cuda_visible(gpus, "1,7,2") == (
        [1],
        ["CUDA_VISIBLE_DEVICES=1,7,2: '7' names no GPU here (GPUs 0, 1, 2, 3): it and what follows are hidden"],
    )
    assert cuda_visible(gpus, "MIG-1,0")[0] == []
    assert cuda_visible(gpus, "0,0") == (
        [0],
        ["CUDA_VISIBLE_DEVICES=0,0: '0' names a GPU twice: it and what follows are hidden"],
    )


def test_a_pinned_comfyui_numbers_gpus_as_nvidia_smi_does(settings):
    inherited = {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "2,3"}
    single = instances.plan(settings, [0, 1, 2, 3])[0][0]
    assert environment(settings, single, inherited)["CUDA_VISIBLE_DEVICES"] == "2,3"  # the user's, as it is
    assert "CUDA_DEVICE_ORDER" not in environment(settings, single, inherited)
    pinned = instances.plan(settings.model_copy(update={"comfyui_gpus": "auto"}), [2, 3])[0][1]
    assert pinned.device == 3 and environment(settings, pinned, inherited)["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(
        tmp_path_factory.mktemp("gpus"),
        COMFYUI_GPUS="2",
        COMFYUI_PORT=str(free_ports(2)),
        COMFYUI_INTERNAL_PORT=str(free_ports(2)),
        STANDIN_STEP_SECONDS="0.5",
    )
    stack.start()
    stack.wait_running(("redis", "front-door", "comfyui-0", "comfyui-1", "dashboard", "worker", "health"))
    yield stack
    stack.stop()


def dashboard(stack) -> str:
    return f"http://127.0.0.1:{stack.settings.dashboard_port}"


def system_stats(port: int) -> dict:
    return requests.get(f"http://127.0.0.1:{port}/system_stats", headers=BEARER, timeout=5).json()


def queue(port: int) -> int:
    answer = requests.get(f"http://127.0.0.1:{port}/prompt", headers=BEARER, timeout=5).json()
    return answer["exec_info"]["queue_remaining"]


def test_two_programs_two_ports_behind_the_login(stack):
    s = stack.settings
    assert "comfyui" not in stack.states()  # several: each is named by its number
    ports = [s.comfyui_port, s.comfyui_port + 1]
    stats = [wait_for(lambda p=p: system_stats(p), 30, what=f"ComfyUI on {p}") for p in ports]
    for n, (port, found) in enumerate(zip(ports, stats, strict=True)):
        assert requests.get(f"http://127.0.0.1:{port}/system_stats", timeout=5).status_code == 401
        argv = found["system"]["argv"]
        assert argv[argv.index("--port") + 1] == str(s.comfyui_internal_port + n)
        assert argv[argv.index("--temp-directory") + 1] == str(s.run_dir / f"comfyui-{n}")
        assert (s.paths.logs / f"comfyui-{n}.log").is_file()
    databases = {found["system"]["argv"][found["system"]["argv"].index("--database-url") + 1] for found in stats}
    assert len(databases) == 2
    status = requests.get(f"{dashboard(stack)}/api/status", headers=BEARER, timeout=10).json()
    assert {p["name"]: p["port"] for p in status["ports"] if p["name"].startswith("comfyui")} == {
        "comfyui-0": ports[0],
        "comfyui-1": ports[1],
    }
    assert all(p["protected"] for p in status["ports"])
    log = requests.get(f"{dashboard(stack)}/api/logs/comfyui-1?lines=50", headers=BEARER, timeout=10).json()
    assert any("To see the GUI go to" in line for line in log["lines"])


def test_both_on_the_overview_and_in_health(stack):
    def both_ready() -> dict | None:
        status = requests.get(f"{dashboard(stack)}/api/status", headers=BEARER, timeout=10).json()
        listed = status["comfyui_instances"]
        return status if [i["state"] for i in listed] == ["ready", "ready"] else None

    status = wait_for(both_ready, 30, what="both ComfyUIs ready on /api/status")
    assert [(i["name"], i["public_port"]) for i in status["comfyui_instances"]] == [
        ("comfyui-0", stack.settings.comfyui_port),
        ("comfyui-1", stack.settings.comfyui_port + 1),
    ]
    page = requests.get(dashboard(stack) + "/", headers=BEARER, timeout=10).text
    assert page.count('data-testid="comfyui-instance"') == 2 and "comfyui-1" in page
    health = wait_for(
        lambda: (
            (h := requests.get(f"http://127.0.0.1:{stack.settings.health_port}/ready", timeout=10).json())
            and next(c for c in h["checks"] if c["name"] == "comfyui")["status"] == "ok"
            and h
        ),
        30,
        what="the comfyui check ok",
    )
    check = next(c for c in health["checks"] if c["name"] == "comfyui")
    assert check["reason"].startswith("2 ComfyUIs") and [i["name"] for i in check["data"]["instances"]] == [
        "comfyui-0",
        "comfyui-1",
    ]


def test_one_output_folder_a_prefix_each(stack):
    s = stack.settings
    for port in (s.comfyui_port, s.comfyui_port + 1):
        answer = requests.post(f"http://127.0.0.1:{port}/prompt", json={"prompt": SAVE}, headers=BEARER, timeout=10)
        assert answer.status_code == 200, answer.text
    # The stand-in counts files like ComfyUI: without the prefix both would write ComfyUI_00001_.png.
    wanted = {"comfyui-0_ComfyUI_00001_.png", "comfyui-1_ComfyUI_00001_.png"}
    wait_for(lambda: wanted <= {p.name for p in s.paths.output.iterdir()}, 30, what=f"{wanted} in output/")
    assert not (s.paths.output / "ComfyUI_00001_.png").exists()
    # The overview's last prompts are those of both, each with its instance.
    work = wait_for(
        lambda: (
            (w := requests.get(f"{dashboard(stack)}/api/status", headers=BEARER, timeout=10).json()["work"])
            and {p["instance"] for p in w["recent"]} == {"comfyui-0", "comfyui-1"}
            and w
        ),
        30,
        what="both prompts among the last ones on /api/status",
    )
    assert [p["status"] for p in work["recent"]] == ["success", "success"]
    page = requests.get(dashboard(stack) + "/", headers=BEARER, timeout=10).text
    rows = page.split('data-testid="recent-prompt"')[1:]
    assert len(rows) == 2 and {"comfyui-0", "comfyui-1"} == {r.split("<td>")[1].split("<")[0] for r in rows}
    assert 'data-testid="interrupt"' not in page  # each one's buttons are on its own line


def test_the_router_sends_each_prompt_to_the_shortest_queue(stack):
    s = stack.settings
    first, second = s.comfyui_port, s.comfyui_port + 1
    wait_for(lambda: queue(first) == 0 and queue(second) == 0, 60, what="both queues empty")
    for _ in range(3):  # comfyui-0 is busy before the router is asked
        assert requests.post(f"http://127.0.0.1:{first}/prompt", json={"prompt": LONG}, headers=BEARER, timeout=10).ok
    route = f"{dashboard(stack)}/api/prompt"

    def send(n: int) -> dict:
        answer = requests.post(route, json={"prompt": LONG, "client_id": f"c{n}"}, headers=BEARER, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()

    # Four at a time: the router's lock makes each choice see the prompts sent before it.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(send, range(20)))
    for answer in answers:
        assert answer["queues"][answer["instance"]] == min(answer["queues"].values()), answer
        assert answer["port"] == {"comfyui-0": first, "comfyui-1": second}[answer["instance"]]
        assert answer["prompt_id"] and answer["node_errors"] == {}
    took = collections.Counter(a["instance"] for a in answers)
    assert took["comfyui-0"] + took["comfyui-1"] == 20
    assert abs((3 + took["comfyui-0"]) - took["comfyui-1"]) <= 1, took
    assert abs(queue(first) - queue(second)) <= 1
    # The client follows its prompt on the instance that took it.
    mine = answers[-1]
    port = mine["port"]
    listed = requests.get(f"http://127.0.0.1:{port}/queue", headers=BEARER, timeout=5).json()
    assert mine["prompt_id"] in {item[1] for item in listed["queue_pending"] + listed["queue_running"]}
    # Each instance's queue through the dashboard's API, by name; a name that is none is a 404.
    api = f"{dashboard(stack)}/api/comfyui"
    work = requests.get(f"{api}/queue?instance=comfyui-1", headers=BEARER, timeout=10).json()
    assert work["pending"] and abs(len(work["running"]) + len(work["pending"]) - queue(second)) <= 1
    for name in ("comfyui-0", "comfyui-1"):
        cleared = requests.post(f"{api}/queue/clear?instance={name}", headers=BEARER, timeout=10)
        assert cleared.json() == {"cleared": True}
    assert queue(first) <= 1 and queue(second) <= 1  # the running prompts finish
    wrong = requests.get(f"{api}/queue?instance=comfyui-9", headers=BEARER, timeout=10)
    assert wrong.status_code == 404
    assert wrong.json()["error"]["message"] == "no ComfyUI 'comfyui-9': one of comfyui-0, comfyui-1"


def test_the_router_says_what_is_wrong(stack):
    route = f"{dashboard(stack)}/api/prompt"
    assert requests.post(route, json={"prompt": SAVE}, timeout=10).status_code == 401
    for body, message in (
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "send a JSON object"),
        (json.dumps({"client_id": "x"}).encode(), "prompt: ComfyUI's API-format prompt"),
        (json.dumps({"prompt": {}}).encode(), "prompt: ComfyUI's API-format prompt"),
    ):
        answer = requests.post(route, data=body, headers={**BEARER, "Content-Type": "application/json"}, timeout=10)
        assert answer.status_code == 400 and message in answer.json()["error"]["message"], (body, answer.text)
    unknown = {"1": {"class_type": "NoSuchNode", "inputs": {}}}
    refused = requests.post(route, json={"prompt": unknown}, headers=BEARER, timeout=10)
    body = refused.json()
    assert refused.status_code == 400 and body["error"]["code"] == "prompt_refused"
    assert body["error"]["message"].startswith(f"{body['instance']} refused the prompt: Node 'NoSuchNode' not found")
    # Both stopped ("comfyui" is every instance): a 503 that says so; started again, prompts go through.
    stopped = requests.post(f"{dashboard(stack)}/api/services/comfyui/stop", headers=BEARER, timeout=60).json()
    assert stopped == {"name": "comfyui", "state": "STOPPED", "pid": None}
    try:
        down = requests.post(route, json={"prompt": SAVE}, headers=BEARER, timeout=10)
        assert down.status_code == 503 and "no ComfyUI is answering" in down.json()["error"]["message"]
    finally:
        requests.post(f"{dashboard(stack)}/api/services/comfyui/start", headers=BEARER, timeout=60)
    up = wait_for(
        lambda: (a := requests.post(route, json={"prompt": SAVE}, headers=BEARER, timeout=10)).ok and a.json(),
        60,
        what="a prompt through the router after the restart",
    )
    assert up["instance"] in ("comfyui-0", "comfyui-1")


def test_a_plan_startup_cannot_keep_stops_it_with_one_line(tmp_path):
    port = free_port()
    stack = Stack(tmp_path, COMFYUI_GPUS="2", COMFYUI_PORT=str(port), DASHBOARD_PORT=str(port + 1))
    stack.start()
    try:
        assert stack.proc.wait(60) != 0
    finally:
        stack.stop()
    assert f"comfyui-1 would listen on port {port + 1}, which is DASHBOARD_PORT" in stack.output()
