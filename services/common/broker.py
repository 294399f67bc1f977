"""Celery's broker transport: kombu's Redis transport with one fault of kombu 5.7 contained.

When the broker connection drops while a task runs (Redis killed and restarted by supervisord), Celery
closes the old connection; closing its channel restores the unacknowledged messages, and kombu 5.7
builds a Redis client for that from a connection already torn down: `AttributeError: 'NoneType' object
has no attribute 'hostname'`. Celery takes it as unrecoverable and shuts the worker down, so it stops
taking jobs until the running download ends. Here that one restore is given up with a log line instead,
and the consumer reconnects as it does for any broker error.

Nothing is lost by giving it up: without a connection the messages cannot be restored anyway; the
stack's own Redis comes back empty (it persists nothing) and the reconciler re-queues every unfinished
job from its manifest on the volume; an external Redis hands them back after the visibility timeout.
"""

from __future__ import annotations

import logging

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis

log = logging.getLogger("worker.broker")

# URL schemes that select this transport (kombu refuses import paths in URLs, aliases are the way).
SCHEME = "cdredis"
SCHEME_TLS = "cdrediss"


class QoS(kombu_redis.QoS):
    def restore_unacked(self, client=None):
        try:
            return super().restore_unacked(client)
        except AttributeError:
            log.warning(
                "broker connection lost: %d unacknowledged message(s) left to the reconciler", len(self._delivered)
            )
            self._delivered.clear()
            return None


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel


def register() -> None:
    """Make the schemes known to kombu in this process (idempotent)."""
    TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")
    TRANSPORT_ALIASES.setdefault(SCHEME_TLS, f"{__name__}:Transport")


def broker_url(redis_url: str) -> str:
    """The Celery broker URL for a Redis URL as redis-py/kombu spell it (`redis+socket://`, `redis://`,
    `rediss://`)."""
    for prefix, ours in (("redis+socket://", f"{SCHEME}+socket://"), ("rediss://", f"{SCHEME_TLS}://")):
        if redis_url.startswith(prefix):
            return ours + redis_url.removeprefix(prefix)
    if redis_url.startswith("redis://"):
        return f"{SCHEME}://" + redis_url.removeprefix("redis://")
    return redis_url
