"""HTTP for downloads: redirects followed by hand, each hop checked, the token sent only to its own host."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit, urlunsplit

import urllib3

from services.common import netsafe, timeouts
from services.common.errors import Problem

MAX_REDIRECTS = 10
RECEIVE_BUFFER = 1024 * 1024
USER_AGENT = "comfyui-docker-downloader/1"


class DownloadError(Problem):
    """The download cannot succeed as asked; the message says what to do. Never holds a token."""

    code = "download_failed"


class AccessRefused(DownloadError):
    """The server answered 401 or 403: a token is missing, wrong, or lacks access."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.refused_with = status


class TransientError(Exception):
    """A network error or a server error: worth another try, keeping what was written."""


def shown(url: str) -> str:
    """A URL fit for a message or a log: host and path only (signed query strings stay out)."""
    parts = urlsplit(url)
    # The port stays (a mirror on :8080 must be named as it is); user and password never come.
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{host}{parts.path}"


def origin(url: str) -> tuple[str, str, int]:
    """Scheme, host and port (the default one filled in): what a token is bound to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        port = -1
    return scheme, (parts.hostname or "").lower(), port


@dataclass
class Credential:
    """A token and the one origin it may go to: the configured endpoint's scheme, host and port."""

    endpoint: str
    token: str

    def headers_for(self, url: str) -> dict[str, str]:
        # Not the host alone: another port of that host is another server, and http would carry it in clear.
        return {"Authorization": f"Bearer {self.token}"} if origin(url) == origin(self.endpoint) else {}


@dataclass
class Opened:
    response: urllib3.BaseHTTPResponse
    url: str  # the final URL, after redirects
    first_headers: dict[str, str] = field(default_factory=dict)  # the first hop's headers (HF puts hashes there)


class Http:
    """Connection pools pinned to checked addresses: one per (scheme, name, port, address)."""

    def __init__(self, allow_private: bool, read_timeout: float, connections: int) -> None:
        self.allow_private = allow_private
        self.maxsize = connections + 2
        self.timeout = urllib3.Timeout(connect=timeouts.DOWNLOAD_CONNECT, read=read_timeout)
        self.pools: dict[tuple[netsafe.Target, str], urllib3.HTTPConnectionPool] = {}
        self.targets: dict[tuple, netsafe.Target] = {}  # one address per origin for this download
        self._lock = threading.Lock()

    def _pool(self, target: netsafe.Target, address: str) -> urllib3.HTTPConnectionPool:
        with self._lock:
            pool = self.pools.get((target, address))
            if pool is None:
                options = {
                    "port": target.port,
                    "maxsize": self.maxsize,
                    "retries": False,
                    "timeout": self.timeout,
                    "headers": {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
                    # A bounded receive buffer: enough for a fast CDN link per connection, and little in flight
                    # to lose when the worker is killed (a resume fetches again only what was never written).
                    "socket_options": [
                        *urllib3.connection.HTTPConnection.default_socket_options,
                        (socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER),
                    ],
                }
                if target.scheme == "https":
                    # Connected to the address, spoken to as the name: SNI and the certificate check use it.
                    pool = urllib3.HTTPSConnectionPool(
                        address, server_hostname=target.host, assert_hostname=target.host, **options
                    )
                else:
                    pool = urllib3.HTTPConnectionPool(address, **options)
                self.pools[(target, address)] = pool
            return pool

    def open(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        credential: Credential | None = None,
    ) -> Opened:
        """GET `url`, following redirects one hop at a time; the body is left unread.

        Each hop is checked (scheme, user info, every address its name resolves to) and then connected to
        the very address that was checked, so a name that answers differently the second time (DNS
        rebinding) cannot steer the connection elsewhere."""
        first: dict[str, str] | None = None
        for _ in range(MAX_REDIRECTS + 1):
            try:
                target = netsafe.check_url(url, self.allow_private, self.targets)
            except netsafe.UnsafeUrl as exc:
                raise DownloadError(f"refused to connect to {shown(url)}: {exc}") from None
            parts = urlsplit(url)
            hop = {**(headers or {}), "Host": target.host_header}
            if credential:
                hop.update(credential.headers_for(url))
            path = urlunsplit(("", "", parts.path or "/", parts.query, ""))
            response = self._request(target, path, hop, url)
            if first is None:
                first = {k.lower(): v for k, v in response.headers.items()}
            if response.status in (301, 302, 303, 307, 308) and "location" in response.headers:
                location = urljoin(url, response.headers["location"])
                response.drain_conn()
                response.release_conn()
                url = location
                continue
            return Opened(response, url, first)
        raise DownloadError(f"more than {MAX_REDIRECTS} redirects from {shown(url)}")

    def _request(self, target: netsafe.Target, path: str, headers: dict[str, str], url: str):
        """One GET to the first checked address that takes the connection (as a client tries a name's
        addresses in turn: `localhost` may answer ::1 first for a server on 127.0.0.1 only)."""
        for address in target.addresses:
            try:
                return self._pool(target, address).urlopen(
                    "GET", path, headers=headers, preload_content=False, redirect=False, assert_same_host=False
                )
            except urllib3.exceptions.NewConnectionError as exc:
                failed = exc  # refused or unreachable: the next checked address, if any
            except urllib3.exceptions.HTTPError as exc:
                raise TransientError(f"{shown(url)}: {type(exc).__name__}: {_reason(exc)}") from None
        raise TransientError(f"{shown(url)}: {type(failed).__name__}: {_reason(failed)}")

    def get_json(self, url: str, credential: Credential | None = None) -> object:
        opened = self.open(url, {"Accept": "application/json"}, credential)
        response = opened.response
        try:
            raise_for_status(response.status, opened.url)
            return json.loads(response.read())
        except ValueError:
            raise DownloadError(f"{shown(url)} did not answer JSON") from None
        finally:
            response.release_conn()


def raise_for_status(status: int, url: str) -> None:
    if status in (200, 206):
        return
    if status == 404:
        raise DownloadError(f"not found (404) at {shown(url)}: check the URL")
    if status in (401, 403):
        raise AccessRefused(f"access refused ({status}) by {shown(url)}", status)
    if status == 429 or status >= 500:
        raise TransientError(f"{shown(url)} answered {status}")
    raise DownloadError(f"{shown(url)} answered {status}")


def _reason(exc: Exception) -> str:
    # urllib3 puts the whole URL in some messages; keep only the reason.
    reason = getattr(exc, "reason", None)
    return str(reason or exc).split("(Caused by", 1)[0].strip()
