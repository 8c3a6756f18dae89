"""The wire models: strict, versioned, size-limited; topics."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from core.protocol import (
    DEFAULT_TTL_S,
    MAX_ARTIFACT_BYTES,
    PROTOCOL_VERSION,
    Artifact,
    Cancel,
    ChunkRequest,
    LatencyStats,
    Manifest,
    Report,
    Status,
    Topics,
    artifact_filter,
    artifact_topic,
    parse_artifact_topic,
    parse_device_topic,
)

SHA = "a" * 64


def manifest(**kw) -> Manifest:
    base = {"deployment_id": "d1", "device_id": "pi-1",
            "model": {"sha256": SHA, "size": 200_000, "chunk_size": 65536,
                      "chunk_sha256": [SHA] * 4}}
    base.update(kw)
    return Manifest.model_validate(base)


def test_manifest_round_trip_and_chunking():
    m = manifest()
    again = Manifest.from_json(m.to_json())
    assert again == m
    assert m.protocol == PROTOCOL_VERSION
    assert m.model.chunks == 4
    assert [m.model.chunk_length(i) for i in range(4)] == [65536, 65536, 65536, 3392]
    with pytest.raises(ValueError, match="outside"):
        m.model.chunk_length(4)


@pytest.mark.parametrize("patch, field", [
    ({"surprise": 1}, "surprise"),
    ({"model": {"sha256": SHA, "size": -5, "chunk_sha256": []}}, "size"),
    ({"model": {"sha256": SHA, "size": 2000, "chunk_size": 1024, "chunk_sha256": [SHA]}},
     "chunk_sha256 has 1 digests for 2 chunks"),
    ({"release": -1}, "release"),
    ({"expires_at": 1.0, "created_at": 5.0}, "expires_at"),
    ({"model": {"sha256": SHA, "size": MAX_ARTIFACT_BYTES + 1}}, "size"),
    ({"model": {"sha256": SHA, "size": 10, "chunk_size": 10}}, "chunk_size"),
    ({"model": {"sha256": "xyz", "size": 10}}, "sha256"),
    ({"deployment_id": "../etc"}, "deployment_id"),
    ({"device_id": 7}, "device_id"),
    ({"protocol": 99}, "protocol"),
    ({"thresholds": {"min_agreement": 2}}, "min_agreement"),
    ({"benchmark": {"runs": 0}}, "runs"),
])
def test_manifest_rejects_bad_fields(patch, field):
    data = json.loads(manifest().to_json())
    data.update(patch)
    with pytest.raises(ValidationError) as err:
        Manifest.from_json(json.dumps(data))
    assert field in str(err.value)


def test_oversized_message_is_refused():
    with pytest.raises(ValueError, match="exceeds"):
        Manifest.from_json(b"{" + b" " * (2 * 1024 * 1024) + b"}")


def test_signed_bytes_exclude_signature_and_are_canonical():
    m = manifest()
    signed = m.model_copy(update={"signature": {"alg": "ed25519", "key_id": "0" * 16,
                                                "value": "AA=="}})
    assert m.signed_bytes() == signed.signed_bytes()
    assert json.loads(m.signed_bytes())["deployment_id"] == "d1"


def test_chunk_request_ranges_validated():
    ok = ChunkRequest(device_id="pi-1", deployment_id="d1", artifact=SHA,
                      ranges=[(0, 3), (5, 6)], have=3)
    assert ChunkRequest.from_json(ok.to_json()) == ok
    with pytest.raises(ValidationError, match="bad chunk range"):
        ChunkRequest(device_id="pi-1", deployment_id="d1", artifact=SHA,
                     ranges=[(5, 2)], have=0)


def test_report_and_status_round_trip():
    r = Report(device_id="pi-1", deployment_id="d1", state="rolled_back", final=True,
               reason="p90 too slow")
    assert Report.from_json(r.to_json()) == r
    s = Status(device_id="pi-1", online=False)
    assert Status.from_json(s.to_json()).online is False
    with pytest.raises(ValidationError):
        Report.from_json(json.dumps({"device_id": "pi-1", "state": "exploded"}))


def test_topics():
    t = Topics("pi-1")
    assert t.status == "paoding/v2/devices/pi-1/status"
    assert t.cancel == "paoding/v2/devices/pi-1/cancel"
    assert parse_artifact_topic(artifact_topic(SHA, 12)) == (SHA, 12)
    assert artifact_filter(SHA) == f"paoding/v2/artifacts/{SHA}/+"
    root = f"paoding/v2/artifacts/{SHA}/"
    for bad in (root + "-1", root + "99999999", root + "\u0661", root + "\uff11", root + "1 ",
                root + "", f"paoding/v2/artifacts/{'A' * 64}/1", root + "1/2", "x/y"):
        with pytest.raises(ValueError):
            parse_artifact_topic(bad)
    with pytest.raises(ValueError, match="ASCII digits"):
        parse_artifact_topic(root + "\u0661")  # Arabic-Indic one: "1".isdigit() says yes
    with pytest.raises(ValueError, match="invalid device id"):
        Topics("a/b")
    assert parse_device_topic("paoding/v2/devices/pi-1/report") == ("pi-1", "report")
    for bad in ("paoding/v2/devices/pi-1", "paoding/v1/devices/pi-1/report",
                "paoding/v2/devices/../report"):
        with pytest.raises(ValueError):
            parse_device_topic(bad)


def test_artifact_of_and_chunk_digests():
    blob = bytes(range(256)) * 20
    art = Artifact.of(blob, 1024)
    assert art.chunks == 5 and len(art.chunk_sha256) == 5
    assert art.chunk_ok(4, blob[4096:]) and not art.chunk_ok(4, b"\0" * len(blob[4096:]))
    assert not art.chunk_ok(5, b"") and not art.chunk_ok(0, blob[:1023])


@pytest.mark.parametrize("text, field", [
    ('"timestamp": NaN', "timestamp"),
    ('"timestamp": Infinity', "timestamp"),
    ('"checks": {"count": 3, "agreement": 1.5}', "agreement"),
    ('"checks": {"count": -1}', "count"),
    ('"reason": "a\\u0000b"', "reason"),
    ('"reason": "line\\nbreak"', "reason"),
])
def test_device_numbers_finite_and_in_range(text, field):
    payload = '{"device_id": "pi-1", "state": "active", ' + text + "}"
    with pytest.raises(ValidationError) as err:
        Report.from_json(payload)
    assert field in str(err.value)


def test_latency_range():
    lat = {"count": 1, "mean": 1, "std": 0, "min": 1, "max": 1, "p50": 1, "p90": 1, "p99": 1}
    LatencyStats.model_validate(lat)
    for bad in ({"p90": -1}, {"mean": 1e6}):
        with pytest.raises(ValidationError):
            LatencyStats.model_validate(dict(lat, **bad))


def test_manifest_expiry_and_release_defaults():
    m = manifest()
    assert m.expires_at - m.created_at == DEFAULT_TTL_S and m.release > 1_700_000_000_000
    assert not m.rollback
    assert Manifest.from_json(m.to_json()) == m  # the defaults do not change on the wire


def test_cancel_round_trip():
    c = Cancel(deployment_id="d1", device_id="pi-1")
    assert Cancel.from_json(c.to_json()) == c and b"signature" not in c.signed_bytes()
def test_artifact_chunk_limit():
    with pytest.raises(ValidationError):
        Artifact(sha256=SHA, size=MAX_ARTIFACT_BYTES, chunk_size=1024 * 1024 * 2,
                 chunk_sha256=[])
    with pytest.raises(ValidationError, match="chunks exceed"):
        Artifact(sha256=SHA, size=MAX_ARTIFACT_BYTES, chunk_size=1024, chunk_sha256=[])
