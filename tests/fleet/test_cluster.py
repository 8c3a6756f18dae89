"""A rollout through a 3-node NATS cluster (JetStream, MQTT interface): devices and host on
different nodes."""

from __future__ import annotations

import pytest
from fleetsim import Simulator, device_ids, simulated_key
from simhelp import assert_agree, variant
from tflitehelp import dense_tflite

from agent.service import Agent, AgentSettings
from core.errors import ConfigError
from core.mqtt import Broker
from core.signing import SigningKey, TrustStore
from fleet.link import FleetLink
from fleet.orchestrator import run_rollout
from fleet.registry import Registry
from fleet.rollout import Decision, Outcome, WavePolicy

pytestmark = pytest.mark.broker


def test_rollout_through_a_three_node_cluster(nats_cluster, tmp_path):
    n0, n1, n2 = nats_cluster.nodes
    key = SigningKey.generate()
    ids = device_ids(40, "edge")
    # a real agent too, on node 1 (NATS speaks MQTT 3.1.1: the agent is told so)
    n1_broker = Broker.from_url(n1.url, protocol="3.1.1")
    agent = Agent(AgentSettings(device_id="pi-real", broker=n1_broker,
                                state_dir=tmp_path / "pi-real", profile="raspberry-pi-4",
                                trust=TrustStore([key.public_key()])))
    agent.start(wait_connected=10)
    # two groups of devices on two nodes, the host on the third
    sims = [
        Simulator(Broker.from_url(n0.url), ids[:20], trust=TrustStore([key.public_key()]),
                  dead=ids[:2], step_s=0.05),
        Simulator(Broker.from_url(n1.url), ids[20:], trust=TrustStore([key.public_key()]),
                  dead=ids[20:22], step_s=0.05),
    ]
    for s in sims:
        s.start()
        s.wait_born()
    try:
        with Registry(tmp_path / "f.sqlite") as reg:
            for d in ids:
                reg.set_identity(d, "simulated",
                                 simulated_key(d).public_key().public_pem().decode(), d)
            reg.set_identity("pi-real", "raspberry-pi-4",
                             agent.key.public_key().public_pem().decode(), "pi-real")
            model, tflite = variant(), dense_tflite((16,), inputs=8, classes=4)[0]
            result = run_rollout({"simulated": model, "raspberry-pi-4": tflite},
                                 Broker.from_url(n2.url), reg, key=key, discover_s=2.0,
                                 benchmark={"runs": 5, "warmup_runs": 1},
                                 policy=WavePolicy(canary=4, growth=4, timeout_s=60))
            assert result.decision is Decision.DONE, result.reason
            assert [r.outcome for r in result.results] == [Outcome.ACTIVE] * 37
            assert set(result.skipped.values()) == {"offline (its Last Will)"}
            assert result.stats["published_bytes"] == len(model) + len(tflite)
            assert result.stats["messages_dropped"] == 0
            assert assert_agree(reg, sims, result.rollout_id) == {"active": 36}
            active = agent.storage.active()
            row = {r["device_id"]: r for r in reg.device_rows()}["pi-real"]
            assert active is not None and row["active_sha"] == active["sha256"]
    finally:
        agent.stop()
        for s in sims:
            s.stop()


def test_a_shared_intake_the_broker_cannot_serve_is_a_clear_error(nats_cluster):
    # NATS speaks MQTT 3.1.1 and has no shared subscriptions: say so, do not hang
    link = FleetLink(Broker.from_url(nats_cluster.nodes[0].url), share_group="hosts")
    with pytest.raises(ConfigError, match="does not support shared subscriptions"):
        link.open()


def test_a_shared_intake_works_where_the_broker_serves_it(broker):
    with FleetLink(Broker(port=broker.port), share_group="hosts").open() as link:
        assert link.connected
