"""The MQTT adapter against a real Mosquitto: SUBACK futures, publishes awaited at close."""

from __future__ import annotations

import threading
import uuid

import pytest

from core.mqtt import Broker, MqttClient

pytestmark = pytest.mark.broker


def _client(broker, name: str) -> MqttClient:
    return MqttClient(Broker(port=broker.port), f"{name}-{uuid.uuid4().hex[:6]}",
                      clean_session=True)


def test_subscribe_completes_on_suback_before_and_after_connect(broker):
    c = _client(broker, "sub")
    got: list[bytes] = []
    heard = threading.Event()
    early = c.subscribe("t/early", lambda _t, p: (got.append(p), heard.set()))
    assert not early.done()  # nothing to acknowledge it yet
    c.connect()
    try:
        early.result(10)
        late = c.subscribe("t/late", lambda _t, p: (got.append(p), heard.set()))
        late.result(10)  # in place: what is published now reaches the handler
        pub = _client(broker, "pub")
        pub.connect()
        pub.publish("t/late", b"after the suback", qos=1).wait(10)
        pub.close()
        assert heard.wait(10) and got == [b"after the suback"]
    finally:
        c.close()


def test_close_waits_for_the_publishes_in_flight(broker):
    """Retained messages published right before close all arrive (clears of chunks, say)."""
    topic = f"t/{uuid.uuid4().hex[:8]}"
    c = _client(broker, "host")
    c.connect()
    for i in range(300):
        c.publish(f"{topic}/{i}", b"x" * 4096, qos=1, retain=True)
    c.close()  # no wait on any future: close itself waits for the acks
    seen: set[str] = set()
    marker, done = f"{topic}-marker", threading.Event()
    r = _client(broker, "reader")
    r.subscribe(f"{topic}/#", lambda t, _p: seen.add(t))
    r.subscribe(marker, lambda _t, _p: done.set())
    r.connect()
    try:
        r.publish(marker, b"m", qos=1).wait(10)
        assert done.wait(10)  # the retained ones were delivered before the marker
        assert len(seen) == 300
    finally:
        for i in range(300):
            r.publish(f"{topic}/{i}", b"", qos=1, retain=True)
        r.close()


def test_a_manual_ack_client_gets_again_what_it_did_not_ack(broker):
    """A message is redelivered to the persistent session until its handler's ack() is
    called; the unsubscribe's UNSUBACK means the acks sent before it reached the broker."""
    client_id = f"manual-{uuid.uuid4().hex[:6]}"
    pub = _client(broker, "pub")
    pub.connect()

    def session(ack_it: bool) -> list[bytes]:
        got: list[bytes] = []
        heard = threading.Event()

        def handler(_t: str, payload: bytes, ack) -> None:  # noqa: ANN001
            got.append(payload)
            if ack_it:
                ack()
            if payload == b"marker":
                heard.set()

        c = MqttClient(Broker(port=broker.port), client_id, manual_ack=True)
        c.subscribe("t/manual", handler)
        c.connect()
        pub.publish("t/manual", b"marker", qos=1).wait(10)  # after the others: all are in
        assert heard.wait(10), got
        if ack_it:
            c.unsubscribe("t/other").result(10)
        c.close()
        return got

    try:
        c = MqttClient(Broker(port=broker.port), client_id, manual_ack=True)
        c.subscribe("t/manual", lambda _t, _p, _ack: None)
        c.connect()  # the session and its subscription exist
        c.close()
        pub.publish("t/manual", b"report", qos=1).wait(10)
        assert session(ack_it=False) == [b"report", b"marker"]
        assert session(ack_it=True) == [b"report", b"marker", b"marker"]  # not acked: again
        assert session(ack_it=True) == [b"marker"]  # acked: gone
    finally:
        pub.close()
