"""The supervisord event listener's parts: protocol parsing, log forwarding, buffering while Redis is away."""

from __future__ import annotations

import io

from services.common import bus, messages
from services.events.listener import Publisher, log_lines, read_event, state_event
from tests.helpers.redisserver import RedisServer


def test_reads_an_event_from_the_protocol():
    payload = "processname:worker groupname:worker from_state:RUNNING expected:0 pid:123"
    stream = io.StringIO(
        f"ver:3.0 server:supervisor serial:1 pool:events poolserial:1 eventname:PROCESS_STATE_EXITED "
        f"len:{len(payload)}\n{payload}"
    )
    header, body = read_event(stream)
    assert header["eventname"] == "PROCESS_STATE_EXITED"
    event = state_event(header["eventname"], body)
    assert (event.name, event.state, event.from_state, event.pid, event.expected) == (
        "worker",
        "EXITED",
        "RUNNING",
        123,
        False,
    )
    assert event.crashed


def test_log_lines_are_prefixed_once():
    payload = "processname:redis groupname:redis pid:1 channel:stdout\nready\n\nredis already named\n"
    assert log_lines(payload) == ["redis | ready", "redis already named"]


def test_events_wait_while_redis_is_away_then_arrive():
    server = RedisServer().start()
    try:
        publisher = Publisher(lambda: server.client())
        server.kill()
        publisher.send(messages.ServiceState(name="redis", state="EXITED", expected=False))
        assert len(publisher.pending) == 1
        server.start()
        publisher.send()  # the next TICK
        assert not publisher.pending
        assert bus.snapshot(server.client(), "services")["redis"].state == "EXITED"
    finally:
        server.stop()
