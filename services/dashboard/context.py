"""What every request of the dashboard uses, made once per process in `create_app`: the Settings, one
Redis client (its connection pool is shared by all threads) and the Celery senders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import redis
from flask import Flask, current_app

from services.common import bus, jobs, queue
from services.common.settings import Settings

# Seconds a Redis call may take before the request answers 503: a page must not hang on a stuck Redis.
REDIS_TIMEOUT = 3.0
EXTENSION = "comfyui_docker"


@dataclass(frozen=True)
class Shared:
    settings: Settings
    redis: redis.Redis
    send: jobs.Send
    send_packs: jobs.Send
    send_cache_sync: Callable[[], None]


def init_app(app: Flask, settings: Settings) -> None:
    app.extensions[EXTENSION] = Shared(
        settings,
        bus.connect(settings, timeout=REDIS_TIMEOUT),
        queue.download_sender(settings),
        queue.node_packs_sender(settings),
        queue.cache_sync_sender(settings),
    )


def shared() -> Shared:
    return current_app.extensions[EXTENSION]


def settings() -> Settings:
    return shared().settings


def client() -> redis.Redis:
    return shared().redis


def send(job_id: str) -> None:
    shared().send(job_id)


def send_packs(install_id: str) -> None:
    shared().send_packs(install_id)


def send_cache_sync() -> None:
    shared().send_cache_sync()
