"""How many inputs a run synthesises (pruner.synthesis.counts): the configured counts
up to the reference cost, fewer for costlier models, never below the floors."""

from __future__ import annotations

from pruner.metrics import REFERENCE_MACS, scaled_count
from pruner.synthesis import counts


def test_models_up_to_the_reference_cost_get_the_configured_counts():
    assert counts(192, 10_000) == (192, 96)
    assert counts(192, int(REFERENCE_MACS)) == (192, 96)
    assert counts(16, 10_000) == (16, 32)  # the check set never under 32 there


def test_costlier_models_get_fewer_inputs_down_to_the_floors():
    fit, check = counts(192, int(4 * REFERENCE_MACS))
    assert (fit, check) == (48, 24)
    assert counts(192, int(1000 * REFERENCE_MACS)) == (32, 16)
    assert counts(20, int(1000 * REFERENCE_MACS)) == (20, 16)  # never more than asked


def test_random_inputs_of_a_costly_model_are_scaled_too():
    """The meter's random box inputs follow the same rule (floor 64): a 96x96
    MobileNetV2-0.35 (10.7 M MACs) gets 72 of the default 512."""
    assert scaled_count(512, 10_666_928, 64) == 72
    assert scaled_count(512, int(REFERENCE_MACS), 64) == 512
    assert scaled_count(512, int(1e12), 64) == 64
