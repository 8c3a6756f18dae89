"""deploy/rollout thresholds from the target profile's budgets, flags over them."""

from __future__ import annotations

import numpy as np

import device_profiles
from core.probes import save_probes
from fleet.budgets import budget_thresholds, merged_thresholds, original_scores


def bundle() -> dict[str, np.ndarray]:
    """4 clean probes (the original right on 3), 4 FGSM at eps 0.1 (right on 2)."""
    y = np.array([0, 1, 2, 0, 0, 1, 2, 0], dtype=np.int64)
    pred = np.array([0, 1, 2, 1, 0, 1, 0, 1])
    ref = np.eye(3, dtype=np.float32)[pred]
    kind = np.array(["clean"] * 4 + ["fgsm"] * 4)
    eps = np.array([0.0] * 4 + [0.1] * 4, dtype=np.float32)
    return {"x": np.zeros((8, 2), np.float32), "y": y, "kind": kind, "eps": eps,
            "reference": ref, "meta": np.array("{}")}


def test_original_scores_are_the_reference_outputs_on_the_probes():
    assert original_scores(bundle()) == (0.75, 0.5)


def test_profile_budgets_with_probes(tmp_path):
    path = save_probes(bundle(), tmp_path / "p.npz")
    b = device_profiles.load("raspberry-pi-4").budgets
    th, why = budget_thresholds("raspberry-pi-4", path)
    assert th == {"max_p90_ms": b.p90_latency_ms, "max_peak_memory_mb": b.peak_memory_mb,
                  "min_clean_accuracy": round(b.min_accuracy_retention * 0.75, 4),
                  "min_robust_accuracy": round(b.min_robust_retention * 0.5, 4)}
    assert "min_agreement" not in th  # agreement counts adversarial probes: never a default
    assert any("x the original's 0.750" in w for w in why)


def test_flags_override_and_no_profile_means_flags_only(tmp_path):
    th, line = merged_thresholds("raspberry-pi-4", None, {"max_p90_ms": 1.5})
    assert th["max_p90_ms"] == 1.5 and "max_peak_memory_mb" in th
    assert "overridden by flags: max_p90_ms=1.5" in line
    assert merged_thresholds(None, None, {"min_agreement": 0.9}) == ({"min_agreement": 0.9}, "")
