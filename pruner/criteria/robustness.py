"""The robustness criterion of the method: sound bounds of what a candidate changes at
the logits, for every input in the box, scored as PRUNING.md section 2 says."""

from __future__ import annotations

from typing import Any

import numpy as np

from core.errors import ConfigError
from pruner.bounds import deviation
from pruner.criteria.saliency import UnitView

BATCH_VALUES = 1 << 22  # values of one node's deviation bounds per batch of candidates


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def interval_entropy(lo: np.ndarray, hi: np.ndarray, threshold: float = 0.9) -> np.ndarray:
    """Normalised entropy of the clusters of similar intervals, one value per row.

    Intervals sorted by lower end join their predecessor's cluster when the two
    overlap by at least ``threshold`` of their union; all-similar gives 0,
    all-different gives 1.
    """
    m, k = lo.shape
    if k < 2:
        return np.zeros(m)
    order = np.argsort(lo, axis=1, kind="stable")
    lo_s = np.take_along_axis(lo, order, axis=1)
    hi_s = np.take_along_axis(hi, order, axis=1)
    inter = np.minimum(hi_s[:, 1:], hi_s[:, :-1]) - np.maximum(lo_s[:, 1:], lo_s[:, :-1])
    union = np.maximum(hi_s[:, 1:], hi_s[:, :-1]) - np.minimum(lo_s[:, 1:], lo_s[:, :-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        sim = np.where(union > 0, np.maximum(inter, 0.0) / union, 1.0)
    new = np.concatenate([np.zeros((m, 1), dtype=np.int64), (sim < threshold).astype(np.int64)], 1)
    cluster = np.cumsum(new, axis=1)
    counts = (cluster[:, :, None] == np.arange(k)[None, None, :]).sum(axis=1)
    p = counts / k
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return ent / np.log(k)


class RobustnessImpact:
    """Data-free robustness impact of a merge or a removal, from sound interval bounds.

    Removing b (keeping a with gamma) changes every reader's input by
    gamma*h_a - h_b in [gamma*lo_a - hi_b, gamma*hi_a - lo_b] (with a
    BatchNormalization after the nonlinearity: k*y_a + c - y_b; a plain removal:
    -h_b); that deviation is carried soundly to the logits node by node, through
    Add, Concatenate, Multiply and depthwise layers (bounds.deviation).
    score = alpha*sig(L/L_ref) + beta*sig(ENT), L = L1 width of the logit
    deviation, ENT its interval entropy. Lower is better.
    """

    def __init__(
        self,
        alpha: float = 0.75,
        beta: float = 0.25,
        entropy_threshold: float = 0.9,
        batch: int = 256,
    ) -> None:
        if alpha < 0 or beta < 0 or alpha + beta <= 0:
            raise ConfigError(
                f"alpha and beta must be >= 0 with a positive sum, got {alpha}, {beta}"
            )
        if not 0.0 < entropy_threshold <= 1.0:
            raise ConfigError(f"entropy_threshold must be in (0, 1], got {entropy_threshold}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.entropy_threshold = float(entropy_threshold)
        self.batch = int(batch)

    def deviation(
        self, view: UnitView, a: np.ndarray, b: np.ndarray, gamma: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Bounds of the logits' change for every candidate ([m, n_out] each), node by
        node (bounds.deviation), in batches; a[i] < 0 removes b[i] without a merge."""
        if view.bounds is None:
            raise ConfigError("robustness impact needs interval bounds")
        a, b = np.asarray(a), np.asarray(b)
        merge = a >= 0
        k = np.zeros(len(b))
        c = np.zeros(len(b))
        if merge.any():
            k[merge], c[merge] = view.group.merge_terms(a[merge], b[merge], gamma[merge])
        # whole feature maps per candidate: batches of about BATCH_VALUES numbers a map
        largest = max(int(np.prod(lo.shape)) for lo, _ in view.bounds)
        size = int(np.clip(BATCH_VALUES // max(1, largest), 8, self.batch))
        parts = [
            deviation(view.graph, view.bounds, view.group, b[i : i + size],
                      a[i : i + size], k[i : i + size], c[i : i + size],
                      gamma[i : i + size] if merge.all() else None)
            for i in range(0, len(b), size)
        ]
        if not parts:
            return np.zeros((0, 1)), np.zeros((0, 1))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def terms(
        self, view: UnitView, a: np.ndarray, b: np.ndarray, gamma: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(L, ENT) for every pair."""
        lo, hi = self.deviation(view, a, b, gamma)
        return (hi - lo).sum(axis=1), interval_entropy(lo, hi, self.entropy_threshold)

    def score(self, width: np.ndarray, entropy: np.ndarray, l_ref: float) -> np.ndarray:
        """alpha*sig(L/L_ref) + beta*sig(ENT)."""
        l_ref = l_ref if l_ref > 0 else 1.0
        return self.alpha * _sigmoid(width / l_ref) + self.beta * _sigmoid(entropy)

    def get_config(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "entropy_threshold": self.entropy_threshold,
        }
