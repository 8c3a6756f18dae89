"""The host's one connection to the fleet and its one intake subscription.

Whatever the number of devices, the host holds ONE MQTT connection (clean
session: no broker state is left behind per rollout or per device) and ONE
subscription, ``paoding/v2/devices/+/+``, filtered here to what devices
publish (status, need, report). With several host processes the intake is a
shared subscription ``$share/<group>/paoding/v2/devices/+/+`` so each message
reaches one of them; since shared subscriptions receive no retained messages,
a process reads the retained snapshot through a plain subscription first.

The paho network thread only queues ``(kind, device id, payload)``; the
rollout's own thread parses, verifies and acts, so a slow database never
stalls the network loop. Connection changes arrive on the same queue, and a
clock that stops while the broker is away lets a rollout pause its timeouts.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from dataclasses import dataclass

from core.errors import ConfigError
from core.mqtt import Broker, MqttClient, PublishFuture
from core.protocol import DEVICE_FILTER, DEVICE_KINDS, TOPIC_ROOT, parse_device_topic

PROBE_PREFIX = "paoding-host-probe-"


@dataclass(frozen=True)
class Event:
    """One thing the fleet said: a device message, or 'connected'/'disconnected'."""

    kind: str  # status, need, report, connected, disconnected
    device_id: str = ""
    payload: bytes = b""


class LinkClock:
    """Seconds spent connected: timeouts count on it, so an outage pauses them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = 0.0
        self._since: float | None = None

    def up(self) -> None:
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()

    def down(self) -> None:
        with self._lock:
            if self._since is not None:
                self._total += time.monotonic() - self._since
                self._since = None

    def now(self) -> float:
        with self._lock:
            extra = time.monotonic() - self._since if self._since is not None else 0.0
            return self._total + extra


class FleetLink:
    """One MQTT connection carrying every device's traffic for the host."""

    def __init__(
        self,
        broker: Broker,
        *,
        client_id: str | None = None,
        share_group: str | None = None,
        max_inflight: int = 256,
    ) -> None:
        self.broker = broker
        self.share_group = share_group
        self.events: queue.Queue[Event] = queue.Queue()
        self.clock = LinkClock()
        self.received = 0
        self._probe_id = f"{PROBE_PREFIX}{uuid.uuid4().hex[:8]}"
        self._probe_seen = threading.Event()
        self.client = MqttClient(
            broker,
            client_id or f"paoding-host-{uuid.uuid4().hex[:12]}",
            clean_session=True,
            max_inflight=max_inflight,
        )
        self.intake_filter = (
            f"$share/{share_group}/{DEVICE_FILTER}" if share_group else DEVICE_FILTER
        )
        self.client.subscribe(self.intake_filter, self._on_message)
        self.client.on_connect(self._on_connect)
        self.client.on_disconnect(self._on_disconnect)

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            device_id, kind = parse_device_topic(topic)
        except ValueError:
            return
        if device_id.startswith(PROBE_PREFIX):  # a host's check of the shared intake
            if device_id == self._probe_id:
                self._probe_seen.set()
            return
        if kind in DEVICE_KINDS and payload:  # an empty one clears a retained message
            self.received += 1
            self.events.put(Event(kind, device_id, payload))

    def _on_connect(self) -> None:
        self.clock.up()
        self.events.put(Event("connected"))

    def _on_disconnect(self) -> None:
        self.clock.down()
        self.events.put(Event("disconnected"))

    @property
    def connected(self) -> bool:
        return self.client.connected

    def open(self, timeout: float = 10.0) -> FleetLink:
        """Connect (``BrokerUnavailable`` naming host:port when the broker cannot be reached).

        A shared intake is checked first: a message the host sends itself on a
        device topic must come back through it, or the broker does not serve
        shared subscriptions (an MQTT 5 feature some brokers lack) and the
        error says so, instead of a rollout that hears nothing.
        """
        self.client.connect(timeout=timeout)
        if self.share_group:
            # a group of its own, so another host process of the fleet cannot take the probe
            topic = f"{TOPIC_ROOT}/{self._probe_id}/status"
            probe = f"$share/{self._probe_id}/{topic}"
            self.client.subscribe(probe, self._on_message).result(timeout)  # SUBACK first
            self.client.publish(topic, b"{}", qos=1).wait(timeout)
            seen = self._probe_seen.wait(min(timeout, 5.0))
            self.client.unsubscribe(probe)
            if not seen:
                self.close()
                raise ConfigError(
                    f"broker {self.broker.address} delivered nothing through the shared "
                    f"subscription {self.intake_filter!r}: it does not support shared "
                    "subscriptions; run one host process without --share-group")
        return self

    def hold_retained(self) -> None:
        """Make sure the retained status and reports are delivered (a shared one gets none).

        A plain intake receives them on every (re)subscription already; a shared
        one holds a plain subscription until ``release_retained``.
        """
        if self.share_group:
            self.client.subscribe(DEVICE_FILTER, self._on_message)

    def release_retained(self) -> None:
        if self.share_group:
            self.client.unsubscribe(DEVICE_FILTER)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> PublishFuture:
        """QoS 1; while the broker is away paho keeps the message and sends it after."""
        return self.client.publish(topic, payload, qos=1, retain=retain)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> FleetLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
