"""What a pruning run hands back: one row per step (StepRecord), the result
(PruneResult: model, trajectory, options, report.json) and why a run ends."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pruner.bounds import InputBox
from pruner.config import PruneConfig
from pruner.graph import build_graph
from pruner.schedule import Schedule

FIDELITY = "below the floor"  # pruner.verdict.REFUSED: the reason of a refused step
# Reasons a run ends that keep the last model (a crossed floor keeps the one before).
TARGET_REACHED = "target reached"
BUDGET_MET = "budget met"
NO_PROGRESS = "a step could prune nothing more"
NOTHING_TO_PRUNE = "nothing to prune"
KEEPS_MODEL = (TARGET_REACHED, BUDGET_MET, NO_PROGRESS, NOTHING_TO_PRUNE)


@dataclass
class StepRecord:
    """One row of the trajectory (step 0 is the original model).

    ``ratio`` is units removed / prunable units of the original; ``robust`` maps
    attack -> {eps: robust accuracy}; ``seconds`` is the wall time of the step
    (selection, surgery and measurement); ``stop`` says why the run ended after
    this step, if it did.
    """

    step: int
    ratio: float
    units: dict[str, int]
    params: int
    macs: int
    tflite_bytes: int | None = None
    accuracy: float | None = None
    robust: dict[str, dict[float, float]] | None = None
    fidelity: float | None = None
    fidelity_random: float | None = None
    fidelity_synthetic: float | None = None
    fidelity_kl: float | None = None
    seconds: float = 0.0
    stop: str | None = None
    verdict: dict[str, Any] | None = None  # pruner.verdict.Verdict.to_dict() of this step

    @property
    def data_free_fidelity(self) -> float | None:
        """The data-free figure of the verdict (pruner.verdict): estimated top-1 agreement
        with the original on real inputs, from its margins on the check inputs
        (representative or synthesised), or plain agreement on random box inputs."""
        v = self.verdict
        if v is not None:
            return v["fidelity"] if v["evidence"] == "labelled" else v["figure"]
        return self.fidelity_synthetic if self.fidelity_synthetic is not None else (
            self.fidelity_random
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data_free_fidelity"] = self.data_free_fidelity
        if self.robust is not None:
            d["robust"] = {a: {str(e): v for e, v in r.items()} for a, r in self.robust.items()}
        return d


@dataclass
class PruneResult:
    """The pruned model, its trajectory and the options that produced it."""

    model: Any
    trajectory: list[StepRecord]
    config: PruneConfig = field(default_factory=PruneConfig)
    stop_reason: str | None = None

    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.config.target, self.config.step, self.config.round_to)

    @property
    def input_box(self) -> InputBox:
        return InputBox(self.config.input_lo, self.config.input_hi)

    @property
    def eps(self) -> tuple[float, ...]:
        return self.config.eps

    @property
    def final(self) -> StepRecord:
        """The trajectory row of ``model`` (the last one within the floors)."""
        for rec in reversed(self.trajectory):
            if rec.units == widths(self.model):
                return rec
        return self.trajectory[-1]

    def to_dict(self) -> dict[str, Any]:
        """The report: every option (``config``, which from_config turns back into the
        run's PruneConfig), why the run stopped, and the trajectory."""
        final = self.final
        from pruner.outcome import outcome  # verdict, stop reason, ratio reached

        return {
            "config": self.config.get_config(),
            "mode": self.mode,
            "seed": self.seed,
            "schedule": self.schedule.get_config(),
            "stop_reason": self.stop_reason,
            "final_step": final.step,
            "data_free_fidelity": final.data_free_fidelity,
            **outcome(self.trajectory, final, self.config),
            "trajectory": [rec.to_dict() for rec in self.trajectory],
        }

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write pruned.keras, pruned.tflite, report.json and report.png into out_dir,
        all or nothing (staged beside it, then moved in, as the command line does)."""
        from core.files import staged_dir
        from pruner.export import export_tflite

        out = Path(out_dir)
        report = self.to_dict()
        with staged_dir(out) as tmp:
            self.model.save(tmp / "pruned.keras")
            export_tflite(self.model, tmp / "pruned.tflite")
            (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
            try:
                from pruner.report import plot_trajectory
            except ImportError:
                plot_trajectory = None
            if plot_trajectory is not None:
                plot_trajectory(report, tmp / "report.png")
        return out


def widths(model: Any) -> dict[str, int]:
    return {g.name: g.width for g in build_graph(model).groups}


def fidelity_failed(reason: str | None) -> bool:
    return bool(reason) and reason.startswith(FIDELITY)
