"""The verdict's synthesised check inputs and the gate that measures every step on them.

Without representative data the check set is synthesised apart from the inputs
the pruning fits on (another seed, CHECK_STEPS optimisation steps, twice the
held-out count): compensation refits on its own batch, and on inputs of that
same batch pruned BN CNNs that had lost 14 points still read as faithful
(bench/results/verdict.md). With ``--representative-data`` the check set is
those inputs. ``Gate`` turns a step's outputs into a ``pruner.verdict.Verdict``:
labelled evaluation data decides when given, with the data-free figure beside
it; the mean KL divergence on the check set is recorded as a diagnostic.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pruner import verdict as vd
from pruner.evaluate import outputs_probabilities, predict

CHECK_STEPS = 50  # rougher than the fitting inputs (200 steps by default), and cheaper
CHECK_SEED = 1000  # offset from the run's seed: never the fitting batch


def check_inputs(model: Any, box: Any, n: int, seed: int = 0) -> np.ndarray:
    """2n synthesised check inputs for ``model`` (see the module doc)."""
    from pruner.synthesis import synthesize

    return synthesize(model, box, n=2 * n, steps=CHECK_STEPS, seed=seed + CHECK_SEED)


def kl_divergence(ref_scores: np.ndarray, scores: np.ndarray) -> float:
    """Mean KL(reference || model) in nats from logit-like scores."""
    def softmax(s: np.ndarray) -> np.ndarray:
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        return np.clip(p / p.sum(axis=-1, keepdims=True), 1e-12, None)

    p0, p1 = softmax(ref_scores), softmax(scores)
    return max(0.0, float(np.mean(np.sum(p0 * (np.log(p0) - np.log(p1)), axis=-1))))


class Gate:
    """The verdict of every step of a run (see pruner.verdict).

    ``check``: the data-free check inputs, of kind ``evidence`` (representative or
    synthesised); None leaves top-1 agreement on ``random_samples`` random box inputs
    (the step's ``fidelity_random``). With labelled data (``labelled`` samples) the step's measured
    accuracy decides against the original's (the first step's) minus ``max_drop``, or
    times ``retention`` when set.
    """

    def __init__(self, reference: Any, floor: float, check: np.ndarray | None = None,
                 evidence: str = vd.SYNTHESISED, labelled: int = 0,
                 max_drop: float = vd.DEFAULT_MAX_DROP, retention: float | None = None,
                 random_samples: int = 0) -> None:
        self.floor, self.check, self.evidence = floor, check, evidence
        self.random_samples = random_samples
        self.labelled, self.max_drop, self.retention = labelled, max_drop, retention
        self.probs = outputs_probabilities(reference)
        self.ref = None if check is None else self.scores(reference, check)
        self.base_accuracy: float | None = None

    def scores(self, model: Any, x: np.ndarray) -> np.ndarray:
        return vd.scores(predict(model, x), self.probs)

    def __call__(self, model: Any, rec: Any) -> vd.Verdict | None:
        """The verdict of ``model``, whose StepRecord ``rec`` holds its measurements
        (``accuracy``, ``fidelity_random``); sets the record's check-set figures."""
        free = None
        if self.ref is not None:
            new = self.scores(model, self.check)
            free = vd.data_free(self.ref, new, self.floor, self.evidence)
            rec.fidelity_synthetic, rec.fidelity_kl = free.agreement, kl_divergence(self.ref, new)
        elif rec.fidelity_random is not None:
            free = vd.agreement_only(rec.fidelity_random, self.random_samples, self.floor)
        if self.labelled and rec.accuracy is not None:
            if self.base_accuracy is None:
                self.base_accuracy = rec.accuracy
            return vd.labelled(rec.accuracy, self.base_accuracy, self.labelled, self.max_drop,
                               self.retention, None if free is None else free.figure)
        return free
