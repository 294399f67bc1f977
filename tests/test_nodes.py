"""The custom-node import report: what ComfyUI's last start did with each node, named even when a node
ends the process without a word. Through the real stack and the stand-in, which loads custom nodes
the way ComfyUI does (module executed from its file, failures logged, then the import-times table)."""

from __future__ import annotations

import textwrap
import xmlrpc.client

import pytest
import requests

from services.common import nodes
from tests.helpers.procs import wait_for
from tests.helpers.stack import PASSWORD, Stack

pytestmark = pytest.mark.timeout(300)

BEARER = {"Authorization": f"Bearer {PASSWORD}"}

# ComfyUI's own wording, as its log shows it (colour codes stripped).
LOG = """comfyui 2026-12-01T10:00:00Z INFO comfyui: exec /venv/bin/python main.py --cpu
[WARNING] Traceback (most recent call last):
  File "/c/nodes.py", line 2263, in load_custom_node
    module_spec.loader.exec_module(module)
  File "/ws/custom_nodes/bad_import/__init__.py", line 1, in <module>
    import not_a_real_module_xyz
ModuleNotFoundError: No module named 'not_a_real_module_xyz'

[WARNING] Cannot import /ws/custom_nodes/bad_import module for custom nodes: No module named 'not_a_real_module_xyz'
[INFO]
Import times for custom nodes:
[INFO]    0.0 seconds: /ws/custom_nodes/good_node
[INFO]    0.0 seconds: /c/custom_nodes/websocket_image_save.py
[INFO]    0.0 seconds (IMPORT FAILED): /ws/custom_nodes/bad_import
[INFO]    1.5 seconds: /ws/custom_nodes/slow_node
[INFO] Starting server
"""


def test_the_report_reads_comfyuis_own_lines():
    report = nodes.parse(LOG, [], [])
    assert report.state == "loaded"
    by_name = {n.name: n for n in report.nodes}
    assert set(by_name) == {"good_node", "websocket_image_save.py", "bad_import", "slow_node"}
    bad = by_name["bad_import"]
    assert bad.status == "failed" and bad.error == "No module named 'not_a_real_module_xyz'"
    assert bad.where == "/ws/custom_nodes/bad_import/__init__.py:1 in <module>"
    assert by_name["slow_node"].seconds == 1.5 and by_name["good_node"].status == "loaded"


def test_a_start_that_died_names_the_node_it_was_importing():
    died = LOG.split("[INFO]\nImport times")[0].replace("bad_import", "other")
    again = "comfyui 2026-12-01T10:00:09Z INFO comfyui: exec /venv/bin/python main.py --cpu\n"
    trace_before = ["/ws/custom_nodes/good_node", "/ws/custom_nodes/other", "/ws/custom_nodes/killer"]
    report = nodes.parse(died + again, ["/ws/custom_nodes/good_node"], trace_before)
    assert report.state == "loading" and report.nodes[-1].status == "importing"
    assert report.killed_by and report.killed_by.name == "killer"
    # Once a start gets through, the node that ended the one before is history, not news.
    assert nodes.parse(died + again + LOG, [], trace_before).state == "loaded"


def write_node(root, name: str, body: str) -> None:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").write_text(textwrap.dedent(body))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("nodes"), HEALTH_INTERVAL="1")
    custom = stack.workspace / "custom_nodes"
    write_node(
        custom,
        "good_node",
        """
        class Shout:
            OUTPUT_NODE = False
        NODE_CLASS_MAPPINGS = {"Shout": Shout}
        """,
    )
    write_node(custom, "bad_import", "import not_a_real_module_xyz\n")
    stack.start()
    stack.wait_running()
    yield stack
    stack.stop()


def api(stack, path: str):
    return requests.get(f"http://127.0.0.1:{stack.settings.dashboard_port}{path}", headers=BEARER, timeout=30)


def ready_check(stack, name: str) -> dict:
    body = requests.get(f"http://127.0.0.1:{stack.settings.health_port}/ready", timeout=10).json()
    return next((c for c in body["checks"] if c["name"] == name), {})


def test_failed_imports_are_named_in_the_api_health_and_overview(stack):
    report = wait_for(lambda: (r := api(stack, "/api/comfyui/nodes").json())["state"] == "loaded" and r, 30)
    by_name = {n["name"]: n for n in report["nodes"]}
    assert by_name["good_node"]["status"] == "loaded" and report["failed"] == ["bad_import"]
    assert by_name["bad_import"]["error"] == "No module named 'not_a_real_module_xyz'"
    assert by_name["bad_import"]["where"].endswith("bad_import/__init__.py:1 in <module>")
    check = wait_for(lambda: (c := ready_check(stack, "nodes")).get("status") == "warn" and c, 30)
    assert "bad_import (No module named 'not_a_real_module_xyz')" in check["reason"]
    page = api(stack, "/").text
    assert "bad_import" in page and "1 failed" in page
    # The node that did load is a node type ComfyUI knows.
    objects = requests.get(f"{stack.settings.comfyui_url}/object_info", timeout=10).json()
    assert "Shout" in objects


def test_a_node_that_ends_comfyui_silently_is_named_then_left_out_in_safe_mode(stack):
    s = stack.settings
    killer = s.paths.custom_nodes / "killer"
    write_node(killer.parent, "killer", "import os\nos._exit(0)\n")
    rpc = stack.rpc()
    rpc.supervisor.stopProcess("comfyui")
    try:
        rpc.supervisor.startProcess("comfyui")
    except xmlrpc.client.Fault:
        pass  # it dies before startsecs: supervisord calls that a failed start, and retries

    def named():
        report = api(stack, "/api/comfyui/nodes").json()
        return report["killed_by"] and report["state"] != "loaded" and report

    report = wait_for(named, 60, 0.2, what="the killer named")
    assert report["killed_by"]["name"] == "killer" and report["killed_by"]["status"] == "ended the process"

    # Two starts in a row ended at it: the next start leaves it out, and the other nodes load.
    def in_safe_mode():
        report = api(stack, "/api/comfyui/nodes").json()
        return report["safe_mode"] and report["state"] == "loaded" and report

    report = wait_for(in_safe_mode, 90, 0.3, what="safe mode")
    assert report["safe_mode"]["node"] == "killer" and "2 times in a row" in report["safe_mode"]["error"]
    assert {n["name"] for n in report["nodes"]} == {"good_node", "bad_import"}
    stats = wait_for(lambda: requests.get(f"{s.comfyui_url}/system_stats", timeout=5).json(), 30)
    argv = stats["system"]["argv"]
    assert "--disable-all-custom-nodes" in argv and argv[argv.index("--whitelist-custom-nodes") + 1 :][:2] == [
        "bad_import",
        "good_node",
    ]
    check = wait_for(lambda: "safe mode" in (c := ready_check(stack, "nodes")).get("reason", "") and c, 30)
    assert check["status"] == "warn" and "killer left out" in check["reason"]
    assert 'data-testid="retry-all-nodes"' in api(stack, "/").text
    log = s.paths.log_file("comfyui").read_text()
    assert "starting again in" in log and "safe mode: custom node killer is left out" in log

    # Fixed (here: removed), then "retry with all nodes": ComfyUI restarts with every node, health clears.
    for path in sorted(killer.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    killer.rmdir()
    base = f"http://127.0.0.1:{s.dashboard_port}"
    retried = requests.delete(f"{base}/api/comfyui/safe-mode", headers=BEARER, timeout=60)
    assert retried.status_code == 200 and retried.json()["was_on"] is True, retried.text

    def all_nodes_again():
        report = api(stack, "/api/comfyui/nodes").json()
        return report["state"] == "loaded" and report["safe_mode"] is None and report

    wait_for(all_nodes_again, 60, what="all nodes again")
    argv = requests.get(f"{s.comfyui_url}/system_stats", timeout=5).json()["system"]["argv"]
    assert "--disable-all-custom-nodes" not in argv
    wait_for(lambda: "killer" not in ready_check(stack, "nodes").get("reason", "killer"), 30, what="health cleared")
