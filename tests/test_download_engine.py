"""The download engine against the fault-injecting file server: every bad input and fault a download can meet.

What must hold in each: no file under its final name is ever partial or wrong, the message says what
to do, and a resumed download fetches only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from services.common.messages import DownloadSpec
from services.common.settings import Settings
from services.worker import download
from services.worker.download.lock import live_holder
from services.worker.http import DownloadError
from tests.helpers.mounts import fill, tmpfs
from tests.helpers.procs import short_dir, wait_for

MIB = 1024 * 1024
SENTINEL_HF = "hf_SENTINEL_never_print_me"
SENTINEL_CIVITAI = "civitai_SENTINEL_never_print_me"


def blob(size: int, seed: int = 1) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB of repeating noise
    return (block * (size // len(block) + 1))[:size]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def s(tmp_path) -> Settings:
    return Settings(
        workspace=tmp_path / "ws",
        downloads_allow_private_hosts=True,
        downloads_backoff=0.0,
        downloads_retries=3,
        downloads_read_timeout=1.0,
        downloads_min_segmented_mb=2,
        downloads_segment_mb=1,
        downloads_connections=4,
        downloads_reserve_mb=0,
    )


def fetch(
    settings: Settings,
    url: str,
    folder: str = "checkpoints",
    filename: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    **ctx: object,
) -> download.Outcome:
    spec = DownloadSpec(url=url, folder=folder, filename=filename, sha256=sha256, size=size)
    return download.fetch("ab" * 8, spec, download.Context(settings, **ctx))


def folder_files(settings: Settings, folder: str = "checkpoints") -> list[str]:
    path = settings.paths.models / folder
    return sorted(os.listdir(path)) if path.exists() else []


@pytest.mark.parametrize("size", [100_000, 5 * MIB])  # one stream, and parallel ranged segments
def test_lands_verified_and_atomic(s, file_server, size):
    data = blob(size)
    url = file_server.add("model.safetensors", data)
    out = fetch(s, url, sha256=sha(data))
    assert out.path == s.paths.models / "checkpoints" / "model.safetensors"
    assert out.path.read_bytes() == data and out.sha256 == sha(data)
    assert folder_files(s) == ["model.safetensors"]
    ranged = [r for r in file_server.requests if "Range" in r["headers"] and r["headers"]["Range"] != "bytes=0-0"]
    assert (len(ranged) > 1) == (size > s.downloads_min_segmented_mb * MIB)


def test_name_from_content_disposition_or_url(s, file_server):
    url = file_server.add("dl", b"x" * 1000, {"Content-Disposition": 'attachment; filename="nice name.safetensors"'})
    assert fetch(s, url).path.name == "nice name.safetensors"
    url = file_server.add("plain.ckpt", b"y" * 1000)
    assert fetch(s, url, folder="loras").path.name == "plain.ckpt"
    url = file_server.add("evil", b"z" * 10, {"Content-Disposition": 'attachment; filename="../../etc/x.bin"'})
    assert fetch(s, url, folder="vae").path == s.paths.models / "vae" / "x.bin"


@pytest.mark.parametrize(
    ("folder", "filename", "message"),
    [
        ("nope", "a.bin", "unknown model folder 'nope'"),
        ("../config", "a.bin", "unknown model folder"),
        ("loras", "../b.bin", "not a name inside the folder"),
        ("loras", "a//b.bin", "not a name inside the folder"),
        ("loras", "a/b/c/d/e/f.bin", "more than 4 subfolders"),
        ("loras", "sub/.b.bin", "starts with a dot"),
        ("loras", "..", "not a name inside the folder"),
        ("loras", ".hidden", "starts with a dot"),
        ("loras", "a\0b", "control characters"),
        ("loras", "x.part", "ends like the download's own work files"),
    ],
)
def test_bad_folder_or_name(s, file_server, folder, filename, message):
    url = file_server.add("f.bin", b"data")
    with pytest.raises(DownloadError, match=message):
        fetch(s, url, folder=folder, filename=filename)
    assert not any(p.is_file() for p in s.workspace.rglob("*"))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "only http and https"),
        ("ftp://127.0.0.1/x", "only http and https"),
        ("http://user:pass@127.0.0.1/x", "user name or password"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::ffff:169.254.169.254]/x", "link-local"),
        ("http://224.0.0.1/x", "multicast"),
    ],
)
def test_forbidden_urls_are_refused_before_connecting(s, url, message):
    with pytest.raises(DownloadError, match=message):
        fetch(s, url, filename="x.bin")


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "2130706433", "0x7f000001", "[::1]", "[::ffff:127.0.0.1]", "10.1.2.3", "100.64.0.1", "192.168.1.1"],
)
def test_private_hosts_refused_unless_allowed(s, host):
    strict = s.model_copy(update={"downloads_allow_private_hosts": False})
    with pytest.raises(DownloadError, match="refused"):
        fetch(strict, f"http://{host}:9/x.bin")


def test_redirect_to_a_forbidden_host_is_refused(s, file_server):
    file_server.add("f.bin", b"data")
    file_server.fault("f.bin", redirect_to="http://169.254.169.254/latest/meta-data/")
    with pytest.raises(DownloadError, match="169.254.169.254.*link-local"):
        fetch(s, file_server.url("f.bin"))


@pytest.mark.parametrize(
    ("status", "message"),
    [(401, "refused access \\(401\\)"), (403, "refused access \\(403\\)"), (404, "not found \\(404\\)")],
)
def test_client_errors_fail_at_once_with_a_fix(s, file_server, status, message):
    file_server.add("f.bin", b"data")
    file_server.fault("f.bin", status=status)
    with pytest.raises(DownloadError, match=message) as raised:
        fetch(s, file_server.url("f.bin"))
    assert len(file_server.requests) == 1  # no retry of a 4xx
    if status == 404:  # the URL as the user gave it, its port included
        assert f"at http://127.0.0.1:{file_server.port}/f.bin" in str(raised.value)


def test_server_errors_are_retried_then_give_up(s, file_server):
    data = blob(50_000)
    file_server.add("f.bin", data)
    file_server.fault("f.bin", status=500, times=2)
    assert fetch(s, file_server.url("f.bin")).path.read_bytes() == data
    file_server.fault("f.bin", status=503)
    with pytest.raises(DownloadError, match="gave up after 4 tries.*answered 503"):
        fetch(s, file_server.url("f.bin"), filename="other.bin")
    assert folder_files(s) == ["f.bin"]


@pytest.mark.parametrize("fault", [{"stall_after": 300_000, "stall_seconds": 3}, {"reset_after": 300_000}])
def test_stall_or_reset_resumes_from_the_part(s, file_server, fault):
    data = blob(1 * MIB)  # under the segmented threshold: one stream, resumed with Range
    file_server.add("f.bin", data)
    file_server.fault("f.bin", times=1, **fault)
    out = fetch(s, file_server.url("f.bin"), sha256=sha(data))
    assert out.path.read_bytes() == data
    resumed = [
        r
        for r in file_server.requests
        if r["headers"].get("Range", "").startswith("bytes=") and r["headers"]["Range"] not in ("bytes=0-0",)
    ]
    assert resumed and resumed[-1]["headers"]["Range"] != "bytes=0-" and "If-Range" in resumed[-1]["headers"]
    assert out.resumed_from > 0 and out.fetched < len(data)


def test_server_ignoring_range_on_resume_starts_over(s, file_server):
    data = blob(1 * MIB)
    file_server.add("f.bin", data)
    file_server.fault("f.bin", reset_after=400_000, times=1)
    with pytest.raises(DownloadError):  # dropped at 400 kB, no retry: the .part stays for a resume
        fetch(s.model_copy(update={"downloads_retries": 0}), file_server.url("f.bin"))
    part = s.paths.models / "checkpoints" / "f.bin.part"
    assert 0 < part.stat().st_size <= 400_000
    file_server.fault("f.bin", ignore_range=True)  # now the server answers every Range with 200
    out = fetch(s, file_server.url("f.bin"), sha256=sha(data))
    assert out.path.read_bytes() == data and out.resumed_from == 0  # started over, never appended
    assert any(
        r["headers"].get("Range", "").startswith("bytes=") and r["headers"]["Range"] != "bytes=0-0"
        for r in file_server.requests
    )


def test_content_changed_between_attempts_starts_over(s, file_server):
    old, new = blob(1 * MIB, 1), blob(1 * MIB, 2)
    file_server.add("f.bin", old)
    file_server.fault("f.bin", reset_after=300_000, times=1)
    with pytest.raises(DownloadError):
        fetch(s.model_copy(update={"downloads_retries": 0}), file_server.url("f.bin"))
    assert (s.paths.models / "checkpoints" / "f.bin.part").exists()
    file_server.add("f.bin", new)  # new content, new ETag
    out = fetch(s, file_server.url("f.bin"))
    assert out.path.read_bytes() == new and out.resumed_from == 0


@pytest.mark.parametrize("size", [100_000, 5 * MIB])
def test_wrong_bytes_fail_and_leave_nothing(s, file_server, size):
    data = blob(size)
    file_server.add("f.bin", data)
    file_server.fault("f.bin", wrong_bytes=True)
    with pytest.raises(DownloadError, match="sha256 mismatch.*The file was discarded"):
        fetch(s, file_server.url("f.bin"), sha256=sha(data))
    assert folder_files(s) == []


def test_expected_size_differs(s, file_server):
    file_server.add("f.bin", b"x" * 1000)
    with pytest.raises(DownloadError, match="1000 bytes, not the 999 expected"):
        fetch(s, file_server.url("f.bin"), size=999)


def test_not_enough_space_is_refused_before_writing(s, file_server):
    file_server.add("f.bin", blob(16 * MIB))
    with tmpfs(short_dir("cdt-") / "ws", size="8m") as ws:
        small = s.model_copy(update={"workspace": ws})
        with pytest.raises(DownloadError, match="not enough space for f.bin: it needs 16.0 MiB more"):
            fetch(small, file_server.url("f.bin"))
        assert folder_files(small) == []
        assert file_server.bytes_sent < 1000  # only the probe's byte


def test_disk_filling_mid_write_removes_the_part(s, file_server):
    data = blob(6 * MIB)
    file_server.add("f.bin", data)
    file_server.fault("f.bin", stall_after=1 * MIB, stall_seconds=1.5, stall_resume=True)
    with tmpfs(short_dir("cdt-") / "ws", size="10m") as ws:
        small = s.model_copy(update={"workspace": ws, "downloads_min_segmented_mb": 100, "downloads_read_timeout": 5})
        part = small.paths.models / "checkpoints" / "f.bin.part"

        def filler():
            wait_for(lambda: part.exists() and part.stat().st_size >= MIB, 10)
            fill(ws)

        threading.Thread(target=filler, daemon=True).start()
        with pytest.raises(DownloadError, match="the volume is full while writing f.bin.part: free space and retry"):
            fetch(small, file_server.url("f.bin"))
        assert folder_files(small) == []


def test_planted_symlinks_are_refused(s, file_server, tmp_path):
    file_server.add("f.bin", b"new bytes")
    folder = s.paths.models / "checkpoints"
    folder.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (folder / "f.bin").symlink_to(victim)
    with pytest.raises(DownloadError, match="is a symbolic link"):
        fetch(s, file_server.url("f.bin"))
    (folder / "f.bin").unlink()
    (folder / "f.bin.part").symlink_to(victim)
    with pytest.raises(DownloadError, match="is a symbolic link"):
        fetch(s, file_server.url("f.bin"))
    assert victim.read_text() == "precious"


def test_a_folder_that_is_a_symlink_elsewhere_is_followed(s, file_server, tmp_path):
    elsewhere = tmp_path / "big-disk"
    elsewhere.mkdir()
    s.paths.models.mkdir(parents=True)
    (s.paths.models / "loras").symlink_to(elsewhere)
    file_server.add("l.safetensors", b"lora")
    assert fetch(s, file_server.url("l.safetensors"), folder="loras").path == elsewhere / "l.safetensors"


def test_cancel_stops_a_stalled_transfer_and_removes_the_part(s, file_server):
    file_server.add("f.bin", blob(8 * MIB))
    file_server.fault("f.bin", stall_after=2 * MIB, stall_seconds=20, stall_resume=True)
    flag = threading.Event()
    part = s.paths.models / "checkpoints" / "f.bin.part"
    slow = s.model_copy(update={"downloads_read_timeout": 30, "downloads_min_segmented_mb": 100})
    result: dict = {}

    def run():
        try:
            fetch(slow, file_server.url("f.bin"), cancelled=flag.is_set)
        except download.Cancelled:
            result["cancelled_at"] = time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: part.exists() and part.stat().st_size >= 2 * MIB, 10)
    asked = time.monotonic()
    flag.set()
    thread.join(10)
    assert "cancelled_at" in result  # it stopped though the server was stalled (20 s, read timeout 30 s)
    print(f"cancel took {result['cancelled_at'] - asked:.2f} s")
    assert folder_files(s) == []


def test_a_file_that_already_verifies_is_not_fetched_again(s, file_server):
    data = blob(3 * MIB)
    file_server.add("f.bin", data)
    fetch(s, file_server.url("f.bin"), sha256=sha(data))
    sent = file_server.bytes_sent
    again = fetch(s, file_server.url("f.bin"), sha256=sha(data))
    assert again.already_present and file_server.bytes_sent - sent <= 1
    target = s.paths.models / "checkpoints" / "f.bin"
    target.write_bytes(b"x" * len(data))  # same size, other bytes: not ours to overwrite
    with pytest.raises(DownloadError, match="already exists with another sha256: delete it first"):
        fetch(s, file_server.url("f.bin"), sha256=sha(data))
    assert target.read_bytes() == b"x" * len(data)


def test_two_writers_never_share_a_destination(s, file_server):
    file_server.add("f.bin", blob(4 * MIB))
    file_server.fault("f.bin", stall_after=1 * MIB, stall_seconds=3, stall_resume=True)
    slow = s.model_copy(update={"downloads_read_timeout": 10, "downloads_min_segmented_mb": 100})
    first = threading.Thread(target=fetch, args=(slow, file_server.url("f.bin")), daemon=True)
    first.start()
    part = s.paths.models / "checkpoints" / "f.bin.part"
    wait_for(lambda: part.exists() and part.stat().st_size > 0, 10)
    with pytest.raises(download.Busy, match="is being downloaded by"):
        spec = DownloadSpec(url=file_server.url("f.bin"), folder="checkpoints")
        download.fetch("cd" * 8, spec, download.Context(slow))
    first.join(20)
    assert folder_files(s) == ["f.bin"]


def test_the_lock_stays_held_through_a_retry_s_wait(s, file_server):
    """Between two tries of one delivery the destination is still being written: a second delivery of the
    job arriving then (a redelivery, the reconciler's resend) must find it taken, not start its own run."""
    data = blob(1 * MIB)
    file_server.add("f.bin", data)
    file_server.fault("f.bin", reset_after=300_000, times=1)
    waiting = s.model_copy(update={"downloads_backoff": 3.0})
    retrying = threading.Event()
    result: list[download.Outcome] = []

    def first() -> None:
        spec = DownloadSpec(url=file_server.url("f.bin"), folder="checkpoints")
        on_progress = lambda p: p.state == "retrying" and retrying.set()  # noqa: E731
        result.append(download.fetch("ab" * 8, spec, download.Context(waiting, on_progress=on_progress)))

    thread = threading.Thread(target=first, daemon=True)
    thread.start()
    assert retrying.wait(20)
    lock = s.paths.models / "checkpoints" / "f.bin.lock"
    assert live_holder(lock, waiting.downloads_heartbeat_stale).endswith(":" + "ab" * 8)
    with pytest.raises(download.Busy, match="is being downloaded by"):
        download.fetch("ab" * 8, DownloadSpec(url=file_server.url("f.bin"), folder="checkpoints"), download.Context(s))
    thread.join(30)
    assert result and result[0].path.read_bytes() == data and result[0].resumed_from > 0
    assert not lock.exists() and folder_files(s) == ["f.bin"]


def _killable_fetch(settings_json: str, url: str) -> None:
    settings = Settings.model_validate_json(settings_json)
    download.fetch("ef" * 8, DownloadSpec(url=url, folder="checkpoints"), download.Context(settings))


@pytest.mark.parametrize("boot", ["same", "rebooted"])
@pytest.mark.parametrize("segmented", [False, True])
def test_kill_9_mid_download_then_resume_fetches_only_the_rest(s, file_server, segmented, boot):
    data = blob(12 * MIB)
    file_server.add("f.bin", data)
    file_server.fault("f.bin", stall_after=7 * MIB + 123_456, stall_seconds=30, stall_resume=True)
    settings = s.model_copy(
        update={
            "downloads_min_segmented_mb": 1 if segmented else 100,
            "downloads_segment_mb": 4,
            "downloads_connections": 1,
            "downloads_read_timeout": 60,
        }
    )
    proc = multiprocessing.get_context("spawn").Process(
        target=_killable_fetch, args=(settings.model_dump_json(), file_server.url("f.bin"))
    )
    proc.start()
    folder = s.paths.models / "checkpoints"

    def stalled_and_recorded() -> bool:
        manifest = download.Manifest.load(folder / "f.bin.part.json")
        if manifest is None:
            return False
        if manifest.segments is not None:
            return sum(x.done for x in manifest.segments) >= 6 * MIB
        return manifest.done >= 6 * MIB

    wait_for(stalled_and_recorded, 20)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    file_server.clear_faults()
    manifest_path = folder / "f.bin.part.json"
    durable = download.Manifest.load(manifest_path)
    if boot == "rebooted":  # written-but-unsynced bytes may be gone: only what was fsynced counts
        record = json.loads(manifest_path.read_text())
        record["boot_id"] = "another-boot"
        manifest_path.write_text(json.dumps(record))
    sent_before = file_server.bytes_sent
    out = fetch(settings, file_server.url("f.bin"), sha256=sha(data))
    assert out.path.read_bytes() == data and not out.already_present
    refetched = file_server.bytes_sent - sent_before
    assert refetched <= len(data) - out.resumed_from + 1, (refetched, out.resumed_from)
    if boot == "same":
        # Everything written before the kill is reused: the stall sat at 7 MiB + 123,456.
        assert out.resumed_from == 7 * MIB + 123_456
    else:
        expected = sum(x.done for x in durable.segments) if durable.segments else durable.done
        assert out.resumed_from == expected and expected >= 6 * MIB
    assert not list(folder.glob("*.part*")) and not list(folder.glob("*.lock"))


# --- sources: Hugging Face and Civitai, emulated by the file server ------------------------------------


def test_hugging_face_token_only_to_its_host_and_sha_from_linked_etag(s, file_server, caplog):
    data = blob(3 * MIB)
    cdn = f"http://localhost:{file_server.port}/cdn/abc"
    file_server.add("cdn/abc", data)
    file_server.redirect(
        "org/repo/resolve/main/unet/model.safetensors",
        cdn,
        {"X-Linked-Etag": f'"{sha(data)}"', "X-Linked-Size": str(len(data))},
    )
    hf = s.model_copy(update={"hf_endpoint": file_server.base_url, "hf_token": SecretStr(SENTINEL_HF)})
    caplog.set_level(logging.DEBUG)
    out = fetch(hf, f"{file_server.base_url}/org/repo/blob/main/unet/model.safetensors", folder="diffusion_models")
    assert out.path.name == "model.safetensors" and out.sha256 == sha(data)
    to_hf = [r for r in file_server.requests if r["path"].startswith("/org/")]
    to_cdn = [r for r in file_server.requests if r["path"].startswith("/cdn/")]
    assert to_hf and all(r["headers"].get("Authorization") == f"Bearer {SENTINEL_HF}" for r in to_hf)
    assert to_cdn and all("Authorization" not in r["headers"] for r in to_cdn)
    assert SENTINEL_HF not in caplog.text


def test_hugging_face_linked_etag_catches_wrong_bytes(s, file_server):
    data = blob(100_000)
    file_server.add("cdn/x", b"not the model")
    file_server.redirect(
        "org/repo/resolve/main/m.safetensors",
        f"http://localhost:{file_server.port}/cdn/x",
        {"X-Linked-Etag": f'"{sha(data)}"'},
    )
    hf = s.model_copy(update={"hf_endpoint": file_server.base_url})
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch(hf, f"{file_server.base_url}/org/repo/resolve/main/m.safetensors")


@pytest.mark.parametrize("token", [None, SENTINEL_HF])
def test_hugging_face_gated_model_says_what_to_do(s, file_server, token):
    file_server.add("org/gated/resolve/main/m.safetensors", b"x")
    file_server.fault("org/gated/resolve/main/m.safetensors", status=401)
    hf = s.model_copy(update={"hf_endpoint": file_server.base_url, "hf_token": SecretStr(token) if token else None})
    with pytest.raises(DownloadError) as err:
        fetch(hf, f"{file_server.base_url}/org/gated/resolve/main/m.safetensors")
    text = str(err.value)
    assert f"{file_server.base_url}/org/gated" in text and "licence" in text
    assert ("set HF_TOKEN" in text) == (token is None)
    assert SENTINEL_HF not in text


def civitai(file_server, data: bytes, sha256: str | None = None) -> str:
    file_server.add("cdn/signed", data)
    file_server.redirect("api/download/models/456", f"http://localhost:{file_server.port}/cdn/signed")
    file_server.add_json(
        "api/v1/model-versions/456",
        {
            "id": 456,
            "modelId": 123,
            "files": [
                {"name": "other.yaml", "primary": False, "downloadUrl": "x"},
                {
                    "name": "cool_lora.safetensors",
                    "primary": True,
                    "hashes": {"SHA256": (sha256 or sha(data)).upper()},
                    "downloadUrl": f"{file_server.base_url}/api/download/models/456",
                },
            ],
        },
    )
    file_server.add_json("api/v1/models/123", {"id": 123, "modelVersions": [{"id": 456}, {"id": 400}]})
    return file_server.base_url


def test_civitai_model_url_resolved_through_the_api(s, file_server, caplog):
    data = blob(3 * MIB)
    base = civitai(file_server, data)
    cv = s.model_copy(update={"civitai_endpoint": base, "civitai_token": SecretStr(SENTINEL_CIVITAI)})
    caplog.set_level(logging.DEBUG)
    out = fetch(cv, f"{base}/models/123/cool-lora", folder="loras")
    assert out.path.name == "cool_lora.safetensors" and out.sha256 == sha(data)
    to_civitai = [r for r in file_server.requests if r["path"].startswith("/api/")]
    to_cdn = [r for r in file_server.requests if r["path"].startswith("/cdn/")]
    assert all(r["headers"].get("Authorization") == f"Bearer {SENTINEL_CIVITAI}" for r in to_civitai)
    assert to_cdn and all("Authorization" not in r["headers"] for r in to_cdn)
    assert SENTINEL_CIVITAI not in caplog.text
    assert fetch(cv, f"{base}/models/123?modelVersionId=456", folder="loras").already_present


def test_civitai_wrong_hash_and_missing_token(s, file_server):
    base = civitai(file_server, blob(10_000), sha256="0" * 64)
    cv = s.model_copy(update={"civitai_endpoint": base})
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch(cv, f"{base}/api/download/models/456", folder="loras")
    file_server.fault("api/v1/model-versions/456", status=401)
    with pytest.raises(DownloadError, match="Set CIVITAI_TOKEN"):
        fetch(cv, f"{base}/models/123?modelVersionId=456", folder="loras")


def test_civitai_signed_url_expiring_mid_download_is_resolved_again(s, file_server):
    data = blob(6 * MIB)
    base = civitai(file_server, data)
    cv = s.model_copy(update={"civitai_endpoint": base, "downloads_connections": 1})
    # The CDN answers 403 once, in the middle of the download, as an expired signature does.
    file_server.fault("cdn/signed", status=403, after_requests=3, times=1)
    out = fetch(cv, f"{base}/models/123?modelVersionId=456", folder="loras")
    assert out.path.read_bytes() == data
    resolutions = [r for r in file_server.requests if r["path"] == "/api/download/models/456"]
    assert len(resolutions) >= 2  # the signed URL was fetched anew


def test_no_token_in_manifest_or_errors(s, file_server):
    file_server.add("org/repo/resolve/main/m.bin", blob(5 * MIB))
    file_server.fault("org/repo/resolve/main/m.bin", stall_after=1 * MIB, stall_seconds=3)
    hf = s.model_copy(
        update={
            "hf_endpoint": file_server.base_url,
            "hf_token": SecretStr(SENTINEL_HF),
            "downloads_retries": 0,
            "downloads_min_segmented_mb": 100,
            "downloads_read_timeout": 0.5,
        }
    )
    with pytest.raises(DownloadError) as err:
        fetch(hf, f"{file_server.base_url}/org/repo/resolve/main/m.bin?token={SENTINEL_HF}")
    assert SENTINEL_HF not in str(err.value)
    for path in Path(hf.workspace).rglob("*"):
        if path.is_file():
            assert SENTINEL_HF.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("size_mb", [4, 16, 64, 256, 2048])
def test_segments_are_sized_from_the_file(size_mb):
    from services.worker.download.fetch import MIN_SEGMENT, plan_segments

    total, largest, connections = size_mb * MIB + 12_345, 32 * MIB, 16
    segments = plan_segments(total, largest, connections)
    # They cover the file exactly, in order, none larger than the setting, none needlessly small.
    assert segments[0].start == 0 and segments[-1].end == total - 1
    assert all(b.start == a.end + 1 for a, b in zip(segments, segments[1:], strict=False))
    assert all(s.length <= largest for s in segments)
    assert all(s.length >= MIN_SEGMENT for s in segments[:-1])
    # Every connection has work as soon as the file is big enough to give each one a segment.
    assert len(segments) >= min(connections, total // MIN_SEGMENT)
    # They shrink towards the end: what is in flight at the last byte is a small part of the file.
    lengths = [s.length for s in segments]
    assert lengths == sorted(lengths, reverse=True) or lengths[:-1] == sorted(lengths[:-1], reverse=True)
    assert sum(lengths[-connections:]) <= max(connections * MIN_SEGMENT * 2, total // 4)


@pytest.mark.parametrize(
    ("url", "sent"),
    [
        ("https://huggingface.co/org/repo/resolve/main/x.bin", True),
        ("https://huggingface.co:443/org/repo/resolve/main/x.bin", True),
        ("HTTPS://HuggingFace.co/org/repo/resolve/main/x.bin", True),
        ("http://huggingface.co/org/repo/resolve/main/x.bin", False),  # in clear
        ("https://huggingface.co:8443/org/repo/resolve/main/x.bin", False),  # another server on that host
        ("https://cdn-lfs.huggingface.co/x.bin", False),
        ("https://huggingface.co.evil.example/x.bin", False),
    ],
)
def test_a_token_goes_only_to_its_endpoints_scheme_host_and_port(url, sent):
    from services.worker.http import Credential

    headers = Credential("https://huggingface.co", "hf_SECRET").headers_for(url)
    assert bool(headers) == sent


def test_endpoints_must_be_https():
    from services.common.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="HF_ENDPOINT=.*must be an https:// address"):
        load_settings({"HF_ENDPOINT": "http://huggingface.co"})
    with pytest.raises(SettingsError, match="CIVITAI_ENDPOINT=.*must be an https:// address"):
        load_settings({"CIVITAI_ENDPOINT": "http://civitai.com"})


def test_hugging_face_token_not_sent_to_another_port_of_its_host(s, file_server):
    from tests.helpers.fileserver import FileServer

    data = blob(2 * MIB)
    other = FileServer().start()  # the same host name, another port: another server
    try:
        other.add("x/model.safetensors", data)
        file_server.redirect("org/repo/resolve/main/model.safetensors", other.url("x/model.safetensors"))
        hf = s.model_copy(update={"hf_endpoint": file_server.base_url, "hf_token": SecretStr(SENTINEL_HF)})
        out = fetch(hf, f"{file_server.base_url}/org/repo/resolve/main/model.safetensors", sha256=sha(data))
        assert out.path.read_bytes() == data
        assert other.requests and all("Authorization" not in r["headers"] for r in other.requests)
        assert any(r["headers"].get("Authorization") for r in file_server.requests if r["path"].startswith("/org/"))
    finally:
        other.stop()


def test_a_name_with_subfolders_lands_there(s, file_server):
    """ComfyUI reads `sub/name` in a model folder (a workflow names files so): made, never through a link."""
    url = file_server.add("deep.bin", b"d" * 1000)
    outcome = fetch(s, url, folder="controlnet", filename="SDXL\\canny/deep.bin")
    assert outcome.path == s.paths.models / "controlnet" / "SDXL" / "canny" / "deep.bin"
    (s.paths.models / "loras").mkdir(parents=True, exist_ok=True)
    (s.paths.models / "loras" / "out").symlink_to(s.workspace)
    with pytest.raises(DownloadError, match="is a symbolic link"):
        fetch(s, url, folder="loras", filename="out/deep.bin")
    assert not (s.workspace / "deep.bin").exists()


def test_hugging_face_urls_are_fetched_from_a_mirror(s, file_server):
    """HF_ENDPOINT set to a mirror: a huggingface.co URL (a workflow's, a preset's) is read from it."""
    data = blob(1000)
    file_server.add("org/repo/resolve/main/m.safetensors", data)
    mirror = s.model_copy(update={"hf_endpoint": file_server.base_url})
    out = fetch(mirror, "https://huggingface.co/org/repo/resolve/main/m.safetensors?download=true", folder="vae")
    assert out.path.read_bytes() == data
    gets = [r["path"] for r in file_server.requests if r["method"] == "GET"]
    assert gets and set(gets) == {"/org/repo/resolve/main/m.safetensors?download=true"}
