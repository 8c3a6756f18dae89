"""A 3-node NATS cluster with JetStream and the MQTT interface, on loopback, for tests.

NATS serves MQTT 3.1.1 (QoS 0 and 1, retained messages, sessions kept in
JetStream); it needs JetStream and a ``server_name`` per node. The nodes route
to each other, so a client of node 1 reaches a subscriber on node 3.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from mosquitto import free_port


def nats_binary() -> str:
    path = shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/local/bin/nats-server") if Path(p).exists()),
        None)
    if path is None:
        raise RuntimeError("nats-server is not installed: apt-get install nats-server")
    return path


@dataclass
class NatsNode:
    name: str
    client_port: int
    cluster_port: int
    mqtt_port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"


@dataclass
class NatsCluster:
    workdir: Path
    size: int = 3
    nodes: list[NatsNode] = field(default_factory=list)

    def start(self, timeout: float = 45.0, attempts: int = 2) -> NatsCluster:
        """Start the nodes; on a loaded machine the JetStream group may not form: retry."""
        for attempt in range(attempts):
            try:
                return self._start(timeout, attempt)
            except RuntimeError:
                self.stop()
                if attempt == attempts - 1:
                    raise
        return self

    def _start(self, timeout: float, attempt: int) -> NatsCluster:
        self.nodes = [NatsNode(f"n{i}", free_port(), free_port(), free_port())
                      for i in range(self.size)]
        routes = ", ".join(f"nats-route://127.0.0.1:{n.cluster_port}" for n in self.nodes)
        binary = nats_binary()
        for n in self.nodes:
            store = self.workdir / f"{n.name}-{attempt}"
            store.mkdir(parents=True, exist_ok=True)
            conf = self.workdir / f"{n.name}-{attempt}.conf"
            conf.write_text(
                f"server_name: {n.name}\n"
                f"listen: 127.0.0.1:{n.client_port}\n"
                f'jetstream {{ store_dir: "{store}", max_mem: 64MB, max_file: 512MB }}\n'
                f"cluster {{ name: paoding-test, listen: 127.0.0.1:{n.cluster_port}, "
                f"routes: [{routes}] }}\n"
                f"mqtt {{ listen: 127.0.0.1:{n.mqtt_port} }}\n"
            )
            log = open(self.workdir / f"{n.name}-{attempt}.log", "ab")  # noqa: SIM115 - kept by the process
            n.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        for n in self.nodes:
            self._wait_mqtt(n, deadline)
        return self

    def _wait_mqtt(self, node: NatsNode, deadline: float) -> None:
        """Wait until the node accepts an MQTT session (JetStream is up cluster-wide)."""
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        last = "no answer"
        while time.monotonic() < deadline:
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"nats-server {node.name} exited: see {self.workdir}")
            try:
                with socket.create_connection(("127.0.0.1", node.mqtt_port), timeout=0.2):
                    pass
                c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:6]}")
                rc = c.connect("127.0.0.1", node.mqtt_port, keepalive=10)
                c.loop_start()
                info = c.subscribe("paoding/probe", 1)
                time.sleep(0.3)
                ok = c.is_connected()
                c.disconnect()
                c.loop_stop()
                if rc == 0 and ok and info[0] == 0:
                    return
                last = f"rc={rc}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.3)
        raise RuntimeError(f"nats-server {node.name} MQTT not ready: {last}")

    def stop(self) -> None:
        from fleet.broker import stop_process

        for n in self.nodes:
            if n.proc is not None:
                stop_process(n.proc)
                n.proc = None
