"""The data-free fidelity figure: how far a pruned model strays from the original on
inputs the tool makes itself.

Held-out synthesised inputs are class impressions: the original is confident on
them, far from its decision boundaries, so top-1 agreement on them stays at 1.0
while real accuracy falls by several points. The check set therefore adds
harder inputs, interpolations between two synthesised inputs the original puts
in different classes (low-margin inputs, near a boundary), and the figure is
continuous: the mean KL divergence of the pruned model's output distribution
from the original's over the whole set, beside top-1 agreement on it.
``score`` = exp(-KL / KL_SCALE) maps it to (0, 1] (1: the same outputs), and the
fidelity floor applies to it; README (pruning quality) gives the calibration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pruner.evaluate import outputs_probabilities, predict

KL_SCALE = 0.15  # nats: calibrated on the quality bench, see README
MIX_PER_INPUT = 2  # interpolations per held-out input


@dataclass
class Fidelity:
    """Top-1 agreement and mean KL divergence (nats) on the check set, and the score."""

    agreement: float
    kl: float

    @property
    def score(self) -> float:
        return float(np.exp(-self.kl / KL_SCALE))


def probabilities(model: Any, x: np.ndarray) -> np.ndarray:
    out = predict(model, x).astype(np.float64)
    if not outputs_probabilities(model):
        out = np.exp(out - out.max(axis=-1, keepdims=True))
    out = np.clip(out, 1e-12, None)
    return out / out.sum(axis=-1, keepdims=True)


def check_set(reference: Any, held_out: np.ndarray, seed: int = 0) -> np.ndarray:
    """``held_out`` plus MIX_PER_INPUT interpolations per input, x = l*x_i + (1-l)*x_j
    with l in [0.3, 0.7], between inputs the reference puts in different classes."""
    held_out = np.asarray(held_out, np.float32)
    top = probabilities(reference, held_out).argmax(axis=-1)
    rng = np.random.default_rng(seed)
    want = MIX_PER_INPUT * len(held_out)
    i = rng.integers(0, len(held_out), 8 * want)
    j = rng.integers(0, len(held_out), 8 * want)
    differ = top[i] != top[j]
    i, j = i[differ][:want], j[differ][:want]
    if not len(i):  # one class only: plain pairs
        i, j = rng.integers(0, len(held_out), (2, want))
    lam = rng.uniform(0.3, 0.7, (len(i),) + (1,) * (held_out.ndim - 1)).astype(np.float32)
    return np.concatenate([held_out, lam * held_out[i] + (1 - lam) * held_out[j]])


def measure(reference: Any, model: Any, x: np.ndarray, ref_probs: np.ndarray | None = None
            ) -> Fidelity:
    """Agreement and mean KL(reference || model) on x (``ref_probs``: the reference's
    outputs on x, when already known)."""
    p0 = probabilities(reference, x) if ref_probs is None else ref_probs
    p1 = probabilities(model, x)
    kl = float(np.mean(np.sum(p0 * (np.log(p0) - np.log(p1)), axis=-1)))
    agree = float(np.mean(p0.argmax(axis=-1) == p1.argmax(axis=-1)))
    return Fidelity(agree, max(kl, 0.0))
