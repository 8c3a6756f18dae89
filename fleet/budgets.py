"""The thresholds a device profile's budgets set on a deployment.

`deploy` and `rollout` check a model against its target profile by default:
p90 latency and peak memory as the budgets say, and, with a probe bundle,
clean and robust accuracy floors as the budgets' retentions of what the
original model scores on those same probes (the bundle's ``reference``
outputs are the original's). Top-1 agreement is not a default floor: it counts
the adversarial probes too, where the original itself is often wrong, so a
model that keeps the clean accuracy can still read well under 1.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from core.probes import load_probes
from device_profiles import load as load_profile


def original_scores(probes: dict[str, np.ndarray]) -> tuple[float | None, float | None]:
    """The original model's clean accuracy and lowest robust accuracy on the probes."""
    y, kind = np.asarray(probes["y"]), np.asarray(probes["kind"])
    eps = np.asarray(probes["eps"], dtype=np.float32)
    correct = np.asarray(probes["reference"]).argmax(axis=1) == y
    clean = kind == "clean"
    clean_acc = float(correct[clean].mean()) if clean.any() else None
    robust = [float(correct[(kind == k) & (eps == e)].mean())
              for k in set(kind.tolist()) - {"clean"}
              for e in set(eps[kind == k].tolist())]
    return clean_acc, (min(robust) if robust else None)


def budget_thresholds(profile_id: str, probes: str | os.PathLike[str] | None = None
                      ) -> tuple[dict[str, float], list[str]]:
    """Thresholds from ``profile_id``'s budgets, and one line per threshold saying why."""
    b = load_profile(profile_id).budgets
    out: dict[str, float] = {"max_p90_ms": b.p90_latency_ms,
                             "max_peak_memory_mb": b.peak_memory_mb}
    why = [f"p90 <= {b.p90_latency_ms:g} ms", f"peak memory <= {b.peak_memory_mb:g} MB"]
    if probes is not None:
        clean, robust = original_scores(load_probes(probes))
        if clean is not None:
            out["min_clean_accuracy"] = round(b.min_accuracy_retention * clean, 4)
            why.append(f"clean accuracy >= {out['min_clean_accuracy']:.3f} "
                       f"({b.min_accuracy_retention:g} x the original's {clean:.3f})")
        if robust is not None:
            out["min_robust_accuracy"] = round(b.min_robust_retention * robust, 4)
            why.append(f"robust accuracy >= {out['min_robust_accuracy']:.3f} "
                       f"({b.min_robust_retention:g} x the original's {robust:.3f})")
    return out, why


def merged_thresholds(profile_id: str | None, probes: str | os.PathLike[str] | None,
                      flags: dict[str, float]) -> tuple[dict[str, Any], str]:
    """The profile's thresholds overridden by ``flags``; and a line that says where they are from
    ('' without a profile: the flags alone)."""
    if profile_id is None:
        return dict(flags), ""
    base, why = budget_thresholds(profile_id, probes)
    over = sorted(flags)
    line = f"thresholds from {profile_id}'s budgets: {', '.join(why)}"
    if over:
        line += f"; overridden by flags: {', '.join(f'{k}={flags[k]:g}' for k in over)}"
    return {**base, **flags}, line
