"""The host's persistent session: reports sent while no host is connected wait for it."""

from __future__ import annotations

import queue
import uuid

import pytest

from core.mqtt import Broker, MqttClient
from core.protocol import Report, Topics
from fleet.link import Event, FleetLink

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]
DEVICE = "dev-away"


def _reports(link: FleetLink, until: str, timeout: float = 15.0) -> list[str]:
    """The states of the reports the link hears, up to and including state ``until``."""
    states = []
    while True:
        try:
            ev: Event = link.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no report {until!r} in {timeout}s; heard {states}") from None
        ev.ack()  # taken (a session link redelivers what it has not acked)
        if ev.kind == "report":
            states.append(Report.from_json(ev.payload).state)
            if states[-1] == until:
                return states


def _send(device: MqttClient, *states: str) -> None:
    for state in states:
        rep = Report(device_id=DEVICE, deployment_id="dep-1", state=state)
        device.publish(Topics(DEVICE).report, rep.to_json(), qos=1).wait(10)


@pytest.mark.parametrize(("protocol", "share"), [("3.1.1", None), ("5", None), ("5", "hosts-t")])
def test_reports_sent_while_the_host_is_away_reach_it_when_it_is_back(broker, protocol, share):
    """Also through a shared intake: Mosquitto queues for a member that is away."""
    addr = Broker(port=broker.port, protocol=protocol)
    session = f"record-{uuid.uuid4().hex[:6]}"
    device = MqttClient(Broker(port=broker.port), f"paoding-agent-{DEVICE}", clean_session=True)
    device.connect()
    try:
        first = FleetLink(addr, session=session, share_group=share).open()
        first.close(keep_session=True)  # the host is away (killed, or cut off mid-run)
        _send(device, "received", "verified", "installed")  # acknowledged by the broker
        with FleetLink(addr, session=session, share_group=share).open() as back:
            assert back.client.client_id == first.client.client_id
            assert _reports(back, "installed") == ["received", "verified", "installed"]
        # a clean end dropped the intake: what devices say between runs is not queued
        _send(device, "benchmarked")
        with FleetLink(addr, session=session, share_group=share).open() as later:
            _send(device, "active")  # after the SUBACK: must be the first report heard
            assert _reports(later, "active") == ["active"]
    finally:
        device.close()


def test_concurrent_hosts_hold_distinct_sessions(broker):
    addr = Broker(port=broker.port)
    with FleetLink(addr, session="same") as one, FleetLink(addr, session="same") as two:
        assert one.client.client_id != two.client.client_id
    with FleetLink(addr, session="same") as again:  # the slot is free again
        assert again.client.client_id == one.client.client_id


def test_a_device_cannot_be_enrolled_under_a_host_session_id(tmp_path):
    from core.errors import ConfigError
    from fleet.enrol import enrol_device
    from fleet.registry import Registry

    with Registry(tmp_path / "fleet.sqlite") as reg, pytest.raises(ConfigError, match="host"):
        enrol_device(reg, "paoding-host-0a1b2c3d-0", "raspberry-pi-4")
