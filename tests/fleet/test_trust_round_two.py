"""The second trust campaign: each finding replayed and shown refused or bounded, with its figure.

Findings (the trust review, round two): 1 a device in the host's $share group,
2 validly signed reports for made-up or other devices' deployments, 3 hostile
enrolment ids, 6 a model or probe bundle over the device's memory, 7 a
release far ahead wedging a device, 8 profile ids that are paths. Each runs a
genuine control that must get through. The counts (messages stored, bytes,
peak RSS) go to PAODING_TRUST_REPORT/trust_round_two.json when that variable
names a directory (`python -m bench.trust_bench` does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from trustbroker import FleetBroker
from trusthelp import full_report, sign_raw

from core.errors import ProfileError
from core.mqtt import MqttClient
from core.protocol import DEVICE_FILTER
from core.signing import SigningKey
from fleet.gate import Gate, Limits, Rejection
from fleet.registry import Registry
from fleet.rollout import Device

pytestmark = pytest.mark.broker

R = "paoding/v2/devices"
FINDINGS: dict[str, dict] = {}


def record(key: str, finding: str, attempts: int, believed: int, refused_by: str,
           without: str = "", **figures: object) -> None:
    FINDINGS[key] = {"finding": finding, "attempts": attempts, "believed": believed,
                     "refused_by": refused_by, "without_defence": without, **figures}


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    out = os.environ.get("PAODING_TRUST_REPORT")
    if out and FINDINGS:
        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        rows = [dict(key=k, **v) for k, v in sorted(FINDINGS.items())]
        (d / "trust_round_two.json").write_text(json.dumps({"findings": rows}, indent=1,
                                                           sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def fleet_broker(tmp_path_factory):
    b = FleetBroker(workdir=tmp_path_factory.mktemp("round-two"))
    b.start()
    b.passwords = {d: b.enrol(d) for d in ("dev-a", "dev-b")}
    b.reload()
    yield b
    b.kill()


def _wait(cond, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return cond()


def _share_steal(b: FleetBroker, group: str) -> tuple[int, int]:
    """(messages the host got, messages the device got) of 40 from dev-b, dev-a in $share/hosts."""
    intake = f"{R}/+/+"
    host_got: list[str] = []
    thief_got: list[str] = []
    host = MqttClient(b.host_broker(), f"host-{group[:12]}", clean_session=True)
    host.subscribe(f"$share/{group}/{intake}", lambda t, _p: host_got.append(t))
    host.connect(timeout=10)
    thief = MqttClient(b.device_broker("dev-a", b.passwords["dev-a"]), "dev-a",
                       clean_session=True)
    thief.subscribe(f"$share/hosts/{intake}", lambda t, _p: thief_got.append(t))
    thief.connect(timeout=10)
    other = MqttClient(b.device_broker("dev-b", b.passwords["dev-b"]), "dev-b",
                       clean_session=True)
    other.connect(timeout=10)
    try:
        for i in range(40):
            other.publish(f"{R}/dev-b/report", b"r%d" % i, qos=1).wait(5)
        # a later positive event: dev-b's status reaches the host's plain subscription
        with_done: list[str] = []
        probe = MqttClient(b.host_broker(), f"probe-{group[:8]}", clean_session=True)
        probe.subscribe(f"{R}/dev-b/status", lambda t, _p: with_done.append(t))
        probe.connect(timeout=10)
        other.publish(f"{R}/dev-b/status", b"done", qos=1).wait(5)
        assert _wait(lambda: with_done)
        _wait(lambda: len(host_got) + len(thief_got) >= 41, 2.0)
        probe.close()
        return sum(t.endswith("/report") for t in host_got), len(thief_got)
    finally:
        for c in (host, thief, other):
            c.close()


def test_finding_1_a_device_cannot_take_the_hosts_shared_intake(fleet_broker):
    b = fleet_broker
    guessable = _share_steal(b, "hosts")  # the group name the review's deployment used
    secret = _share_steal(b, b.files.share_group)
    assert secret == (40, 0)  # the host gets everything, the device nothing
    assert guessable[1] == 0  # the ACL: the device never reads another device's messages
    record("share_group", "an enrolled device subscribing to the host's shared intake "
           "($share/hosts/...)", 40, 40 - secret[0],
           "secret share group (broker-config) + ACL at delivery",
           f"guessable group name: the host got {guessable[0]} of 40",
           host_got_secret=secret[0], host_got_guessable=guessable[0], device_got=secret[1])


def test_finding_2_signed_reports_for_deployments_not_its_own_are_not_stored(
        fleet_broker, tmp_path):
    b = fleet_broker
    keys = {d: SigningKey.generate() for d in ("dev-a", "dev-b")}
    results = {}
    unlimited = Limits(messages_per_s=1e9, message_burst=10**9, bytes_per_s=1e12,
                       byte_burst=10**12)
    for defended in ("gate", "in_flight_only", False):
        db = tmp_path / f"fleet-{defended}.sqlite"
        reg = Registry(db)
        for d, k in keys.items():
            reg.set_identity(d, "raspberry-pi-4", k.public_key().public_pem().decode(), d)
            reg.upsert_device(Device(d, "raspberry-pi-4"))
        reg.add_deployment("d1", "dev-a", "0" * 64, 10)
        reg.add_deployment("d2", "dev-b", "0" * 64, 10)
        size0 = db.stat().st_size
        if defended == "gate":
            gate = Gate(reg.public_key, in_flight=reg.in_flight)
        elif defended == "in_flight_only":  # the deployment check alone, no rate limit
            gate = Gate(reg.public_key, in_flight=reg.in_flight, limits=unlimited)
        else:  # the old intake: signature and ranges only, no deployment check, no limits
            gate = Gate(reg.public_key, limits=unlimited)
        lock = threading.Lock()
        seen = [0]

        def on_message(topic: str, payload: bytes, gate=gate, reg=reg, seen=seen,
                       lock=lock) -> None:
            msg = gate.admit(topic, payload)
            with lock:
                if not isinstance(msg, Rejection) and msg.deployment_id is not None:
                    reg.add_report(msg.deployment_id, msg.device_id, msg.state,
                                   msg.model_dump(mode="json"), msg.report_id)
                seen[0] += 1

        host = MqttClient(b.host_broker(), f"host-f2-{defended}", clean_session=True)
        host.subscribe(DEVICE_FILTER, on_message)
        host.connect(timeout=10)
        dev = MqttClient(b.device_broker("dev-a", b.passwords["dev-a"]), "dev-a",
                         clean_session=True)
        dev.connect(timeout=10)
        sent = 0
        for i in range(2000):
            dep = "d2" if i % 10 == 0 else f"made-up-{i}"  # 200 for dev-b's deployment
            dev.publish(f"{R}/dev-a/report", sign_raw(full_report(
                device_id="dev-a", deployment_id=dep), keys["dev-a"]), qos=1).wait(5)
            sent += 1
        assert _wait(lambda seen=seen, sent=sent: seen[0] >= sent, 60)
        dev.close()
        host.close()
        stored = reg.db.query("SELECT COUNT(*) AS n FROM reports")[0]["n"]
        body = reg.db.query("SELECT COALESCE(SUM(LENGTH(body)), 0) AS n FROM reports")[0]["n"]
        gate.save(reg)
        results[defended] = {"stored": stored, "bytes": body, "rejected": dict(gate.rejected),
                             "file_growth": db.stat().st_size - size0}
        reg.close()
    assert results["gate"]["stored"] == results["in_flight_only"]["stored"] == 0
    assert results[False]["stored"] == 2000
    record("foreign_deployments", "2,000 validly signed reports from an enrolled device: "
           "1,800 for made-up deployment ids, 200 for another device's deployment", 2000,
           results["gate"]["stored"], "gate: deployment in flight + per-device rate",
           f"{results[False]['stored']} stored, {results[False]['bytes']:,} bytes of report "
           f"bodies (+{results[False]['file_growth']:,} bytes of registry)",
           stored_bytes=results["gate"]["bytes"], rejected=results["gate"]["rejected"],
           stored_in_flight_check_alone=results["in_flight_only"]["stored"],
           rejected_in_flight_check_alone=results["in_flight_only"]["rejected"])


HOSTILE_IDS = ["pi-1\n", "../x", "a/b", "+", "#", "", "a" * 300, "pï-1"]


def test_finding_3_hostile_enrolment_ids_are_one_line_errors(tmp_path, capsys):
    from fleet.brokerconf import write_broker_config
    from hostcli.main import main

    bdir = tmp_path / "broker"
    write_broker_config(bdir)
    before = (bdir / "devices.passwd").read_bytes(), (bdir / "acl").read_bytes()
    one_line = 0
    for bad in HOSTILE_IDS:
        code = main(["enrol", "--profile", "raspberry-pi-4", "--db", str(tmp_path / "f.sqlite"),
                     "--broker-dir", str(bdir), "--bundle", str(tmp_path / "b"), "--", bad])
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        one_line += code == 2 and len(err) == 1 and "invalid device id" in err[0]
    unchanged = before == ((bdir / "devices.passwd").read_bytes(), (bdir / "acl").read_bytes())
    assert one_line == len(HOSTILE_IDS) and unchanged
    # the control: a good id is enrolled after them
    assert main(["enrol", "--profile", "raspberry-pi-4", "--db", str(tmp_path / "f.sqlite"),
                 "--broker-dir", str(bdir), "--bundle", str(tmp_path / "b"), "pi-1"]) == 0
    record("enrol_ids", "hostile enrolment ids (trailing newline, ../x, a/b, +, #, empty, "
           "300 characters, non-ASCII)", len(HOSTILE_IDS), len(HOSTILE_IDS) - one_line,
           "one id pattern, re.fullmatch; atomic password file",
           "review: 'pi-1\\n' accepted, password file broken for every later enrol",
           password_file_changed=int(not unchanged))


def _isolated(model: Path, bench, probes: Path | None,
              limit: float | None) -> tuple[str | None, float]:
    """(failure, the benchmark child's peak RSS in MB): run_isolated from a fresh process."""
    code = ("import json, resource, sys\n"
            "from agent.isolate import run_isolated\n"
            "from core.protocol import BenchmarkSettings\n"
            "out = run_isolated(*sys.argv[1:2], BenchmarkSettings.model_validate_json("
            "sys.argv[2]), probes=sys.argv[3] or None, memory_limit_mb=json.loads(sys.argv[4]))\n"
            "print(json.dumps([out.failure, "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(model), bench.model_dump_json(),
                           str(probes or ""), json.dumps(limit)], capture_output=True,
                          text=True, timeout=600)
    failure, peak = json.loads(proc.stdout.strip().splitlines()[-1])
    return failure, round(peak, 1)


def test_finding_6_models_and_probe_bundles_over_the_memory_limit(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
    from test_memory_limit import zip_bomb
    from tflitehelp import dense_tflite

    from core.protocol import BenchmarkSettings

    limit = 256.0
    bench = BenchmarkSettings(runs=3, warmup_runs=1)
    huge = tmp_path / "huge.tflite"
    code = ("import keras, tensorflow as tf, sys\n"
            "x = keras.Input((2**29,), batch_size=1)\n"
            "y = keras.layers.Lambda(lambda t: tf.reduce_sum(t, axis=1, keepdims=True))(x)\n"
            f"open({str(huge)!r}, 'wb').write(tf.lite.TFLiteConverter.from_keras_model("
            "keras.Model(x, y)).convert())\n")
    subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=300)
    small = tmp_path / "small.tflite"
    small.write_bytes(dense_tflite((32,), seed=2)[0])
    bomb = tmp_path / "bomb.npz"
    bomb.write_bytes(zip_bomb(512))
    control, _ = _isolated(small, bench, None, limit)
    assert control is None  # a genuine model runs under the limit
    model_out, model_peak = _isolated(huge, bench, None, limit)
    bomb_out, bomb_peak = _isolated(small, bench, bomb, limit)
    assert model_out and "over the memory limit" in model_out
    assert bomb_out and "over the memory limit" in bomb_out
    # without the limit the bomb expands in the child (the model is not run unbounded: it
    # would take 2 GiB of a shared machine)
    _, unbounded = _isolated(small, bench, bomb, None)
    record("memory", f"a {huge.stat().st_size:,}-byte signed model declaring a 2 GiB input; "
           "a 512 MB zip-bomb npz probe bundle "
           f"({bomb.stat().st_size:,} bytes)", 2,
           int(model_out is None) + int(bomb_out is None),
           f"memory limit {limit:g} MB: declared tensors, uncompressed size, RLIMIT_AS",
           f"the bomb expands: {unbounded:,.0f} MB peak RSS",
           peak_rss_mb_model=model_peak, peak_rss_mb_bomb=bomb_peak,
           peak_rss_mb_bomb_unbounded=unbounded, model_reason=model_out, bomb_reason=bomb_out.replace(str(bomb), bomb.name))


def test_finding_7_a_release_far_ahead_is_bounded_and_a_reset_frees_a_device(tmp_path):
    from agent.states import Accept, Context, Transfer
    from agent.storage import Storage
    from core.protocol import Artifact, Manifest
    from core.signing import TrustStore

    key = SigningKey.generate()
    now = time.time()
    reports: list = []
    ctx = Context(storage=Storage(tmp_path / "state"), device_id="pi-1", emit=reports.append,
                  trust=TrustStore([key.public_key()]), clock=lambda: now)

    def offer(dep: str, release: int, **flags) -> bool:
        m = key.sign(Manifest(deployment_id=dep, device_id="pi-1", release=release,
                              created_at=now, model=Artifact.of(b"m" * 64, 1024), **flags))
        return isinstance(Accept(m.to_json()).run(ctx), Transfer)

    ms = int(now * 1000)
    assert offer("d1", ms)
    typo_taken = offer("typo", 2**62)
    genuine_after = offer("d2", ms + 1)
    wedge = offer("jump", 2**62, release_jump=True)  # the operator's explicit step
    wedged = not offer("d3", ms + 2)
    freed = offer("reset", ms + 3, release_reset=True) and offer("d4", ms + 4)
    assert not typo_taken and genuine_after and wedge and wedged and freed
    record("release", "a signed manifest with release 2^62", 1, int(typo_taken),
           "agent: at most 30 days ahead without a signed release_jump",
           "review: accepted, every later release refused as a downgrade",
           genuine_after=int(genuine_after), wedged_by_explicit_jump=int(wedged),
           freed_by_signed_reset=int(freed))


def test_finding_8_profile_ids_are_not_paths(tmp_path, monkeypatch):
    import device_profiles

    (tmp_path / "x.yaml").write_text("id: x\n")
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    monkeypatch.setenv("PAODING_PROFILES", str(profiles))
    names = ["../x", "../../x", "a/b", str(tmp_path / "x")]
    resolved = 0
    for name in names:
        try:
            resolved += device_profiles.locate(name) is not None
        except ProfileError:
            pass
    assert resolved == 0 and device_profiles.locate("raspberry-pi-4") is not None
    record("profile_paths", "profile ids that are paths (../x, a/b, absolute)", len(names),
           resolved, "device_profiles: id pattern, re.fullmatch",
           "review: '../' resolved to any .yaml on disk")
