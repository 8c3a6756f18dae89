"""The demo's local broker: starts on a free port, carries messages, leaves nothing running."""

from __future__ import annotations

import os
import threading

import pytest

from core.mqtt import Broker, MqttClient
from fleet.broker import BrokerStartError, local_broker, mosquitto_path


@pytest.mark.parametrize("prefer", ["amqtt", "mosquitto"])
def test_local_broker_roundtrip_and_cleanup(prefer):
    if prefer == "mosquitto" and mosquitto_path() is None:
        pytest.skip("mosquitto is not installed")
    with local_broker(prefer) as b:
        assert b.kind == prefer and b.url.startswith("mqtt://127.0.0.1:")
        got: list[tuple[str, bytes]] = []
        heard = threading.Event()
        c = MqttClient(Broker.from_url(b.url), f"t-{prefer}", clean_session=True)
        subscribed = c.subscribe("demo/#", lambda t, p: (got.append((t, p)), heard.set()))
        c.connect()
        try:
            subscribed.result(10)  # in place: the message published now comes back
            c.publish("demo/x", b"hello", qos=1).wait(10)
            assert heard.wait(10)
        finally:
            c.close()
        assert ("demo/x", b"hello") in got
        pid = b.pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_bad_preference_is_refused():
    with pytest.raises(BrokerStartError, match="prefer must be"):
        with local_broker("rabbit"):
            pass
