"""The dashboard in a real browser (Debian's chromium through Playwright), against the real stack."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image, PngImagePlugin
from playwright.sync_api import Page, expect

from services.common import messages, queue
from tests.helpers.procs import REPO, wait_for
from tests.helpers.stack import PASSWORD, Stack

pytestmark = pytest.mark.timeout(300)

# `make screenshots` sets this to docs/ so the README's pictures come from this very test.
SHOTS = os.environ.get("SCREENSHOTS_DIR")


@pytest.fixture(scope="module")
def tls(tls_file_server):
    return tls_file_server


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tls):
    stack = Stack(
        tmp_path_factory.mktemp("browser"),
        DOWNLOADS_ALLOW_PRIVATE_HOSTS="1",
        DOWNLOADS_RESERVE_MB="0",
        SSL_CERT_FILE=str(tls.cert),
        HF_ENDPOINT=f"https://localhost:{tls.port}",  # a mirror: a workflow's huggingface.co URLs come here
        HEALTH_INTERVAL="1",
    )
    stack.start()
    stack.wait_running()
    yield stack
    stack.stop()


def shot(page: Page, name: str, tmp_path: Path) -> None:
    target = REPO / SHOTS if SHOTS else tmp_path
    target.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target / f"{name}.png"), full_page=True)


def csp_violations(page: Page) -> list[str]:
    """The Content-Security-Policy violations the browser reports on this page from now on."""
    seen: list[str] = []
    page.on("console", lambda m: seen.append(m.text) if "Content Security Policy" in m.text else None)
    return seen


def log_in(page) -> None:
    """The login form on the page: a wrong password first (its message), then the right one."""
    page.fill("#password", "wrong")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_have_text("Wrong password.")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")


def wait_js(page: Page, expression: str, timeout: float = 30) -> None:
    """Poll an expression from outside the page: wait_for_function evaluates it inside, which the
    dashboard's Content-Security-Policy (no eval) rightly refuses."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(100)


def test_a_person_uses_the_dashboard(page: Page, stack, tls, tmp_path):
    s = stack.settings
    base = f"http://127.0.0.1:{s.dashboard_port}"
    page.set_viewport_size({"width": 1280, "height": 860})
    # The pages satisfy their Content-Security-Policy: the browser reports no violation anywhere below.
    violations = csp_violations(page)

    # Log in; every service shows RUNNING.
    page.goto(base + "/")
    expect(page).to_have_url(f"{base}/login?next=/")
    log_in(page)
    expect(page).to_have_url(base + "/")
    for name in ("redis", "comfyui", "dashboard", "worker", "health"):
        expect(page.get_by_test_id(f"state-{name}")).to_have_text("RUNNING")
    expect(page.get_by_test_id("connection")).to_have_text("live")
    shot(page, "overview", tmp_path)

    # Queue a download and watch its progress bar reach 100 % without reloading.
    data = os.urandom(3 * 1024 * 1024)
    url = tls.add("ui/model.safetensors", data)
    tls.fault("ui/model.safetensors", rate=1_000_000)
    page.click("a[href='/downloads']")
    page.fill("input[name=url]", url)
    page.select_option("select[name=folder]", "loras")
    page.click("form[data-testid=download-form] button[type=submit]")
    row = page.get_by_test_id("download-model.safetensors")
    expect(row).to_be_visible(timeout=15_000)
    expect(row.locator(".job-running")).to_be_visible(timeout=15_000)
    wait_js(page, "Number(document.querySelector('[data-testid=\"download-model.safetensors\"] progress')?.value) > 25")
    shot(page, "downloads", tmp_path)
    expect(row.locator("progress")).to_have_attribute("value", "100.0", timeout=60_000)
    expect(row.locator(".badge")).to_have_text("done")
    assert (s.paths.models / "loras" / "model.safetensors").read_bytes() == data
    # A bad URL: the message the user sees.
    page.fill("input[name=url]", "ftp://example.com/x")
    page.evaluate("document.querySelector('input[name=url]').type = 'text'")
    page.click("form[data-testid=download-form] button[type=submit]")
    expect(page.locator("form[data-testid=download-form] [data-error]")).to_contain_text("only http and https")

    # Follow a service's log: a new line shows up live.
    page.click("a[href='/logs']")
    page.click("a[href='/logs/worker']")
    expect(page.get_by_test_id("connection")).to_have_text("live")
    time.sleep(1)
    app = queue.client(s)
    app.send_task(messages.TASK_PING, args=[424242.0]).get(timeout=20)
    app.close()
    expect(page.get_by_test_id("log-lines")).to_contain_text("424242", timeout=20_000)
    page.fill("#log-search", "424242")
    shot(page, "logs", tmp_path)

    # Restart a service and see its state change.
    page.click("a[href='/services']")
    expect(page.get_by_test_id("restart-health")).to_be_visible()
    page.evaluate("""() => { window.seen = []; new MutationObserver(() => window.seen.push(
        document.querySelector('[data-testid=state-health]')?.textContent)).observe(document.body,
        {subtree: true, childList: true, characterData: true}); }""")
    old_pid = stack.states()["health"]["pid"]
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    page.click("[data-testid=restart-health]")
    wait_js(page, "window.seen.some(s => s && s !== 'RUNNING')")
    expect(page.get_by_test_id("state-health")).to_have_text("RUNNING", timeout=30_000)
    assert stack.states()["health"]["pid"] != old_pid and asked == ["Restart health?"]
    shot(page, "services", tmp_path)
    # Declining the question changes nothing.
    kept = stack.states()["health"]["pid"]
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("[data-testid=restart-health]")
    time.sleep(1)
    assert stack.states()["health"]["pid"] == kept

    # The dashboard restarted from its own row comes back, and so does the page.
    old_pid = stack.states()["dashboard"]["pid"]
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("[data-testid=restart-dashboard]")
    wait_for(lambda: stack.states()["dashboard"]["pid"] not in (old_pid, 0), 30)
    wait_for(lambda: stack.states()["dashboard"]["statename"] == "RUNNING", 30)
    expect(page.get_by_test_id("state-dashboard")).to_have_text("RUNNING", timeout=30_000)
    expect(page.get_by_test_id("connection")).to_have_text("live", timeout=30_000)

    # Install and remove a preset (a user preset served by the https test server).
    small = os.urandom(200_000)
    tls.add("ui/preset.safetensors", small)
    preset = {
        "id": "ui-test",
        "name": "UI test preset",
        "category": "image",
        "base": "test",
        "description": "A preset for the browser test.",
        "files": [
            {
                "url": f"https://127.0.0.1:{tls.port}/ui/preset.safetensors",
                "folder": "checkpoints",
                "filename": "ui_preset.safetensors",
                "size": len(small),
                "sha256": hashlib.sha256(small).hexdigest(),
            }
        ],
    }
    s.paths.user_presets.mkdir(parents=True, exist_ok=True)
    (s.paths.user_presets / "ui-test.yaml").write_text(yaml.safe_dump(preset))
    page.goto(base + "/presets?q=ui-test")
    state = page.get_by_test_id("preset-state-ui-test")
    expect(state).to_have_text("not installed")
    page.click("[data-testid=install-ui-test]")
    expect(state).to_have_text("installed", timeout=30_000)
    # The card follows without a reload: its count and the file's own state.
    expect(page.get_by_test_id("preset-progress-ui-test")).to_contain_text("1 of 1 file on the volume")
    expect(page.get_by_test_id("file-state-ui_preset.safetensors")).to_have_text("verified")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("[data-testid=remove-ui-test]")
    expect(state).to_have_text("not installed", timeout=30_000)
    expect(page.get_by_test_id("file-state-ui_preset.safetensors")).to_have_text("not downloaded")
    assert not (s.paths.models / "checkpoints" / "ui_preset.safetensors").exists()
    # A file that fails (its sha256 is wrong) says so on the card, with the reason.
    broken = {**preset, "id": "ui-broken", "name": "UI broken preset"}
    broken["files"] = [{**preset["files"][0], "filename": "ui_broken.safetensors", "sha256": "0" * 64}]
    (s.paths.user_presets / "ui-broken.yaml").write_text(yaml.safe_dump(broken))
    page.goto(base + "/presets?q=ui-broken")
    page.click("[data-testid=install-ui-broken]")
    expect(page.get_by_test_id("file-state-ui_broken.safetensors")).to_have_text("failed", timeout=30_000)
    expect(page.get_by_test_id("file-error-ui_broken.safetensors")).to_contain_text("sha256")
    page.goto(base + "/presets")
    shot(page, "presets", tmp_path)
    page.goto(base + "/models/loras")
    expect(page.locator("td", has_text="model.safetensors")).to_be_visible()
    shot(page, "models", tmp_path)

    # A new API token is listed at once, beside being shown once.
    page.goto(base + "/settings")
    page.fill("input[name=name]", "browser-token")
    page.click("form[data-show-token] button")
    expect(page.locator("[data-token]")).to_contain_text("New token (shown once): ")
    expect(page.locator("#token-list")).to_contain_text("browser-token")

    # A phone, in dark mode: still readable.
    page.set_viewport_size({"width": 390, "height": 844})
    page.emulate_media(color_scheme="dark")
    page.goto(base + "/")
    expect(page.get_by_test_id("state-worker")).to_have_text("RUNNING")
    shot(page, "overview-phone-dark", tmp_path)
    # Every service's state stays on screen, and no page is wider than the phone.
    page.goto(base + "/services")
    for name in ("comfyui", "worker", "dashboard"):
        expect(page.get_by_test_id(f"state-{name}")).to_be_visible()
    for path in ("/", "/services", "/downloads", "/presets", "/workflows", "/models/loras", "/logs/worker"):
        page.goto(base + path)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, path
    assert violations == []


def test_opening_comfyui_leads_through_the_login_page_and_back(page: Page, stack):
    """ComfyUI's own port: no session, so its front door shows the login page for this host, then
    returns to the very page that was asked for."""
    s = stack.settings
    comfyui = f"http://127.0.0.1:{s.comfyui_port}"
    violations = csp_violations(page)
    page.goto(comfyui + "/?workflow=mine")
    expect(page).to_have_url(comfyui + "/_frontdoor/login?next=%2F%3Fworkflow%3Dmine")
    expect(page.locator("p.hint").first).to_contain_text("behind the dashboard's login")
    log_in(page)
    expect(page).to_have_url(comfyui + "/?workflow=mine")
    expect(page).to_have_title("ComfyUI")
    # The page's own requests ride on the cookie of this host: ComfyUI's API answers them.
    stats = page.evaluate("fetch('/system_stats').then(r => r.json())")
    assert stats["system"]["comfyui_version"]
    assert violations == []


def test_a_person_drops_an_image_and_makes_its_workflow_runnable(page: Page, stack, tls, tmp_path):
    """An image ComfyUI saved, dropped on the Workflows page: its models listed, then installed in one go."""
    s = stack.settings
    base = f"http://127.0.0.1:{s.dashboard_port}"
    violations = csp_violations(page)
    data = os.urandom(2 * 1024 * 1024)
    tls.add("someone/styles/resolve/main/ink_style.safetensors", data)
    hf = "https://huggingface.co/someone/styles/resolve/main/ink_style.safetensors"
    model = {"name": "ink_style.safetensors", "url": hf, "directory": "loras"}
    node = {"id": 3, "type": "LoraLoader", "widgets_values": ["ink_style.safetensors", 1, 1]}
    workflow = {"nodes": [{**node, "properties": {"cnr_id": "comfy-core", "models": [model]}}]}
    info = PngImagePlugin.PngInfo()
    info.add_text("workflow", json.dumps(workflow))  # as ComfyUI's SaveImage writes it
    image = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(image, "PNG", pnginfo=info)
    (tmp_path / "ComfyUI_00001_.png").write_bytes(image.getvalue())

    page.goto(base + "/workflows")
    log_in(page)
    expect(page).to_have_title("Workflows · ComfyUI-Docker")
    expect(page.get_by_test_id("templates")).to_be_visible()
    # A file that carries no workflow first: the message the user sees.
    (tmp_path / "empty.json").write_text('{"hello": "world"}')
    page.set_input_files("[data-testid=workflow-file]", str(tmp_path / "empty.json"))
    page.click("[data-testid=workflow-analyze]")
    expect(page.get_by_test_id("workflow-error")).to_contain_text("not a ComfyUI workflow")
    page.set_input_files("[data-testid=workflow-file]", str(tmp_path / "ComfyUI_00001_.png"))
    page.click("[data-testid=workflow-analyze]")
    row = page.get_by_test_id("model-ink_style.safetensors")
    expect(row).to_contain_text("missing")
    expect(row).to_contain_text("workflow: huggingface.co")
    expect(page.get_by_test_id("workflow-error")).to_have_text("")
    shot(page, "workflows", tmp_path)
    page.click("[data-testid=workflow-install]")
    expect(page.get_by_test_id("install-finished")).to_have_text("done", timeout=60_000)
    expect(page.get_by_test_id("install-progress")).to_contain_text("1 of 1 file")
    assert (s.paths.models / "loras" / "ink_style.safetensors").read_bytes() == data
    assert violations == []
