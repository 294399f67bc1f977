"""What a download may connect to, with a stand-in resolver: rebinding, escapes, embedded IPv4, loopback.

Every address the stand-in answers is loopback or is refused before any connection: no traffic leaves
this machine.
"""

from __future__ import annotations

import hashlib
import socket

import pytest

from services.common import netsafe
from services.common.messages import DownloadSpec
from services.common.settings import Settings
from services.worker import download
from services.worker.http import DownloadError

REAL_GETADDRINFO = socket.getaddrinfo


@pytest.fixture
def resolver(monkeypatch):
    """Names ending in .test answer what the test says (a list is served one answer per lookup; a tuple
    is one answer of several addresses)."""
    answers: dict[str, list[str]] = {}
    asked: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        if isinstance(host, str) and host.endswith(".test"):
            asked.append(host)
            queue = answers[host]
            answer = queue.pop(0) if len(queue) > 1 else queue[0]
            addresses = answer if isinstance(answer, tuple) else (answer,)
            return [
                (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in addresses
            ]
        return REAL_GETADDRINFO(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers, asked


def test_the_checked_address_is_the_one_connected_to(resolver, tmp_path, file_server):
    """A name that answers an allowed address when checked and another one later (DNS rebinding) does
    not steer the connection: the download goes to the address that was checked."""
    answers, asked = resolver
    data = b"rebound" * 100_000
    file_server.add("f.bin", data)
    # Checked: 127.0.0.1, where the server is. Any later lookup: 127.0.0.2, where nothing listens.
    answers["rebind.test"] = ["127.0.0.1", "127.0.0.2"]
    settings = Settings(workspace=tmp_path / "ws", downloads_allow_private_hosts=True, downloads_reserve_mb=0)
    spec = DownloadSpec(url=f"http://rebind.test:{file_server.port}/f.bin", folder="checkpoints")
    out = download.fetch("ab" * 8, spec, download.Context(settings))
    assert out.path.read_bytes() == data and out.sha256 == hashlib.sha256(data).hexdigest()
    assert asked.count("rebind.test") >= 1
    seen = [r for r in file_server.requests if r["path"] == "/f.bin"]
    assert seen and all(r["headers"]["Host"] == f"rebind.test:{file_server.port}" for r in seen)


def test_the_target_keeps_the_name_for_host_and_tls():
    target = netsafe.check_url("https://LocalHost.:8443/x", allow_private=True)
    assert (target.scheme, target.host, target.port) == ("https", "localhost", 8443)
    assert target.address in ("127.0.0.1", "::1") and target.host_header == "localhost:8443"


@pytest.mark.parametrize(
    "url",
    ["http://x%2ey.evil.test/", "http://127.0.0.1%2f@x/", "http://localhost%00/", "http://[fe80::1%25eth0]/"],
)
def test_a_host_with_percent_escapes_is_refused(resolver, url):
    with pytest.raises(netsafe.UnsafeUrl, match="percent-escapes|user name|not a valid"):
        netsafe.check_url(url, allow_private=True)
    assert resolver[1] == []  # refused before any lookup


@pytest.mark.parametrize(
    ("address", "allowed_with_private"),
    [
        ("2002:7f00:1::1", True),  # 6to4 of 127.0.0.1: loopback
        ("2002:a9fe:a9fe::1", False),  # 6to4 of 169.254.169.254: cloud metadata, never
        ("2002:0a00:0001::1", True),  # 6to4 of 10.0.0.1: private
        ("64:ff9b::7f00:1", True),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of the metadata address
        ("2001:0:4136:e378:8000:63bf:5601:5601", False),  # Teredo whose client is 169.254.169.254
        ("::ffff:169.254.169.254", False),  # IPv4-mapped metadata
    ],
)
def test_ipv4_inside_ipv6_is_checked_too(resolver, address, allowed_with_private):
    answers, _ = resolver
    answers["embedded.test"] = [address]
    with pytest.raises(netsafe.UnsafeUrl, match="refused"):
        netsafe.check_url("http://embedded.test/x", allow_private=False)
    if allowed_with_private:
        netsafe.check_url("http://embedded.test/x", allow_private=True)
    else:
        with pytest.raises(netsafe.UnsafeUrl, match="refused"):
            netsafe.check_url("http://embedded.test/x", allow_private=True)


def test_loopback_is_allowed_exactly_when_private_hosts_are(resolver):
    answers, _ = resolver
    answers["v6only.test"] = ["::1"]
    with pytest.raises(netsafe.UnsafeUrl, match="a loopback address"):
        netsafe.check_url("http://v6only.test/x", allow_private=False)
    assert netsafe.check_url("http://v6only.test/x", allow_private=True).address == "::1"


def test_a_refused_hop_is_a_clear_download_error(resolver, tmp_path):
    answers, _ = resolver
    answers["metadata.test"] = ["169.254.169.254"]
    settings = Settings(workspace=tmp_path / "ws", downloads_allow_private_hosts=True)
    with pytest.raises(DownloadError, match="169.254.169.254, a link-local address"):
        download.fetch("ab" * 8, DownloadSpec(url="http://metadata.test/x", folder="loras"), download.Context(settings))


def test_the_checked_addresses_are_tried_in_turn(resolver, tmp_path, file_server):
    """`localhost` answers ::1 first on a standard Debian: a server on 127.0.0.1 only is still reached,
    and only through addresses that were checked."""
    answers, _ = resolver
    file_server.add("g.bin", b"g" * 1000)
    answers["dual.test"] = [("::1", "127.0.0.1")]  # nothing listens on ::1 at that port
    settings = Settings(workspace=tmp_path / "ws", downloads_allow_private_hosts=True, downloads_reserve_mb=0)
    spec = DownloadSpec(url=f"http://dual.test:{file_server.port}/g.bin", folder="checkpoints")
    assert download.fetch("ab" * 8, spec, download.Context(settings)).path.read_bytes() == b"g" * 1000
    assert netsafe.check_url(spec.url, allow_private=True).addresses == ("::1", "127.0.0.1")
