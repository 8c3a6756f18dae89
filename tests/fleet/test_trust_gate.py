"""The intake gate: one check for every device message; what fails is counted by cause."""

from __future__ import annotations

import json
import logging

import pytest
from trusthelp import full_report, sign_raw

from core.protocol import ChunkRequest, Status
from core.signing import SigningKey
from fleet.gate import Gate, Limits, Rejection, checker
from fleet.registry import Registry

R = "paoding/v2/devices"
KEYS = {"dev-a": SigningKey.generate(), "dev-b": SigningKey.generate()}
A, B = KEYS["dev-a"], KEYS["dev-b"]
IN_FLIGHT = {("dev-a", "d1"), ("dev-b", "d2")}


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _gate(**kw) -> Gate:
    return Gate({d: k.public_key().public_pem().decode() for d, k in KEYS.items()},
                in_flight=lambda d, dep: (d, dep) in IN_FLIGHT, **kw)


def _status(device_id: str = "dev-a", **kw) -> Status:
    return Status(device_id=device_id, online=True, profile="raspberry-pi-4", **kw)


def _report(device_id: str = "dev-a", deployment_id: str = "d1", key=A) -> bytes:
    return sign_raw(full_report(device_id=device_id, deployment_id=deployment_id), key)


def _need(device_id: str = "dev-a", deployment_id: str = "d1", key=A) -> bytes:
    msg = ChunkRequest(device_id=device_id, deployment_id=deployment_id, artifact="0" * 64,
                       ranges=[(0, 1)], have=0)
    return key.sign_device(msg).to_json()


def _control_chars() -> bytes:
    data = json.loads(_status().to_json())
    data["profile"] = "pi\x1b[2J\nfake line"
    return sign_raw(data, A)


ADMITTED = [
    ("status", f"{R}/dev-a/status", lambda: A.sign_device(_status()).to_json()),
    ("report in flight", f"{R}/dev-a/report", lambda: _report()),
    ("need in flight", f"{R}/dev-a/need", lambda: _need()),
    ("report naming no deployment", f"{R}/dev-a/report",
     lambda: sign_raw({**full_report(device_id="dev-a"), "deployment_id": None}, A)),
]


@pytest.mark.parametrize("name, topic, payload", ADMITTED, ids=[c[0] for c in ADMITTED])
def test_admitted(name, topic, payload):
    gate = _gate()
    got = gate.admit(topic, payload())
    assert not isinstance(got, Rejection), got
    assert gate.admitted == 1 and not gate.rejected


REJECTED = [
    ("foreign topic", "paoding/v2/artifacts/x/0", lambda: b"{}", "foreign_topic"),
    ("device publishing a manifest kind", f"{R}/dev-a/manifest", lambda: b"{}",
     "foreign_topic"),
    ("bad id in topic", f"{R}/../status", lambda: b"{}", "foreign_topic"),
    ("oversized status", f"{R}/dev-a/status", lambda: b" " * (16 * 1024 + 1), "oversized"),
    ("oversized report", f"{R}/dev-a/report", lambda: b" " * (64 * 1024 + 1), "oversized"),
    ("garbage", f"{R}/dev-a/status", lambda: b"\xff{not json", "malformed"),
    ("control characters", f"{R}/dev-a/status", _control_chars, "malformed"),
    ("NaN latency", f"{R}/dev-a/report",
     lambda: sign_raw(_set(full_report(device_id="dev-a", deployment_id="d1"),
                           "benchmark", "latency_ms", "p90", float("nan")), A), "malformed"),
    ("another device named", f"{R}/dev-a/status",
     lambda: A.sign_device(_status("dev-b")).to_json(), "wrong_device"),
    ("not enrolled", f"{R}/ghost/status",
     lambda: SigningKey.generate().sign_device(_status("ghost")).to_json(), "not_enrolled"),
    ("unsigned", f"{R}/dev-a/status", lambda: _status().to_json(), "unsigned"),
    ("signed by another key", f"{R}/dev-a/status",
     lambda: B.sign_device(_status()).to_json(), "other_key"),
    ("tampered", f"{R}/dev-a/status",
     lambda: A.sign_device(_status()).to_json().replace(b"raspberry-pi-4", b"android-mid"),
     "bad_signature"),
    ("report for a made-up deployment", f"{R}/dev-a/report", lambda: _report("dev-a", "x9"),
     "not_in_flight"),
    ("report for another device's deployment", f"{R}/dev-a/report",
     lambda: _report("dev-a", "d2"), "not_in_flight"),
    ("need for another device's deployment", f"{R}/dev-a/need",
     lambda: _need("dev-a", "d2"), "not_in_flight"),
]


def _set(data, *path_value):
    *path, leaf, value = path_value
    node = data
    for p in path:
        node = node[p]
    node[leaf] = value
    return data


@pytest.mark.parametrize("name, topic, payload, cause", REJECTED, ids=[c[0] for c in REJECTED])
def test_rejected_with_one_log_line_and_counted(name, topic, payload, cause, caplog):
    gate = _gate()
    with caplog.at_level(logging.WARNING, logger="paoding.intake"):
        got = gate.admit(topic, payload())
    assert isinstance(got, Rejection) and got.cause == cause, got
    lines = [r.getMessage() for r in caplog.records if r.name == "paoding.intake"]
    assert len(lines) == 1 and "\n" not in lines[0] and lines[0].startswith("dropped ")
    assert not got and not gate.admit(topic, payload())
    assert gate.rejected == {cause: 2} and gate.admitted == 0


def test_rate_is_per_device_and_recovers_with_time():
    clock = Clock()
    gate = _gate(limits=Limits(messages_per_s=1.0, message_burst=3), clock=clock)
    status = A.sign_device(_status()).to_json()
    got = [gate.admit(f"{R}/dev-a/status", status) for _ in range(5)]
    assert [isinstance(g, Rejection) for g in got] == [False, False, False, True, True]
    assert got[-1].cause == "rate"
    # another device is not slowed by dev-a's flood
    assert not isinstance(gate.admit(f"{R}/dev-b/status", B.sign_device(
        _status("dev-b")).to_json()), Rejection)
    clock.t += 1.0
    assert not isinstance(gate.admit(f"{R}/dev-a/status", status), Rejection)
    assert gate.rejected == {"rate": 2}


def test_byte_rate_bounds_a_device_of_big_valid_messages():
    clock = Clock()
    gate = _gate(limits=Limits(bytes_per_s=1000, byte_burst=5000), clock=clock)
    report = _report()
    n = sum(not isinstance(gate.admit(f"{R}/dev-a/report", report), Rejection)
            for _ in range(50))
    assert n == 5000 // len(report) and gate.rejected["rate"] == 50 - n


def test_reenrolment_replaces_the_key_at_once():
    enrolled = {"dev-a": A.public_key().public_pem().decode()}
    gate = Gate(enrolled)
    assert gate.admit(f"{R}/dev-a/status", A.sign_device(_status()).to_json())
    new = SigningKey.generate()
    enrolled["dev-a"] = new.public_key().public_pem().decode()
    assert not gate.admit(f"{R}/dev-a/status", A.sign_device(_status()).to_json())
    assert gate.admit(f"{R}/dev-a/status", new.sign_device(_status()).to_json())


def test_without_enrolment_only_parse_and_device_are_checked():
    check = checker(None)
    assert check("status", "dev-a", _status().to_json()).device_id == "dev-a"
    with pytest.raises(ValueError, match="names device dev-b"):
        check("status", "dev-a", _status("dev-b").to_json())


def test_counts_are_saved_to_the_registry_and_shown_by_fleet(tmp_path, capsys):
    from hostcli.main import main

    db = tmp_path / "fleet.sqlite"
    gate = _gate()
    for _ in range(3):
        gate.admit(f"{R}/dev-a/report", _report("dev-a", "made-up"))
    gate.admit(f"{R}/dev-a/status", _status().to_json())
    with Registry(db) as reg:
        gate.save(reg)
        gate.save(reg)  # nothing new: nothing added
        gate.admit(f"{R}/dev-a/status", _status().to_json())
        gate.save(reg)
        rows = {r["cause"]: r["count"] for r in reg.rejections()}
    assert rows == {"not_in_flight": 3, "unsigned": 2}
    assert main(["fleet", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "refused device messages" in out and "not_in_flight" in out and "made-up" in out


def test_registry_in_flight_is_the_devices_open_deployment(tmp_path):
    from fleet.rollout import Device, Outcome

    with Registry(tmp_path / "f.sqlite") as reg:
        for d in ("dev-a", "dev-b"):
            reg.upsert_device(Device(d, "raspberry-pi-4"))
        reg.add_deployment("d1", "dev-a", "0" * 64, 10)
        reg.add_deployment("d2", "dev-b", "0" * 64, 10)
        reg.add_deployment("d3", "dev-a", "0" * 64, 10)
        reg.settle([("d3", Outcome.ACTIVE, "")])
        assert reg.in_flight("dev-a", "d1")
        assert not reg.in_flight("dev-a", "d2")  # another device's
        assert not reg.in_flight("dev-a", "nope")  # made up
        assert not reg.in_flight("dev-a", "d3")  # settled by its final report
        reg.settle([("d1", Outcome.TIMED_OUT, "")])
        # outside a running rollout a timed-out deployment is closed (a late answer within
        # one: tests/fleet/test_registry.py)
        assert not reg.in_flight("dev-a", "d1")


def test_a_flood_through_a_real_broker_stores_only_the_genuine_report(tmp_path):
    """An enrolled device floods validly signed reports for made-up and other devices'
    deployments through a real Mosquitto; the host stores only its in-flight one."""
    import threading
    import time

    from trustbroker import FleetBroker

    from core.mqtt import MqttClient
    from core.protocol import DEVICE_FILTER
    from fleet.rollout import Device

    b = FleetBroker(workdir=tmp_path / "broker")
    b.start()
    try:
        passwords = {d: b.enrol(d) for d in KEYS}
        b.reload()
        reg = Registry(tmp_path / "fleet.sqlite")
        for d, k in KEYS.items():
            reg.set_identity(d, "raspberry-pi-4", k.public_key().public_pem().decode(), d)
            reg.upsert_device(Device(d, "raspberry-pi-4"))
        reg.add_deployment("d1", "dev-a", "0" * 64, 10)
        reg.add_deployment("d2", "dev-b", "0" * 64, 10)
        clock = Clock()
        gate = Gate(reg.public_key, in_flight=reg.in_flight, clock=clock)
        done = threading.Event()
        lock = threading.Lock()

        def on_message(topic: str, payload: bytes) -> None:
            msg = gate.admit(topic, payload)
            if isinstance(msg, Rejection):
                return
            with lock:
                reg.add_report(msg.deployment_id, msg.device_id, msg.state,
                               msg.model_dump(mode="json"), msg.report_id)
            if msg.reason == "genuine":
                done.set()

        host = MqttClient(b.host_broker(), "host-gate", clean_session=True)
        host.subscribe(DEVICE_FILTER, on_message)
        host.connect(timeout=10)
        dev = MqttClient(b.device_broker("dev-a", passwords["dev-a"]), "dev-a",
                         clean_session=True)
        dev.connect(timeout=10)
        topic = f"{R}/dev-a/report"
        for i in range(300):
            dev.publish(topic, _report("dev-a", f"made-up-{i}"), qos=1).wait(5)
        for _ in range(20):
            dev.publish(topic, _report("dev-a", "d2"), qos=1).wait(5)  # dev-b's deployment
        deadline = time.monotonic() + 20  # every flood message has been through the gate
        while gate.rejected.total() + gate.admitted < 320 and time.monotonic() < deadline:
            time.sleep(0.02)
        clock.t += 60  # a minute later: the rate budget is back
        genuine = sign_raw({**full_report(device_id="dev-a", deployment_id="d1"),
                            "reason": "genuine"}, A)
        dev.publish(topic, genuine, qos=1).wait(5)
        assert done.wait(20)
        dev.close()
        host.close()
        assert [r["deployment_id"] for r in reg.reports("d1")] == ["d1"]
        assert reg.reports("d2") == [] and reg.reports("made-up-0") == []
        assert gate.admitted == 1 and gate.rejected.total() == 320
        assert set(gate.rejected) <= {"not_in_flight", "rate"}
        gate.save(reg)
        assert sum(r["count"] for r in reg.rejections()) == 320
        reg.close()
    finally:
        b.kill()
