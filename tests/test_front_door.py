"""The front door: the real nginx, the real dashboard and the ComfyUI stand-in, booted as one stack.

Every ComfyUI route, on HTTP and WebSocket, with and without `/api`, is refused without credentials;
cookies and bearer tokens let through only what they should; uploads and downloads stream; the
dashboard stopped closes the door; ComfyUI holds no secret and listens on loopback only.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest
import requests
import websocket
from itsdangerous import TimestampSigner

from services.common import bus, messages
from services.dashboard.app import create_app
from tests.helpers.procs import peak_rss, wait_for
from tests.helpers.stack import PASSWORD, Stack

pytestmark = pytest.mark.timeout(300)

HF_SENTINEL = "hf_frontdoorsentinel0000"
STANDIN = Path(__file__).parent / "standin" / "comfyui" / "main.py"
PROMPT = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "door.safetensors"}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}},
}
MB = 1000 * 1000


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("door"), HF_TOKEN=HF_SENTINEL, STANDIN_STEP_SECONDS="0.01")
    stack.start()
    stack.wait_running()
    s = stack.settings
    wait_for(lambda: comfyui_get(s, "/system_stats", bearer()).status_code == 200, 30, what="ComfyUI behind the door")
    yield stack
    stack.stop()


@pytest.fixture(autouse=True)
def fresh_login_counters(stack):
    client = stack_redis(stack)
    for key in client.keys("login:failures:*"):
        client.delete(key)


def stack_redis(stack):
    return bus.connect(stack.settings)


def bearer(token: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def comfyui_base(s) -> str:
    return f"http://127.0.0.1:{s.comfyui_port}"


def comfyui_get(s, path: str, headers: dict | None = None, **kwargs) -> requests.Response:
    return requests.get(comfyui_base(s) + path, headers=headers or {}, allow_redirects=False, timeout=30, **kwargs)


def standin_routes() -> list[tuple[str, str]]:
    """(method, path) of every route the ComfyUI stand-in serves, read from its own router."""
    spec = importlib.util.spec_from_file_location("standin_main", STANDIN)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(STANDIN.parent))  # its folder_paths, beside it as ComfyUI's is
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(STANDIN.parent))
    base = STANDIN.parent
    server = module.Server(module.parse_args([]), module.Folders(base), base)
    routes = set()
    for route in server.app().router.routes():
        path = route.resource.canonical.replace("{prompt_id}", "p1").replace("{folder}", "checkpoints")
        routes.add((route.method, path))
    return sorted(routes)


def login_cookie(s) -> requests.Session:
    """A browser's session for ComfyUI's own host, made through the login page its port serves."""
    session = requests.Session()
    base = comfyui_base(s)
    answer = session.post(
        f"{base}/_frontdoor/login?next=/", data={"password": PASSWORD}, headers={"Origin": base}, allow_redirects=False
    )
    assert answer.status_code == 302 and answer.headers["Location"] == "/", answer.text
    return session


def test_every_comfyui_route_refuses_anonymous_callers_on_http_and_websocket(stack):
    s = stack.settings
    routes = standin_routes()
    assert ("POST", "/api/prompt") in routes and ("GET", "/api/ws") in routes and len(routes) >= 40
    walked = 0
    for method, path in [*routes, ("GET", "/no/such/route"), ("DELETE", "/api/queue")]:
        if path.endswith("/ws") or method == "HEAD":
            continue  # WebSockets below; a HEAD answer has no body to read
        # A wrong bearer token counts against the address (ten lock it out): a few of those, below.
        for headers in ({}, {"Cookie": "comfyui_docker_session=forged"}):
            answer = requests.request(method, comfyui_base(s) + path, headers=headers, allow_redirects=False)
            walked += 1
            assert answer.status_code == 401, (method, path, headers, answer.status_code)
            assert answer.json()["error"]["code"] == "unauthorized"
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert walked > 80
    for path in ("/prompt", "/api/prompt", "/view", "/", "/no/such/route"):
        assert comfyui_get(s, path, bearer("not-the-password")).status_code == 401
    # A browser opening a page is sent to the login page of this very port, with where it was going.
    answer = comfyui_get(s, "/?workflow=a&b=c", {"Accept": "text/html,*/*"})
    assert answer.status_code == 302
    assert answer.headers["Location"] == "/_frontdoor/login?next=%2F%3Fworkflow%3Da%26b%3Dc"
    # WebSockets are refused before the upgrade, on both of ComfyUI's paths.
    for path in ("/ws?clientId=x", "/api/ws?clientId=x"):
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(f"ws://127.0.0.1:{s.comfyui_port}{path}", timeout=5)
        assert refused.value.status_code == 401
    # The dashboard's question is internal to nginx, and nothing else of the dashboard is served here.
    for path in ("/_frontdoor/check", "/_frontdoor/auth", "/_frontdoor/api/status"):
        assert comfyui_get(s, path, bearer()).status_code == 404, path
    # The failed guesses above were counted against this address, like the login form's.
    assert int(stack_redis(stack).get(messages.login_failures_key("127.0.0.1"))) == 5


def test_wrong_guesses_lock_out_at_the_front_door_too(stack):
    s = stack.settings
    for _ in range(10):
        assert comfyui_get(s, "/system_stats", bearer("wrong")).status_code == 401
    locked = comfyui_get(s, "/system_stats", bearer())
    assert locked.status_code == 429 and locked.headers["Retry-After"] == "300"
    assert locked.json()["error"]["code"] == "too_many_attempts"


def test_a_script_with_an_api_token_posts_a_prompt_and_gets_its_events(stack):
    s = stack.settings
    dashboard = f"http://127.0.0.1:{s.dashboard_port}"
    created = requests.post(f"{dashboard}/api/tokens", json={"name": "script"}, headers=bearer(), timeout=10)
    token = created.json()["token"]
    (s.paths.models / "checkpoints" / "door.safetensors").write_bytes(b"1")
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{s.comfyui_port}/ws?clientId=script", header=[f"Authorization: Bearer {token}"], timeout=10
    )
    try:
        assert json.loads(ws.recv())["data"]["sid"] == "script"
        posted = requests.post(
            comfyui_base(s) + "/prompt", json={"prompt": PROMPT, "client_id": "script"}, headers=bearer(token)
        )
        assert posted.status_code == 200 and posted.json()["node_errors"] == {}
        types = []
        while not types or types[-1] != "execution_success":
            types.append(json.loads(ws.recv())["type"])
        assert {"execution_start", "executing", "executed"} <= set(types)
    finally:
        ws.close()
    history = comfyui_get(s, f"/api/history/{posted.json()['prompt_id']}", bearer(token)).json()
    image = next(iter(history.values()))["outputs"]["9"]["images"][0]
    view = comfyui_get(s, "/view", bearer(token), params={"filename": image["filename"], "type": "output"})
    assert view.status_code == 200 and view.content.startswith(b"\x89PNG")


def test_cookies_forged_expired_or_revoked_and_foreign_origins_are_refused(stack):
    s = stack.settings
    base = comfyui_base(s)
    session = login_cookie(s)
    assert session.get(base + "/system_stats").status_code == 200
    cookie = session.cookies["comfyui_docker_session"]

    # Signed with another key, or with ours eight days ago (sessions last seven): both refused.
    app = create_app(s)
    serializer = app.session_interface.get_signing_serializer(app)
    payload = serializer.loads(cookie)

    class EightDaysAgo(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - 8 * 86400

    expired = type(serializer)(
        serializer.secret_key, salt=serializer.salt, serializer=serializer.serializer, signer=EightDaysAgo
    )
    expired.signer_kwargs = serializer.signer_kwargs
    app.config["SECRET_KEY"] = "another key"
    foreign = app.session_interface.get_signing_serializer(app)
    for bad in (foreign.dumps(payload), expired.dumps(payload), cookie[:-4] + "AAAA"):
        answer = requests.get(base + "/system_stats", cookies={"comfyui_docker_session": bad}, allow_redirects=False)
        assert answer.status_code == 401, bad

    # A state change or a WebSocket from another site's page rides on the cookie: refused.
    evil = {"Origin": "https://evil.example"}
    answer = session.post(base + "/prompt", json={"prompt": PROMPT}, headers=evil)
    assert answer.status_code == 403 and "Cross-site request refused" in answer.json()["error"]["message"]
    another_pod = {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"}
    assert session.get(base + "/queue", headers=another_pod).status_code == 403
    # Opening ComfyUI from a link on another site is a navigation: the cookie may ride on it.
    link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Accept": "text/html"}
    # The front door lets the navigation through; then ComfyUI's own guard answers its bare 403.
    opened = session.get(base + "/", headers=link)
    assert opened.status_code == 403 and opened.content == b""
    header = [f"Cookie: comfyui_docker_session={cookie}"]
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(f"ws://127.0.0.1:{s.comfyui_port}/ws", header=header, origin="https://evil.example")
    assert refused.value.status_code == 403
    ws = websocket.create_connection(f"ws://127.0.0.1:{s.comfyui_port}/ws", header=header, origin=base, timeout=5)
    assert json.loads(ws.recv())["type"] == "status"
    ws.close()

    # Signed out everywhere from the dashboard: the cookie of ComfyUI's host is dead too.
    requests.delete(f"http://127.0.0.1:{s.dashboard_port}/api/sessions", headers=bearer(), timeout=10)
    assert session.get(base + "/system_stats", allow_redirects=False).status_code == 401


def test_what_authenticated_a_request_never_reaches_comfyui(stack):
    """ComfyUI echoes no header, so for this test a real HTTP server that records them takes its port."""
    s = stack.settings
    seen: list[dict] = []

    class Recorder(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/anything":  # health and the dashboard probe this port too (/system_stats)
                seen.append(dict(self.headers))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args) -> None:
            pass

    stack.rpc().supervisor.stopProcess("comfyui")
    recorder = ThreadingHTTPServer(("127.0.0.1", s.comfyui_internal_port), Recorder)
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    try:
        session = login_cookie(s)
        session.cookies.set("theirs", "kept")
        assert session.get(comfyui_base(s) + "/anything").text == "ok"
        assert comfyui_get(s, "/anything", {**bearer(), "Cookie": "a=1; comfyui_docker_session=x; b=2"}).text == "ok"
    finally:
        recorder.shutdown()
        recorder.server_close()
        stack.rpc().supervisor.startProcess("comfyui")
    by_cookie, by_bearer = seen
    assert "Authorization" not in by_cookie and "Authorization" not in by_bearer
    assert "comfyui_docker_session" not in by_cookie.get("Cookie", "") and "theirs=kept" in by_cookie["Cookie"]
    assert by_bearer["Cookie"].replace(" ", "") == "a=1;b=2"
    assert by_cookie["Host"] == f"127.0.0.1:{s.comfyui_port}" and by_cookie["X-Real-IP"] == "127.0.0.1"
    wait_for(lambda: comfyui_get(s, "/system_stats", bearer()).status_code == 200, 30, what="ComfyUI back")


def _nginx_peak_rss(stack) -> int:
    master = psutil.Process(stack.states()["front-door"]["pid"])
    return max(peak_rss(proc.pid) for proc in [master, *master.children()])


def test_a_100_mb_upload_and_a_long_download_stream_through(stack):
    s = stack.settings
    chunk = os.urandom(MB)
    digest = hashlib.sha256()
    for _ in range(100):
        digest.update(chunk)

    boundary = "frontdoorboundary"

    def body():
        """A 100 MB multipart upload produced as it is sent (chunked): the test holds 1 MB, and so must nginx."""
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\ntrue\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        for _ in range(100):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    answer = requests.post(
        comfyui_base(s) + "/upload/image",
        data=body(),
        headers={**bearer(), "Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    stored = s.paths.input / "big.png"
    assert stored.stat().st_size == 100 * MB
    view = comfyui_get(s, "/view", bearer(), params={"filename": "big.png", "type": "input"}, stream=True)
    received = hashlib.sha256()
    for piece in view.iter_content(1 << 20):
        received.update(piece)
    assert view.status_code == 200 and received.hexdigest() == digest.hexdigest()
    # Neither went through nginx whole: its processes never held more than a fraction of 100 MB.
    assert _nginx_peak_rss(stack) < 40 * MB
    assert not any((s.paths.front_door / "tmp" / "body").glob("*"))


def test_comfyui_holds_no_secret_and_listens_on_loopback_only(stack):
    s = stack.settings
    pid = stack.states()["comfyui"]["pid"]
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    for secret in (PASSWORD, HF_SENTINEL, (s.paths.session_key_file.read_text().strip())):
        assert secret.encode() not in environ
    assert b"DASHBOARD_PASSWORD" not in environ and b"SUPERVISOR_SERVER_URL" not in environ
    listening = [c for c in psutil.Process(pid).net_connections("inet") if c.status == psutil.CONN_LISTEN]
    assert listening and {c.laddr.ip for c in listening} == {"127.0.0.1"}
    assert {c.laddr.port for c in listening} == {s.comfyui_internal_port}
    # nginx's workers run without root's privileges.
    master = psutil.Process(stack.states()["front-door"]["pid"])
    assert master.children() and all(child.username() == "nobody" for child in master.children())


def test_the_dashboard_stopped_closes_the_door_and_it_reopens_by_itself(stack):
    s = stack.settings
    stack.rpc().supervisor.stopProcess("dashboard")
    try:
        for headers in (bearer(), {"Accept": "text/html"}):
            answer = comfyui_get(s, "/system_stats", headers)
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "login_unavailable" and answer.headers["Retry-After"] == "5"
        assert comfyui_get(s, "/_frontdoor/login").json()["error"]["code"] == "login_unavailable"
        log = s.paths.log_file("front-door").read_text()
        assert "auth request unexpected status: 502" in log and "dashboard.sock failed" in log

        def health_says_closed():
            checks = requests.get(f"http://127.0.0.1:{s.health_port}/ready", timeout=5).json()["checks"]
            door = next((c for c in checks if c["name"] == "front_door"), {})
            return door.get("status") == "warn" and "refuses every request" in door["reason"]

        wait_for(health_says_closed, 30, what="health: the door closed")
    finally:
        stack.rpc().supervisor.startProcess("dashboard")
    wait_for(lambda: comfyui_get(s, "/system_stats", bearer()).status_code == 200, 30, what="the door open again")


def test_a_killed_front_door_comes_back_on_its_ports(stack):
    s = stack.settings
    old = stack.states()["front-door"]["pid"]
    os.kill(old, 9)  # the workers are left behind, holding the ports: the next start clears them
    wait_for(
        lambda: (i := stack.states()["front-door"])["statename"] == "RUNNING" and i["pid"] != old, 30, what="restart"
    )
    wait_for(lambda: comfyui_get(s, "/system_stats", bearer()).status_code == 200, 30, what="the door back")
    assert "left over from a front door that was killed" in s.paths.log_file("front-door").read_text()


def test_a_stale_pid_file_never_costs_another_nginx_its_workers(tmp_path):
    """After a reboot the old master's pid may belong to another nginx (the system's): not ours to kill."""
    from services.frontdoor.__main__ import orphans

    fake = tmp_path / "nginx"  # a process whose name is nginx, as ps and /proc/<pid>/comm show it
    fake.write_bytes(Path("/bin/sleep").read_bytes())
    fake.chmod(0o755)
    pid_file = tmp_path / "nginx.pid"
    # A live group leader named nginx with a worker of the same name: someone else's running nginx.
    master = subprocess.Popen(["/bin/sh", "-c", f"{fake} 60 & exec {fake} 60"], start_new_session=True)
    # A leader that is gone with its worker left: what kill -9 of our master leaves.
    gone = subprocess.Popen(["/bin/sh", "-c", f"{fake} 60 & exit 0"], start_new_session=True)
    gone.wait(10)
    try:
        wait_for(lambda: len(psutil.Process(master.pid).children()) == 1, 10, what="the live nginx's worker")
        pid_file.write_text(f"{master.pid}\n")
        assert orphans(pid_file) == []
        pid_file.write_text(f"{gone.pid}\n")
        left = wait_for(lambda: orphans(pid_file), 10, what="the orphan")
        assert len(left) == 1 and psutil.Process(left[0]).ppid() != gone.pid
    finally:
        for group in (master.pid, gone.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, 9)
        master.wait(10)


def _from(address: str, port: int, method: str, path: str, body: str = "", headers: dict | None = None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(address, 0))
    try:
        connection.request(method, path, body=body, headers=headers or {})
        return connection.getresponse().status
    finally:
        connection.close()


def test_the_login_limit_counts_the_address_nginx_saw_never_a_header(stack):
    s = stack.settings
    client = stack_redis(stack)
    spoof = {"X-Forwarded-For": "198.51.100.7", "X-Real-IP": "198.51.100.7"}
    form = {**spoof, "Content-Type": "application/x-www-form-urlencoded"}
    for _ in range(10):
        assert _from("127.0.0.2", s.dashboard_port, "POST", "/login", "password=wrong", form) == 401
    assert _from("127.0.0.2", s.dashboard_port, "GET", "/api/status", headers=bearer()) == 429
    assert int(client.get(messages.login_failures_key("127.0.0.2"))) == 10
    assert client.get(messages.login_failures_key("198.51.100.7")) is None
    # The owner, from another address, is not locked out by someone else's guesses.
    assert _from("127.0.0.1", s.dashboard_port, "GET", "/api/status", headers=bearer()) == 200


@pytest.fixture(scope="module")
def open_stack(tmp_path_factory):
    stack = Stack(
        tmp_path_factory.mktemp("door-off"), FRONT_DOOR_OFF="comfyui", FRONT_DOOR_TRUSTED_PROXIES="127.0.0.2/32"
    )
    stack.start()
    stack.wait_running()
    yield stack
    stack.stop()


def test_the_front_door_off_for_comfyui_is_loud_everywhere(open_stack):
    s = open_stack.settings
    wait_for(lambda: comfyui_get(s, "/system_stats").status_code == 200, 30, what="ComfyUI open")
    out = open_stack.output()
    assert "FRONT_DOOR_OFF: ComfyUI's port" in out and "has no login" in out
    status = requests.get(f"http://127.0.0.1:{s.dashboard_port}/api/status", headers=bearer(), timeout=10).json()
    assert {"name": "comfyui", "port": s.comfyui_port, "protected": False} in status["ports"]
    page = requests.get(f"http://127.0.0.1:{s.dashboard_port}/", headers=bearer(), timeout=10).text
    assert "open to anyone: FRONT_DOOR_OFF" in page

    def ready_shows_it():
        body = requests.get(f"http://127.0.0.1:{s.health_port}/ready", timeout=5).json()
        return body.get("unprotected") == ["comfyui"] and body

    body = wait_for(ready_shows_it, 30, what="/ready naming the open port")
    door = next(c for c in body["checks"] if c["name"] == "front_door")
    assert "no login on comfyui" in door["reason"]


def test_a_trusted_proxy_names_the_client_and_nobody_else_can(open_stack):
    s = open_stack.settings
    client = stack_redis(open_stack)
    named = {"X-Forwarded-For": "203.0.113.7", "Content-Type": "application/x-www-form-urlencoded"}
    assert _from("127.0.0.2", s.dashboard_port, "POST", "/login", "password=wrong", named) == 401
    assert _from("127.0.0.3", s.dashboard_port, "POST", "/login", "password=wrong", named) == 401
    counted = {k.decode() if isinstance(k, bytes) else k for k in client.keys("login:failures:*")}
    assert counted == {messages.login_failures_key("203.0.113.7"), messages.login_failures_key("127.0.0.3")}


def test_nginx_drops_an_idle_dashboard_connection_before_gunicorn_does(settings):
    """Whichever side closes an idle keep-alive connection first loses the request the other sends on it
    at that moment (a POST is not retried: the user would see "not answering"). nginx must be first."""
    from services.common import door
    from services.dashboard.__main__ import DashboardServer

    upstream = re.search(r"upstream dashboard \{(.*?)\}", door.render(settings), re.S).group(1)
    nginx_idle = int(re.search(r"keepalive_timeout (\d+)s;", upstream).group(1))
    assert nginx_idle < DashboardServer(settings).cfg.keepalive
