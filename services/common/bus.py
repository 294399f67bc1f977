"""Publish events with their latest state stored beside them, read the snapshot, and listen."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import redis

from services.common import messages
from services.common.settings import Settings

E = TypeVar("E", bound=messages.Event)


def connect(settings: Settings, timeout: float = 5.0) -> redis.Redis:
    """A Redis client for the stack's Redis; callers handle redis.RedisError."""
    return redis.Redis.from_url(
        settings.effective_redis_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        decode_responses=True,
    )


def publish(client: redis.Redis, event: messages.Event) -> None:
    """Store the event as the latest state of its subject, then broadcast it, in one round trip."""
    payload = event.to_json()
    pipe = client.pipeline(transaction=True)
    pipe.hset(messages.snapshot_key(event.kind), event.subject, payload)
    if isinstance(event, messages.ServiceState) and event.crashed:
        pipe.lpush(messages.crashes_key(), payload)
        pipe.ltrim(messages.crashes_key(), 0, messages.CRASH_HISTORY - 1)
    pipe.publish(messages.EVENTS_CHANNEL, payload)
    pipe.execute()


def snapshot(client: redis.Redis, kind: str) -> dict[str, messages.Event]:
    """The latest event per subject of one kind; entries that no longer parse are skipped."""
    result = {}
    for subject, raw in client.hgetall(messages.snapshot_key(kind)).items():
        try:
            result[subject] = messages.parse_event(raw)
        except messages.BadEvent:
            continue
    return result


def latest(client: redis.Redis, model: type[E], subject: str) -> E | None:
    """The latest event of `model`'s kind about one subject, or None (none, or one that no longer parses)."""
    raw = client.hget(messages.snapshot_key(model.kind), subject)
    if raw is None:
        return None
    try:
        event = messages.parse_event(raw)
    except messages.BadEvent:
        return None
    return event if isinstance(event, model) else None


def subscribe(client: redis.Redis) -> redis.client.PubSub:
    """Subscribe before reading a snapshot, so nothing published in between is missed."""
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(messages.EVENTS_CHANNEL)
    return pubsub


def listen(source: redis.Redis | redis.client.PubSub, timeout: float = 1.0) -> Iterator[messages.Event | None]:
    """Yield events as they come; None every `timeout` seconds without one, so callers can stop."""
    pubsub = source if isinstance(source, redis.client.PubSub) else subscribe(source)
    try:
        while True:
            message = pubsub.get_message(timeout=timeout)
            if message is None:
                yield None
                continue
            try:
                yield messages.parse_event(message["data"])
            except messages.BadEvent:
                continue
    finally:
        pubsub.close()
