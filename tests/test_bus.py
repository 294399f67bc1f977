"""The bus on a real redis-server: publish stores the latest state, listen streams, bad messages skipped."""

from __future__ import annotations

import threading

from services.common import bus, messages


def test_publish_keeps_latest_state_and_broadcasts(settings, redis_client):
    client = bus.connect(settings)
    received: list[messages.Event] = []
    ready = threading.Event()

    def listen() -> None:
        for event in bus.listen(bus.connect(settings), timeout=0.1):
            ready.set()
            if event is not None:
                received.append(event)
            if len(received) == 2:
                return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    ready.wait(5)
    client.publish(messages.EVENTS_CHANNEL, "not json")  # skipped, not fatal
    bus.publish(client, messages.ServiceState(name="worker", state="STARTING"))
    bus.publish(client, messages.ServiceState(name="worker", state="RUNNING", pid=42))
    thread.join(5)
    assert [e.state for e in received] == ["STARTING", "RUNNING"]
    snap = bus.snapshot(client, "services")
    assert list(snap) == ["worker"] and snap["worker"].pid == 42 and snap["worker"].v == messages.SCHEMA_VERSION


def test_crashes_are_recorded(settings, redis_client):
    client = bus.connect(settings)
    bus.publish(client, messages.ServiceState(name="comfyui", state="EXITED", expected=False))
    bus.publish(client, messages.ServiceState(name="comfyui", state="EXITED", expected=True))
    bus.publish(client, messages.ServiceState(name="redis", state="FATAL"))
    crashes = [messages.parse_event(x) for x in client.lrange(messages.crashes_key(), 0, -1)]
    assert [(c.name, c.state) for c in crashes] == [("redis", "FATAL"), ("comfyui", "EXITED")]


def test_snapshot_skips_entries_it_cannot_read(settings, redis_client):
    client = bus.connect(settings)
    client.hset(messages.snapshot_key("services"), "old", '{"type": "service.state", "v": 0}')
    bus.publish(client, messages.ServiceState(name="health", state="RUNNING"))
    assert list(bus.snapshot(client, "services")) == ["health"]
