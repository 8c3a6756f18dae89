"""Ed25519 and HMAC manifest signatures, key files."""

from __future__ import annotations

import json

import pytest

from core.errors import KeyFileError, MessageRejected, SignatureError
from core.protocol import Artifact, Cancel, Manifest, Report, Status
from core.signing import (
    SigningKey,
    TrustStore,
    VerifyKey,
    check_device_message,
    device_key,
    load_signing_key,
    load_verify_key,
    write_hmac_secret,
    write_key_pair,
)


def manifest() -> Manifest:
    return Manifest(deployment_id="d1", device_id="pi-1", model=Artifact.of(b"m" * 1000))


def test_ed25519_sign_and_verify(tmp_path):
    priv, pub = write_key_pair(tmp_path)
    assert oct(priv.stat().st_mode & 0o777) == "0o600"
    key = load_signing_key(priv)
    trust = TrustStore([load_verify_key(pub)])
    signed = key.sign(manifest())
    assert trust.verify(signed) == key.key_id


def test_tampered_manifest_fails():
    key = SigningKey.generate()
    signed = key.sign(manifest())
    tampered = signed.model_copy(update={"model": signed.model.model_copy(
        update={"size": 1001})})
    with pytest.raises(SignatureError, match="does not verify"):
        TrustStore([key.public_key()]).verify(tampered)


def test_unknown_key_and_unsigned():
    signed = SigningKey.generate().sign(manifest())
    trust = TrustStore([SigningKey.generate().public_key()])
    with pytest.raises(SignatureError, match="unknown key"):
        trust.verify(signed)
    with pytest.raises(SignatureError, match="not signed"):
        trust.verify(manifest())


def test_hmac(tmp_path):
    path = write_hmac_secret(tmp_path / "k.hmac")
    key = load_signing_key(path)
    signed = key.sign(manifest())
    assert TrustStore([load_verify_key(path)]).verify(signed) == key.key_id
    other = SigningKey.hmac(b"x" * 32)
    forged = signed.model_copy(update={"signature": other.sign_bytes(b"nope").model_copy(
        update={"key_id": key.key_id})})
    with pytest.raises(SignatureError, match="HMAC"):
        TrustStore([load_verify_key(path)]).verify(forged)


def test_bad_key_files(tmp_path):
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        load_verify_key(tmp_path / "junk.pem")
    with pytest.raises(KeyFileError, match="cannot read"):
        load_signing_key(tmp_path / "missing.key")
    write_key_pair(tmp_path)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        write_key_pair(tmp_path)


# --- device messages: what the host accepts --------------------------------------------

DEV = SigningKey.generate()
TOPIC = "paoding/v2/devices/pi-1/report"


def report(**kw) -> Report:
    return Report(device_id=kw.pop("device_id", "pi-1"), deployment_id="d1", state="active",
                  final=True, **kw)


def keys_for(mapping):
    return lambda device_id: mapping.get(device_id)


def test_signed_device_message_accepted():
    msg = check_device_message(TOPIC, DEV.sign_device(report()).to_json(),
                               keys_for({"pi-1": DEV.public_key()}))
    assert isinstance(msg, Report) and msg.state == "active"
    status = DEV.sign_device(Status(device_id="pi-1", online=True))
    assert check_device_message("paoding/v2/devices/pi-1/status", status.to_json(),
                                keys_for({"pi-1": DEV.public_key()})).online


@pytest.mark.parametrize("case, match", [
    ("unsigned", "is not signed"),
    ("other-key", "not its enrolled key"),
    ("not-enrolled", "not enrolled"),
    ("other-device", "names device pi-2"),
    ("altered", "does not verify"),
    ("nan", "finite"),
    ("negative", "greater than or equal to 0"),
    ("absurd", "less than 1000000"),
    ("accuracy", "less than or equal to 1"),
    ("control", "reason"),
    ("topic", "not a device message"),
    ("oversized", "exceed"),
])
def test_device_message_rejected_with_one_line_reason(case, match):
    enrolled = {"pi-1": DEV.public_key()}
    topic = TOPIC
    good = json.loads(DEV.sign_device(report()).to_json())
    lat = {"count": 5, "mean": 1, "std": 0, "min": 1, "max": 1, "p50": 1, "p90": 1, "p99": 1}
    bench = {"runtime": {"name": "x", "version": "1"}, "init_ms": 1, "first_inference_ms": 1,
             "warmup_runs": 1, "warmup_mean_ms": 1, "latency_ms": lat, "peak_memory_mb": 1,
             "rss_before_mb": 1, "measured_seconds": 1}
    if case == "unsigned":
        payload = report().to_json()
    elif case == "other-key":
        payload = SigningKey.generate().sign_device(report()).to_json()
    elif case == "not-enrolled":
        payload, enrolled = DEV.sign_device(report()).to_json(), {}
    elif case == "other-device":
        payload = DEV.sign_device(report(device_id="pi-2")).to_json()
    elif case == "altered":
        payload = json.dumps(dict(good, state="rolled_back")).encode()
    elif case == "nan":
        payload = json.dumps(dict(good, timestamp=float("nan"))).encode()
    elif case in ("negative", "absurd"):
        bad = {"p90": -1.0} if case == "negative" else {"p99": 5e6}
        payload = json.dumps(dict(good, benchmark=dict(bench, latency_ms=dict(lat, **bad))))
        payload = payload.encode()
    elif case == "accuracy":
        payload = json.dumps(dict(good, checks={"count": 1, "clean_accuracy": 7})).encode()
    elif case == "control":
        payload = json.dumps(dict(good, reason="ok\x1b[2J")).encode()
    elif case == "topic":
        payload, topic = report().to_json(), "paoding/v2/devices/pi-1/manifest"
    else:
        payload = b" " * (2 * 1024 * 1024)
    with pytest.raises(MessageRejected, match=match) as err:
        check_device_message(topic, payload, keys_for(enrolled))
    assert "\n" not in str(err.value)


def test_device_key_is_made_once_with_mode_0600(tmp_path):
    key = device_key(tmp_path / "device.key")
    assert oct((tmp_path / "device.key").stat().st_mode & 0o777) == "0o600"
    assert device_key(tmp_path / "device.key").key_id == key.key_id
    pem = key.public_key().public_pem()
    assert VerifyKey.from_pem(pem).key_id == key.key_id
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        VerifyKey.from_pem(b"junk")


def test_cancel_is_signed_by_the_host():
    host = SigningKey.generate()
    c = host.sign(Cancel(deployment_id="d1", device_id="pi-1"))
    assert TrustStore([host.public_key()]).verify(c) == host.key_id
    with pytest.raises(SignatureError, match="cancel is not signed"):
        TrustStore([host.public_key()]).verify(Cancel(deployment_id="d1", device_id="pi-1"))
