"""Criteria and selection for coupled channel groups (models that are not chains).

GroupSaliency scores every channel of a group over all its coupled layers,
data-free, in the spirit of DFPC (Narshana et al., 2023): what flows into
the channel (each producer's folded filter norm, times the per-channel
scales of the depthwise filters and BatchNormalizations it passes) times
what flows out of it (the norm of every reader's kernel rows). Channels
produced by several layers at an Add add their producers' terms, so the
score is the group's summed saliency. Low means remove first.

CoupledSelection is the paoding/greedy strategy on such graphs: exact
pair merges (PairSaliency, lowest first) in ``mergeable`` groups, plain
removal by GroupSaliency elsewhere. The bounds-driven robustness impact is
defined on chains only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pruner.criteria import PairSaliency, UnitView
from pruner.dag import ChannelGroup, bn_channels, producer_kernel
from pruner.strategies import OneShotPairs, OneShotRanking
from pruner.surgery import GroupPlan


class GroupSaliency:
    """Per-channel saliency summed over a coupled group (see the module docstring)."""

    def __call__(self, view: UnitView) -> np.ndarray:
        group = view.group
        if not isinstance(group, ChannelGroup):  # a chain group: in-norm times out-norm
            return np.linalg.norm(view.w_in, axis=1) * np.linalg.norm(view.w_out, axis=1)
        n = group.width
        inflow = np.zeros(n)
        for m in group.producers:
            kernel, _ = producer_kernel(m.layer, group.store(m.layer))
            inflow += np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]).T, axis=1)
        gain = np.ones(n)
        for m in group.members:
            if m.role != "chan":
                continue
            if m.params == "bn":
                gain *= np.abs(bn_channels(m.layer, m.offset, n, group.store(m.layer))[0])
            else:  # depthwise filter of each channel
                k = group.store(m.layer)[0][:, :, m.offset : m.offset + n, :]
                gain *= np.linalg.norm(np.moveaxis(k, 2, 0).reshape(n, -1), axis=1)
        return inflow * gain * np.linalg.norm(view.w_out, axis=1)


class GroupL1:
    """L1 norm of each channel's filters, summed over the group's producers (magnitude)."""

    def __call__(self, view: UnitView) -> np.ndarray:
        group = view.group
        if not isinstance(group, ChannelGroup):
            return np.abs(view.w_in[:, :-1]).sum(axis=1)
        total = np.zeros(group.width)
        for m in group.producers:
            kernel, _ = producer_kernel(m.layer, group.store(m.layer))
            total += np.abs(kernel.reshape(-1, kernel.shape[-1])).sum(axis=0)
        return total


def coupled_strategy(mode: str, rng: np.random.Generator) -> Any:
    """The strategy of ``mode`` for a graph of coupled channel groups."""
    from pruner.criteria import RandomScore

    if mode in ("paoding", "greedy"):
        return CoupledSelection()
    if mode == "baseline":
        return CoupledSelection(OneShotPairs())
    if mode == "magnitude":
        return OneShotRanking(GroupL1())
    return OneShotRanking(RandomScore(rng))


class LowestPairs:
    """Pairs (keep a, remove b) lowest PairSaliency first, each unit in one pair at most
    per step: OneShotPairs' walk over only the low end of the pair matrix
    (``np.argpartition``, widened until the quota is met), so wide layers do not
    sort n^2 pairs."""

    def __init__(self, saliency: PairSaliency | None = None) -> None:
        self.saliency = saliency or PairSaliency(gamma="auto")

    def select(self, view: UnitView, quota: int, step: int) -> GroupPlan:
        n = view.n
        gamma, sal = self.saliency(view)
        flat = sal.ravel()
        k = min(flat.size, max(256, 16 * quota * 2))
        while True:
            idx = np.argpartition(flat, k - 1)[:k] if k < flat.size else np.arange(flat.size)
            idx = idx[np.argsort(flat[idx], kind="stable")]
            idx = idx[np.isfinite(flat[idx])]
            used = np.zeros(n, bool)
            plan = GroupPlan()
            for a, b in zip((idx // n).tolist(), (idx % n).tolist(), strict=True):
                if len(plan.remove) >= quota:
                    break
                if used[a] or used[b]:
                    continue
                used[a] = used[b] = True
                plan.remove.append(b)
                plan.merges.append((a, b, float(gamma[a, b])))
            if len(plan.remove) >= quota or k >= flat.size:
                return plan
            k = min(flat.size, 4 * k)


class CoupledSelection:
    """Merges where exact (one producer, linear readers), plain removal elsewhere."""

    def __init__(self, pairs: Any = None, ranking: Any = None) -> None:
        self.pairs = pairs or LowestPairs()
        self.ranking = ranking or OneShotRanking(GroupSaliency())

    def select(self, view: UnitView, quota: int, step: int) -> GroupPlan:
        group = view.group
        if getattr(group, "mergeable", True):
            plan = self.pairs.select(view, quota, step)
            if len(plan.remove) >= quota:
                return plan
        return self.ranking.select(view, quota, step)
