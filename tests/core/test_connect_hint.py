"""A connection that fails says what is wrong and what to try: on the host (the error)
and on the agent (its log, while it keeps retrying). Real Mosquitto brokers."""

from __future__ import annotations

import logging
import threading

import pytest
from mosquitto import Mosquitto, free_port
from trustbroker import FleetBroker

from core.errors import BrokerUnavailable
from core.mqtt import Broker, MqttClient, connect_hint

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def fleet_broker(tmp_path_factory):
    b = FleetBroker(tmp_path_factory.mktemp("fleetbroker"))
    b.start()
    yield b
    b.stop()


def fails(broker: Broker) -> str:
    c = MqttClient(broker, "hint-test", clean_session=True)
    with pytest.raises(BrokerUnavailable) as info:
        c.connect(timeout=5)
    return str(info.value)


def test_nothing_listening():
    port = free_port()
    msg = fails(Broker(port=port))
    assert f"127.0.0.1:{port}" in msg and "nothing listens" in msg and "connection refused" in msg


def test_plain_url_on_the_tls_port(fleet_broker):
    msg = fails(Broker(port=fleet_broker.host_port))
    assert f"speaks TLS: use mqtts://127.0.0.1:{fleet_broker.host_port}" in msg, msg


def test_tls_url_on_a_plain_port(tmp_path):
    plain = Mosquitto(tmp_path)
    plain.start()
    try:
        msg = fails(Broker(port=plain.port, tls=True))
    finally:
        plain.stop()
    assert "does not speak TLS: use mqtt://" in msg, msg


def test_no_ca(fleet_broker):
    ok = fleet_broker.host_broker()
    no_ca = Broker(host="127.0.0.1", port=ok.port, tls=True, username=ok.username,
                   password=ok.password)
    msg = fails(no_ca)
    assert "TLS verification failed" in msg and "--ca-file" in msg, msg


def test_bad_credentials(fleet_broker):
    ok = fleet_broker.host_broker()
    bad = Broker(host=ok.host, port=ok.port, tls=True, ca_file=ok.ca_file,
                 username="paoding-host", password="wrong")
    msg = fails(bad)
    assert "refused" in msg and "check the user name and password file" in msg, msg
    assert connect_hint(ok) == ""  # a broker that is reachable as configured: no hint


def test_no_scheme_is_refused():
    with pytest.raises(ValueError, match="no scheme: write mqtts://127.0.0.1:8884"):
        Broker.from_url("127.0.0.1:8884")


class Caught(logging.Handler):
    def __init__(self, text: str) -> None:
        super().__init__(logging.WARNING)
        self.text, self.seen, self.records = text, threading.Event(), []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())
        if self.text in record.getMessage():
            self.seen.set()


@pytest.mark.parametrize("case", ["refused", "tls-port"])
def test_a_background_client_logs_why_it_cannot_connect(fleet_broker, case):
    """The agent connects in the background: its log says why it cannot, once per cause."""
    if case == "refused":
        broker, text = Broker(port=free_port(), tls=True), "nothing listens"
    else:
        broker, text = Broker(port=fleet_broker.port), "speaks TLS: use mqtts://"
    caught = Caught(text)
    log = logging.getLogger("core.mqtt")
    log.addHandler(caught)
    c = MqttClient(broker, f"hint-bg-{case}", clean_session=True)
    try:
        c.connect(wait=False)
        assert caught.seen.wait(20), caught.records
    finally:
        c.close()
        log.removeHandler(caught)
    assert all("cannot connect to MQTT broker" in m for m in caught.records)


def test_client_certificate_wanted(tmp_path):
    b = FleetBroker(tmp_path / "certs", client_certs=True)
    b.start()
    try:
        ok = b.host_broker()
        msg = fails(Broker(host=ok.host, port=ok.port, tls=True, ca_file=ok.ca_file))
    finally:
        b.stop()
    assert "client certificate" in msg, msg
