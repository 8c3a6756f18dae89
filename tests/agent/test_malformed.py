"""Hostile input from the network: an error report or a logged drop, never a crash."""

from __future__ import annotations

import json
import time

import pytest

from core.mqtt import Broker, MqttClient
from core.protocol import Report, Topics
from fleet.publisher import deploy

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]
DEVICE = "pi-kitchen-01"
T = Topics(DEVICE)
SHA = "c" * 64


def good() -> dict:
    return {"protocol": 1, "type": "manifest", "deployment_id": "m1", "device_id": DEVICE,
            "model": {"sha256": SHA, "size": 1000}}


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
    (with_(model={"sha256": SHA, "size": -1}), "model.size"),
    (with_(model={"sha256": SHA, "size": 10**15}), "model.size"),
    (with_(model={"sha256": SHA, "size": 10, "chunk_size": 10**9}), "model.chunk_size"),
    (with_(model={"sha256": "../../etc/passwd", "size": 10}), "model.sha256"),
    (with_(deployment_id="../../x"), "deployment_id"),
    (with_(protocol=2), "protocol version 2"),
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
        for topic, payload in [(T.chunk("zz", "model", 0), b"x" * 10),
                               (T.base + "/chunk/a/b/c", b"x"),
                               (T.base + "/chunk/m1/model/99999999", b"x"),
                               (T.chunk("m1", "model", 0), b"x" * (3 * 1024 * 1024))]:
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


def test_bad_chunks_during_a_transfer_are_dropped(broker, inproc_agent, keys, medium_model):
    """Wrong-size and out-of-range chunks injected mid-transfer do not corrupt the model."""
    inproc_agent(broker, trust=keys["trust"], stall_seconds=1.0)
    pub = MqttClient(Broker(port=broker.port), "injector", clean_session=True)
    pub.connect()
    injected = []

    def progress(event, info):
        if event == "chunk" and info["sent"] == 5 and not injected:
            dep = progress.dep
            for topic, payload in [(T.chunk(dep, "model", 7), b"\0" * 5),
                                   (T.chunk(dep, "model", 10**6), b"\0" * 16384),
                                   (T.chunk(dep, "probes", 0), b"\0" * 16384)]:
                pub.publish(topic, payload).wait(5)
            injected.append(True)

    progress.dep = "inject-1"
    try:
        rep = deploy(medium_model, DEVICE, broker.url, key=keys["private"], chunk_size=16384,
                     progress=progress, timeout=60, deployment_id="inject-1")
    finally:
        pub.close()
    assert injected and rep.ok, rep.reason
