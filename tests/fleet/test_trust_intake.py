"""The host's intake: only messages signed by the device's enrolled key, in range, are accepted."""

from __future__ import annotations

import json
import logging

import pytest
from trusthelp import full_report, sign_raw

from core.protocol import Status
from core.signing import SigningKey
from fleet.intake import Intake, cause_of

R = "paoding/v2/devices"


@pytest.fixture
def keys():
    return {"dev-a": SigningKey.generate(), "dev-b": SigningKey.generate()}


@pytest.fixture
def intake(keys):
    return Intake({d: k.public_key().public_pem().decode() for d, k in keys.items()})


def _status(device_id: str = "dev-a", **kw) -> Status:
    return Status(device_id=device_id, online=True, profile="raspberry-pi-4", **kw)


def test_signed_status_from_its_own_key_is_accepted(intake, keys):
    msg = keys["dev-a"].sign_device(_status())
    got = intake.accept(f"{R}/dev-a/status", msg.to_json())
    assert got == msg and intake.accepted == 1 and intake.dropped_total == 0


@pytest.mark.parametrize("case, cause", [
    ("unsigned", "unsigned"),
    ("other_key", "other_key"),
    ("not_enrolled", "not_enrolled"),
    ("wrong_device", "wrong_device"),
    ("tampered", "bad_signature"),
    ("garbage", "malformed"),
    ("control_chars", "malformed"),
])
def test_everything_else_is_dropped_with_one_log_line(intake, keys, caplog, case, cause):
    a, b = keys["dev-a"], keys["dev-b"]
    topic = f"{R}/dev-a/status"
    if case == "unsigned":
        payload = _status().to_json()
    elif case == "other_key":
        payload = b.sign_device(_status()).to_json()
    elif case == "not_enrolled":
        topic, payload = f"{R}/ghost/status", SigningKey.generate().sign_device(
            _status("ghost")).to_json()
    elif case == "wrong_device":
        payload = a.sign_device(_status("dev-b")).to_json()
    elif case == "tampered":
        payload = a.sign_device(_status()).to_json().replace(b"raspberry-pi-4", b"android-mid")
    elif case == "garbage":
        payload = b"\xff{not json"
    else:
        data = json.loads(_status().to_json())
        data["profile"] = "pi\x1b[2J\nfake line"
        payload = sign_raw(data, a)
    with caplog.at_level(logging.WARNING, logger="paoding.intake"):
        assert intake.accept(topic, payload) is None
    lines = [r.getMessage() for r in caplog.records if r.name == "paoding.intake"]
    assert len(lines) == 1 and "\n" not in lines[0] and lines[0].startswith("dropped ")
    assert intake.dropped == {cause: 1}, lines[0]


@pytest.mark.parametrize("field, value", [
    ("p90", float("nan")), ("p90", float("inf")), ("p90", -1.0), ("p90", 5e6),
    ("peak_memory_mb", -3.0), ("agreement", 1.5), ("clean_accuracy", float("nan")),
    ("count", -1),
])
def test_out_of_range_figures_are_dropped_even_when_signed(intake, keys, field, value):
    data = full_report(device_id="dev-a")  # every field, as the device's model signs it
    lat, bench, checks = (data["benchmark"]["latency_ms"], data["benchmark"], data["checks"])
    target = {"p90": lat, "count": lat, "peak_memory_mb": bench,
              "agreement": checks, "clean_accuracy": checks}[field]
    ok = sign_raw(data, keys["dev-a"])
    assert intake.accept(f"{R}/dev-a/report", ok) is not None  # the control is accepted
    target[field] = value
    assert intake.accept(f"{R}/dev-a/report", sign_raw(data, keys["dev-a"])) is None
    assert intake.dropped == {"malformed": 1}


def test_reenrolment_replaces_the_key_at_once(keys):
    enrolled = {"dev-a": keys["dev-a"].public_key().public_pem().decode()}
    intake = Intake(enrolled)
    assert intake.accept(f"{R}/dev-a/status", keys["dev-a"].sign_device(_status()).to_json())
    new = SigningKey.generate()
    enrolled["dev-a"] = new.public_key().public_pem().decode()
    assert intake.accept(f"{R}/dev-a/status",
                         keys["dev-a"].sign_device(_status()).to_json()) is None
    assert intake.accept(f"{R}/dev-a/status", new.sign_device(_status()).to_json())


def test_cause_names():
    assert cause_of("report from x: device not enrolled (no public key)") == "not_enrolled"
    assert cause_of("something new") == "other"
