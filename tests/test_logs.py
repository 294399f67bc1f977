"""Log lines: one record per line, and no credential in them even when a library quotes one."""

from __future__ import annotations

import logging

import pytest

from services.common.logs import OneLineFormatter, scrub, tail


@pytest.mark.parametrize(
    "text",
    [
        "ValueError: Invalid header value b'Bearer hf_SECRET\\r\\n'",
        "headers={'Authorization': 'Bearer hf_SECRET'}",
        "Authorization: Bearer hf_SECRET",
        "GET https://civitai.com/api/download/models/1?type=Model&token=hf_SECRET failed",
        "authorization=basic hf_SECRET",
    ],
)
def test_credentials_are_hidden_in_log_lines(text):
    assert "hf_SECRET" not in scrub(text) and "<hidden>" in scrub(text)
    record = logging.LogRecord("worker", logging.ERROR, __file__, 1, "task failed: %s", (text,), None)
    line = OneLineFormatter("worker").format(record)
    assert "hf_SECRET" not in line and line.startswith("worker ")


def test_text_without_credentials_is_unchanged():
    text = "job 0123 done: /workspace/models/loras/x.safetensors (100 bytes, token budget ok)"
    assert scrub(text) == text


def test_tail_reads_the_last_lines(tmp_path):
    path = tmp_path / "x.log"
    assert tail(path, 5) == []
    path.write_text("".join(f"line {i}\n" for i in range(1000)))
    assert tail(path, 3) == ["line 997", "line 998", "line 999"]
