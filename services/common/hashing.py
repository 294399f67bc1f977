"""sha256 of model files, and the cache that keeps a file from being read twice (path + size + mtime)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import redis

from services.common import messages

MIB = 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_sha256(value: str) -> str:
    """A sha256 as we store it (64 lowercase hex digits); raises ValueError naming what a sha256 is."""
    digest = value.strip().lower() if isinstance(value, str) else ""
    if not _SHA256.fullmatch(digest):
        raise ValueError("must be 64 hexadecimal characters")
    return digest


def parse_sha256(text: str | None) -> str | None:
    """A sha256 from what a server sent (an API field, a header), or None when it is not one."""
    try:
        return check_sha256(text or "")
    except ValueError:
        return None


def sha256_of(path: Path, limit: int | None = None, hasher=None):
    """Hash `path` (its first `limit` bytes), continuing `hasher` when given."""
    hasher = hasher or hashlib.sha256()
    remaining = limit
    with open(path, "rb", buffering=0) as handle:
        buffer = bytearray(8 * MIB)
        view = memoryview(buffer)
        while remaining is None or remaining > 0:
            count = handle.readinto(view if remaining is None else view[: min(len(buffer), remaining)])
            if not count:
                break
            hasher.update(view[:count])
            if remaining is not None:
                remaining -= count
    return hasher


class HashCache:
    """No cache: every check hashes the file."""

    def get(self, path: Path, size: int, mtime_ns: int) -> str | None:
        return None

    def put(self, path: Path, size: int, mtime_ns: int, sha256: str) -> None:
        return None


class RedisHashCache(HashCache):
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def get(self, path: Path, size: int, mtime_ns: int) -> str | None:
        try:
            raw = self.client.get(messages.verified_key(str(path)))
            data = json.loads(raw) if raw else None
        except (redis.RedisError, ValueError):
            return None
        if data and data.get("size") == size and data.get("mtime_ns") == mtime_ns:
            return data.get("sha256")
        return None

    def put(self, path: Path, size: int, mtime_ns: int, sha256: str) -> None:
        payload = json.dumps({"size": size, "mtime_ns": mtime_ns, "sha256": sha256})
        try:
            self.client.set(messages.verified_key(str(path)), payload, ex=30 * 86400)
        except redis.RedisError:
            pass  # only a cache: the next check hashes the file again


def cached_sha256(path: Path, cache: HashCache) -> str:
    """The file's sha256, from the cache when its size and mtime are unchanged, else read and cached."""
    path = path.resolve()
    stat = path.stat()
    known = cache.get(path, stat.st_size, stat.st_mtime_ns)
    if known:
        return known
    digest = sha256_of(path).hexdigest()
    cache.put(path, stat.st_size, stat.st_mtime_ns, digest)
    return digest
