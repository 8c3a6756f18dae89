"""The agent against hostile clients of a real Mosquitto: each finding, reproduced and refused.

Forged reports, downgrade and replay, busy-then-replay, stalled deployments,
cancel, unsigned manifests, oversized messages, a dead network loop and
forged chunk requests.
"""

from __future__ import annotations

import hashlib
import time

import pytest

from core.mqtt import Broker, MqttClient
from core.protocol import Artifact, Cancel, Manifest, Report, Topics
from core.signing import SigningKey
from fleet.publisher import deploy

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]
DEVICE = "pi-kitchen-01"
T = Topics(DEVICE)


@pytest.fixture
def attacker(broker):
    c = MqttClient(Broker(port=broker.port), f"attacker-{time.time_ns()}", clean_session=True)
    c.connect()
    yield c
    c.close()


def signed_manifest(keys, blob: bytes, dep: str, **kw) -> Manifest:
    m = Manifest(deployment_id=dep, device_id=DEVICE, model=Artifact.of(blob, 4096), **kw)
    return keys["key"].sign(m)


def reports_for(got, dep: str, n: int = 1, timeout: float = 10.0) -> list[Report]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reps = [Report.from_json(p) for _t, p in got if p]
        reps = [r for r in reps if r.deployment_id == dep]
        if len(reps) >= n:
            return reps
        time.sleep(0.05)
    return reps


def test_forged_report_for_a_missing_device_is_not_believed(broker, attacker, keys):
    """A keyless client answered a manifest for a device that does not exist with 'active'."""
    dev_key = SigningKey.generate()  # what the registry holds for DEVICE

    def forge(_topic, payload):
        m = Manifest.from_json(payload)
        forged = Report(device_id=DEVICE, deployment_id=m.deployment_id,
                        manifest_sha256=m.digest, state="active", final=True)
        attacker.publish(T.report, forged.to_json())
        other = SigningKey.generate().sign_device(forged)  # signed, by another key
        attacker.publish(T.report, other.to_json())

    attacker.subscribe(T.manifest, forge).result(5)
    rep = deploy(b"\0" * 5000, DEVICE, broker.url, key=keys["private"], timeout=30,
                 device_key=dev_key.public_key())
    # the unsigned one is dropped; the one signed by another key fails the deployment at
    # once, saying why, instead of an 'active' believed or a wait for the timeout
    assert rep.state == "failed" and not rep.ok and "enrolled key" in rep.reason
    assert rep.states == [] and rep.dropped == 2


def test_downgrade_replay_and_explicit_rollback(broker, inproc_agent, keys, tiny_model,
                                                small_model):
    agent = inproc_agent(broker, trust=keys["trust"])
    now_ms = int(time.time() * 1000)
    assert deploy(small_model, DEVICE, broker.url, key=keys["private"], release=now_ms,
                  timeout=60).ok
    # an older release (a correctly signed old manifest): refused as a downgrade
    rep = deploy(tiny_model, DEVICE, broker.url, key=keys["private"], release=now_ms - 1,
                 timeout=60)
    assert rep.state == "rejected" and "downgrade or replay refused" in rep.reason
    # the same release again: refused too
    rep = deploy(tiny_model, DEVICE, broker.url, key=keys["private"], release=now_ms,
                 timeout=60)
    assert rep.state == "rejected" and "downgrade" in rep.reason
    # the operator says it is a rollback (signed): accepted
    rep = deploy(tiny_model, DEVICE, broker.url, key=keys["private"], release=now_ms - 1,
                 rollback=True, timeout=60)
    assert rep.ok, rep.reason
    assert agent.storage.active()["sha256"] == hashlib.sha256(tiny_model).hexdigest()


def test_busy_then_replay_cancel_and_expiry(broker, inproc_agent, collector, keys, tiny_model):
    """A manifest refused as busy is burnt; cancel frees the device; a stall expires."""
    agent = inproc_agent(broker, trust=keys["trust"])
    _c, got = collector(broker, T.report)
    pub = MqttClient(Broker(port=broker.port), "host-raw", clean_session=True)
    pub.connect()
    try:
        # A: signed, but its chunks never come: the device is busy
        a = signed_manifest(keys, b"a" * 9000, "stall-a")
        pub.publish(T.manifest, a.to_json()).wait(5)
        deadline = time.monotonic() + 5
        while agent.storage.read_lock() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert agent.storage.read_lock()["stage"] == "transfer"
        b = signed_manifest(keys, tiny_model, "busy-b")
        pub.publish(T.manifest, b.to_json()).wait(5)
        assert "is in progress" in reports_for(got, "busy-b")[-1].reason
        # an unsigned cancel is ignored; a signed one ends A
        pub.publish(T.cancel, Cancel(deployment_id="stall-a", device_id=DEVICE).to_json())
        # the agent takes manifests and cancels in order: once it has answered a later
        # (unsigned, refused) manifest, it has dealt with the unsigned cancel
        pub.publish(T.manifest, Manifest(deployment_id="after-cancel", device_id=DEVICE,
                                         model=Artifact.of(tiny_model)).to_json())
        assert reports_for(got, "after-cancel")
        assert agent.storage.read_lock() is not None
        pub.publish(T.cancel, keys["key"].sign(
            Cancel(deployment_id="stall-a", device_id=DEVICE)).to_json()).wait(5)
        rep = reports_for(got, "stall-a")[-1]
        assert rep.state == "cancelled" and rep.final
        # B replayed now that the device is free: still refused
        pub.publish(T.manifest, b.to_json()).wait(5)
        reps = reports_for(got, "busy-b", 2)
        assert "replay refused" in reps[-1].reason
        # C expires 1.5 s after creation without its chunks: the device is free again
        c = signed_manifest(keys, b"c" * 9000, "stall-c", created_at=time.time(),
                            expires_at=time.time() + 1.5)
        pub.publish(T.manifest, c.to_json()).wait(5)
        rep = reports_for(got, "stall-c", timeout=15)[-1]
        assert rep.state == "expired" and rep.final and "0 of 3 chunks" in rep.reason
        deadline = time.monotonic() + 5  # the lock goes right after the final report
        while agent.storage.read_lock() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert agent.storage.read_lock() is None
    finally:
        pub.close()
    assert deploy(tiny_model, DEVICE, broker.url, key=keys["private"], timeout=60).ok


def test_unsigned_manifests_leave_nothing_behind(broker, inproc_agent, collector, attacker,
                                                 keys, tiny_model):
    """1,000 unsigned manifests once burned 1,000 ids and filled the history."""
    agent = inproc_agent(broker, trust=keys["trust"])
    _c, got = collector(broker, T.report)
    for i in range(200):
        m = Manifest(deployment_id=f"u{i}", device_id=DEVICE, model=Artifact.of(tiny_model, 4096))
        attacker.publish(T.manifest, m.to_json())
    reports_for(got, "u199")
    st = agent.storage
    assert st.history() == [] and not st.ledger_path.exists()
    assert st.read_lock() is None and st.spool_list() == []
    assert all(r.state == "rejected" and "not signed" in r.reason
               for r in (Report.from_json(p) for _t, p in got))
    # the id of an unsigned manifest is not burnt: the real one with that id goes through
    assert deploy(tiny_model, DEVICE, broker.url, key=keys["private"], deployment_id="u7",
                  timeout=60).ok


def test_oversized_message_never_reaches_the_agent(broker, inproc_agent, collector, keys,
                                                   tiny_model):
    """On MQTT 5 the broker drops what exceeds the agent's maximum packet size."""
    agent = inproc_agent(broker, trust=keys["trust"], protocol="5")
    assert agent.settings.broker.protocol == "5"
    _c, got = collector(broker, T.report)
    pub = MqttClient(Broker(port=broker.port), "big", clean_session=True)
    pub.connect()
    try:
        pub.publish(T.manifest, b"{" + b" " * (8 * 1024 * 1024) + b"}").wait(10)
        pub.publish(T.manifest, Manifest(deployment_id="after-big", device_id=DEVICE,
                                         model=Artifact.of(tiny_model)).to_json()).wait(10)
        assert reports_for(got, "after-big")  # the later (unsigned) manifest was answered...
    finally:
        pub.close()
    # ...and it is the only thing answered: the agent never buffered the big one
    assert [Report.from_json(p).deployment_id for _t, p in got] == ["after-big"]
    assert deploy(tiny_model, DEVICE, broker.url, key=keys["private"], timeout=60).ok


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_dead_network_loop_reconnects(broker, inproc_agent, keys, tiny_model):
    """A MemoryError in paho's reader once left the agent alive but deaf."""
    agent = inproc_agent(broker, trust=keys["trust"])
    paho_client = agent.client._client  # fault injection into the library's reader
    real = paho_client._packet_read

    def boom():
        paho_client._packet_read = real
        raise MemoryError("injected")

    paho_client._packet_read = boom
    # any incoming packet now kills the loop; a deployment afterwards must still work
    rep = deploy(tiny_model, DEVICE, broker.url, key=keys["private"], timeout=60)
    assert rep.ok, rep.reason
    assert agent.client.loop_failures == 1


def test_forged_need_messages_cost_little(broker, inproc_agent, attacker, keys, medium_model):
    """200 forged requests for every chunk once made the host republish 133 MB."""
    agent = inproc_agent(broker, trust=keys["trust"])
    sha = hashlib.sha256(medium_model).hexdigest()
    n = -(-len(medium_model) // 16384)
    from core.protocol import ChunkRequest

    def flood(event, info):
        if event == "manifest":
            req = ChunkRequest(device_id=DEVICE, deployment_id=info["deployment_id"],
                               artifact=sha, ranges=[(0, n)], have=0)
            for _ in range(200):
                attacker.publish(T.need, req.to_json())

    # without the device's key the host cannot tell: a chunk goes out at most once a second
    rep = deploy(medium_model, DEVICE, broker.url, key=keys["private"], chunk_size=16384,
                 progress=flood, timeout=60)
    assert rep.ok and rep.chunks_sent <= 3 * n, rep.chunks_sent
    unkeyed = rep.chunks_sent
    # with the device's enrolled key the forged requests are dropped
    rep = deploy(medium_model, DEVICE, broker.url, key=keys["private"], chunk_size=16384,
                 progress=flood, timeout=60, device_key=agent.key.public_key())
    assert rep.ok and rep.dropped >= 200 and rep.chunks_sent <= n + 8, rep.chunks_sent
    print(f"forged needs: {n} chunks; published {unkeyed} without the device key, "
          f"{rep.chunks_sent} with it ({rep.dropped} dropped)")


def test_malformed_manifest_leaves_the_retained_final_report(broker, inproc_agent, collector,
                                                            attacker, keys, tiny_model):
    """One anonymous malformed manifest once replaced the retained final report."""
    inproc_agent(broker, trust=keys["trust"])
    rep = deploy(tiny_model, DEVICE, broker.url, key=keys["private"], timeout=60,
                 deployment_id="keep-me")
    assert rep.ok
    _c, live = collector(broker, T.report)
    attacker.publish(T.manifest, b"{not json").wait(5)
    attacker.publish(T.manifest, Manifest(deployment_id="x1", device_id=DEVICE,
                                          model=Artifact.of(tiny_model)).to_json()).wait(5)
    assert reports_for(live, "x1")  # both answered (in order), neither retained
    _c, got = collector(broker, T.report)  # a new subscriber: it gets the retained one
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    retained = Report.from_json(got[0][1])
    assert retained.deployment_id == "keep-me" and retained.state == "active"
