"""The verdict on a pruned model: a figure, its confidence bounds, a floor, and the evidence.

Evidence ranks (PRUNING.md, "The verdict"): labelled evaluation data decides
when given (the figure is measured accuracy against the original's minus the
allowed drop); unlabeled representative inputs come next, synthesised inputs
last. Without labels every figure is read from the original's own output
margins m_i (top score minus the runner-up, in its logit units) and the pruned
model's margin m'_i for the same class: the erosion e_i = m_i - m'_i is how far
pruning moved input i's decision towards the boundary.

- Representative (real) inputs: a real input of margin m flips when the erosion
  reaches m, so crossing every erosion with every margin,
  ``1 - mean over (i, j) of [e_i >= m_j]``, estimates top-1 agreement on such
  inputs (``margin_agreement``).
- Synthesised inputs: their margins are not those of real inputs (on the models
  of bench/verdict_bench.py the test inputs' median margin is 0.7-2x theirs, a
  different factor per model), so only their spread calibrates: the
  figure is the share of check inputs whose erosion stays under SPREAD_FACTOR
  times the interquartile range of the original's margins on them
  (``within_spread``): a per-model scale, no constant in logit units. The
  check inputs are synthesised apart from the ones pruning fits on
  (pruner.fidelity.check_inputs).

The check set is a sample of n inputs, so the figure has a Wilson score
interval; a run is refused only when the interval's upper bound is under the
floor (the evidence shows the model is worse), so a good model is not refused
for a noisy sample. Pure numpy: fast to test, no TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

LABELLED, REPRESENTATIVE, SYNTHESISED, RANDOM = (
    "labelled", "representative", "synthesised", "random")
EVIDENCE = (LABELLED, REPRESENTATIVE, SYNTHESISED, RANDOM)  # strongest first
Z = 1.96  # two-sided 95% interval
DEFAULT_MAX_DROP = 0.03  # labelled data: accuracy points a model may lose (3 points)
REFUSED = "below the floor"  # how the reason of a refused step begins
# Synthesised evidence: erosion allowed, in interquartile ranges of the original's margins.
# Chosen on two model families of bench/verdict_bench.py at a time it is 1.3-1.35 and refuses
# every collapse of the third (docs/fidelity.md, "Measured").
SPREAD_FACTOR = 1.3


def wilson(k: float, n: int, z: float = Z) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (k may be fractional)."""
    if n <= 0:
        return 0.0, 1.0
    p = min(max(k / n, 0.0), 1.0)
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def scores(outputs: np.ndarray, probabilities: bool) -> np.ndarray:
    """Logit-like scores: log-probabilities when the model ends in a softmax (their
    differences are the logits' differences), the outputs themselves otherwise."""
    out = np.asarray(outputs, np.float64)
    return np.log(np.clip(out, 1e-30, None)) if probabilities else out


def margins(ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference's top class per input and its margin over the runner-up."""
    top = ref.argmax(axis=-1)
    return top, kept_margins(ref, top)


def kept_margins(out: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Score of class ``top`` minus the best other class, per input (< 0: a flip)."""
    rows = np.arange(len(out))
    own = out[rows, top]
    other = out.copy()
    other[rows, top] = -np.inf
    return own - other.max(axis=-1)


def margin_agreement(ref_margin: np.ndarray, new_margin: np.ndarray) -> float:
    """1 - the share of (erosion i, margin j) pairs where input i's erosion would flip an
    input of margin j: the agreement real inputs with these margins would see."""
    m = np.sort(np.asarray(ref_margin, np.float64))
    erosion = np.asarray(ref_margin, np.float64) - np.asarray(new_margin, np.float64)
    if not len(m):
        return 1.0
    return 1.0 - float(np.searchsorted(m, erosion, side="right").sum() / (len(m) * len(m)))


def within_spread(ref_margin: np.ndarray, new_margin: np.ndarray,
                  factor: float = SPREAD_FACTOR) -> float:
    """The share of inputs whose erosion is under ``factor`` times the interquartile range
    of the reference margins (their median when the range is 0)."""
    m = np.asarray(ref_margin, np.float64)
    if not len(m):
        return 1.0
    q1, q2, q3 = np.quantile(m, [0.25, 0.5, 0.75])
    spread = q3 - q1 if q3 > q1 else abs(q2)
    return float(np.mean(m - np.asarray(new_margin, np.float64) <= factor * spread))


@dataclass(frozen=True)
class Verdict:
    """One step's verdict: ``figure`` (agreement or accuracy, in [0, 1]) with its
    interval [lower, upper] from ``samples`` inputs, the ``floor``, the ``evidence`` that
    decided, and ``passed`` (the upper bound at or over the floor). ``agreement`` is
    plain top-1 agreement on the inputs; ``fidelity`` the data-free figure when labelled
    data decided."""

    evidence: str
    figure: float
    lower: float
    upper: float
    floor: float
    samples: int
    agreement: float | None = None
    fidelity: float | None = None

    @property
    def passed(self) -> bool:
        return self.upper >= self.floor

    @property
    def label(self) -> str:
        """What the figure is, for people."""
        return "accuracy" if self.evidence == LABELLED else f"fidelity ({self.evidence})"

    def describe(self) -> str:
        return (f"{self.label} {self.figure:.3f} (95% interval {self.lower:.3f}-"
                f"{self.upper:.3f}, {self.samples} inputs) vs floor {self.floor:.3f}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def data_free(ref: np.ndarray, new: np.ndarray, floor: float, evidence: str) -> Verdict:
    """The verdict from the reference's and the pruned model's scores on the check inputs:
    ``margin_agreement`` on representative inputs, ``within_spread`` on synthesised ones
    (see the module doc); Wilson interval."""
    top, m = margins(ref)
    m_new = kept_margins(new, top)
    n = len(m)
    stat = margin_agreement if evidence == REPRESENTATIVE else within_spread
    figure = stat(m, m_new)
    lo, hi = wilson(figure * n, n)
    agree = float(np.mean(new.argmax(axis=-1) == top)) if n else 1.0
    return Verdict(evidence, figure, lo, hi, floor, n, agree)


def agreement_only(agree: float, n: int, floor: float, evidence: str = RANDOM) -> Verdict:
    """The verdict from a plain top-1 agreement of n inputs (random box inputs)."""
    lo, hi = wilson(agree * n, n)
    return Verdict(evidence, agree, lo, hi, floor, n, agree)


def labelled(accuracy: float, base_accuracy: float, n: int, max_drop: float = DEFAULT_MAX_DROP,
             retention: float | None = None, fidelity: float | None = None) -> Verdict:
    """The verdict from measured accuracy on n labelled inputs: the floor is the original's
    accuracy minus ``max_drop`` (or times ``retention`` when the user set one)."""
    floor = base_accuracy * retention if retention is not None else base_accuracy - max_drop
    lo, hi = wilson(accuracy * n, n)
    return Verdict(LABELLED, accuracy, lo, hi, max(0.0, floor), n, fidelity=fidelity)


def from_dict(d: dict[str, Any]) -> Verdict:
    return Verdict(**{k: d[k] for k in Verdict.__dataclass_fields__})


def refusal(d: dict[str, Any] | None) -> str | None:
    """The stop reason of a step whose verdict (as a dict) refuses it, else None."""
    if d is None:
        return None
    v = from_dict(d)
    return None if v.passed else f"{REFUSED}: {v.describe()}"
