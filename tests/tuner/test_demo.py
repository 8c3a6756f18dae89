"""`paoding-edge demo` end to end: its own broker, its own emulated agents, a small model.

Two outcomes, both through the devices: budgets the devices can meet end with every
profile VERIFIED (measured, every budget met, active on its agent, exit 0); a latency
model far too optimistic makes the budget impossible as measured, and the demo exits
non-zero naming the closest measured candidate and what it misses.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from hostcli.main import main

# A short search: paoding only, two pruning steps of 25%, two candidates per device.
QUICK = ["--modes", "paoding", "--max-ratio", "0.5", "--step", "0.25", "--rounds", "2",
         "--no-progress", "--timeout", "60"]
STRAY = re.compile(r"I0000|W0000|oneDNN|XNNPACK|fully_quantize|absl::|inference_type|"
                   r"TensorFlow binary is optimized")


def _profiles(make_profile, budget_ms: float, optimism: float = 1.0, size_kb: float = 10_000
              ) -> str:
    """The two shipped emulated profiles with loose memory/accuracy budgets, the given p90
    and size budgets and the latency model scaled by ``optimism``; on a CPU this process
    may use, at normal priority (any user can run the test)."""
    import device_profiles as dp

    cpu = sorted(os.sched_getaffinity(0))[-1]
    ids = []
    for base in ("raspberry-pi-4-emulated", "raspberry-pi-zero-2w-emulated"):
        lat = dp.load(base).latency
        ids.append(make_profile(
            f"test-{base}",
            base=base,
            latency__coefficients={k: v * optimism for k, v in lat.coefficients.items()},
            latency__overhead_ms=lat.overhead_ms * optimism,
            emulation__cpuset=[cpu],
            emulation__priority="normal",
            budgets__p90_latency_ms=budget_ms,
            budgets__model_size_kb=size_kb,
            budgets__peak_memory_mb=2000,
            budgets__min_accuracy_retention=0.5,
            budgets__min_robust_retention=0.1,
        ))
    return ",".join(ids)


@pytest.mark.broker
@pytest.mark.slow
def test_demo_delivers_verified_models(small_model, make_profile, tmp_path, capfd):
    # the original (155 KB) is over the 70 KB budget: the tuned model must be pruned
    pids = _profiles(make_profile, budget_ms=100.0, size_kb=70)
    rc = main(["demo", "--model", str(small_model[0]), "--profiles", pids,
               "--workdir", str(tmp_path / "demo"), *QUICK])
    out, err = capfd.readouterr()
    assert rc == 0, out[-3000:] + err[-2000:]
    rep = json.loads((tmp_path / "demo" / "demo_report.json").read_text())
    assert rep["delivered"] is True and rep["profiles"] == pids.split(",")
    assert "mosquitto" in out.split("[3/5] broker", 1)[1].splitlines()[0]
    for pid in rep["profiles"]:
        tuned = next(r for r in rep["rows"] if r["profile"] == pid and r["kind"] == "tuned")
        original = next(r for r in rep["rows"] if r["profile"] == pid and r["kind"] == "original")
        # measured on the agent (emulated), every budget met, left active there
        assert tuned["verified"] and tuned["state"] == "active" and tuned["emulated"]
        assert all(tuned["budgets_met"].values()), tuned["budgets_met"]
        assert 0 < tuned["p90_ms"] <= 100.0 and len(tuned["p90_runs_ms"]) >= 2
        assert original["p90_ms"] is not None and original["p90_ms"] > 0
        assert rep["statements"][pid].startswith("VERIFIED on demo-" + pid)
        # pruned to fit the size budget, the original measured on its own (not overwritten)
        assert tuned["size_kb"] <= 70 < original["size_kb"] and tuned["model"] != original["model"]
        shown = re.search(rf"{pid}: original p90 ([\d.]+) ms measured", out).group(1)
        assert f"{original['p90_ms']:.3g}" == shown
    assert (tmp_path / "demo" / "demo_report.png").stat().st_size > 10_000
    assert "NOT DELIVERED" not in out
    assert not [line for line in (out + err).splitlines() if STRAY.search(line)]
    # the demo ends by saying how to open the console on its fleet record, which holds
    # each device's deployments and reports and the lineage of the model it runs
    db = tmp_path / "demo" / "fleet.sqlite"
    assert out.strip().splitlines()[-1].startswith(
        f"See it in the fleet console: paoding-edge console --db {db}")
    from fleet.registry import Registry

    with Registry(db) as reg:
        runs = {d["device_id"]: d["active_sha"] for d in reg.device_rows()}
        for pid in rep["profiles"]:
            assert len(reg.deployments(f"demo-{pid}")) >= 2
            steps = reg.lineage(runs[f"demo-{pid}"])  # one model may suit both profiles
            assert [s["kind"] for s in steps if s["body"]["profile"] == pid] == ["tune"]


@pytest.mark.broker
@pytest.mark.slow
def test_demo_with_impossible_budgets_names_the_closest_and_fails(
    small_model, make_profile, tmp_path, capfd
):
    # predicted ~1000x faster than it runs: candidates are deployed on that belief and
    # measured far over a 1 us budget
    pids = _profiles(make_profile, budget_ms=0.001, optimism=1e-3)
    rc = main(["demo", "--model", str(small_model[0]), "--profiles", pids, "--embedded-broker",
               "--workdir", str(tmp_path / "demo"), *QUICK])
    out, err = capfd.readouterr()
    assert rc == 1, out[-3000:] + err[-2000:]
    assert "amqtt" in out.split("[3/5] broker", 1)[1].splitlines()[0]
    rep = json.loads((tmp_path / "demo" / "demo_report.json").read_text())
    assert rep["delivered"] is False
    for pid in rep["profiles"]:
        statement = rep["statements"][pid]
        assert statement.startswith(f"NOT VERIFIED: no candidate could be verified on demo-{pid}")
        assert re.search(r"the closest measured is \S+ \(p90 [\d.]+ ms measured", statement)
        assert "p90 latency" in statement.split("it misses", 1)[1]
        assert not [r for r in rep["rows"] if r["profile"] == pid and r["kind"] == "tuned"]
    assert "NOT DELIVERED" in out
    assert not [line for line in (out + err).splitlines() if STRAY.search(line)]
