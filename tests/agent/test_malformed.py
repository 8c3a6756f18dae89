"""Hostile input from the network: an error report or a logged drop, never a crash."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time

import pytest

from core.mqtt import Broker, MqttClient
from core.protocol import ARTIFACT_ROOT, Report, Topics, artifact_topic
from fleet.publisher import deploy

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]
DEVICE = "pi-kitchen-01"
T = Topics(DEVICE)
SHA = "c" * 64


def good() -> dict:
    return {"protocol": 2, "type": "manifest", "deployment_id": "m1", "device_id": DEVICE,
            "model": {"sha256": SHA, "size": 1000, "chunk_sha256": [SHA]}}


def with_(**kw) -> bytes:
    d = good()
    d.update(kw)
    return json.dumps(d).encode()


BAD_MANIFESTS = [
    (b"{not json", "Invalid JSON"),
    (b"", "Invalid JSON"),
    (b"\xff\xfe\x00garbage", "Invalid JSON"),
    (b"[1, 2, 3]", "manifest"),
    (with_(extra_field=1), "extra_field: Extra inputs are not permitted"),
    (with_(deployment_id=12), "deployment_id"),
    (with_(model={"sha256": SHA, "size": -1, "chunk_sha256": []}), "model.size"),
    (with_(model={"sha256": SHA, "size": 10**15, "chunk_sha256": []}), "model.size"),
    (with_(model={"sha256": SHA, "size": 10, "chunk_size": 10**9, "chunk_sha256": [SHA]}),
     "model.chunk_size"),
    (with_(model={"sha256": "../../etc/passwd", "size": 10, "chunk_sha256": [SHA]}),
     "model.sha256"),
    (with_(model={"sha256": SHA, "size": 5000, "chunk_size": 1024, "chunk_sha256": [SHA]}),
     "chunk_sha256 has 1 digests for 5 chunks"),
    (with_(deployment_id="../../x"), "deployment_id"),
    (with_(protocol=1), "protocol version 1"),
    (with_(expires_at=float("nan")), "expires_at"),
    (with_(thresholds={"min_agreement": "high"}), "thresholds.min_agreement"),
    (with_(benchmark={"runs": 10**9}), "benchmark.runs"),
    (b"{" + b'"a":' * 5000 + b"1" + b"}" * 5000, "manifest"),
    (b" " * (2 * 1024 * 1024), "exceeds"),
]


def errors_from(got, n, timeout=10.0) -> list[Report]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reps = [Report.from_json(p) for _t, p in got]
        if len(reps) >= n:
            return reps
        time.sleep(0.05)
    return [Report.from_json(p) for _t, p in got]


def test_malformed_manifests_give_error_reports(broker, inproc_agent, collector, keys,
                                                small_model):
    agent = inproc_agent(broker, trust=keys["trust"])
    _c, got = collector(broker, T.report)
    pub = MqttClient(Broker(port=broker.port), "attacker", clean_session=True)
    pub.connect()
    try:
        for payload, _ in BAD_MANIFESTS:
            pub.publish(T.manifest, payload).wait(5)
        reps = errors_from(got, len(BAD_MANIFESTS))
        assert len(reps) == len(BAD_MANIFESTS)
        for rep, (_payload, needle) in zip(reps, BAD_MANIFESTS, strict=True):
            assert rep.state == "error" and "malformed manifest" in rep.reason
            assert needle in rep.reason, (needle, rep.reason)
        # chunks nobody asked for, with bad topics, indexes and sizes: dropped
        for topic, payload in [(artifact_topic(SHA, 0), b"x" * 10),
                               (ARTIFACT_ROOT + "/a/b", b"x"),
                               (artifact_topic(SHA, 99999999), b"x"),
                               (artifact_topic(SHA, 0), b"x" * (3 * 1024 * 1024))]:
            pub.publish(topic, payload).wait(5)
        # a manifest for another device
        pub.publish(T.manifest, with_(device_id="pi-other")).wait(5)
        reps = errors_from(got, len(BAD_MANIFESTS) + 1)
        assert "is for device pi-other" in reps[-1].reason
    finally:
        pub.close()
    # still alive and working
    assert agent._worker.is_alive()
    rep = deploy(small_model, DEVICE, broker.url, key=keys["private"], timeout=60,
                 deployment_id="real-1")
    assert rep.ok
    # a replayed deployment id is refused
    rep = deploy(small_model, DEVICE, broker.url, key=keys["private"], timeout=60,
                 deployment_id="real-1")
    assert rep.state == "error" and "replay" in rep.reason


def test_poisoned_and_bad_chunks_during_a_transfer_are_dropped(broker, inproc_agent, keys,
                                                              medium_model, caplog):
    """Right-length garbage for every chunk (retained, so it replaces the host's copies),
    wrong sizes, an out-of-range and an Arabic-Indic index, injected mid-transfer: each is
    dropped on arrival, the missing chunks are asked for again and the deployment succeeds."""
    inproc_agent(broker, trust=keys["trust"], stall_seconds=1.0)
    pub = MqttClient(Broker(port=broker.port), "injector", clean_session=True)
    pub.connect()
    sha = hashlib.sha256(medium_model).hexdigest()
    chunk = 16384
    n = -(-len(medium_model) // chunk)
    injected = []

    def progress(event, info):
        if event == "chunk" and info["sent"] == 5 and not injected:
            for i in range(n):
                size = min(chunk, len(medium_model) - i * chunk)
                pub.publish(artifact_topic(sha, i), os.urandom(size), retain=True).wait(5)
            for topic, payload in [(artifact_topic(sha, 7), b"\0" * 5),
                                   (artifact_topic(sha, 10**6), b"\0" * chunk),
                                   (f"{ARTIFACT_ROOT}/{sha}/\u0661", medium_model[chunk:2 * chunk])]:
                pub.publish(topic, payload, retain=True).wait(5)  # also seen on subscribing
            injected.append(True)

    caplog.set_level(logging.WARNING, logger="agent.service")
    try:
        rep = deploy(medium_model, DEVICE, broker.url, key=keys["private"], chunk_size=chunk,
                     progress=progress, timeout=60, deployment_id="inject-1")
    finally:
        pub.close()
    assert injected and rep.ok, rep.reason
    poisoned = caplog.text.count("does not match its sha256")
    print(f"poisoned chunks dropped: {poisoned}; chunks published {rep.chunks_sent} for {n}")
    assert poisoned >= 1
    assert "ASCII digits only" in caplog.text
