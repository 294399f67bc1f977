"""A real HTTP file server on 127.0.0.1 with Range, If-Range and ETag, and faults switched on per file.

Faults (FileServer.fault(name, **kw)): stall_after=N (at byte N of the file, hang stall_seconds, then
close or, with stall_resume, go on), reset_after=N (at byte N of the file, drop the connection),
ignore_range=True (answer 200 with the whole body), wrong_bytes=True (flip one byte), rate=N (send
at most N bytes/s per connection),
status=401|403|404|500 (answer that status), redirect_to=URL (302 there); times=N limits a fault to
the first N requests it fires on, and after_requests=N lets N requests through before it starts (a
signed URL that expires mid-download). Changing a file's content changes its ETag. Every request is
recorded (method, path, headers) for assertions.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Fault:
    stall_after: int | None = None
    stall_seconds: float = 30.0
    stall_resume: bool = False  # after the stall, go on sending instead of closing
    reset_after: int | None = None
    ignore_range: bool = False
    wrong_bytes: bool = False
    status: int | None = None
    redirect_to: str | None = None
    times: int | None = None  # how many requests it affects; None: all
    after_requests: int = 0  # requests for the file served normally before the fault starts firing
    rate: int | None = None  # bytes per second, per connection (a slow CDN); never "fires"


@dataclass
class Served:
    data: bytes
    etag: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.etag = '"' + hashlib.sha256(self.data).hexdigest()[:16] + '"'


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost (point SSL_CERT_FILE at it to trust it), and its key."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class FileServer:
    def __init__(self, host: str = "127.0.0.1", tls: tuple[Path, Path] | None = None) -> None:
        self.files: dict[str, Served] = {}
        self.faults: dict[str, Fault] = {}
        self.redirects: dict[str, tuple[str, dict[str, str]]] = {}
        self.requests: list[dict] = []
        self.bytes_sent = 0
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, 0), self._handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.host = host
        self.scheme = "https" if tls else "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def add(self, name: str, data: bytes, headers: dict[str, str] | None = None) -> str:
        self.files[name] = Served(data, headers=dict(headers or {}))
        return self.url(name)

    def redirect(self, name: str, location: str, headers: dict[str, str] | None = None) -> str:
        """`name` answers 302 to `location` (with extra headers, as Hugging Face sends hashes)."""
        self.redirects[name] = (location, dict(headers or {}))
        return self.url(name)

    def add_json(self, name: str, payload: object) -> str:
        return self.add(name, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    def fault(self, name: str, **kwargs: object) -> None:
        self.faults[name] = Fault(**kwargs)

    def clear_faults(self) -> None:
        self.faults.clear()

    def start(self) -> FileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _take_fault(self, name: str) -> Fault | None:
        """The fault for `name`, if any and due; it counts against `times` only when it fires (see _fired)."""
        with self._lock:
            fault = self.faults.get(name)
            if fault is not None and fault.after_requests > 0:
                fault.after_requests -= 1
                return None
            return fault

    def _fired(self, name: str, fault: Fault) -> None:
        with self._lock:
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0 and self.faults.get(name) is fault:
                    del self.faults[name]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _serve(self, head: bool) -> None:
                name = self.path.split("?", 1)[0].lstrip("/")
                server.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
                fault = server._take_fault(name)
                if fault and fault.status:
                    server._fired(name, fault)
                    self._plain(fault.status, f"fault {fault.status}\n".encode())
                    return
                if fault and fault.redirect_to:
                    server._fired(name, fault)
                    self.send_response(302)
                    self.send_header("Location", fault.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if name in server.redirects:
                    location, extra = server.redirects[name]
                    self.send_response(302)
                    self.send_header("Location", location)
                    for key, value in extra.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                served = server.files.get(name)
                if served is None:
                    self._plain(404, b"not found\n")
                    return
                data = served.data
                if fault and fault.wrong_bytes and data:
                    server._fired(name, fault)
                    middle = len(data) // 2
                    data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
                start, end, partial = 0, len(data) - 1, False
                range_header = self.headers.get("Range")
                if_range = self.headers.get("If-Range")
                if range_header and fault and fault.ignore_range:
                    server._fired(name, fault)
                if range_header and not (fault and fault.ignore_range) and (if_range in (None, served.etag)):
                    match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
                    if match and (match.group(1) or match.group(2)):
                        if match.group(1):
                            start = int(match.group(1))
                            end = int(match.group(2)) if match.group(2) else len(data) - 1
                        else:
                            start = max(0, len(data) - int(match.group(2)))
                        end = min(end, len(data) - 1)
                        if start > end or start >= len(data):
                            self.send_response(416)
                            self.send_header("Content-Range", f"bytes */{len(data)}")
                            self.send_header("Content-Length", "0")
                            self.end_headers()
                            return
                        partial = True
                body = data[start : end + 1]
                self.send_response(206 if partial else 200)
                if "Content-Type" not in served.headers:
                    self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", served.etag)
                self.send_header("Content-Length", str(len(body)))
                if partial:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                for key, value in served.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if head:
                    return
                self._write(body, fault, name, start)

            def _write(self, body: bytes, fault: Fault | None, name: str, start: int) -> None:
                # Faults sit at a byte of the file: a ranged request that starts past it never meets it.
                reset_at = stall_at = None
                if fault and fault.reset_after is not None and 0 < fault.reset_after - start < len(body):
                    reset_at = fault.reset_after - start
                if fault and fault.stall_after is not None and 0 < fault.stall_after - start < len(body):
                    stall_at = fault.stall_after - start
                sent = 0
                chunk = 64 * 1024
                began = time.monotonic()
                while sent < len(body):
                    if fault and fault.rate:
                        ahead = sent / fault.rate - (time.monotonic() - began)
                        if ahead > 0:
                            time.sleep(ahead)
                    piece = body[sent : sent + chunk]
                    if reset_at is not None and sent + len(piece) > reset_at:
                        server._fired(name, fault)
                        piece = piece[: max(0, reset_at - sent)]
                        self.wfile.write(piece)
                        server.bytes_sent += len(piece)
                        self.wfile.flush()
                        # An abortive close (RST), like a dropped connection.
                        self.connection.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                        )
                        self.close_connection = True
                        self.connection.close()
                        return
                    if stall_at is not None and sent + len(piece) > stall_at:
                        server._fired(name, fault)
                        piece = piece[: max(0, stall_at - sent)]
                        self.wfile.write(piece)
                        server.bytes_sent += len(piece)
                        self.wfile.flush()
                        time.sleep(fault.stall_seconds)
                        if not fault.stall_resume:
                            self.close_connection = True
                            return
                        sent += len(piece)
                        stall_at = None
                        continue
                    try:
                        self.wfile.write(piece)
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    server.bytes_sent += len(piece)
                    sent += len(piece)

            def _plain(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
