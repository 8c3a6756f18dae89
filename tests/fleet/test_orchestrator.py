"""Rollouts against real agents over a real Mosquitto: waves, abort, the record."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from mosquitto import free_port
from tflitehelp import dense_tflite, unloadable

from agent.service import Agent, AgentSettings
from core.errors import ConfigError
from core.mqtt import Broker, BrokerUnavailable
from core.protocol import Status
from fleet.orchestrator import discover, run_rollout
from fleet.registry import Registry
from fleet.rollout import Decision, Outcome, Target, WavePolicy

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def good_model() -> bytes:
    return dense_tflite((16,), inputs=8, classes=4)[0]


@pytest.fixture(scope="module")
def bad_model(good_model: bytes) -> bytes:
    return unloadable(good_model)


@pytest.fixture
def fleet_of(broker, tmp_path):
    agents: list[Agent] = []

    def start(devices: dict[str, str]) -> list[Agent]:
        for device_id, profile in devices.items():
            a = Agent(
                AgentSettings(
                    device_id=device_id,
                    broker=Broker(port=broker.port),
                    state_dir=tmp_path / device_id,
                    profile=profile,
                )
            )
            a.start(wait_connected=10)
            agents.append(a)
        return agents

    yield start
    for a in agents:
        a.stop()


def _wait_for(broker, n: int) -> dict[str, Status]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = discover(broker.url, wait_s=0.3)
        if len(found) >= n:
            return found
    raise AssertionError(f"found {len(found)} devices, expected {n}")


FAST = {"benchmark": {"runs": 5, "warmup_runs": 1}, "discover_s": 1.0}


def test_rollout_in_waves_records_everything(broker, fleet_of, good_model, tmp_path):
    fleet_of(
        {
            "pi-a": "raspberry-pi-4",
            "pi-b": "raspberry-pi-4",
            "pi-c": "raspberry-pi-4",
            "phone-a": "android-midrange",
        }
    )
    statuses = _wait_for(broker, 4)
    assert statuses["pi-a"].profile == "raspberry-pi-4" and statuses["pi-a"].online
    with Registry(tmp_path / "fleet.sqlite") as reg:
        result = run_rollout(
            {"raspberry-pi-4": good_model},
            broker.url,
            reg,
            policy=WavePolicy(canary=1, growth=2),
            **FAST,
        )
        assert result.decision is Decision.DONE, result.reason
        assert result.waves == [["pi-a"], ["pi-b", "pi-c"]]
        assert result.skipped == {"phone-a": "no variant for profile 'android-midrange'"}
        assert {r.device_id: r.outcome for r in result.results} == {
            "pi-a": Outcome.ACTIVE,
            "pi-b": Outcome.ACTIVE,
            "pi-c": Outcome.ACTIVE,
        }
        assert all(r.p90_ms is not None for r in result.results)
        assert result.ok
        assert reg.outcomes(result.rollout_id) == {
            "pi-a": Outcome.ACTIVE,
            "pi-b": Outcome.ACTIVE,
            "pi-c": Outcome.ACTIVE,
        }
        history = reg.deployments("pi-b")
        assert len(history) == 1 and history[0]["wave"] == 1
        states = [r["state"] for r in reg.reports(history[0]["deployment_id"])]
        assert states[-1] == "active" and "verified" in states
        assert {d.device_id for d in reg.devices()} == {"pi-a", "pi-b", "pi-c", "phone-a"}


def test_failed_canary_aborts_before_the_rest(broker, fleet_of, bad_model, tmp_path):
    agents = fleet_of(
        {"pi-a": "raspberry-pi-4", "pi-b": "raspberry-pi-4", "pi-c": "raspberry-pi-4"}
    )
    _wait_for(broker, 3)
    with Registry(tmp_path / "fleet.sqlite") as reg:
        result = run_rollout(
            {"raspberry-pi-4": bad_model},
            broker.url,
            reg,
            policy=WavePolicy(canary=1, max_failure_rate=0.0),
            **FAST,
        )
        assert result.decision is Decision.ABORT
        assert "failure rate 100%" in result.reason
        assert [(r.device_id, r.outcome) for r in result.results] == [("pi-a", Outcome.ROLLED_BACK)]
        assert result.results[0].reason  # the interpreter's message
        assert result.skipped == {
            "pi-b": "not reached: rollout aborted",
            "pi-c": "not reached: rollout aborted",
        }
        assert reg.deployments("pi-b") == [] and reg.deployments("pi-c") == []
    assert not result.ok
    assert all(a.storage.active() is None for a in agents[1:])


def test_targeting_by_device_pattern(broker, fleet_of, good_model, tmp_path):
    fleet_of({"kitchen-1": "raspberry-pi-4", "garage-1": "raspberry-pi-4"})
    _wait_for(broker, 2)
    with Registry(tmp_path / "fleet.sqlite") as reg:
        result = run_rollout(
            {"raspberry-pi-4": good_model},
            broker.url,
            reg,
            target=Target(device_patterns=("kitchen-*",)),
            **FAST,
        )
    assert [r.device_id for r in result.results] == ["kitchen-1"]
    assert result.skipped == {"garage-1": "not targeted"}


def test_dead_broker_is_a_clear_error(good_model, tmp_path):
    port = free_port()
    with (
        Registry(tmp_path / "fleet.sqlite") as reg,
        pytest.raises(BrokerUnavailable, match=str(port)),
    ):
        run_rollout(
            {"raspberry-pi-4": good_model},
            f"mqtt://127.0.0.1:{port}",
            reg,
            **FAST,
        )


def test_no_variant_is_a_config_error(tmp_path):
    with Registry(tmp_path / "f.sqlite") as reg, pytest.raises(ConfigError, match="variant"):
        run_rollout({}, "mqtt://127.0.0.1:1", reg)
    with Registry(tmp_path / "f.sqlite") as reg, pytest.raises(ConfigError, match="nope.tflite"):
        run_rollout(
            {"raspberry-pi-4": Path(tmp_path / "nope.tflite")},
            "mqtt://127.0.0.1:1",
            reg,
        )


def test_rollout_and_fleet_commands(broker, fleet_of, good_model, tmp_path, capsys):
    from hostcli.main import main

    agents = fleet_of({"pi-a": "raspberry-pi-4", "pi-b": "raspberry-pi-4"})
    _wait_for(broker, 2)
    model = tmp_path / "pi.tflite"
    model.write_bytes(good_model)
    db, png = tmp_path / "fleet.sqlite", tmp_path / "rollout.png"
    for a in agents:  # the host believes only enrolled devices (their keys sign statuses)
        pub = tmp_path / f"{a.settings.device_id}.pub"
        pub.write_bytes(a.key.public_key().public_pem())
        assert main(["enrol", a.settings.device_id, "--profile", "raspberry-pi-4",
                     "--public-key", str(pub), "--db", str(db)]) == 0
    capsys.readouterr()
    rc = main(
        [
            "rollout",
            "--variant",
            f"raspberry-pi-4={model}",
            "--broker",
            broker.url,
            "--unsigned",
            "--db",
            str(db),
            "--runs",
            "5",
            "--plot",
            str(png),
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["decision"] == "done" and out["ok"]
    assert [r["outcome"] for r in out["results"]] == ["active", "active"]
    assert png.stat().st_size > 1000
    assert main(["fleet", "--db", str(db), "--tag", "pi-a", "kitchen"]) == 0
    text = capsys.readouterr().out
    assert "pi-a" in text and "kitchen" in text and out["rollout_id"] in text
    assert (
        main(
            [
                "rollout",
                "--variant",
                "raspberry-pi-4",
                "--broker",
                broker.url,
                "--unsigned",
                "--db",
                str(db),
            ]
        )
        == 2
    )
    assert "PROFILE=MODEL" in capsys.readouterr().err


def test_targeting_by_recorded_tags(broker, fleet_of, good_model, tmp_path):
    from fleet.rollout import Device

    fleet_of({"pi-a": "raspberry-pi-4", "pi-b": "raspberry-pi-4"})
    _wait_for(broker, 2)
    with Registry(tmp_path / "fleet.sqlite") as reg:
        reg.upsert_device(Device("pi-b", "raspberry-pi-4", frozenset({"beta"})))
        result = run_rollout(
            {"raspberry-pi-4": good_model},
            broker.url,
            reg,
            target=Target(tags=frozenset({"beta"})),
            **FAST,
        )
        assert [r.device_id for r in result.results] == ["pi-b"]
        assert result.skipped == {"pi-a": "not targeted"}
        assert {d.device_id: d.tags for d in reg.devices()}["pi-b"] == frozenset({"beta"})


def test_each_profile_gets_its_own_thresholds(broker, fleet_of, good_model, tmp_path):
    """rollout applies each variant's profile budgets: one profile's manifest carries a p90
    no model meets (rolled back), the other's none (active)."""
    fleet_of({"pi-a": "raspberry-pi-4", "phone-a": "android-midrange"})
    _wait_for(broker, 2)
    with Registry(tmp_path / "fleet.sqlite") as reg:
        result = run_rollout(
            {"raspberry-pi-4": good_model, "android-midrange": good_model},
            broker.url,
            reg,
            policy=WavePolicy(canary=2, max_failure_rate=1.0),
            profile_thresholds={"raspberry-pi-4": {"max_p90_ms": 1e-6}},
            **FAST,
        )
        spec = reg.rollout(result.rollout_id)["spec"]
    outcomes = {r.device_id: r for r in result.results}
    assert outcomes["pi-a"].outcome is Outcome.ROLLED_BACK, outcomes["pi-a"]
    assert "p90" in outcomes["pi-a"].reason
    assert outcomes["phone-a"].outcome is Outcome.ACTIVE
    assert spec["profile_thresholds"]["raspberry-pi-4"]["max_p90_ms"] == 1e-6
