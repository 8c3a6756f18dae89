"""A real Mosquitto run with the configuration `paoding-edge broker-config` writes.

Two listeners (devices, host) on free loopback ports, TLS from the local CA
the writer makes, the generated ACL and password files. Tests connect as the
host role, as enrolled devices, and as anonymous clients.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mosquitto import Mosquitto, free_port
from polling import until

from core.mqtt import Broker, MqttClient
from fleet.brokerconf import BrokerFiles, enrol_broker_user, write_broker_config


@dataclass
class FleetBroker(Mosquitto):
    """Mosquitto with the fleet configuration; ``port`` is the devices' listener."""

    host_port: int = field(default_factory=free_port)
    tls: bool = True
    max_packet_bytes: int | None = None
    client_certs: bool = False
    files: BrokerFiles | None = None

    def _write_config(self) -> Path:
        kwargs = {} if self.max_packet_bytes is None else {"max_packet_bytes": self.max_packet_bytes}
        self.files = write_broker_config(
            self.workdir, device_port=self.port, device_bind=self.host, host_port=self.host_port,
            host_bind=self.host, tls=self.tls, persistence=self.persistence,
            client_certs=self.client_certs,
            run_as="root" if os.geteuid() == 0 else None,
            log_file=self.workdir / "mosquitto.log", **kwargs)
        return self.files.conf

    def start(self, timeout: float = 10.0) -> None:
        log = self.workdir / "mosquitto.log"
        before = log.stat().st_size if log.exists() else 0
        super().start(timeout)
        # both listeners open, and the signal handlers in place (a SIGHUP before kills it)
        deadline = time.monotonic() + timeout
        while True:
            text = log.read_bytes()[before:].decode(errors="replace") if log.exists() else ""
            if " running" in text:
                return
            if time.monotonic() > deadline or (self.proc and self.proc.poll() is not None):
                raise RuntimeError(f"the fleet broker did not start: {text[-800:]}")
            time.sleep(0.02)

    def reload(self) -> None:
        """SIGHUP: the broker reads the password files and the ACL again."""
        assert self.proc is not None
        log = self.workdir / "mosquitto.log"
        before = log.read_bytes().count(b"Reloading config.")
        self.proc.send_signal(1)
        # the broker's one thread logs this and reloads before it reads any later packet
        until(lambda: log.read_bytes().count(b"Reloading config.") > before, 10,
              "the broker never reloaded its config")

    def enrol(self, device_id: str) -> str:
        return enrol_broker_user(self.workdir, device_id)

    def host_broker(self) -> Broker:
        """The host role: its password, or its client certificate (mutual TLS)."""
        f = self.files
        assert f is not None and f.host_password is not None
        if f.host_cert is not None:
            return Broker(host=self.host, port=self.host_port, tls=True, ca_file=str(f.ca),
                          cert_file=str(f.host_cert.cert), key_file=str(f.host_cert.key))
        return Broker(host=self.host, port=self.host_port, tls=self.tls,
                      ca_file=str(f.ca) if self.tls else None, username="paoding-host",
                      password=f.host_password.read_text().strip())

    def device_broker(self, username: str | None, password: str | None,
                      protocol: str = "3.1.1", cert: tuple[Path, Path] | None = None) -> Broker:
        assert self.files is not None
        return Broker(host=self.host, port=self.port, tls=self.tls,
                      ca_file=str(self.files.ca) if self.tls else None,
                      cert_file=str(cert[0]) if cert else None,
                      key_file=str(cert[1]) if cert else None,
                      username=username, password=password, protocol=protocol)


class Inbox:
    """Every (topic, payload) a client receives on its subscriptions."""

    def __init__(self, broker: Broker, client_id: str, *filters: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client = MqttClient(broker, client_id, clean_session=True)
        for f in filters:
            self.client.subscribe(f, self._on)

    def _on(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self.messages.append((topic, payload))

    def __enter__(self) -> Inbox:
        self.client.connect(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def topics(self) -> list[str]:
        with self._lock:
            return [t for t, _ in self.messages]

    def wait_for(self, topic: str, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if topic in self.topics():
                return True
            time.sleep(0.02)
        return False
