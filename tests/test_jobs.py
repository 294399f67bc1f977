"""Download requests checked before anything is queued, and the job store's dedupe."""

from __future__ import annotations

import pytest

from services.common import jobs
from services.common.errors import BadInput
from services.common.messages import DownloadJob, DownloadSpec


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": ""}, "url: give the address"),
        ({"url": "file:///etc/passwd"}, "url: only http and https"),
        ({"url": "http://169.254.169.254/x"}, "url: 169.254.169.254 resolves to 169.254.169.254, a link-local"),
        ({"folder": "nope"}, "folder: unknown model folder 'nope'"),
        ({"filename": "../x"}, "filename: '../x' is not a name inside the folder"),
        ({"sha256": "abc"}, "sha256: must be 64 hexadecimal characters"),
        ({"size": -1}, "size: must be a whole number of bytes"),
    ],
)
def test_bad_requests_name_the_field(settings, kwargs, message):
    request = {"url": "https://127.0.0.1/x.bin", "folder": "loras", "filename": None, "sha256": None, "size": None}
    request.update(kwargs)
    allow = settings.model_copy(update={"downloads_allow_private_hosts": True})
    with pytest.raises(BadInput, match=message):
        jobs.validate(allow, DownloadSpec(**request))


def test_loopback_needs_the_setting(settings):
    with pytest.raises(BadInput, match="a loopback address"):
        jobs.validate(settings, DownloadSpec(url="http://127.0.0.1:9/x", folder="loras"))


def test_tokens_are_stripped_from_urls():
    assert (
        jobs.netsafe.clean_url("https://civitai.com/api/download/models/1?type=Model&token=abc#x")
        == "https://civitai.com/api/download/models/1?type=Model"
    )


def test_one_job_per_destination_while_it_runs(redis_client):
    first, created = jobs.create(
        redis_client, jobs.new_job(DownloadSpec(url="https://e.com/a", folder="vae", filename="a.bin"))
    )
    assert created
    second, created = jobs.create(
        redis_client, jobs.new_job(DownloadSpec(url="https://e.com/other", folder="vae", filename="a.bin"))
    )
    assert not created and second.id == first.id
    first.state = "done"
    jobs.save(redis_client, first)
    jobs.release(redis_client, first)
    third, created = jobs.create(
        redis_client, jobs.new_job(DownloadSpec(url="https://e.com/a", folder="vae", filename="a.bin"))
    )
    assert created and third.id != first.id


def test_cancel_a_queued_job_at_once(redis_client):
    job, _ = jobs.create(redis_client, DownloadJob(id="1" * 16, url="https://e.com/a", folder="vae"))
    assert jobs.cancel(redis_client, job.id).state == "cancelled"
    assert jobs.cancel_requested(redis_client, job.id)
