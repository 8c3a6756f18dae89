"""Probe checks and thresholds; probe bundles never unpickle."""

from __future__ import annotations

import numpy as np
import pytest
from agenthelp import make_probes

from agent.checks import evaluate_outputs, run_checks, threshold_failures
from agent.runtime import select_runtime
from core.errors import ProbeError
from core.probes import load_probes
from core.protocol import Thresholds


def bundle():
    ref = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1]]
    return {"x": np.zeros((6, 2), np.float32), "y": np.array([0, 1, 2, 3, 1, 1]),
            "kind": np.array(["clean"] * 4 + ["fgsm", "pgd"]),
            "eps": np.array([0, 0, 0, 0, 0.1, 0.1], np.float32), "reference": ref}


def test_evaluate_outputs():
    b = bundle()
    out = b["reference"].copy()
    out[3] = [0, 0, 1, 0]  # one clean error, disagrees with the reference
    b["expected"] = b["reference"]
    r = evaluate_outputs(out, b)
    assert r.clean_accuracy == 0.75
    assert r.robust_accuracy == {"fgsm@0.1": 0.0, "pgd@0.1": 1.0}
    assert r.min_robust_accuracy == 0.0
    assert r.agreement == pytest.approx(5 / 6)
    assert r.max_abs_deviation == 1.0


def test_thresholds():
    b = bundle()
    r = evaluate_outputs(b["reference"], b)
    t = Thresholds(max_p90_ms=1.0, min_agreement=0.99, max_abs_deviation=0.1)
    fails = threshold_failures(t, p90_ms=2.0, mean_ms=1.0, peak_memory_mb=10, checks=r)
    assert any("p90 latency 2.000 ms exceeds 1" in f for f in fails)
    assert any("expected" in f for f in fails)
    assert not any("agreement" in f for f in fails)
    assert threshold_failures(Thresholds(min_agreement=0.5), p90_ms=1, mean_ms=1,
                              peak_memory_mb=1, checks=None)
    assert threshold_failures(Thresholds(), p90_ms=1, mean_ms=1, peak_memory_mb=1,
                              checks=None) == []


def test_run_checks_on_a_real_model(small_model, tmp_path):
    probes = make_probes(small_model)
    np.savez(tmp_path / "p.npz", **probes)
    loaded = select_runtime().load(small_model)
    r = run_checks(loaded, load_probes(tmp_path / "p.npz"))
    assert r.agreement == 1.0 and r.count == 24 and r.clean_accuracy == 1.0


def test_bundles_are_never_unpickled(tmp_path):
    b = bundle()
    b["kind"] = np.array(["clean"] * 6, dtype=object)
    np.savez(tmp_path / "evil.npz", **b)
    with pytest.raises(ProbeError, match="pickle"):
        load_probes(tmp_path / "evil.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 junk")
    with pytest.raises(ProbeError, match="unreadable"):
        load_probes(tmp_path / "junk.npz")
    b = bundle()
    del b["reference"]
    np.savez(tmp_path / "short.npz", **b)
    with pytest.raises(ProbeError, match="lacks key.*reference"):
        load_probes(tmp_path / "short.npz")


def test_non_finite_outputs_fail_and_thresholds_refuse_nan():
    b = bundle()
    for bad in (np.nan, np.inf):
        out = b["reference"].copy()
        out[0, 0] = bad
        with pytest.raises(ProbeError, match="not finite"):
            evaluate_outputs(out, b)
    t = Thresholds(max_p90_ms=10, max_mean_ms=10, max_peak_memory_mb=10)
    nan = float("nan")
    assert len(threshold_failures(t, p90_ms=nan, mean_ms=nan, peak_memory_mb=nan,
                                  checks=None)) == 3
