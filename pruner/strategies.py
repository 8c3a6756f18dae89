"""Selection strategies: they choose units (and merges) from criteria scores; they never cut.

Every strategy answers ``select(view, quota, step) -> GroupPlan`` for one
group at one progressive step. A strategy object lives for one pruning run
and remembers what it already chose (by original unit index).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from core.errors import ConfigError
from pruner.criteria import (
    GroupSaliency,
    L1Magnitude,
    PairSaliency,
    RandomScore,
    RobustnessImpact,
    UnitView,
)
from pruner.graph.plan import GroupPlan


def ascending_pairs(sal: np.ndarray) -> np.ndarray:
    """Flat indices of a pair-saliency matrix's finite entries, lowest first (stable)."""
    flat = sal.ravel()
    order = np.argsort(flat, kind="stable")
    return order[np.isfinite(flat[order])]


class Annealing:
    """Simulated annealing over candidate pairs (the Paoding selection).

    Pairs are walked in ascending saliency. A pair is accepted when its
    robustness score is <= tau, the layer's running threshold, or else with
    probability exp(-(score - tau) / T); on acceptance tau <- score. T = t0 *
    cooling**step falls geometrically with the step. Removed units and their
    keepers are not reused within a step; a keeper may absorb more units in
    later steps. All draws come from ``rng``. Robustness scores are computed
    lazily, in chunks of pairs that double from max(first_chunk, 8 * quota) up
    to ``chunk``, so only the low-saliency end of the list is scored.

    Where tau starts (at every walk, and again when a walk ends short of the
    quota) is ``tau_start``:

    * ``"first"`` (default): the score of the first eligible pair, so every walk
      takes the lowest-saliency pair and the robustness score decides which of
      the following ones join it. Saliency leads, as in the method.
    * ``"median"``: the median score of the walked candidates.
    * ``"best"``: the lowest score. The walk then takes pairs in ascending
      robustness score, whatever their saliency. Measured on the digits MLP
      (784-128-128-64-10) this loses accuracy badly (greedy at 70%: 0.53 against
      0.82 with ``"first"``): the interval bound of h_b - gamma*h_a over the input
      box grows with gamma for every pair, so the score rates compensated merges
      as worse than plain removals (gamma ~ 0) and the walk degrades into
      magnitude-like pruning. The score is a sound worst case over the whole box, not a ranking
      of the merges' real effect, so it filters the saliency order instead of
      replacing it.

    The scores lie in about [0.5*alpha + 0.5*beta, alpha + 0.73*beta], so
    differences between candidates are tenths; t0 = 0.5 lets the first steps
    take most pairs in saliency order and the cooling makes the robustness
    filter stricter as the network gets small. On the digits MLP (medians over
    five seeds) t0 = 0.01 / 0.2 / 0.5 kept 0.933 / 0.947 / 0.958 at 50% and
    0.803 / 0.842 / 0.858 at 70%.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        saliency: PairSaliency | None = None,
        impact: RobustnessImpact | None = None,
        t0: float = 0.5,
        cooling: float = 0.9,
        chunk: int = 2048,
        first_chunk: int = 64,
        tau_start: str = "first",
        ranking: Any = None,
    ) -> None:
        if tau_start not in ("first", "median", "best"):
            raise ConfigError(f"tau_start must be 'first', 'median' or 'best', got {tau_start!r}")
        self.tau_start = tau_start
        if t0 < 0:
            raise ConfigError(f"t0 must be >= 0, got {t0}")
        if not 0.0 < cooling <= 1.0:
            raise ConfigError(f"cooling must be in (0, 1], got {cooling}")
        if chunk < 1 or first_chunk < 1:
            raise ConfigError(f"chunk sizes must be >= 1, got {first_chunk} and {chunk}")
        self.rng = rng
        self.saliency = saliency or PairSaliency()
        self.impact = impact or RobustnessImpact()
        self.t0, self.cooling = float(t0), float(cooling)
        self.chunk, self.first_chunk = int(chunk), int(first_chunk)
        self.ranking = ranking or GroupSaliency()
        self.accepted: dict[str, set[tuple[int, int]]] = {}

    def candidates(self, view: UnitView) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(a, b, gamma) of the candidates in walking order: pairs in ascending saliency,
        or, in a group that cannot merge (coupled channels: ``mergeable`` False), plain
        removals (a = -1) in ascending ``ranking`` score."""
        n = view.n
        if not view.group.mergeable:
            b = np.argsort(self.ranking(view), kind="stable")
            return np.full(n, -1), b, np.zeros(n)
        gamma, sal = self.saliency(view)
        order = ascending_pairs(sal)
        a, b = order // n, order % n
        return a, b, gamma[a, b]

    def temperature(self, step: int) -> float:
        return self.t0 * self.cooling**step

    def _start(self, scores: np.ndarray) -> float:
        """tau at the start of a walk over ``scores`` (in ascending saliency)."""
        if self.tau_start == "first":
            return float(scores[0])
        return float(np.median(scores) if self.tau_start == "median" else scores.min())

    def select(self, view: UnitView, quota: int, step: int) -> GroupPlan:
        n = view.n
        cand_a, cand_b, cand_g = self.candidates(view)
        history = self.accepted.setdefault(view.group.name, set())
        ids = view.orig_ids.tolist()
        temp = self.temperature(step)
        removed = np.zeros(n, dtype=bool)
        keeper = np.zeros(n, dtype=bool)
        plan = GroupPlan()
        tau: float | None = None
        l_ref: float | None = None

        def eligible(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return ~removed[b] & ~keeper[b] & ~((a >= 0) & removed[np.maximum(a, 0)])

        def walk(a_arr: np.ndarray, b_arr: np.ndarray, s_arr: np.ndarray,
                 g_arr: np.ndarray) -> None:
            nonlocal tau
            for a, b, s, g in zip(a_arr.tolist(), b_arr.tolist(), s_arr.tolist(),
                                  g_arr.tolist(), strict=True):
                if len(plan.remove) >= quota:
                    return
                key = (ids[a] if a >= 0 else -1, ids[b])
                if removed[b] or keeper[b] or (a >= 0 and removed[a]) or key in history:
                    continue
                accept = s <= tau
                if not accept and temp > 0:
                    accept = bool(self.rng.random() < math.exp(-(s - tau) / temp))
                if accept:
                    tau = s
                    removed[b] = True
                    plan.remove.append(b)
                    if a >= 0:  # a merge; a < 0 is a plain removal
                        keeper[a] = True
                        plan.merges.append((a, b, g))
                    history.add(key)

        pool_a = pool_b = np.zeros(0, np.int64)
        pool_s = pool_g = np.zeros(0)
        pos = scored_chunks = 0
        while len(plan.remove) < quota:
            if pool_a.size:
                ok = eligible(pool_a, pool_b)
                pool_a, pool_b, pool_s, pool_g = pool_a[ok], pool_b[ok], pool_s[ok], pool_g[ok]
            if pool_a.size:  # the last walk ended short: walk again
                tau = self._start(pool_s)
                walk(pool_a, pool_b, pool_s, pool_g)
                continue
            if pos >= len(cand_b):
                break
            size = min(self.chunk, max(self.first_chunk, 8 * quota) << scored_chunks)
            scored_chunks += 1
            a_c, b_c = cand_a[pos : pos + size], cand_b[pos : pos + size]
            g_c = cand_g[pos : pos + size]
            pos += size
            ok = eligible(a_c, b_c)
            a_c, b_c, g_c = a_c[ok], b_c[ok], g_c[ok]
            if not a_c.size:
                continue
            width, ent = self.impact.terms(view, a_c, b_c, g_c)
            if l_ref is None:
                l_ref = float(np.median(width))
            scores = self.impact.score(width, ent, l_ref)
            if tau is None:
                tau = self._start(scores)
            pool_a, pool_b, pool_s, pool_g = a_c, b_c, scores, g_c
            walk(a_c, b_c, scores, g_c)
        return plan


class Greedy(Annealing):
    """Annealing at temperature 0: only pairs at or under the running threshold."""

    def __init__(self, rng: np.random.Generator, **kwargs) -> None:
        kwargs["t0"] = 0.0
        super().__init__(rng, **kwargs)


class GlobalAnnealing(Annealing):
    """Annealing with one walk across all layers (``select_all``).

    Each layer contributes its lowest-saliency pairs (max(first_chunk, 8 * quota)
    of them), scored as in Annealing; pairs are walked in ascending saliency
    divided by the layer's median candidate saliency, with one running
    threshold. A step removes as many units as the per-layer quotas add up to,
    but a layer may give more or fewer, up to what it still may lose (``caps``).
    tau starts as in Annealing (``tau_start``), in the order of that walk.
    """

    def select_all(
        self, views: list[UnitView], quotas: dict[str, int], caps: dict[str, int], step: int
    ) -> dict[str, GroupPlan]:
        temp = self.temperature(step)
        total = sum(quotas.get(v.group.name, 0) for v in views)
        layers, cand = [], []
        for view in views:
            name = view.group.name
            if caps.get(name, 0) <= 0:
                continue
            gamma, sal = self.saliency(view)
            flat = sal.ravel()
            order = ascending_pairs(sal)
            order = order[: min(self.chunk, max(self.first_chunk, 8 * quotas.get(name, 1)))]
            if not order.size:
                continue
            a, b = order // view.n, order % view.n
            width, ent = self.impact.terms(view, a, b, gamma[a, b])
            scores = self.impact.score(width, ent, float(np.median(width)))
            ref = float(np.median(flat[order])) or 1.0
            layers.append((view, gamma, np.zeros(view.n, bool), np.zeros(view.n, bool)))
            cand.append((np.full(a.size, len(layers) - 1), a, b, scores, flat[order] / ref))
        plans = {v.group.name: GroupPlan() for v, *_ in layers}
        if not cand:
            return {}
        li_all, a_all, b_all, s_all, key = (np.concatenate(x) for x in zip(*cand, strict=True))
        order = np.argsort(key, kind="stable")
        li_all, a_all, b_all, s_all = li_all[order], a_all[order], b_all[order], s_all[order]
        count = 0
        tau = self._start(s_all)

        def open_(li: int, a: int, b: int) -> bool:
            view, _, removed, keeper = layers[li]
            name = view.group.name
            history = self.accepted.setdefault(name, set())
            ids = view.orig_ids
            return (
                not (removed[b] or keeper[b] or removed[a])
                and len(plans[name].remove) < caps[name]
                and (int(ids[a]), int(ids[b])) not in history
            )

        while count < total:
            for li, a, b, sc in zip(
                li_all.tolist(), a_all.tolist(), b_all.tolist(), s_all.tolist(), strict=True
            ):
                if count >= total:
                    break
                if not open_(li, a, b):
                    continue
                accept = sc <= tau
                if not accept and temp > 0:
                    accept = bool(self.rng.random() < math.exp(-(sc - tau) / temp))
                if accept:
                    tau = sc
                    view, gamma, removed, keeper = layers[li]
                    removed[b] = keeper[a] = True
                    plan = plans[view.group.name]
                    plan.remove.append(b)
                    plan.merges.append((a, b, float(gamma[a, b])))
                    ids = view.orig_ids
                    self.accepted[view.group.name].add((int(ids[a]), int(ids[b])))
                    count += 1
            left = [
                sc
                for li, a, b, sc in zip(
                    li_all.tolist(), a_all.tolist(), b_all.tolist(), s_all.tolist(), strict=True
                )
                if open_(li, a, b)
            ]
            if not left:
                break
            tau = self._start(np.asarray(left))  # the walk ended short: walk again
        return {name: plan for name, plan in plans.items() if plan.remove}


class OneShotPairs:
    """Srinivas & Babu (2015): gamma = 1, lowest saliency first, each unit in one pair at most.

    Stateless: given the original model and a cumulative quota it returns the
    one-shot selection at that ratio; at most half of a layer can go.
    """

    def __init__(self, saliency: PairSaliency | None = None) -> None:
        self.saliency = saliency or PairSaliency(gamma="one")
        self.removal = OneShotRanking(GroupSaliency())  # groups that cannot merge

    def select(self, view: UnitView, quota: int, step: int) -> GroupPlan:
        if not view.group.mergeable:
            return self.removal.select(view, quota, step)
        n = view.n
        gamma, sal = self.saliency(view)
        order = ascending_pairs(sal)
        used: set[int] = set()
        ids = view.orig_ids.tolist()
        plan = GroupPlan()
        for a, b in zip((order // n).tolist(), (order % n).tolist(), strict=True):
            if len(plan.remove) >= quota:
                break
            if ids[a] in used or ids[b] in used:
                continue
            used.update((ids[a], ids[b]))
            plan.remove.append(b)
            plan.merges.append((a, b, float(gamma[a, b])))
        return plan


class OneShotRanking:
    """Remove the units with the lowest per-unit score (no compensation).

    With L1Magnitude this is one-shot L1-norm structured pruning; with
    RandomScore it is seeded random pruning.
    """

    def __init__(self, criterion: L1Magnitude | RandomScore | GroupSaliency) -> None:
        self.criterion = criterion

    def select(self, view: UnitView, quota: int, step: int) -> GroupPlan:
        scores = self.criterion(view)
        order = np.argsort(scores, kind="stable")
        return GroupPlan(remove=sorted(order[:quota].tolist()))
