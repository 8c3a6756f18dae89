"""What a run measures at each step: sizes, accuracy and robust accuracy on evaluation
data, agreement on random inputs and the step's fidelity verdict (pruner.fidelity.Gate)."""

from __future__ import annotations

from typing import Any

from pruner.bounds import InputBox
from pruner.config import PruneConfig
from pruner.graph import Graph, as_model
from pruner.metrics import count_macs, scaled_count
from pruner.result import StepRecord


class Meter:
    """Measures a model for the trajectory."""

    def __init__(
        self, reference: Any, data: Any, box: InputBox, cfg: PruneConfig, check: Any = None,
        evidence: str = "synthesised",
    ) -> None:
        self.reference, self.data, self.box, self.cfg = reference, data, box, cfg
        self.check = check  # the verdict's data-free check inputs (pruner.fidelity)
        self.random_x = self.random_top = self.data_top = None
        from pruner.evaluate import predict, random_inputs

        if cfg.n_random > 0:  # fewer for costly models: 7 passes of 512 took 19 s at 96x96
            shape = tuple(int(d) for d in reference.inputs[0].shape[1:])
            n = scaled_count(cfg.n_random, count_macs(reference), 64)
            self.random_x = random_inputs(box, shape, n, cfg.seed)
            self.random_top = predict(reference, self.random_x).argmax(axis=-1)
        if data is not None:  # the reference's answers, for agreement with it
            self.data_top = predict(reference, data[0]).argmax(axis=-1)
        from pruner.fidelity import Gate  # the verdict of every step

        self.gate = Gate(reference, cfg.fidelity_floor, check, evidence,
                         0 if data is None else len(data[0]), cfg.max_accuracy_drop,
                         cfg.min_accuracy_retention,
                         0 if self.random_x is None else len(self.random_x))

    def tflite_bytes(self, current: Graph) -> int:
        """Size of the float32 TFLite export (seconds on large models: first and last step)."""
        from pruner.export import export_tflite

        return len(export_tflite(as_model(current)))

    def __call__(self, current: Graph, step: int, ratio: float, units: dict[str, int],
                 tflite: bool = False) -> StepRecord:
        rec = StepRecord(step, ratio, units, current.params(), current.macs())  # no model built
        model = current
        if self.data is not None or self.random_x is not None or self.check is not None:
            model = as_model(current)
        if tflite and self.cfg.measure_tflite:
            rec.tflite_bytes = self.tflite_bytes(current)
        from pruner import evaluate

        if self.data is not None:
            x, y = self.data
            rec.accuracy = evaluate.accuracy(model, x, y)
            rec.fidelity = evaluate.accuracy(model, x, self.data_top)
            if self.cfg.eps and self.cfg.attacks:
                rec.robust = {
                    attack: {
                        float(e): evaluate.robust_accuracy(
                            model,
                            x,
                            y,
                            float(e),
                            self.box,
                            attack=attack,
                            steps=self.cfg.pgd_steps,
                            seed=self.cfg.seed,
                        )
                        for e in self.cfg.eps
                    }
                    for attack in self.cfg.attacks
                }
        if self.random_x is not None:
            rec.fidelity_random = evaluate.accuracy(model, self.random_x, self.random_top)
        verdict = self.gate(model, rec)
        rec.verdict = None if verdict is None else verdict.to_dict()
        return rec


def robust_retention(rec: StepRecord, base: StepRecord) -> float | None:
    if not rec.robust or not base.robust:
        return None
    kept = [
        rec.robust[a][e] / base.robust[a][e]
        for a in base.robust
        for e in base.robust[a]
        if base.robust[a][e] > 0
    ]
    return min(kept) if kept else None
