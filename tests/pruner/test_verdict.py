"""The verdict's arithmetic: Wilson bounds, margins, the margin-calibrated figures."""

from __future__ import annotations

import numpy as np
import pytest

from pruner import verdict as vd


def test_wilson_interval_contains_the_point_and_narrows_with_samples():
    lo, hi = vd.wilson(90, 100)
    assert lo < 0.9 < hi
    lo2, hi2 = vd.wilson(900, 1000)
    assert lo < lo2 < 0.9 < hi2 < hi
    assert vd.wilson(0, 10)[0] == 0.0 and vd.wilson(10, 10)[1] == 1.0
    assert vd.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-3)  # textbook value


def test_margins_and_kept_margins():
    ref = np.array([[3.0, 1.0, 0.0], [0.0, 0.5, 2.0]])
    top, m = vd.margins(ref)
    assert list(top) == [0, 2] and list(m) == [2.0, 1.5]
    new = np.array([[1.0, 2.0, 0.0], [0.0, 0.5, 2.5]])
    assert list(vd.kept_margins(new, top)) == [-1.0, 2.0]  # the first input flipped


def test_margin_agreement_crosses_erosions_with_margins():
    m = np.array([1.0, 2.0, 3.0, 4.0])
    assert vd.margin_agreement(m, m) == 1.0  # no erosion
    assert vd.margin_agreement(m, m - 2.5) == pytest.approx(0.5)  # erodes margins <= 2.5
    assert vd.margin_agreement(m, m - 10) == 0.0


def test_within_spread_scales_erosion_by_the_margins_interquartile_range():
    m = np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # interquartile range 2
    assert vd.within_spread(m, m) == 1.0
    eroded = m - np.array([0.0, 0.0, 0.0, 1.9, 2.1])  # the last erodes past 1 x 2
    assert vd.within_spread(m, eroded, factor=1.0) == pytest.approx(0.8)
    assert vd.within_spread(m, eroded, factor=0.5) == pytest.approx(0.6)
    assert vd.within_spread(10 * m, 10 * eroded, factor=1.0) == pytest.approx(0.8)  # scale-free
    flat = np.full(4, 2.0)  # no spread: the median scales
    assert vd.within_spread(flat, flat - [0.0, 0.0, 1.9, 2.1], factor=1.0) == pytest.approx(0.75)


def test_representative_evidence_crosses_real_margins():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(200, 10)) * 3
    new = ref + rng.normal(size=ref.shape)
    top, m = vd.margins(ref)
    rep = vd.data_free(ref, new, 0.9, vd.REPRESENTATIVE)
    syn = vd.data_free(ref, new, 0.9, vd.SYNTHESISED)
    assert rep.figure == pytest.approx(vd.margin_agreement(m, vd.kept_margins(new, top)))
    assert syn.figure == pytest.approx(vd.within_spread(m, vd.kept_margins(new, top)))


def test_data_free_verdict_passes_an_identical_model_and_refuses_flips():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(300, 10))
    same = vd.data_free(ref, ref, 0.9, vd.SYNTHESISED)
    assert same.figure == 1.0 and same.passed and same.agreement == 1.0
    shuffled = vd.data_free(ref, rng.normal(size=(300, 10)), 0.9, vd.SYNTHESISED)
    assert not shuffled.passed and shuffled.upper < 0.9


def test_the_bound_decides_not_the_point():
    """A point under the floor passes when its interval reaches it (a small sample), and
    the same point from many inputs is refused."""
    small = vd.agreement_only(0.85, 40, 0.9)
    big = vd.agreement_only(0.85, 4000, 0.9)
    assert small.figure < 0.9 and small.passed
    assert not big.passed


def test_labelled_verdict_floor_and_refusal_reason():
    v = vd.labelled(0.90, 0.99, 2000, max_drop=0.03)
    assert v.floor == pytest.approx(0.96) and not v.passed
    reason = vd.refusal(v.to_dict())
    assert reason.startswith(vd.REFUSED) and "accuracy 0.900" in reason and "0.960" in reason
    assert vd.refusal(vd.labelled(0.98, 0.99, 2000).to_dict()) is None
    assert vd.labelled(0.9, 1.0, 100, retention=0.95).floor == pytest.approx(0.95)
