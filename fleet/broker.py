"""A local MQTT broker for the demo: Mosquitto when installed, else an embedded amqtt one.

    with local_broker() as b:        # b.url == "mqtt://127.0.0.1:<free port>"
        ...

The broker runs in a child process of its own on a free loopback port and is
stopped (terminate, then kill) when the block ends, also on errors. The
embedded broker speaks MQTT 3.1.1 only; it is meant for the one-command demo,
not for production or tests.

``python -m fleet.broker --port N`` runs the embedded broker in the foreground.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core.errors import BrokerStartError
from fleet.link import BROKER_INFLIGHT


@dataclass(frozen=True)
class LocalBroker:
    kind: str  # "mosquitto" or "amqtt"
    host: str
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_path() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if Path(p).exists():
            return p
    return None


def _wait_listening(
    proc: subprocess.Popen, host: str, port: int, timeout: float, log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
            raise BrokerStartError(f"broker exited at start (status {proc.returncode}): {tail}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise BrokerStartError(f"broker did not listen on {host}:{port} within {timeout:g} s")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate ``proc`` and wait; kill it when it does not stop within ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def local_broker(prefer: str = "auto", timeout: float = 15.0) -> Iterator[LocalBroker]:
    """Start Mosquitto (``prefer`` auto/mosquitto) or amqtt (auto fallback, or amqtt)."""
    if prefer not in ("auto", "mosquitto", "amqtt"):
        raise BrokerStartError(f"prefer must be auto, mosquitto or amqtt, got {prefer!r}")
    host, port = "127.0.0.1", free_port()
    work = Path(tempfile.mkdtemp(prefix="paoding-broker-"))
    log = work / "broker.log"
    mosq = mosquitto_path() if prefer in ("auto", "mosquitto") else None
    if prefer == "mosquitto" and mosq is None:
        raise BrokerStartError("mosquitto is not installed (apt-get install mosquitto)")
    if mosq:
        conf = work / "mosquitto.conf"
        conf.write_text(
            f"listener {port} {host}\nallow_anonymous true\npersistence false\n"
            f"message_size_limit 0\nmax_queued_messages 100000\n"
            f"max_inflight_messages {BROKER_INFLIGHT}\nlog_dest file {log}\n"
        )
        cmd, kind = [mosq, "-c", str(conf)], "mosquitto"
    else:
        try:
            import amqtt  # noqa: F401
        except ImportError:
            raise BrokerStartError(
                "no broker: install mosquitto, or amqtt for the embedded one (pip install amqtt)"
            ) from None
        cmd, kind = [sys.executable, "-m", "fleet.broker", "--port", str(port)], "amqtt"
    with open(log, "ab") as logf:
        proc = subprocess.Popen(
            cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        _wait_listening(proc, host, port, timeout, log)
        yield LocalBroker(kind, host, port, proc.pid)
    finally:
        stop_process(proc)
        shutil.rmtree(work, ignore_errors=True)


def _serve(port: int) -> None:
    """Run an amqtt broker on 127.0.0.1:port until SIGTERM/SIGINT."""
    import asyncio
    import logging
    import signal

    from amqtt.broker import Broker

    logging.basicConfig(level=logging.WARNING)
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }

    async def main() -> None:
        broker = Broker(config)
        await broker.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await broker.shutdown()

    asyncio.run(main())


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="embedded amqtt broker (MQTT 3.1.1) for the demo")
    ap.add_argument("--port", type=int, required=True)
    _serve(ap.parse_args().port)
