"""The trust campaign: each host-side finding of the trust review, reproduced and refused.

Each test replays an attack that once worked, against a real Mosquitto: a
plain one that lets anyone publish (so the host's own checks are shown to
hold even where a broker's policy is weak), and the one `broker-config`
writes (so the broker's refusal is shown too). Each also runs a genuine
control that must get through, so the test fails if the pipe is simply
broken. The counts go to PAODING_TRUST_REPORT/trust.{json,md} when that
variable names a directory (`python -m bench.trust_bench` does).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from mosquitto import mosquitto_binary
from trustbroker import FleetBroker, Inbox
from trusthelp import full_report, set_path, sign_raw

from core.errors import BrokerUnavailable, DeploymentTimeout
from core.mqtt import Broker, MqttClient
from core.protocol import ChunkRequest, Manifest, Report, Status, Topics
from core.signing import SigningKey
from fleet.gate import Gate
from fleet.orchestrator import RESERVE_ROUNDS, discover, run_rollout
from fleet.publisher import deploy
from fleet.registry import Registry
from fleet.rollout import Outcome, WavePolicy
from hostcli.main import main

pytestmark = pytest.mark.broker

PROFILE = "raspberry-pi-4"
MODEL = bytes(range(256)) * 64 * 5  # 80 KiB: two 64 KiB chunks
FINDINGS: dict[str, dict] = {}


def record(key: str, finding: str, attempts: int, believed: int, refused_by: str,
           without: str = "", **extra: object) -> None:
    """One finding's measured counts; ``without``: what the attack did with the defence off."""
    FINDINGS[key] = {"finding": finding, "attempts": attempts, "believed": believed,
                     "refused_by": refused_by, "without_defence": without, **extra}


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    out = os.environ.get("PAODING_TRUST_REPORT")
    if not out or not FINDINGS:
        return
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    rows = [dict(key=k, **v) for k, v in sorted(FINDINGS.items())]
    machine = {"machine": platform.machine(), "system": platform.system(),
               "cpus": os.cpu_count(), "python": platform.python_version(),
               "mosquitto": _mosquitto_version()}
    (d / "trust.json").write_text(json.dumps({"findings": rows, "machine": machine}, indent=1,
                                             sort_keys=True) + "\n")
    lines = ["# Trust campaign: host-side findings, reproduced and refused", "",
             "Each attack replayed against a real Mosquitto (`tests/fleet/"
             "test_trust_campaign.py`; `python -m bench.trust_bench`). Machine: "
             f"{machine['system']} {machine['machine']}, {machine['cpus']} CPUs, Python "
             f"{machine['python']}, {machine['mosquitto']}.", "",
             "| finding | attempts | believed | refused by | without the defence |",
             "|---|---:|---:|---|---|"]
    lines += [f"| {r['finding']} | {r['attempts']} | {r['believed']} | {r['refused_by']} "
              f"| {r['without_defence'] or '-'} |" for r in rows]
    (d / "trust.md").write_text("\n".join(lines) + "\n")


def _mosquitto_version() -> str:
    try:
        out = subprocess.run([mosquitto_binary(), "-h"], capture_output=True, text=True,
                             timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return "mosquitto (version unknown)"
    return out.splitlines()[0].strip() if out else "mosquitto (version unknown)"


@pytest.fixture
def fleet(tmp_path):
    """Two enrolled devices (keys in a real registry) and the host's intake."""
    keys = {d: SigningKey.generate() for d in ("dev-a", "dev-b")}
    reg = Registry(tmp_path / "fleet.sqlite")
    for d, k in keys.items():
        reg.set_identity(d, PROFILE, k.public_key().public_pem().decode(), d)
    yield keys, reg
    reg.close()


class Device:
    """A device speaking the real protocol with its key: answers each manifest with reports."""

    def __init__(self, broker: Broker, device_id: str, key: SigningKey,
                 before: int = 0) -> None:
        self.device_id, self.key = device_id, key
        self.topics = Topics(device_id)
        self.manifests: list[Manifest] = []
        self.go = threading.Event()
        if not before:
            self.go.set()
        self.client = MqttClient(broker, f"sim-{device_id}", clean_session=True)
        self.client.subscribe(self.topics.manifest, self._on_manifest)

    def _on_manifest(self, _t: str, payload: bytes) -> None:
        m = Manifest.model_validate_json(payload)
        if any(x.deployment_id == m.deployment_id for x in self.manifests):
            return
        self.manifests.append(m)
        threading.Thread(target=self._answer, args=(m,), daemon=True).start()

    def report(self, m: Manifest, **fields: object) -> bytes:
        rep = Report(device_id=self.device_id, deployment_id=m.deployment_id,
                     manifest_sha256=m.digest, model_sha256=m.model.sha256, **fields)
        return self.key.sign_device(rep).to_json()

    def _answer(self, m: Manifest) -> None:
        self.go.wait(30)
        self.client.publish(self.topics.report, self.report(m, state="active", final=True),
                            qos=1, retain=True)

    def __enter__(self) -> Device:
        self.client.connect(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()


def _manifest_watch(broker: Broker, device_id: str) -> tuple[MqttClient, list[Manifest]]:
    """What any client of a permissive broker sees: the device's manifests."""
    seen: list[Manifest] = []
    c = MqttClient(broker, f"watch-{device_id}-{time.monotonic_ns()}", clean_session=True)
    c.subscribe(Topics(device_id).manifest,
                lambda _t, p: seen.append(Manifest.model_validate_json(p)))
    c.connect(timeout=10)
    return c, seen


def _wait(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _deploy_with_forger(b: Broker, keys: dict[str, SigningKey], device_key: bytes | None):
    """Deploy to dev-a (no agent) while a forger answers its manifest with 'active' reports."""
    watch, seen = _manifest_watch(b, "dev-a")
    forger = MqttClient(b, f"forger-{time.monotonic_ns()}", clean_session=True)
    forger.connect(timeout=10)

    def forge() -> None:
        _wait(lambda: seen)
        m = seen[0]
        base = {"device_id": "dev-a", "deployment_id": m.deployment_id,
                "manifest_sha256": m.digest, "state": "active", "final": True}
        for payload in (Report(**base).to_json(),  # unsigned
                        SigningKey.generate().sign_device(Report(**base)).to_json(),  # unknown
                        keys["dev-b"].sign_device(Report(**base)).to_json()):  # another device
            forger.publish(Topics("dev-a").report, payload, qos=1).wait(5)

    t = threading.Thread(target=forge)
    t.start()
    try:
        return deploy(MODEL, "dev-a", b, device_key=device_key, timeout=4)
    finally:
        t.join()
        forger.close()
        watch.close()


def test_forged_active_reports_are_not_believed(broker, fleet, tmp_path, caplog, capsys):
    """Forged 'active' reports (public manifest_sha256) once made deploy print ACTIVE."""
    keys, reg = fleet
    b = Broker(port=broker.port)
    # 1. a device that does not exist: the CLI refuses before sending anything
    model = tmp_path / "m.tflite"
    model.write_bytes(MODEL)
    code = main(["deploy", str(model), "--device", "ghost-1", "--broker", broker.url,
                 "--unsigned", "--db", str(reg.path), "--timeout", "3"])
    err = capsys.readouterr()
    assert code == 2 and "not enrolled" in err.err and "ACTIVE" not in err.out
    # 2. an enrolled device that does not answer: forgers answer for it
    with caplog.at_level(logging.WARNING):
        forged = _deploy_with_forger(b, keys, reg.public_key("dev-a").encode())
    # none is believed: the unsigned one is dropped, and a report signed by a key that
    # is not the device's fails its deployment at once, saying why
    assert forged.state == "failed" and not forged.ok and "enrolled key" in forged.reason
    assert forged.states == [] and forged.dropped >= 2
    dropped = [r for r in caplog.records if "dropped" in r.getMessage()]
    believed = int(forged.ok)
    assert dropped
    # without the device's key the host believes the first forgery (the finding)
    unverified = _deploy_with_forger(b, keys, None)
    assert unverified.state == "active"
    # 3. the control: the genuine device's signed report is believed
    with Device(b, "dev-a", keys["dev-a"]):
        rep = deploy(MODEL, "dev-a", b, device_key=reg.public_key("dev-a").encode(), timeout=10)
    assert rep.state == "active" and rep.ok
    # 4. a replay: the device's own genuine 'active' report, still retained, does not
    #    answer a new deployment (a report names the digest of the manifest it answers)
    replayed = 0
    try:
        deploy(MODEL, "dev-a", b, device_key=reg.public_key("dev-a").encode(), timeout=3)
        replayed = 1
    except DeploymentTimeout:
        pass
    assert replayed == 0
    record("replayed_report", "the device's own genuine 'active' report (retained) "
           "replayed to a new deployment", 1, replayed, "report names the manifest digest")
    record("forged_reports", "forged 'active' reports (no key, unknown key, another "
           "device's key) and a deploy to a device that does not exist", 3 + 1,
           believed + (code == 0), "registry (not enrolled) + intake signature check",
           f"deploy returned {unverified.state.upper()}", dropped_lines=len(dropped))


def test_fake_retained_statuses_do_not_appear_in_discovery(broker, fleet, caplog):
    """Three fake retained statuses once made a rollout record three ghost devices active."""
    keys, reg = fleet
    b = Broker(port=broker.port)
    pub = MqttClient(b, "forger-status", clean_session=True)
    pub.connect(timeout=10)
    forged = [
        (Topics("ghost-1").status, Status(device_id="ghost-1", online=True,
                                          profile=PROFILE).to_json()),
        (Topics("ghost-2").status, SigningKey.generate().sign_device(
            Status(device_id="ghost-2", online=True, profile=PROFILE)).to_json()),
        (Topics("ghost-3").status, keys["dev-b"].sign_device(
            Status(device_id="ghost-3", online=True, profile=PROFILE)).to_json()),
        # on dev-b's topic, a status naming dev-a (signed by dev-b itself)
        (Topics("dev-b").status, keys["dev-b"].sign_device(
            Status(device_id="dev-a", online=True, profile="android-midrange")).to_json()),
    ]
    genuine = keys["dev-a"].sign_device(Status(device_id="dev-a", online=True, profile=PROFILE))
    try:
        for topic, payload in forged:
            pub.publish(topic, payload, qos=1, retain=True).wait(5)
        pub.publish(Topics("dev-a").status, genuine.to_json(), qos=1, retain=True).wait(5)
    finally:
        pub.close()
    unverified = discover(b, wait_s=0.5)
    assert {"ghost-1", "ghost-2", "ghost-3"} <= set(unverified)  # the finding, reproduced
    intake = Gate(reg.public_key)
    with caplog.at_level(logging.WARNING, logger="paoding.intake"):
        found = discover(b, wait_s=0.5, intake=intake)
    ghosts = {"ghost-1", "ghost-2", "ghost-3"}
    assert set(found) == {"dev-a"} and found["dev-a"].profile == PROFILE
    assert intake.rejected == {"not_enrolled": 3, "wrong_device": 1}
    # the rollout reads the same retained statuses through the intake: only dev-a is
    # deployed to (no agent answers here), no ghost is recorded or even named
    result = run_rollout({PROFILE: MODEL}, b, reg, intake=intake, discover_s=0.5,
                         policy=WavePolicy(timeout_s=1))
    assert reg.outcomes(result.rollout_id) == {"dev-a": Outcome.TIMED_OUT}
    assert not ghosts & (set(result.skipped) | {r.device_id for r in result.results})
    assert {d.device_id for d in reg.devices()} == {"dev-a", "dev-b"}
    record("fake_statuses", "fake retained statuses (unsigned, unknown key, another "
           "device's key) for 3 devices that do not exist", 3, len(ghosts & set(found)),
           "intake: not enrolled", f"{len(ghosts & set(unverified))} ghosts discovered")
    record("status_other_id", "a status on one device's topic naming another id", 1,
           int(found["dev-a"].profile != PROFILE), "intake: payload names another device")


def test_a_device_cannot_report_for_another_devices_deployment(broker, fleet, caplog):
    """An enrolled device's genuine signature on a report about another device's deployment."""
    keys, reg = fleet
    b = Broker(port=broker.port)
    pub = MqttClient(b, "statuses", clean_session=True)
    pub.connect(timeout=10)
    for d in ("dev-a", "dev-b"):
        pub.publish(Topics(d).status, keys[d].sign_device(
            Status(device_id=d, online=True, profile=PROFILE)).to_json(), qos=1,
            retain=True).wait(5)
    pub.close()
    watch, seen = _manifest_watch(b, "dev-a")
    dev_b = Device(b, "dev-b", keys["dev-b"], before=1)
    sent = 0

    def lie() -> None:  # dev-b (its own key, its own topic) says dev-a's deployment is active
        nonlocal sent
        _wait(lambda: seen, 20)
        m = seen[0]
        fake = keys["dev-b"].sign_device(Report(
            device_id="dev-b", deployment_id=m.deployment_id, manifest_sha256=m.digest,
            model_sha256=m.model.sha256, state="active", final=True))
        dev_b.client.publish(Topics("dev-b").report, fake.to_json(), qos=1).wait(5)
        sent += 1  # while dev-a's deployment is pending
        _wait(lambda: dev_b.manifests, 20)  # wave 1: dev-a's deployment has timed out
        dev_b.client.publish(Topics("dev-b").report, fake.to_json(), qos=1).wait(5)
        sent += 1  # a "late report" for a deployment the host decided without one
        dev_b.go.set()  # dev-b's own answer comes after it: the host hears both, in order

    with dev_b, caplog.at_level(logging.WARNING):
        t = threading.Thread(target=lie)
        t.start()
        try:
            result = run_rollout({PROFILE: MODEL}, b, reg, intake=Gate(reg.public_key),
                                 discover_s=0.5, policy=WavePolicy(
                                     canary=1, timeout_s=2, max_failure_rate=1.0))
        finally:
            t.join()
            watch.close()
    outcomes = reg.outcomes(result.rollout_id)
    assert sent == 2 and outcomes["dev-b"] is Outcome.ACTIVE  # dev-b's own word counts
    believed = int(outcomes["dev-a"] is not Outcome.TIMED_OUT)
    dep_a = next(d for d in reg.deployments("dev-a") if d["rollout_id"] == result.rollout_id)
    stored = [r for r in reg.reports(dep_a["deployment_id"]) if r["device_id"] != "dev-a"]
    assert believed == 0 and stored == []
    record("other_deployment", "an enrolled device's signed 'active' report for another "
           "device's deployment (while pending, and late)", sent, believed + len(stored),
           "host: a device speaks for its own deployments only")


BAD_FIGURES = {
    "NaN latency": ("benchmark.latency_ms.p90", math.nan),
    "Infinity latency": ("benchmark.latency_ms.mean", math.inf),
    "negative latency": ("benchmark.init_ms", -5.0),
    "absurd latency (1e9 ms)": ("benchmark.latency_ms.max", 1e9),
    "negative memory": ("benchmark.peak_memory_mb", -1.0),
    "accuracy above 1": ("checks.clean_accuracy", 1.5),
    "NaN agreement": ("checks.agreement", math.nan),
    "control characters": ("reason", "ok\x1b[2J\r\nINFO fake log line\x00"),
    "mismatched device_id": ("device_id", "dev-b"),
}


def _bad_report(dev: Device, m: Manifest, path: str, value: object) -> bytes:
    """A report signed by the device's own key whose field ``path`` is ``value``."""
    data = full_report(device_id=dev.device_id, deployment_id=m.deployment_id,
                       manifest_sha256=m.digest)
    return sign_raw(set_path(data, path, value), dev.key)


def test_out_of_range_figures_and_control_characters_are_not_stored(broker, fleet, caplog):
    """NaN/Infinity latencies, a mismatched id and control characters were once stored."""
    keys, reg = fleet
    b = Broker(port=broker.port)
    dev = Device(b, "dev-a", keys["dev-a"], before=1)
    sent = 0

    def send_bad() -> None:
        nonlocal sent
        _wait(lambda: dev.manifests)
        m = dev.manifests[0]
        for path, value in BAD_FIGURES.values():
            dev.client.publish(dev.topics.report, _bad_report(dev, m, path, value),
                               qos=1).wait(5)
            sent += 1
        dev.go.set()  # then the genuine final report

    status = keys["dev-a"].sign_device(Status(device_id="dev-a", online=True, profile=PROFILE))
    with dev, caplog.at_level(logging.WARNING):
        dev.client.publish(dev.topics.status, status.to_json(), qos=1, retain=True).wait(5)
        t = threading.Thread(target=send_bad)
        t.start()
        result = run_rollout({PROFILE: MODEL}, b, reg, intake=Gate(reg.public_key),
                             discover_s=0.5, policy=WavePolicy(timeout_s=20))
        t.join()
    assert sent == len(BAD_FIGURES)
    assert [r.outcome for r in result.results] == [Outcome.ACTIVE]
    assert result.stats["messages_dropped"] == len(BAD_FIGURES)
    dep_id = reg.rollout_deployments(result.rollout_id)[0]["deployment_id"]
    states = [r["state"] for r in reg.reports(dep_id)]
    assert states == ["active"]
    rows = sqlite3.connect(reg.path).execute("SELECT body FROM reports").fetchall()
    stored = "".join(r[0] for r in rows)
    assert len(rows) == 1 and "NaN" not in stored and "Infinity" not in stored
    assert "\\u001b" not in stored and "\\u0000" not in stored and "dev-b" not in stored
    record("bad_figures", "signed reports with NaN/Infinity, negative or absurd figures, "
           "control characters, a mismatched device_id", sent, len(states) - 1,
           "intake: finite and in range, printable, id == topic",
           kinds=list(BAD_FIGURES), stored_rows=len(rows))


def test_forged_need_messages_make_the_host_republish_nothing(broker, fleet):
    """200 forged 'need' messages (40 KB) once made the host republish 133 MB."""
    keys, reg = fleet
    b = Broker(port=broker.port)
    results = {}
    for verified in (False, True):
        dev = Device(b, "dev-a", keys["dev-a"], before=1)
        forger = MqttClient(b, f"need-forger-{verified}", clean_session=True)
        forger.connect(timeout=10)
        sent = 0
        nbytes = 0

        def flood(dev: Device, forger: MqttClient, heard: threading.Event) -> None:
            nonlocal sent, nbytes
            _wait(lambda: dev.manifests)
            m = dev.manifests[0]
            for i in range(200):
                req = ChunkRequest(device_id="dev-a", deployment_id=m.deployment_id,
                                   artifact=m.model.sha256, ranges=[(0, m.model.chunks)],
                                   have=0)
                payload = (req.to_json() if i % 2 else
                           keys["dev-b"].sign_device(req).to_json())
                forger.publish(Topics("dev-a").need, payload, qos=1).wait(5)
                sent += 1
                nbytes += len(payload)
            # the device's own report, routed after the 200 (all acknowledged): once the
            # host has stored one, it has handled every forged message before it (sent
            # again while the flood's rate limit on dev-a's topic drops it)
            deadline = time.monotonic() + 20
            while not heard.is_set() and time.monotonic() < deadline:
                dev.client.publish(Topics("dev-a").report, dev.report(m, state="received"),
                                   qos=1).wait(5)
                heard.wait(0.5)
            dev.go.set()

        heard = threading.Event()

        def progress(event: str, info: dict, heard=heard) -> None:
            if event == "report" and info["state"] == "received":
                heard.set()

        with dev:
            t = threading.Thread(target=flood, args=(dev, forger, heard))
            t.start()
            rep = deploy(MODEL, "dev-a", b, timeout=30, progress=progress,
                         device_key=reg.public_key("dev-a").encode() if verified else None)
            t.join()
            forger.close()
        assert rep.ok and sent == 200 and heard.is_set(), (rep.reason, sent, heard.is_set())
        chunks = rep.chunks
        results[verified] = {"forged": sent, "forged_bytes": nbytes,
                             "republished_chunks": rep.chunks_sent - chunks,
                             "republished_bytes": (rep.chunks_sent - chunks) * rep.chunk_size,
                             "dropped": rep.dropped}
    # without verification the re-send budget holds (a chunk at most once a second, and
    # at most RESERVE_ROUNDS x the chunk count per device whatever the flood lasts)
    assert results[False]["republished_chunks"] <= RESERVE_ROUNDS * chunks, results
    # (one more is dropped: the previous deployment's retained final report, stale here)
    assert results[True]["republished_chunks"] == 0 and results[True]["dropped"] >= 200, results
    record("forged_needs", "200 forged 'need' messages (unsigned / another device's key)",
           200, 200 - results[True]["dropped"], "intake signature check",
           f"{results[False]['republished_bytes']} bytes republished (re-send budget)",
           forged_bytes=results[True]["forged_bytes"],
           republished_bytes_verified=results[True]["republished_bytes"],
           republished_bytes_unverified=results[False]["republished_bytes"])


def test_no_client_can_replace_a_devices_retained_report(tmp_path):
    """One anonymous malformed manifest once replaced the retained final report."""
    fb = FleetBroker(workdir=tmp_path / "broker")
    fb.start()
    try:
        pw = {d: fb.enrol(d) for d in ("dev-a", "dev-b")}
        fb.reload()
        key = SigningKey.generate()
        genuine = key.sign_device(Report(device_id="dev-a", deployment_id="d1", state="active",
                                         final=True)).to_json()
        a = MqttClient(fb.device_broker("dev-a", pw["dev-a"]), "dev-a", clean_session=True)
        a.connect(timeout=10)
        a.publish(Topics("dev-a").report, genuine, qos=1, retain=True).wait(5)
        attempts, refused_at_connect = 0, 0
        with pytest.raises(BrokerUnavailable, match="refused"):  # anonymous
            attempts += 1
            MqttClient(fb.device_broker(None, None), "anon").connect(timeout=10)
        refused_at_connect += 1
        bdev = MqttClient(fb.device_broker("dev-b", pw["dev-b"]), "dev-b", clean_session=True)
        bdev.connect(timeout=10)
        for client, topic in ((bdev, Topics("dev-a").report), (bdev, Topics("dev-a").manifest),
                              (a, Topics("dev-a").manifest), (a, Topics("dev-b").report)):
            client.publish(topic, b'{"type": "manifest", "garbage', qos=1, retain=True).wait(5)
            attempts += 1
        bdev.close()
        a.close()
        with Inbox(fb.host_broker(), "host-read", "paoding/v2/devices/+/+") as host:
            marker = Topics("marker").manifest  # sent after the subscription: the retained
            host.client.publish(marker, b"m", qos=1).wait(5)  # ones arrive before it
            assert host.wait_for(marker)
            host.messages.remove((marker, b"m"))
            replaced = sum(1 for m in host.messages if m != (Topics("dev-a").report, genuine))
            assert host.messages == [(Topics("dev-a").report, genuine)]
        # oversized: the broker drops a 2 MiB message before any device buffers it
        with Inbox(fb.device_broker("dev-a", pw["dev-a"]), "dev-a",
                   Topics("dev-a").manifest) as dev:
            big = MqttClient(fb.host_broker(), "host-big", clean_session=True)
            big.connect(timeout=10)
            big.publish(Topics("dev-a").manifest, b"x" * (2 << 20), qos=0)
            big.close()
            small = MqttClient(fb.host_broker(), "host-small", clean_session=True)
            small.connect(timeout=10)
            small.publish(Topics("dev-a").manifest, b"small", qos=1).wait(5)
            small.close()
            assert dev.wait_for(Topics("dev-a").manifest)  # the later small one came...
            delivered = sum(1 for _t, p in dev.messages if p != b"small")
            assert delivered == 0  # ...alone
    finally:
        fb.kill()
    record("retained_report", "an anonymous or another device's malformed message "
           "replacing a device's retained report (or publishing its manifest)", attempts,
           replaced, "broker: no anonymous access, ACL", refused_at_connect=refused_at_connect)
    record("oversized", "a 2 MiB message to a device's manifest topic", 1, delivered,
           "broker: max_packet_size")
