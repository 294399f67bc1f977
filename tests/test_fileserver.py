"""The test file server itself: real bytes, Range, If-Range, ETag, and each fault."""

from __future__ import annotations

import http.client

import pytest
import requests

DATA = bytes(range(256)) * 1024  # 256 KiB


def test_range_and_if_range(file_server):
    url = file_server.add("f.bin", DATA)
    full = requests.get(url, timeout=5)
    assert full.status_code == 200 and full.content == DATA and full.headers["Accept-Ranges"] == "bytes"
    etag = full.headers["ETag"]
    part = requests.get(url, headers={"Range": "bytes=100-"}, timeout=5)
    assert part.status_code == 206 and part.content == DATA[100:]
    assert part.headers["Content-Range"] == f"bytes 100-{len(DATA) - 1}/{len(DATA)}"
    assert requests.get(url, headers={"Range": "bytes=0-9", "If-Range": etag}, timeout=5).content == DATA[:10]
    # Content changed: a stale If-Range gets the whole new body.
    file_server.add("f.bin", DATA[::-1])
    stale = requests.get(url, headers={"Range": "bytes=0-9", "If-Range": etag}, timeout=5)
    assert stale.status_code == 200 and stale.content == DATA[::-1]
    assert requests.get(url, headers={"Range": f"bytes={len(DATA)}-"}, timeout=5).status_code == 416


def test_faults(file_server):
    url = file_server.add("f.bin", DATA)
    file_server.fault("f.bin", ignore_range=True)
    assert requests.get(url, headers={"Range": "bytes=10-"}, timeout=5).status_code == 200
    file_server.fault("f.bin", wrong_bytes=True)
    got = requests.get(url, timeout=5).content
    assert len(got) == len(DATA) and got != DATA
    for status in (401, 403, 404, 500):
        file_server.fault("f.bin", status=status)
        assert requests.get(url, timeout=5).status_code == status
    file_server.fault("f.bin", redirect_to="http://localhost:1/x", times=1)
    assert requests.get(url, allow_redirects=False, timeout=5).headers["Location"] == "http://localhost:1/x"
    assert requests.get(url, timeout=5).content == DATA  # times=1: only the first request was redirected
    file_server.fault("f.bin", reset_after=1000)
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(url, timeout=5).content  # noqa: B018
    file_server.fault("f.bin", stall_after=1000, stall_seconds=3)
    conn = http.client.HTTPConnection("127.0.0.1", file_server.port, timeout=0.5)
    conn.request("GET", "/f.bin")
    response = conn.getresponse()
    assert response.read(1000) == DATA[:1000]
    with pytest.raises(TimeoutError):
        response.read(1)
