"""Many simulated devices in one process, speaking the real device protocol.

Each simulated device has its own Ed25519 key, signs its status, reports and
chunk requests, keeps its last accepted release (a replay or downgrade is
rejected), checks the host's signature and every chunk's digest against the
signed manifest, and walks received -> verified -> installed -> benchmarked
-> active (or rolled_back when told to fail), publishing the final report and
its new status retained, as an agent does. There is no interpreter: the
benchmark figures are made up; everything on the wire is real.

Real devices each hold their own connection, client id and Last Will. The
simulator multiplexes its devices over one connection with one wildcard
subscription per topic kind (filtered to its own devices), and plays a dead
device's Last Will itself: it publishes the device's signed offline status
(made at start, as an agent makes its will) when the device dies.

    python tests/fleetsim.py --broker mqtt://127.0.0.1:1883 --devices 1000
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import itertools
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from core.errors import SignatureError
from core.mqtt import Broker, MqttClient
from core.protocol import (
    TOPIC_ROOT,
    ActiveModel,
    Artifact,
    BenchmarkResult,
    Cancel,
    ChunkRequest,
    LatencyStats,
    Manifest,
    Report,
    RuntimeInfo,
    Status,
    Topics,
    WireModel,
    artifact_filter,
    parse_artifact_topic,
    parse_device_topic,
)
from core.signing import SigningKey, TrustStore, VerifyKey

RUNTIME = RuntimeInfo(name="simulated", version="1")


def simulated_key(device_id: str, seed: int = 0) -> SigningKey:
    """The device's Ed25519 key, derived from its id and a seed (so the host can enrol it)."""
    raw = hashlib.sha256(f"paoding-sim:{seed}:{device_id}".encode()).digest()
    return SigningKey.from_ed25519(Ed25519PrivateKey.from_private_bytes(raw))


def simulated_public_keys(device_ids: Iterable[str], seed: int = 0) -> dict[str, VerifyKey]:
    return {d: simulated_key(d, seed).public_key() for d in device_ids}


def device_ids(n: int, prefix: str = "sim") -> list[str]:
    width = max(5, len(str(n - 1)))
    return [f"{prefix}-{i:0{width}d}" for i in range(n)]


def _signed(msg: WireModel, key: SigningKey) -> WireModel:
    return key.sign_device(msg)  # type: ignore[type-var]


@dataclass
class SimDevice:
    device_id: str
    profile: str
    key: SigningKey
    fail: bool = False  # roll back every deployment (its checks fail)
    dead: bool = False
    slow: float = 1.0  # its steps take this many times step_s
    accepted: list[str] = field(default_factory=list)  # deployment ids it took on
    active: ActiveModel | None = None
    last_release: int = -1
    current: Manifest | None = None
    lost: set[tuple[str, int]] = field(default_factory=set)  # chunks it dropped on arrival
    drop: set[tuple[str, int]] = field(default_factory=set)  # chunks it will drop next
    finished: dict[str, bytes] = field(default_factory=dict)  # deployment id -> final report
    needs_sent: int = 0
    will: bytes = b""
    sent: list[tuple[str, str]] = field(default_factory=list)  # (deployment id, state) reported


@dataclass
class SimStats:
    manifests: int = 0
    reports: int = 0
    need_requests: int = 0
    chunks_received: int = 0
    chunks_bad: int = 0
    rejected: int = 0


class Simulator:
    """Simulated devices behind one MQTT connection."""

    def __init__(
        self,
        broker: Broker,
        devices: Iterable[str],
        *,
        profile: str = "simulated",
        seed: int = 0,
        trust: TrustStore | None = None,
        fail: Iterable[str] = (),
        dead: Iterable[str] = (),
        slow: Iterable[str] = (),
        step_s: float = 0.0,
        loss: float = 0.0,
        need_after_s: float = 2.0,
    ) -> None:
        fail, dead, slow = set(fail), set(dead), set(slow)
        self.devices = {
            d: SimDevice(d, profile, simulated_key(d, seed), fail=d in fail, dead=d in dead,
                         slow=10.0 if d in slow else 1.0)
            for d in devices
        }
        self.trust = trust
        self.step_s, self.loss, self.need_after_s = step_s, loss, need_after_s
        self.rng = random.Random(seed)
        self.stats = SimStats()
        self.chunks: dict[str, set[int]] = {}  # artifact sha -> chunk indexes received
        self.known: dict[str, Artifact] = {}
        self.waiting: dict[str, set[str]] = {}  # artifact sha -> devices waiting for it
        self._lock = threading.RLock()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._wake = threading.Condition(self._lock)
        self._stop = False
        self.client = MqttClient(broker, f"paoding-sim-{uuid.uuid4().hex[:8]}",
                                 clean_session=True, max_inflight=1024)
        self.client.subscribe(f"{TOPIC_ROOT}/+/manifest", self._on_device_topic)
        self.client.subscribe(f"{TOPIC_ROOT}/+/cancel", self._on_device_topic)
        self.client.on_connect(lambda: self.later(0, self._birth))
        for dev in self.devices.values():
            dev.will = _signed(Status(device_id=dev.device_id, online=False,
                                      profile=dev.profile), dev.key).to_json()
        self._worker = threading.Thread(target=self._run, name="paoding-sim", daemon=True)

    # -- lifecycle ------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Simulator:
        if not self._worker.is_alive():
            self._worker.start()
            self.client.connect(timeout=timeout)
        return self

    def wait_born(self, timeout: float = 60.0) -> None:
        """Wait until every device's status has been acknowledged by the broker."""
        done = threading.Event()
        self.later(0, lambda: self._after_births(done))
        if not done.wait(timeout):
            raise TimeoutError("the simulated devices' status was not acknowledged in time")

    def _after_births(self, done: threading.Event) -> None:
        fut = self.client.publish(f"{TOPIC_ROOT}/_sim/ping", b"", qos=1)
        fut.add_done_callback(lambda _f: done.set())

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        self.client.close()
        self._worker.join(timeout=5)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kill(self, device_ids: Iterable[str]) -> None:
        """Devices die: their Last Will (the signed offline status) goes out."""
        for d in device_ids:
            dev = self.devices[d]
            with self._lock:
                dev.dead = True
            self._publish(Topics(d).status, dev.will, retain=True)

    # -- scheduling (one worker thread does every step) --------------------

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._wake:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), fn))
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stop and (
                    not self._heap or self._heap[0][0] > time.monotonic()
                ):
                    wait = self._heap[0][0] - time.monotonic() if self._heap else 0.5
                    self._wake.wait(max(0.0, min(wait, 0.5)))
                if self._stop:
                    return
                _t, _s, fn = heapq.heappop(self._heap)
            fn()

    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain)

    # -- device behaviour --------------------------------------------------

    def _birth(self) -> None:
        for dev in self.devices.values():
            if dev.dead:
                self._publish(Topics(dev.device_id).status, dev.will, retain=True)
            else:
                self._status(dev)

    def _status(self, dev: SimDevice) -> None:
        st = Status(device_id=dev.device_id, online=True, profile=dev.profile, runtime=RUNTIME,
                    active_model=dev.active, agent_version="sim")
        self._publish(Topics(dev.device_id).status, _signed(st, dev.key).to_json(), retain=True)

    def _report(self, dev: SimDevice, m: Manifest, state: str, *, final: bool = False,
                reason: str | None = None, **extra: object) -> bytes:
        rep = Report(device_id=dev.device_id, deployment_id=m.deployment_id,
                     manifest_sha256=m.digest, state=state, final=final, reason=reason,
                     model_sha256=m.model.sha256, runtime=RUNTIME, **extra)  # type: ignore[arg-type]
        body = _signed(rep, dev.key).to_json()
        self._publish(Topics(dev.device_id).report, body, retain=final)
        dev.sent.append((m.deployment_id, state))
        self.stats.reports += 1
        return body

    def _on_device_topic(self, topic: str, payload: bytes) -> None:
        try:
            device_id, kind = parse_device_topic(topic)
        except ValueError:
            return
        dev = self.devices.get(device_id)
        if dev is None:
            return
        self.later(0, lambda: self._on_manifest(dev, payload) if kind == "manifest"
                   else self._on_cancel(dev, payload))

    def _on_manifest(self, dev: SimDevice, payload: bytes) -> None:
        if dev.dead:
            return
        try:
            m = Manifest.from_json(payload)
            if self.trust is not None:
                self.trust.verify(m)
        except (ValidationError, ValueError, SignatureError):
            return  # an agent logs and drops it
        if m.device_id != dev.device_id:
            return
        self.stats.manifests += 1
        if m.deployment_id in dev.finished:  # a re-sent manifest: say the outcome again
            self._publish(Topics(dev.device_id).report, dev.finished[m.deployment_id],
                          retain=True)
            return
        if dev.current is not None and dev.current.deployment_id == m.deployment_id:
            return  # already on it
        if m.release <= dev.last_release and not m.rollback:
            self.stats.rejected += 1
            dev.finished[m.deployment_id] = self._report(
                dev, m, "rejected", final=True,
                reason=f"release {m.release} is not above {dev.last_release} (replay)")
            return
        if m.expires_at < time.time():
            dev.finished[m.deployment_id] = self._report(dev, m, "expired", final=True,
                                                         reason="manifest expired")
            return
        dev.last_release = m.release
        dev.current = m
        dev.accepted.append(m.deployment_id)
        dev.needs_sent = 0
        self._report(dev, m, "received")
        for art in m.artifacts().values():
            self.known.setdefault(art.sha256, art)
            if self.loss:  # chunks this device drops: already here, or on their next arrival
                have = self.chunks.get(art.sha256, set())
                for i in range(art.chunks):
                    if self.rng.random() < self.loss:
                        (dev.lost if i in have else dev.drop).add((art.sha256, i))
            with self._lock:
                first = art.sha256 not in self.waiting
                self.waiting.setdefault(art.sha256, set()).add(dev.device_id)
            if first:
                self.chunks.setdefault(art.sha256, set())
                self.client.subscribe(artifact_filter(art.sha256), self._on_chunk)
        self._check_complete(dev)
        self.later(self.need_after_s, lambda: self._need(dev, m.deployment_id))

    def _on_cancel(self, dev: SimDevice, payload: bytes) -> None:
        try:
            c = Cancel.from_json(payload)
            if self.trust is not None:
                self.trust.verify(c)  # type: ignore[arg-type]
        except (ValidationError, ValueError, SignatureError):
            return
        m = dev.current
        if dev.dead or m is None or m.deployment_id != c.deployment_id:
            return
        dev.current = None
        dev.finished[m.deployment_id] = self._report(dev, m, "cancelled", final=True,
                                                     reason="cancelled by the host")

    def _on_chunk(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # cleared
        try:
            sha, index = parse_artifact_topic(topic)
        except ValueError:
            return
        self.later(0, lambda: self._chunk(sha, index, payload))

    def _chunk(self, sha: str, index: int, payload: bytes) -> None:
        art = self.known.get(sha)
        if art is None or not art.chunk_ok(index, payload):
            self.stats.chunks_bad += 1
            return
        self.stats.chunks_received += 1
        self.chunks.setdefault(sha, set()).add(index)
        for d in list(self.waiting.get(sha, ())):
            dev = self.devices[d]
            if (sha, index) in dev.drop:  # this arrival is lost on the way to the device
                dev.drop.discard((sha, index))
                dev.lost.add((sha, index))
                continue
            had = (sha, index) in dev.lost
            dev.lost.discard((sha, index))
            if had or len(self.chunks[sha]) == art.chunks:
                self._check_complete(dev)

    def _missing(self, dev: SimDevice, art: Artifact) -> list[int]:
        have = self.chunks.get(art.sha256, set())
        return [i for i in range(art.chunks) if i not in have or (art.sha256, i) in dev.lost]

    def _check_complete(self, dev: SimDevice) -> None:
        m = dev.current
        if m is None or dev.dead or any(self._missing(dev, a) for a in m.artifacts().values()):
            return
        for art in m.artifacts().values():
            self.waiting.get(art.sha256, set()).discard(dev.device_id)
        steps = ["verified", "installed", "benchmarked"]
        step = self.step_s * dev.slow
        for n, state in enumerate(steps, 1):
            self.later(step * n, lambda s=state: self._step(dev, m, s))
        self.later(step * (len(steps) + 1), lambda: self._final(dev, m))

    def _step(self, dev: SimDevice, m: Manifest, state: str) -> None:
        if dev.current is m and not dev.dead:
            self._report(dev, m, state)

    def _final(self, dev: SimDevice, m: Manifest) -> None:
        if dev.current is not m or dev.dead:
            return
        ms = 1.0 + self.rng.random()
        lat = LatencyStats(count=5, mean=ms, std=0.1, min=ms, max=ms, p50=ms, p90=ms, p99=ms)
        bench = BenchmarkResult(runtime=RUNTIME, init_ms=1.0, first_inference_ms=ms,
                                warmup_runs=1, warmup_mean_ms=ms, latency_ms=lat,
                                peak_memory_mb=1.0, rss_before_mb=1.0, measured_seconds=0.01,
                                emulated=True)
        dev.current = None
        if dev.fail:
            state, reason = "rolled_back", "simulated check failure"
        else:
            state, reason = "active", None
            dev.active = ActiveModel(deployment_id=m.deployment_id, sha256=m.model.sha256,
                                     size=m.model.size)
        dev.finished[m.deployment_id] = self._report(
            dev, m, state, final=True, reason=reason, benchmark=bench,
            active_sha256=dev.active.sha256 if dev.active else None)
        self._status(dev)

    def _need(self, dev: SimDevice, deployment_id: str) -> None:
        m = dev.current
        if m is None or m.deployment_id != deployment_id or dev.dead or dev.needs_sent >= 20:
            return
        for art in m.artifacts().values():
            missing = self._missing(dev, art)
            if missing:
                req = ChunkRequest(device_id=dev.device_id, deployment_id=deployment_id,
                                   artifact=art.sha256, ranges=_ranges(missing),
                                   have=art.chunks - len(missing))
                self._publish(Topics(dev.device_id).need, _signed(req, dev.key).to_json())
                self.stats.need_requests += 1
                dev.needs_sent += 1
        self.later(self.need_after_s, lambda: self._need(dev, deployment_id))


def _ranges(indexes: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i in sorted(indexes):
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="simulated devices speaking the device protocol")
    ap.add_argument("--broker", required=True, help="mqtt://host:port")
    ap.add_argument("--devices", type=int, required=True)
    ap.add_argument("--prefix", default="sim")
    ap.add_argument("--profile", default="simulated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trust-key", help="the host's public key (manifests must verify)")
    ap.add_argument("--dead", type=float, default=0.0, help="share of devices dead at start")
    ap.add_argument("--fail", type=float, default=0.0, help="share of devices that roll back")
    ap.add_argument("--step", type=float, default=0.0, help="seconds per deployment step")
    ap.add_argument("--loss", type=float, default=0.0, help="chance a device drops a chunk")
    args = ap.parse_args(argv)
    from core.signing import load_verify_key

    ids = device_ids(args.devices, args.prefix)
    rng = random.Random(args.seed)
    dead = {d for d in ids if rng.random() < args.dead}
    fail = {d for d in ids if d not in dead and rng.random() < args.fail}
    trust = TrustStore([load_verify_key(args.trust_key)]) if args.trust_key else None
    sim = Simulator(Broker.from_url(args.broker), ids, profile=args.profile, seed=args.seed,
                    trust=trust, fail=fail, dead=dead, step_s=args.step, loss=args.loss)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sim.start()
    sim.wait_born()
    print(f"ready {len(ids)} devices ({len(dead)} dead, {len(fail)} failing)", flush=True)
    stop.wait()
    sim.stop()
    print(f"stats {sim.stats}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
