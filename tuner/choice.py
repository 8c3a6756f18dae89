"""Choosing among candidates: what each misses of a profile's budgets, how far it is, the best."""

from __future__ import annotations

from core.errors import BudgetError
from device_profiles.schema import DeviceProfile
from tuner.candidates import Candidate, TuneResult
from tuner.objectives import OBJECTIVES


def misses(c: Candidate, p: DeviceProfile, correction: float, margin: float = 0.0) -> list[str]:
    """Every budget a candidate misses: measured on the device where it was, else predicted.

    A predicted p90 must be within the budget less ``margin`` (the closed loop's noise
    margin when the choice is to be verified on a device, where that is what passes).
    """
    b = p.budgets
    out = []
    m = c.measured or {}
    if m.get("misses"):  # the closed loop's verdict on latency, memory and the device
        out += list(m["misses"])
    if m.get("p90_ms") is None and not any(x.startswith("p90") for x in out):
        p90 = c.predicted_p90_ms * correction
        how = "predicted" if correction == 1.0 else f"predicted x{correction:.2f} measured/predicted"
        limit = b.p90_latency_ms * (1.0 - margin)
        if p90 > limit and margin:
            out.append(f"p90 latency {p90:.3g} ms > {limit:.3g} ms ({how}; budget "
                       f"{b.p90_latency_ms:g} ms less the {margin:.0%} noise margin)")
        elif p90 > limit:
            out.append(f"p90 latency {p90:.3g} ms > {b.p90_latency_ms:g} ms ({how})")
    if m.get("peak_memory_mb") is None and c.predicted_memory_mb > b.peak_memory_mb:
        out.append(
            f"peak memory {c.predicted_memory_mb:.4g} MB > {b.peak_memory_mb:g} MB (predicted)"
        )
    if c.size_kb > b.model_size_kb:
        out.append(f"model size {c.size_kb:.1f} KB > {b.model_size_kb:g} KB")
    if c.accuracy_retention is not None and c.accuracy_retention < b.min_accuracy_retention:
        out.append(f"accuracy retention {c.accuracy_retention:.3f} < {b.min_accuracy_retention:g}")
    if c.robust_retention is not None and c.robust_retention < b.min_robust_retention:
        out.append(
            f"robust accuracy retention {c.robust_retention:.3f} < {b.min_robust_retention:g}"
        )
    return out


def excess(c: Candidate, p: DeviceProfile, correction: float) -> float:
    """How far a candidate is from meeting the budgets (0 when it meets them).

    Latency and memory are the measured medians where the device measured them.
    """
    if c.runtime_error:
        return float("inf")
    b = p.budgets
    m = c.measured or {}
    p90 = m.get("p90_ms") or c.predicted_p90_ms * correction
    mem = m.get("peak_memory_mb") or c.predicted_memory_mb
    ratios = [p90 / b.p90_latency_ms, mem / b.peak_memory_mb, c.size_kb / b.model_size_kb]
    if c.accuracy_retention is not None:
        ratios.append(b.min_accuracy_retention / max(c.accuracy_retention, 1e-9))
    if c.robust_retention is not None:
        ratios.append(b.min_robust_retention / max(c.robust_retention, 1e-9))
    return float(sum(max(0.0, r - 1.0) for r in ratios))


def _p90(c: Candidate, correction: float = 1.0) -> float:
    m = (c.measured or {}).get("p90_ms")
    return float(m) if m is not None else c.predicted_p90_ms * correction


def rank_key(c: Candidate, objective: str = "robust") -> tuple[float, ...]:
    """Sort key: the best candidate for ``objective`` first; ties go to robustness."""
    robust = (-(c.robust or 0.0), -(c.accuracy or 0.0))
    if objective == "smallest":
        return (round(c.size_kb, 1), *robust, c.predicted_p90_ms)
    if objective == "fastest":
        return (round(_p90(c), 3), *robust, c.size_kb)
    return (*robust, c.predicted_p90_ms)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def choose(result: TuneResult) -> Candidate | None:
    """Mark the best candidate that meets every budget; write the statement."""
    p = result.profile
    for c in result.candidates:
        c.chosen = False
        if c.evaluated:
            c.misses = misses(c, p, result.correction, result.latency_margin)
    ok = [c for c in result.candidates if c.meets and not c.measured_miss]
    if ok:
        best = min(ok, key=lambda c: rank_key(c, result.objective))
        best.chosen = True
        result.chosen = best
        measured = (best.measured or {}).get("p90_ms")
        if measured is not None:
            emulated = bool(best.measured.get("emulated"))  # type: ignore[union-attr]
            latency = f"p90 {measured:.3g} ms measured{' under emulation' if emulated else ''}"
        else:
            scaled = "" if result.correction == 1.0 else f" x{result.correction:.2f} measured"
            latency = f"p90 {best.predicted_p90_ms * result.correction:.3g} ms predicted{scaled}"
        result.statement = (
            f"chosen {best.key} for {p.id}: robust accuracy {best.robust:.3f} "
            f"(retention {_fmt(best.robust_retention)}), accuracy {best.accuracy:.3f}, "
            f"{latency}, {best.size_kb:.1f} KB; meets every budget as predicted, "
            f"not verified on a device; {why(best, ok, result.objective)}"
        )
        return best
    result.chosen = None
    evaluated = [c for c in result.candidates if c.evaluated]
    loadable = [c for c in evaluated if not c.runtime_error]
    pool = loadable or evaluated
    closest = min(pool, key=lambda c: (excess(c, p, result.correction), rank_key(c)))
    missed = "; ".join(closest.misses) or (closest.runtime_error or "")
    if closest.runtime_error and closest.misses:
        missed = f"{closest.runtime_error}; {missed}"
    result.statement = (
        f"no candidate meets every budget of {p.id}; the closest is {closest.key} "
        f"(ratio {closest.ratio:.2f}, {closest.size_kb:.1f} KB, "
        f"p90 {closest.predicted_p90_ms * result.correction:.3g} ms predicted): it misses {missed}"
    )
    return None


def why(best: Candidate, ok: list[Candidate], objective: str) -> str:
    """Why ``best`` of the candidates ``ok`` (every one meets the budgets): the objective,
    and what the other objectives would have taken instead."""
    n = len(ok)
    line = (f"objective {objective}: {OBJECTIVES[objective]} of the {n} candidate"
            f"{'s' if n != 1 else ''} that meet every budget")
    others = []
    for other in OBJECTIVES:
        if other == objective:
            continue
        alt = min(ok, key=lambda c: rank_key(c, other))
        if alt is not best:
            others.append(f"--objective {other} would take {alt.key} ({alt.size_kb:.1f} KB, "
                          f"p90 {_p90(alt):.3g} ms, robust {_fmt(alt.robust)})")
    return line + (f" ({'; '.join(others)})" if others else "")


def raise_if_impossible(result: TuneResult) -> None:
    """BudgetError with the statement when no candidate meets the budgets."""
    if result.chosen is None:
        raise BudgetError(result.statement)
