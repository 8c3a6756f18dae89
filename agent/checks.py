"""Probe checks: accuracy, robust accuracy, agreement and deviation, as plain functions.

The probe bundle is an ``.npz`` loaded with ``allow_pickle=False`` (format in
docs/architecture.md): ``x``, ``y``, ``kind``, ``eps``, ``reference`` and an
optional ``expected``.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import ProbeError
from agent.protocol import CheckResults, Thresholds

if TYPE_CHECKING:
    import numpy as np

REQUIRED = ("x", "y", "kind", "eps", "reference")
MAX_PROBES = 100_000


def load_probe_bundle(path: str | Path) -> dict[str, np.ndarray]:
    """Read and validate a probe bundle; ProbeError names the bad key."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ProbeError(f"probe bundle {path} is unreadable: {exc}") from None
    validate_probes(data)
    return data


def validate_probes(data: dict[str, Any]) -> None:
    import numpy as np

    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ProbeError(f"probe bundle lacks {', '.join(missing)}")
    x, y, kind, eps, ref = (np.asarray(data[k]) for k in REQUIRED)
    n = len(x)
    if x.ndim < 2 or not np.issubdtype(x.dtype, np.floating):
        raise ProbeError(f"probe 'x' must be float [N, *input], got {x.dtype} {x.shape}")
    if n > MAX_PROBES:
        raise ProbeError(f"{n} probes exceed the limit of {MAX_PROBES}")
    for name, arr in (("y", y), ("kind", kind), ("eps", eps)):
        if arr.shape != (n,):
            raise ProbeError(f"probe {name!r} must have shape ({n},), got {arr.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ProbeError(f"probe 'y' must be integer labels, got {y.dtype}")
    if kind.dtype.kind != "U":
        raise ProbeError(f"probe 'kind' must be unicode strings, got {kind.dtype}")
    if ref.ndim != 2 or len(ref) != n:
        raise ProbeError(f"probe 'reference' must be [{n}, C], got {ref.shape}")
    if "expected" in data and np.asarray(data["expected"]).shape != ref.shape:
        raise ProbeError(f"probe 'expected' must match 'reference' {ref.shape}, "
                         f"got {np.asarray(data['expected']).shape}")


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
    if t.max_p90_ms is not None and p90_ms > t.max_p90_ms:
        out.append(f"p90 latency {p90_ms:.3f} ms exceeds {t.max_p90_ms:g} ms")
    if t.max_mean_ms is not None and mean_ms > t.max_mean_ms:
        out.append(f"mean latency {mean_ms:.3f} ms exceeds {t.max_mean_ms:g} ms")
    if t.max_peak_memory_mb is not None and peak_memory_mb > t.max_peak_memory_mb:
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
        elif value < floor:
            out.append(f"{name} {value:.4f} is below {floor:g}")

    low("top-1 agreement", checks.agreement, t.min_agreement)
    low("clean accuracy", checks.clean_accuracy, t.min_clean_accuracy)
    low("robust accuracy", checks.min_robust_accuracy, t.min_robust_accuracy)
    if t.max_abs_deviation is not None:
        if checks.max_abs_deviation is None:
            out.append("max deviation cannot be measured: the probes have no 'expected'")
        elif checks.max_abs_deviation > t.max_abs_deviation:
            out.append(f"max abs deviation {checks.max_abs_deviation:.6g} exceeds "
                       f"{t.max_abs_deviation:g}")
    return out
