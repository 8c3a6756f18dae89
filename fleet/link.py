"""The host's one connection to the fleet and its one intake subscription.

Whatever the number of devices, the host holds ONE MQTT connection and ONE
subscription, ``paoding/v2/devices/+/+``, filtered here to what devices
publish (status, need, report). A rollout's link is a persistent session
(``session=``): a client id that is the same for every run on this machine
with the same broker and record, so while the host is away (killed,
restarting, or reconnecting after a broker restart) the broker queues the
devices' QoS 1 reports for it and delivers them when it is back. Each
concurrent process takes its own slot (a lock file), so two never share an
id; a run that ends cleanly drops its intake first, so nothing is queued
between runs. With several host processes the intake is a
shared subscription ``$share/<group>/paoding/v2/devices/+/+`` so each message
reaches one of them; since shared subscriptions receive no retained messages,
a process reads the retained snapshot through a plain subscription first.

A session link acks (PUBACK) a message when the rollout calls the event's
``ack``: once stored, so the session redelivers what a killed host had not stored.

The paho network thread only queues ``(kind, device id, payload)``; the
rollout's own thread parses, verifies and acts, so a slow database never
stalls the network loop. Connection changes arrive on the same queue, and a
clock that stops while the broker is away lets a rollout pause its timeouts.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import queue
import socket
import tempfile
import threading
import time
import uuid
from concurrent.futures import wait
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError
from core.mqtt import Ack, Broker, MqttClient, PublishFuture
from core.protocol import DEVICE_FILTER, DEVICE_KINDS, TOPIC_ROOT, parse_device_topic

PROBE_PREFIX = "paoding-host-probe-"
SESSION_DIR = Path(tempfile.gettempdir()) / f"paoding-host-sessions-{os.getuid()}"
SESSION_SLOTS = 16
BROKER_INFLIGHT = 1000  # max_inflight_messages: Mosquitto's 20 would cap the host's intake


def session_client_id(name: str) -> tuple[str, int]:
    """(client id, lock fd): the first slot of session ``name`` no live process of this
    machine holds. The lock goes with the process, so a rerun after a kill gets its slot."""
    digest = hashlib.sha256(f"{socket.gethostname()}|{name}".encode()).hexdigest()[:8]
    SESSION_DIR.mkdir(mode=0o700, exist_ok=True)
    for slot in range(SESSION_SLOTS):
        fd = os.open(SESSION_DIR / f"{digest}-{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return f"paoding-host-{digest}-{slot}", fd
    raise ConfigError(f"{SESSION_SLOTS} host processes of this machine already hold a "
                      f"session with this broker and record ({SESSION_DIR})")


def _acked() -> None:
    """A plain link's ack: paho sent it on arrival."""


@dataclass(frozen=True)
class Event:
    """One thing the fleet said: a device message, or 'connected'/'disconnected'."""

    kind: str  # status, need, report, connected, disconnected
    device_id: str = ""
    payload: bytes = b""
    ack: Ack = _acked  # call once what it says is stored


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

    def __init__(self, broker: Broker, *, session: str | None = None,
                 share_group: str | None = None) -> None:
        self.broker = broker
        self.share_group = share_group
        self.events: queue.Queue[Event] = queue.Queue()
        self.clock = LinkClock()
        self.received = 0
        self._probe_id = f"{PROBE_PREFIX}{uuid.uuid4().hex[:8]}"
        self._probe_seen = threading.Event()
        self._session_lock: int | None = None
        client_id = f"paoding-host-{uuid.uuid4().hex[:12]}"
        if session is not None:
            client_id, self._session_lock = session_client_id(
                f"{broker.address}|{share_group}|{session}")
        self.client = MqttClient(broker, client_id, clean_session=session is None,
                                 max_inflight=256, manual_ack=session is not None)
        self.intake_filter = (f"$share/{share_group}/{DEVICE_FILTER}" if share_group
                              else DEVICE_FILTER)
        self.client.subscribe(self.intake_filter, self._on_message)
        self.client.on_connect(self._on_connect)
        self.client.on_disconnect(self._on_disconnect)

    def _on_message(self, topic: str, payload: bytes, ack: Ack = _acked) -> None:
        try:
            device_id, kind = parse_device_topic(topic)
        except ValueError:
            device_id, kind = "", ""
        if device_id.startswith(PROBE_PREFIX):  # a host's check of the shared intake
            if device_id == self._probe_id:
                self._probe_seen.set()
        elif kind in DEVICE_KINDS and payload:  # an empty one clears a retained message
            self.received += 1
            self.events.put(Event(kind, device_id, payload, ack))
            return
        ack()

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
            # QoS 0: not held behind the reports waiting in the inflight window to be acked
            self.client.subscribe(probe, self._on_message, qos=0).result(timeout)
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

    def close(self, *, keep_session: bool = False) -> None:
        """Disconnect. A persistent session drops its intake first unless ``keep_session``
        (a run cut short: the broker queues what devices say until the rerun)."""
        if self._session_lock is not None and not keep_session:
            wait([self.client.unsubscribe(self.intake_filter)], 10.0)  # acks before it are in
        self.client.close()
        if self._session_lock is not None:
            os.close(self._session_lock)
            self._session_lock = None

    def __enter__(self) -> FleetLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
