"""The verify loop against a real agent (emulated device) over a real Mosquitto."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tunehelp import ROOT, TUNE_KW

import device_profiles as dp
import tuner as tn
from hostcli.main import main
from hostcli.tune import probes_for


def _start_agent(broker, device_id: str, profile: str, tmp_path: Path) -> subprocess.Popen:
    log = tmp_path / f"agent-{device_id}.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent.cli",
                "run",
                "--device-id",
                device_id,
                "--profile",
                profile,
                "--emulate",
                profile,
                "--broker",
                broker.url,
                "--state-dir",
                str(tmp_path / f"state-{device_id}"),
                "--allow-unsigned",
                "--log-level",
                "INFO",
            ],
            cwd=ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while "connected to" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"agent did not connect: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc


@pytest.mark.broker
@pytest.mark.slow
def test_verify_loop_measures_rescales_and_reports(broker, search, make_profile, tmp_path):
    cpu = sorted(os.sched_getaffinity(0))[-1]
    host = dp.load("dev-host").latency
    optimistic = {k: v * 0.05 for k, v in host.coefficients.items()}
    # A profile whose latency model is 20x too optimistic: every candidate is predicted
    # to meet the p90 budget, none does when measured on the (emulated) device.
    pid = make_profile(
        "verify-emulated",
        base="raspberry-pi-4-emulated",
        latency__coefficients=optimistic,
        latency__overhead_ms=host.overhead_ms * 0.05,
        latency__provenance="estimated",
        emulation__cpuset=[cpu],
        emulation__priority="normal",
        emulation__slowdown=2.0,
        budgets__model_size_kb=10_000,
        budgets__peak_memory_mb=2000,
        budgets__min_accuracy_retention=0.5,
        budgets__min_robust_retention=0.1,
    )
    agent = _start_agent(broker, "bench-01", pid, tmp_path)
    try:
        r = tn.tune(search.model, pid, search=search, **TUNE_KW)
        assert r.chosen is not None
        budget = 2 * max(c.predicted_p90_ms for c in r.candidates)
        profile = dp.load(pid).model_copy(
            update={"budgets": dp.load(pid).budgets.model_copy(update={"p90_latency_ms": budget})}
        )
        r = tn.tune(search.model, profile, search=search, **TUNE_KW)
        first = r.chosen
        assert first is not None and first.predicted_p90_ms < budget
        saved = tmp_path / "saved"
        deployer = tn.mqtt_deployer(
            "bench-01",
            broker.url,
            profile,
            probes=probes_for(search),
            timeout=120,
            runs=100,
            min_seconds=0.3,
            save_dir=saved,
        )
        tn.verify(r, search, deployer, rounds=3, log=lambda s: None)
        v = r.verification[0]
        assert v["candidate"] == first.key and v["p90_ms"] > budget
        assert v["emulated"] is True and "emulating" in v["emulation"]
        assert first.measured["misses"] and "measured, emulated" in first.measured["misses"][0]
        assert r.correction > 3  # measured / predicted
        assert r.chosen is None  # rescaled, no candidate can meet the budget any more
        assert "no candidate meets every budget" in r.statement
        rec = r.measurements()
        assert rec and rec[0]["emulated"] and rec[0]["p90_ms"] == v["p90_ms"]

        # a loose budget is verified on the device in one round
        loose = profile.model_copy(
            update={"budgets": profile.budgets.model_copy(update={"p90_latency_ms": 1000.0})}
        )
        r2 = tn.tune(search.model, loose, search=search, **TUNE_KW)
        deployer2 = tn.mqtt_deployer(
            "bench-01",
            broker.url,
            loose,
            probes=probes_for(search),
            timeout=120,
            runs=100,
            min_seconds=0.3,
            save_dir=saved,
        )
        tn.verify(r2, search, deployer2, rounds=2, log=lambda s: None)
        assert len(r2.verification) == 1 and r2.chosen is not None, str(r2.verification)
        assert r2.chosen.measured and not r2.chosen.measured["misses"]
        assert r2.chosen.measured["state"] == "active"
        assert "measured under emulation" in r2.statement

        # the agent's own reports recalibrate the profile's latency model
        step0 = search.steps[(r2.original.mode, r2.original.seed)][0]
        deployer2(r2.original, search.export(step0, "float32"))
        reports = sorted(str(p) for p in (saved / "reports").glob("*.json"))
        assert len(reports) == 3
        out = tmp_path / "calibrated.yaml"
        rc = main(
            [
                "profiles",
                "calibrate",
                pid,
                "--from-reports",
                *reports,
                "--models",
                str(saved / "models"),
                "-o",
                str(out),
            ]
        )
        assert rc == 0
        cal = dp.load_file(out).latency
        assert cal.provenance == "calibrated" and cal.calibration_reports == 3
        assert "emulated on the development host" in cal.source
        # without --models the reports' models are unknown
        assert main(["profiles", "calibrate", pid, "--from-reports", *reports]) == 2
    finally:
        agent.terminate()
        agent.wait(timeout=20)
