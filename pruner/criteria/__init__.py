"""Criteria: they score the units or pairs of one channel group; one small class each."""

from pruner.criteria.robustness import RobustnessImpact, interval_entropy
from pruner.criteria.saliency import (
    GroupSaliency,
    L1Magnitude,
    PairSaliency,
    RandomScore,
    UnitView,
    reader_activations,
)

__all__ = ["GroupSaliency", "L1Magnitude", "PairSaliency", "RandomScore", "RobustnessImpact",
           "UnitView", "interval_entropy", "reader_activations"]
