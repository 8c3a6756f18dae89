"""Probe checks: accuracy, robust accuracy, agreement and deviation, as plain functions.

The probe bundle is read and validated by ``core.probes`` (one format for the
host and the device).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from core.errors import ProbeError
from core.protocol import CheckResults, Thresholds

if TYPE_CHECKING:
    import numpy as np

def evaluate_outputs(out: np.ndarray, probes: dict[str, np.ndarray],
                     seconds: float = 0.0) -> CheckResults:
    """Compare the model's outputs on ``probes['x']`` with labels, reference and expected."""
    import numpy as np

    y = np.asarray(probes["y"])
    kind = np.asarray(probes["kind"])
    eps = np.asarray(probes["eps"], dtype=np.float32)
    ref = np.asarray(probes["reference"], dtype=np.float32)
    if out.shape != ref.shape:
        raise ProbeError(f"the model's outputs {out.shape} do not match the reference "
                         f"{ref.shape}")
    bad = int(out.size - np.count_nonzero(np.isfinite(out)))
    if bad:  # NaN compares False with everything: refuse before any comparison
        raise ProbeError(f"the model's outputs are not finite ({bad} of {out.size} values "
                         "are NaN or infinite)")
    pred = out.argmax(axis=1)
    correct = pred == y
    clean = kind == "clean"
    clean_acc = float(correct[clean].mean()) if clean.any() else None
    robust: dict[str, float] = {}
    for k in sorted(set(kind.tolist()) - {"clean"}):
        sel_k = kind == k
        for e in sorted(set(eps[sel_k].tolist())):
            sel = sel_k & (eps == e)
            robust[f"{k}@{e:g}"] = float(correct[sel].mean())
    agreement = float((pred == ref.argmax(axis=1)).mean()) if len(ref) else None
    deviation = None
    if "expected" in probes:
        exp = np.asarray(probes["expected"], dtype=np.float32)
        deviation = float(np.max(np.abs(out - exp))) if exp.size else 0.0
    return CheckResults(
        count=int(len(y)), clean_accuracy=clean_acc, robust_accuracy=robust,
        min_robust_accuracy=min(robust.values()) if robust else None,
        agreement=agreement, max_abs_deviation=deviation, seconds=seconds,
    )


def run_checks(model: Any, probes: dict[str, np.ndarray]) -> CheckResults:
    """Run a loaded ``agent.runtime.Model`` on the probes and evaluate its outputs."""
    import numpy as np

    t0 = time.perf_counter()
    try:
        out = model.predict(np.asarray(probes["x"], dtype=np.float32))
    except ValueError as exc:
        raise ProbeError(str(exc)) from None
    return evaluate_outputs(out, probes, time.perf_counter() - t0)


def threshold_failures(thresholds: Thresholds, *, p90_ms: float, mean_ms: float,
                       peak_memory_mb: float, checks: CheckResults | None) -> list[str]:
    """Every threshold the measurements miss, as readable reasons (empty: all pass)."""
    t = thresholds
    out: list[str] = []
    # every comparison is written so that NaN fails it ("not value <= limit")
    if t.max_p90_ms is not None and not p90_ms <= t.max_p90_ms:
        out.append(f"p90 latency {p90_ms:.3f} ms exceeds {t.max_p90_ms:g} ms")
    if t.max_mean_ms is not None and not mean_ms <= t.max_mean_ms:
        out.append(f"mean latency {mean_ms:.3f} ms exceeds {t.max_mean_ms:g} ms")
    if t.max_peak_memory_mb is not None and not peak_memory_mb <= t.max_peak_memory_mb:
        out.append(f"peak memory {peak_memory_mb:.1f} MB exceeds {t.max_peak_memory_mb:g} MB")
    wants_probes = any(v is not None for v in (t.min_agreement, t.min_clean_accuracy,
                                               t.min_robust_accuracy, t.max_abs_deviation))
    if wants_probes and checks is None:
        out.append("thresholds need probe checks but the deployment has no probe bundle")
        return out
    if checks is None:
        return out

    def low(name: str, value: float | None, floor: float | None) -> None:
        if floor is None:
            return
        if value is None:
            out.append(f"{name} cannot be measured with these probes (needs >= {floor:g})")
        elif not value >= floor:
            out.append(f"{name} {value:.4f} is below {floor:g}")

    low("top-1 agreement", checks.agreement, t.min_agreement)
    low("clean accuracy", checks.clean_accuracy, t.min_clean_accuracy)
    low("robust accuracy", checks.min_robust_accuracy, t.min_robust_accuracy)
    if t.max_abs_deviation is not None:
        if checks.max_abs_deviation is None:
            out.append("max deviation cannot be measured: the probes have no 'expected'")
        elif not checks.max_abs_deviation <= t.max_abs_deviation:
            out.append(f"max abs deviation {checks.max_abs_deviation:.6g} exceeds "
                       f"{t.max_abs_deviation:g}")
    return out
