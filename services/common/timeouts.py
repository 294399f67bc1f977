"""How long the stack waits for what it asks of its parts, in seconds: each number named once, with why."""

from __future__ import annotations

# A Redis call on a request path (dashboard, health): past it the caller answers 503 instead of hanging.
REDIS_CALL = 3.0
# A best-effort Redis read that must not slow a health round (the crash history).
REDIS_QUICK = 1.0
# The worker's own client: a slow Redis must not fail a running download's bookkeeping.
REDIS_WORKER = 10.0
# The event listener's client: supervisord waits for the listener, so it never waits long on Redis.
REDIS_EVENTS = 0.5
# A read of supervisord's state over its unix socket.
SUPERVISOR_QUERY = 3.0
# stop/start over supervisord's socket answer only once the program is down: the worker's soft shutdown
# takes seconds.
SUPERVISOR_CONTROL = 60.0
# ComfyUI's `/system_stats` and `/prompt` on loopback answer in 2-20 ms when it is healthy.
COMFYUI_PROBE = 2.0
# The health service's HTTP checks of the stack's own ports, on loopback.
HTTP_CHECK = 3.0
# The no-op task's round trip through the queue (health's proof that the worker consumes).
WORKER_PING = 5.0
# The worker's main process answering a broadcast (remote control) while every pool process is busy.
WORKER_INSPECT = 2.0
# Opening a TCP connection to a download server (its reads have their own setting).
DOWNLOAD_CONNECT = 10.0
