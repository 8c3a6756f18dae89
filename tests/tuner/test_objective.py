"""tune --objective: which of the candidates that meet every budget is taken, and why."""

from __future__ import annotations

import pytest

import device_profiles
from tuner.candidates import Candidate, TuneResult
from tuner.choice import OBJECTIVES, choose


def cand(ratio: float, export: str, size: float, p90: float, robust: float) -> Candidate:
    return Candidate("paoding", 0, int(ratio * 10), ratio, export, 1000, 1000, size, p90, 10.0,
                     exported=True, accuracy=0.97, robust=robust, accuracy_retention=1.0,
                     robust_retention=1.0)


def result(objective: str) -> TuneResult:
    profile = device_profiles.load("raspberry-pi-4")
    cands = [cand(0.0, "dynamic", 40.0, 3.0, 0.70),   # the most robust
             cand(0.5, "int8", 12.0, 2.0, 0.60),      # the smallest
             cand(0.3, "float32", 60.0, 1.0, 0.65)]   # the fastest
    return TuneResult(profile, cands, None, cands[0], "", 0, True, {}, objective=objective)


@pytest.mark.parametrize("objective,key", [
    ("robust", "paoding/s0/r0.00/dynamic"),
    ("smallest", "paoding/s0/r0.50/int8"),
    ("fastest", "paoding/s0/r0.30/float32"),
])
def test_objective_picks_and_says_why(objective, key):
    r = result(objective)
    assert choose(r).key == key
    assert f"objective {objective}: {OBJECTIVES[objective]} of the 3 candidates" in r.statement
    # and what each other objective would have taken instead
    assert r.statement.count("--objective") == 2, r.statement


def test_measured_latency_decides_fastest():
    r = result("fastest")
    r.candidates[1].measured = {"p90_ms": 0.5, "misses": []}  # faster on the device
    assert choose(r).key == "paoding/s0/r0.50/int8"


def test_unknown_objective_is_a_one_line_error():
    from core.errors import ConfigError
    from tuner import tune

    with pytest.raises(ConfigError, match="objective 'tiny': use one of robust, smallest"):
        tune(None, "raspberry-pi-4", objective="tiny")
