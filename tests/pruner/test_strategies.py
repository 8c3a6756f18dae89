"""Strategies: reproducible annealing, cooling, recursive merges, baselines."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from prunehelp import mlp  # noqa: E402

from core.errors import ConfigError  # noqa: E402
from pruner.api import prune  # noqa: E402
from pruner.bounds import InputBox, interval_bounds  # noqa: E402
from pruner.criteria import L1Magnitude, PairSaliency, UnitView  # noqa: E402
from pruner.graph import build_graph  # noqa: E402
from pruner.strategies import Annealing, Greedy, OneShotPairs, OneShotRanking  # noqa: E402

FAST = dict(progress=False, measure_tflite=False, n_random=0, synthetic=0)


@pytest.fixture(scope="module")
def model():
    return mlp(widths=(16, 12), inputs=6, seed=4)


def _weights_bytes(m) -> bytes:
    return b"".join(w.tobytes() for w in m.get_weights())


def test_same_seed_gives_identical_weights_and_other_seeds_can_differ(model):
    # step 0.25: quotas of 3-4 units (a walk of quota 1 takes the lowest-saliency
    # pair and draws nothing)
    first = prune(model, 0.5, "paoding", seed=7, step=0.25, **FAST).model
    again = prune(model, 0.5, "paoding", seed=7, step=0.25, **FAST).model
    assert _weights_bytes(first) == _weights_bytes(again)
    differs = False
    for seed in range(8):
        other = prune(model, 0.5, "paoding", seed=seed, step=0.25, **FAST).model
        if _weights_bytes(other) != _weights_bytes(first):
            differs = True
            break
    assert differs, "no seed in 0..7 changed the selection"


def test_temperature_falls_and_validation():
    s = Annealing(np.random.default_rng(0), t0=0.1, cooling=0.8)
    temps = [s.temperature(k) for k in range(5)]
    assert all(b < a for a, b in zip(temps, temps[1:], strict=False))
    with pytest.raises(ConfigError, match="cooling"):
        Annealing(np.random.default_rng(0), cooling=1.5)
    assert Greedy(np.random.default_rng(0)).temperature(0) == 0.0


def _view(model, k=0, bounds=True):
    graph = build_graph(model)
    b = interval_bounds(graph, InputBox()) if bounds else None
    group = graph.groups[k]
    return UnitView.of(graph, group, np.arange(group.width), b)


def test_annealing_plan_is_consistent_and_greedy_draws_nothing(model):
    view = _view(model)
    rng = np.random.default_rng(0)
    plan = Greedy(rng).select(view, 5, 0)
    assert len(plan.remove) == 5 == len(set(plan.remove))
    keepers = {a for a, _, _ in plan.merges}
    assert not keepers & set(plan.remove)
    assert rng.bit_generator.state == np.random.default_rng(0).bit_generator.state
    hot = Annealing(np.random.default_rng(1), t0=10.0)
    plan2 = hot.select(view, 5, 0)
    assert len(plan2.remove) == 5
    assert len(hot.accepted[view.group.name]) == 5


@pytest.mark.parametrize("cls", [Annealing, Greedy])
def test_every_walk_takes_the_lowest_saliency_pair_first(model, cls):
    view = _view(model)
    _, sal = PairSaliency()(view)
    best = np.unravel_index(np.argmin(sal), sal.shape)
    plan = cls(np.random.default_rng(0)).select(view, 3, 0)
    assert plan.merges[0][:2] == (int(best[0]), int(best[1]))
    old = cls(np.random.default_rng(0), tau_start="best")
    assert len(old.select(view, 3, 0).remove) == 3
    with pytest.raises(ConfigError, match="tau_start"):
        Annealing(np.random.default_rng(0), tau_start="nope")


def test_recursive_merging_prunes_past_half(model):
    result = prune(model, 0.8, "paoding", seed=0, step=0.2, **FAST)
    final = result.trajectory[-1]
    assert final.ratio >= 0.75
    assert final.units == {g: w for g, w in final.units.items()}
    assert result.stop_reason == "target reached"


def test_global_scope_walks_all_layers_together(model):
    first = prune(model, 0.5, "paoding", seed=3, scope="global", **FAST)
    again = prune(model, 0.5, "paoding", seed=3, scope="global", **FAST)
    assert first.stop_reason == "target reached"
    assert first.final.units == {name: w // 2 for name, w in first.trajectory[0].units.items()}
    assert _weights_bytes(first.model) == _weights_bytes(again.model)
    greedy = prune(model, 0.3, "greedy", scope="global", **FAST)
    assert greedy.final.ratio == pytest.approx(0.3, abs=0.05)
    with pytest.raises(ConfigError, match="scope"):
        prune(model, 0.3, "magnitude", scope="global", **FAST)


def test_sequential_scope_prunes_one_layer_at_a_time_front_to_back(model):
    first = prune(model, 0.5, "paoding", seed=3, scope="sequential", **FAST)
    again = prune(model, 0.5, "paoding", seed=3, scope="sequential", **FAST)
    assert first.stop_reason == "target reached"
    widths0 = first.trajectory[0].units
    assert first.final.units == {name: w // 2 for name, w in widths0.items()}
    assert _weights_bytes(first.model) == _weights_bytes(again.model)
    names = list(widths0)
    for rec in first.trajectory[1:]:  # a later layer only loses units once the earlier is done
        changed = [n for n in names if rec.units[n] < widths0[n]]
        for earlier in changed[:-1]:
            assert rec.units[earlier] == widths0[earlier] - widths0[earlier] // 2
    with pytest.raises(ConfigError, match="scope"):
        prune(model, 0.3, "random", scope="sequential", **FAST)


def test_sequential_scope_restarts_the_temperature_in_each_layer(model, monkeypatch):
    steps: dict[str, list[int]] = {}
    select = Annealing.select

    def spy(self, view, quota, step):
        steps.setdefault(view.group.name, []).append(step)
        return select(self, view, quota, step)

    monkeypatch.setattr(Annealing, "select", spy)
    prune(model, 0.5, "paoding", seed=0, scope="sequential", **FAST)
    assert len(steps) == 2
    for seen in steps.values():
        assert seen == list(range(len(seen)))


def test_baseline_pairs_each_unit_once_and_refuses_more_than_half(model):
    view = _view(model, bounds=False)
    plan = OneShotPairs().select(view, 100, 0)
    used = [u for a, b, _ in plan.merges for u in (a, b)]
    assert len(used) == len(set(used)) and len(plan.remove) == view.n // 2
    assert all(g == 1.0 for _, _, g in plan.merges)
    with pytest.raises(ConfigError, match="at most 50%"):
        prune(model, 0.6, "baseline", **FAST)


@pytest.mark.parametrize("mode", ["baseline", "magnitude", "random"])
def test_one_shot_modes_do_not_depend_on_the_step(model, mode):
    fine = prune(model, 0.5, mode, seed=2, step=0.1, **FAST)
    coarse = prune(model, 0.5, mode, seed=2, step=0.5, **FAST)
    assert len(fine.trajectory) > len(coarse.trajectory) == 2
    assert _weights_bytes(fine.model) == _weights_bytes(coarse.model)


def test_magnitude_removes_the_smallest_l1_units(model):
    view = _view(model, bounds=False)
    plan = OneShotRanking(L1Magnitude()).select(view, 4, 0)
    l1 = L1Magnitude()(view)
    assert plan.remove == sorted(np.argsort(l1)[:4].tolist())
    assert plan.merges == []
