"""The wire models: strict, versioned, size-limited; topics."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from core.protocol import (
    MAX_ARTIFACT_BYTES,
    PROTOCOL_VERSION,
    Artifact,
    ChunkRequest,
    Manifest,
    Report,
    Status,
    Topics,
)

SHA = "a" * 64


def manifest(**kw) -> Manifest:
    base = {"deployment_id": "d1", "device_id": "pi-1",
            "model": {"sha256": SHA, "size": 200_000, "chunk_size": 65536}}
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
    ({"model": {"sha256": SHA, "size": -5}}, "size"),
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
    ok = ChunkRequest(device_id="pi-1", deployment_id="d1", artifact="model",
                      ranges=[(0, 3), (5, 6)], have=3)
    assert ChunkRequest.from_json(ok.to_json()) == ok
    with pytest.raises(ValidationError, match="bad chunk range"):
        ChunkRequest(device_id="pi-1", deployment_id="d1", artifact="model",
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
    assert t.status == "paoding/v1/devices/pi-1/status"
    assert t.parse_chunk(t.chunk("d1", "model", 12)) == ("d1", "model", 12)
    for bad in (t.base + "/chunk/d1/model", t.base + "/chunk/d1/weights/1",
                t.base + "/chunk/d1/model/-1", t.base + "/chunk/d1/model/999999999"):
        with pytest.raises(ValueError):
            t.parse_chunk(bad)
    with pytest.raises(ValueError, match="invalid device id"):
        Topics("a/b")


def test_artifact_chunk_limit():
    with pytest.raises(ValidationError):
        Artifact(sha256=SHA, size=MAX_ARTIFACT_BYTES, chunk_size=1024 * 1024 * 2)
