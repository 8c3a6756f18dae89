"""What a run did, said for people: the verdict that decided, why it stopped, the ratio
it reached against the target, and where the last good model was when it was refused."""

from __future__ import annotations

from typing import Any

from pruner.verdict import LABELLED, REFUSED, from_dict


def _pct(ratio: float) -> str:
    return f"{100 * ratio:.1f}%"


def stop_explanation(reason: str | None, final: Any, last: Any, cfg: Any) -> str:
    """One sentence: why the run ended and the share of units its model removes."""
    reached, target = final.ratio, cfg.target
    if reason is None:
        return f"removed {_pct(reached)} of units (target {_pct(target)})"
    if reason.startswith(REFUSED):
        return (f"refused at step {last.step} ({_pct(last.ratio)} of units): "
                f"{reason[len(REFUSED) + 2:]}; the last model within the floor is step "
                f"{final.step} ({_pct(reached)}; target {_pct(target)})")
    text = f"{reason}: {_pct(reached)} of units removed (target {_pct(target)})"
    if reason == "target reached" and reached < target - 0.01:
        text += ("; every layer reached its goal, in whole units, and on models with coupled "
                 "channels kept widths are rounded to multiples the kernels run fast on "
                 "(--round-to 1 keeps exact targets)")
    if final.step != last.step:
        text += f"; the model kept is step {final.step}"
    return text


def outcome(trajectory: list[Any], final: Any, cfg: Any) -> dict[str, Any]:
    """The report's summary keys: ``target``, ``ratio_reached``, ``stop_explanation``,
    ``verdict`` (of the model kept) and ``deciding_evidence``."""
    last = trajectory[-1] if trajectory else final
    v = final.verdict
    below = v is not None and not from_dict(v).passed
    text = stop_explanation(last.stop, final, last, cfg)
    if below:
        text += "; its verdict is below the floor and it was kept because of keep_below_floor"
    return {
        "target": cfg.target,
        "ratio_reached": final.ratio,
        "stop_explanation": text,
        "verdict": v,
        "deciding_evidence": None if v is None else v["evidence"],
    }


def refusal_message(refused: Any, last_ok: Any, cfg: Any) -> str:
    """The one-line error of a refused run: what was measured and where the last good
    model was."""
    v = from_dict(refused.verdict)
    measured = v.describe()
    if v.evidence == LABELLED and v.fidelity is not None:
        measured += f"; data-free fidelity {v.fidelity:.3f}"
    return (f"refused at step {refused.step} ({_pct(refused.ratio)} of units removed), "
            f"{v.evidence} evidence: {measured}. The last model within the floor is step "
            f"{last_ok.step} ({_pct(last_ok.ratio)}; target {_pct(cfg.target)}): lower the "
            "target to it, or keep the target's model regardless (--keep-below-floor)")
