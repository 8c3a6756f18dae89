"""Host publisher <-> agent over a real Mosquitto on a free loopback port."""

from __future__ import annotations

import hashlib
import time
from importlib.metadata import version

import pytest
from agenthelp import make_probes
from polling import until

from core.protocol import Status, Topics
from fleet.publisher import deploy
from pruner.export import run_tflite

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]
DEVICE = "pi-kitchen-01"


def test_deploy_real_model_reports_every_state(broker, inproc_agent, keys, deployed_model):
    model, what = deployed_model
    print(f"deployed model: {what}, {len(model)} bytes")
    agent = inproc_agent(broker, trust=keys["trust"], profile="raspberry-pi-4")
    rep = deploy(model, DEVICE, broker.url, probes=make_probes(model), key=keys["private"],
                 thresholds={"max_p90_ms": 25, "min_agreement": 0.98},
                 benchmark={"runs": 30}, timeout=60, host_outputs=run_tflite)
    assert rep.ok and rep.state == "active", rep.reason
    assert rep.states == ["received", "verified", "installed", "benchmarked", "active"]
    b = rep.benchmark
    lat = b.latency_ms
    for v in (lat.mean, lat.min, lat.max, lat.p50, lat.p90, lat.p99):
        assert v > 0
    assert lat.std >= 0 and lat.count >= 30
    assert b.init_ms > 0 and b.peak_memory_mb > 0
    assert (b.runtime.name, b.runtime.version) == ("ai-edge-litert", version("ai-edge-litert"))
    c = rep.checks
    assert c.count == 24 and c.agreement == 1.0 and c.clean_accuracy == 1.0
    assert "fgsm@0.05" in c.robust_accuracy
    assert c.max_abs_deviation is not None and c.max_abs_deviation < 1e-4  # host `expected`
    assert rep.signed_by == keys["key"].key_id
    assert agent.storage.active()["sha256"] == hashlib.sha256(model).hexdigest()


def test_status_birth_message_is_retained(broker, inproc_agent, collector, keys, small_model):
    inproc_agent(broker, trust=keys["trust"], profile="raspberry-pi-4")
    deploy(small_model, DEVICE, broker.url, key=keys["private"], timeout=60)
    _c, got = collector(broker, Topics(DEVICE).status)
    deadline = time.monotonic() + 5  # the status naming the new model follows the report
    while time.monotonic() < deadline and not (
            got and Status.from_json(got[-1][1]).active_model is not None):
        time.sleep(0.05)
    st = Status.from_json(got[-1][1])
    assert st.online and st.profile == "raspberry-pi-4" and st.runtime.name
    assert st.active_model.sha256 == hashlib.sha256(small_model).hexdigest()


def _stored(state_dir, at_least: int, timeout: float = 15.0) -> None:
    """Until the agent's on-disk bitmap of the model's chunks holds ``at_least`` (it is
    written when the link goes idle): a poll with a deadline, the file has no event."""
    until(lambda: max((sum(p.read_bytes()) for p in state_dir.rglob("model.have")),
                      default=0) >= at_least,
          timeout, f"the agent stored fewer than {at_least} chunks")


def test_large_model_in_chunks_survives_broker_restart(broker, inproc_agent, keys, medium_model):
    agent = inproc_agent(broker, trust=keys["trust"], stall_seconds=1.0)
    chunk = 16 * 1024
    n = -(-len(medium_model) // chunk)
    assert n >= 40
    restarted = []

    def progress(event, info):
        if event == "chunk" and info["sent"] == n // 2 and not restarted:
            _stored(agent.storage.root, n // 4)
            broker.restart()
            restarted.append(True)

    rep = deploy(medium_model, DEVICE, broker.url, key=keys["private"], chunk_size=chunk,
                 progress=progress, timeout=90)
    assert restarted and rep.ok, rep.reason
    assert rep.chunks == n
    assert rep.chunks_sent < 2 * n  # only what was missing was sent again


def test_agent_restart_mid_transfer_resumes(broker, agent_process, keys, medium_model,
                                            tmp_path):
    state = tmp_path / "state"
    procs = [agent_process(broker, state_dir=state, trust_key=keys["public"],
                           extra=["--stall-seconds", "1"])]
    procs[0].wait_log("connected to")
    chunk = 16 * 1024
    n = -(-len(medium_model) // chunk)

    def progress(event, info):
        if event == "chunk" and info["sent"] == n // 2 and len(procs) == 1:
            _stored(state, n // 4)
            procs[0].kill()
            procs.append(agent_process(broker, state_dir=state, trust_key=keys["public"],
                                       extra=["--stall-seconds", "1"]))

    rep = deploy(medium_model, DEVICE, broker.url, key=keys["private"], chunk_size=chunk,
                 progress=progress, timeout=90)
    assert len(procs) == 2 and rep.ok, rep.reason
    assert rep.transfer.resumed and rep.transfer.resumed_chunks >= n // 4
    assert rep.chunks_sent < 2 * n
    assert "resuming deployment" in procs[1].log.read_text()


def test_bad_signature_and_size_are_rejected(broker, inproc_agent, keys, small_model,
                                             tiny_model):
    from core.signing import SigningKey

    agent = inproc_agent(broker, trust=keys["trust"])
    assert deploy(tiny_model, DEVICE, broker.url, key=keys["private"], timeout=60).ok
    rep = deploy(small_model, DEVICE, broker.url, key=SigningKey.generate(), timeout=60)
    assert rep.state == "rejected" and "unknown key" in rep.reason
    rep = deploy(small_model, DEVICE, broker.url, timeout=60)
    assert rep.state == "rejected" and "not signed" in rep.reason
    assert agent.storage.active()["sha256"] == hashlib.sha256(tiny_model).hexdigest()


def test_thresholds_and_unloadable_roll_back(broker, inproc_agent, keys, small_model,
                                             tiny_model, unloadable_model):
    agent = inproc_agent(broker, trust=keys["trust"])
    assert deploy(tiny_model, DEVICE, broker.url, key=keys["private"], timeout=60).ok
    rep = deploy(small_model, DEVICE, broker.url, key=keys["private"],
                 thresholds={"max_p90_ms": 1e-6}, timeout=60)
    assert rep.state == "rolled_back" and "p90 latency" in rep.reason
    assert rep.benchmark is not None
    rep = deploy(small_model, DEVICE, broker.url, key=keys["private"],
                 probes=make_probes(tiny_model), thresholds={"min_agreement": 0.98}, timeout=60)
    assert rep.state == "rolled_back" and "agreement" in rep.reason
    rep = deploy(unloadable_model, DEVICE, broker.url, key=keys["private"], timeout=60)
    assert rep.state == "rolled_back"
    assert "Didn't find op for builtin opcode 'FULLY_CONNECTED' version '9999'" in rep.reason
    assert agent.storage.active()["sha256"] == hashlib.sha256(tiny_model).hexdigest()
