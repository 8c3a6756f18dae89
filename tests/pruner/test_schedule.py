"""Schedule: widths rounded to SIMD-friendly multiples."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from pruner.schedule import Schedule, auto_multiple


def test_round_to_keeps_multiples():
    s = Schedule(0.3, 0.05, round_to=8)
    assert s.layer_target(64) == 16  # keeps 45 -> 48
    assert s.layer_target(100) == 28  # keeps 70 -> 72
    assert s.layer_target(8) == Schedule(0.3).layer_target(8) == 2  # too narrow to round
    assert Schedule.from_config(s.get_config()).layer_target(64) == 16
    assert Schedule(0.3).get_config() == {"target": 0.3, "step": 0.05}
    with pytest.raises(ConfigError, match="round_to"):
        Schedule(0.3, round_to=-1)
    auto = Schedule(0.3, 0.05, round_to=0)
    assert auto.layer_target(64) == 16  # keeps 45 -> 48 (16s)
    assert auto.layer_target(96) == 32  # keeps 68 -> 64 (16s)
    assert auto.layer_target(24) == 8  # keeps 17 -> 16 (8s)
    assert auto.layer_target(8) == 2  # too narrow to round
    assert auto.layer_target(16) == 4  # keeps 12, which rounds to 16: the exact target
    assert Schedule(0.3, round_to=8).layer_target(16) == 0  # an explicit multiple rounds
    assert Schedule.from_config(auto.get_config()).layer_target(96) == 32


def test_pruned_widths_are_multiples():
    pytest.importorskip("keras")
    from pruner import zoo
    from pruner.api import prune

    result = prune(zoo.ds_cnn(filters=24), schedule=Schedule(0.4, 0.2, round_to=8),
                   mode="magnitude", n_random=0, measure_tflite=False, progress=False,
                   keep_below_floor=True)  # untrained: its top-1 answers are near-constant
    assert set(result.final.units.values()) == {16}


def test_width_budget_shares_the_target_by_width():
    """'width' removes the same total as 'uniform', more of the wide layers, less of the
    narrow first ones, and never more than 90% of a layer."""
    widths = {"conv1": 16, "conv2": 32, "conv3": 64}
    for target in (0.1, 0.3, 0.5):
        s = Schedule(target, round_to=1)
        uniform = s.layer_targets(widths, "uniform")
        width = s.layer_targets(widths, "width")
        assert uniform == {n: s.layer_target(w) for n, w in widths.items()}
        assert sum(width.values()) == int(target * 112)
        shares = [width[n] / w for n, w in widths.items()]
        assert shares == sorted(shares) and shares[0] < target < shares[-1]
        auto = Schedule(target).layer_targets(widths, "width")  # AUTO: SIMD multiples kept
        for n, w in widths.items():  # or, as layer_target, exact where it rounds to unpruned
            m = auto_multiple(w)
            assert (w - auto[n]) % m == 0 or auto[n] == width[n] <= m / 2
    tight = Schedule(0.8, round_to=1).layer_targets({"a": 4, "b": 100}, "width")
    assert tight["b"] <= 90 and tight["a"] <= 3
    with pytest.raises(ConfigError, match="budget"):
        Schedule(0.3).layer_targets(widths, "sensitivity")
