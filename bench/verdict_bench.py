"""The verdict bench: does the default gate deliver good pruned models and refuse collapses?

    python bench/verdict_bench.py [--seeds 0 1 2] [--models ...] [--analyse-only]

Models: those of bench/prune_quality.py (GAP CNN with BN before / after the ReLU
and without BN, the 784-256-128-10 MLP) and the trained ones of
bench/dag_bench.py (DS-CNN 28x28x1, MobileNetV2-0.35 32x32x3), all on the
scikit-learn digits (360 test inputs). One progressive run per (model, mode,
seed) in 5% steps to 60% of units, the floor kept off so every ratio is
reached; at every step the record holds the test accuracy and the scores of
the original and the pruned model on the data-free check set (synthesised
apart, as the run makes it: pruner.fidelity.check_inputs), on candidate check
sets made from the model (inputs held out of the fitting batch, noisy and
mixed, box-uniform inputs, the fitting inputs; kept for comparison, see
docs/fidelity.md) and
on 200 unlabeled test inputs (``--representative-data``). The gate is then
evaluated at every step from the record, as the pruner evaluates it
(pruner.verdict), and the labelled gate of ``--eval-data`` on the test split
(the same data as the truth, so it shows where the stop lands, not an
independent check):

- of the steps losing <= 3 points of accuracy, the share the gate passes
  (target >= 95%);
- every step losing > 10 points refused;
- progressive pruning with the gate stops at the first refused step: how far
  its last good ratio is from the deepest ratio within 3 points (target:
  within 5 points of ratio).

SPREAD_FACTOR (pruner.verdict) is validated by model family: chosen on two
families, checked on the third. Raw records are cached in
bench/models/verdict_raw/ (``--analyse-only`` redoes the tables from them).
Writes verdict.json, verdict.md and verdict.png in bench/results/.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.common import (  # noqa: E402
    MODEL_FILES,
    MODELS,
    RESULTS,
    dataset_for,
    git_commit,
    machine,
    machine_line,
    save_figure,
    write_json,
)
from pruner.verdict import SPREAD_FACTOR as SPREAD  # noqa: E402

QUALITY_MODELS = ("cnn_bn_before", "cnn_bn_after", "cnn_no_bn", "mlp_256")
DAG_MODELS = ("ds_cnn", "mobilenet_v2_0.35")
ALL_MODELS = QUALITY_MODELS + DAG_MODELS
MODES = ("paoding", "magnitude", "random")
MAX_RATIO = 0.6
N_REPRESENTATIVE = 200
RAW = MODELS / "verdict_raw"
GOOD, COLLAPSE = 3.0, 10.0  # points of accuracy lost
FAMILIES = {"BN CNNs": ("cnn_bn_before", "cnn_bn_after"), "no-BN CNN and MLP": ("cnn_no_bn", "mlp_256"),
            "DAGs": ("ds_cnn", "mobilenet_v2_0.35")}
CANDIDATES = ("check", "held", "noise05", "noise15", "mix3", "uniform", "fit")
FACTORS = tuple(round(0.5 + 0.05 * i, 2) for i in range(41))  # SPREAD_FACTOR candidates


def _floor() -> float:
    from pruner.config import PruneConfig

    return PruneConfig().fidelity_floor


FLOOR = _floor()  # the default fidelity floor


def load(name: str) -> tuple[Any, np.ndarray, np.ndarray]:
    """The trained model and its test split (x, y)."""
    from pruner.io import load_model

    if name in QUALITY_MODELS:
        if not MODEL_FILES[name].exists():
            from bench.train_models import train

            train(name)
        _, _, x, y = dataset_for(name)
        return load_model(MODEL_FILES[name]), np.asarray(x, np.float32), np.asarray(y)
    path = MODELS / f"{name}_digits.keras"
    if path.exists():
        from pruner.datasets import digits28, upsample

        _, _, x, y = digits28(0, flatten=False)
        if name != "ds_cnn":
            x = np.repeat(upsample(x[..., 0], 32)[..., None], 3, axis=-1)
        return load_model(path), np.asarray(x, np.float32), np.asarray(y)
    from bench.dag_bench import trained
    from tuner.quiet import native_quiet

    with native_quiet():
        model, (x, y) = trained(name, 0, n_test=10_000)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model, np.asarray(x, np.float32), np.asarray(y)


NOISE = (0.05, 0.15, 0.3)  # std of the Gaussian noise added to held-out inputs (box units)


def check_sets(model: Any, syn: np.ndarray, n_check: int, seed: int) -> dict[str, np.ndarray]:
    """The run's check set (``check``, pruner.fidelity.check_inputs) and candidates made from
    the model for comparison: the held-out part of the fitting batch, noisy and 3-way mixed
    held-out inputs, box-uniform inputs and the fitting inputs."""
    from pruner.bounds import InputBox
    from pruner.fidelity import check_inputs

    held = syn[-n_check:]
    rng = np.random.default_rng(seed + 100)
    sets = {"check": check_inputs(model, InputBox(0.0, 1.0), n_check, seed), "held": held,
            "fit": syn[:-n_check]}
    for s in NOISE:
        noisy = held + rng.normal(0.0, s, held.shape).astype(np.float32)
        sets[f"noise{int(100 * s):02d}"] = np.clip(noisy, 0.0, 1.0)
    w = rng.dirichlet(np.ones(3), 2 * len(held)).astype(np.float32)
    idx = rng.integers(0, len(held), (2 * len(held), 3))
    shape = (-1,) + (1,) * (held.ndim - 1)
    sets["mix3"] = sum(w[:, k].reshape(shape) * held[idx[:, k]] for k in range(3))
    sets["uniform"] = rng.uniform(0.0, 1.0, (128, *held.shape[1:])).astype(np.float32)
    return sets


def record(name: str, seed: int, modes: tuple[str, ...]) -> Path:
    """Run every mode once progressively and cache the per-step record: the scores of the
    original (``ref_<set>``) and of every step (``<mode>/<set>``) on the test split and on
    every candidate check set."""
    from pruner.api import prune_steps
    from pruner.bounds import InputBox
    from pruner.evaluate import outputs_probabilities, predict
    from pruner.metrics import count_macs
    from pruner.synthesis import counts, synthesize
    from pruner.verdict import scores

    path = RAW / f"{name}_s{seed}.npz"
    if path.exists():
        return path
    model, x, y = load(name)
    probs = outputs_probabilities(model)
    box = InputBox(0.0, 1.0)
    t = time.perf_counter()
    n_fit, n_check = counts(192, count_macs(model))
    syn = synthesize(model, box, n=n_fit + n_check, steps=200, seed=seed)
    synth_s = time.perf_counter() - t
    sets = {"test": x, **check_sets(model, syn, n_check, seed)}
    out: dict[str, Any] = {"y": y, "synthesis_seconds": synth_s}
    out.update({f"ref_{k}": scores(predict(model, v), probs) for k, v in sets.items()})
    for mode in modes:
        if mode == "magnitude" and seed != 0:
            continue  # deterministic: one run
        t = time.perf_counter()
        ratios, macs, per_set = [], [], {k: [] for k in sets}
        for rec, pruned in prune_steps(model, MAX_RATIO, mode, seed=seed, synthetic_inputs=syn,
                                       progress=False, keep_below_floor=True, n_random=0,
                                       eps=(), measure_tflite=False):
            ratios.append(rec.ratio)
            macs.append(rec.macs)
            for k, v in sets.items():
                per_set[k].append(scores(predict(pruned, v), probs))
        out[f"{mode}/ratio"] = np.asarray(ratios)
        out[f"{mode}/macs"] = np.asarray(macs)
        out.update({f"{mode}/{k}": np.stack(v) for k, v in per_set.items()})
        out[f"{mode}/seconds"] = time.perf_counter() - t
    RAW.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **out)
    tmp.replace(path)
    return path


# -- analysis -----------------------------------------------------------------------------

def gate(raw: Any, mode: str, step: int, evidence: str) -> Any:
    """The default gate's verdict at a step, from the record."""
    from pruner import verdict

    if evidence == verdict.SYNTHESISED:
        return verdict.data_free(raw["ref_check"], raw[f"{mode}/check"][step], FLOOR, evidence)
    if evidence == verdict.LABELLED:  # --eval-data: the test split with its labels
        y = raw["y"]
        acc = float(np.mean(raw[f"{mode}/test"][step].argmax(-1) == y))
        base = float(np.mean(raw["ref_test"].argmax(-1) == y))
        return verdict.labelled(acc, base, len(y))
    n = N_REPRESENTATIVE
    return verdict.data_free(raw["ref_test"][:n], raw[f"{mode}/test"][step][:n], FLOOR, evidence)


def analyse(names: list[str], seeds: list[int]) -> dict[str, Any]:
    """Every step of every run with its loss and verdicts, and the targets per evidence."""
    from pruner.verdict import LABELLED, REPRESENTATIVE, SYNTHESISED

    runs, seconds, erosions = [], 0.0, {}
    for name in names:
        for seed in seeds:
            path = RAW / f"{name}_s{seed}.npz"
            if not path.exists():
                continue
            raw = np.load(path)
            seconds += float(raw["synthesis_seconds"]) + sum(
                float(raw[k]) for k in raw.files if k.endswith("/seconds"))
            y = raw["y"]
            base = float(np.mean(raw["ref_test"].argmax(-1) == y))
            for mode in MODES:
                if f"{mode}/ratio" not in raw.files:
                    continue
                steps = []
                for i, ratio in enumerate(raw[f"{mode}/ratio"]):
                    acc = float(np.mean(raw[f"{mode}/test"][i].argmax(-1) == y))
                    row = {"step": i, "ratio": float(ratio),
                           "macs": int(raw[f"{mode}/macs"][i]), "accuracy": acc,
                           "lost": 100 * (base - acc)}
                    for ev in (SYNTHESISED, REPRESENTATIVE, LABELLED):
                        v = gate(raw, mode, i, ev)
                        row[ev] = {"figure": v.figure, "lower": v.lower, "upper": v.upper,
                                   "agreement": v.agreement, "passed": v.passed}
                    steps.append(row)
                    for kind in CANDIDATES if i else ():  # step 0 is the original
                        if f"ref_{kind}" in raw.files:
                            erosions.setdefault(kind, []).append(
                                (name, row["lost"], *check_margins(raw, mode, i, kind)))
                runs.append({"model": name, "seed": seed, "mode": mode, "base": base,
                             "seconds": float(raw[f"{mode}/seconds"]), "steps": steps})
    return {"runs": runs, "record_seconds": seconds,
            "summary": {ev: summary(runs, ev) for ev in (SYNTHESISED, REPRESENTATIVE, LABELLED)},
            "split": split(erosions["check"]),
            "candidates": {kind: dict(zip(("good", "good_passed", "collapses",
                                           "collapses_passed"), targets(rows, SPREAD),
                                          strict=True))
                           for kind, rows in erosions.items()}}


def check_margins(raw: Any, mode: str, step: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The original's margins on a check set and the step's for the same class."""
    from pruner.verdict import kept_margins, margins

    top, m = margins(raw[f"ref_{kind}"])
    return m, kept_margins(raw[f"{mode}/{kind}"][step], top)


def targets(rows: list[tuple[Any, ...]], factor: float) -> tuple[int, int, int, int]:
    """(good steps, passed; collapses, passed) of the synthesised gate with ``factor``."""
    from pruner.verdict import wilson, within_spread

    good = passed_good = bad = passed_bad = 0
    for _, lost, m, m_new in rows:
        n = len(m)
        ok = wilson(within_spread(m, m_new, factor) * n, n)[1] >= FLOOR
        if lost <= GOOD:
            good, passed_good = good + 1, passed_good + ok
        elif lost > COLLAPSE:
            bad, passed_bad = bad + 1, passed_bad + ok
    return good, passed_good, bad, passed_bad


def split(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Validation of SPREAD_FACTOR by model family: chosen on two families (the factor that
    passes the most good steps and no collapse, the smallest of ties), checked on the third."""
    out = []
    for held_out, members in FAMILIES.items():
        train = [r for r in rows if r[0] not in members]
        test = [r for r in rows if r[0] in members]
        if not train or not test:
            continue
        best, chosen = -1, None
        for factor in FACTORS:
            good, passed, _, passed_bad = targets(train, factor)
            if passed_bad == 0 and passed > best:
                best, chosen = passed, factor
        if chosen is None:
            continue
        out.append({"held_out": held_out, "factor": chosen,
                    "train": dict(zip(("good", "good_passed", "collapses", "collapses_passed"),
                                      targets(train, chosen), strict=True)),
                    "test": dict(zip(("good", "good_passed", "collapses", "collapses_passed"),
                                     targets(test, chosen), strict=True))})
    return out


def summary(runs: list[dict[str, Any]], evidence: str) -> dict[str, Any]:
    """The three targets for one kind of evidence."""
    good = [s[evidence]["passed"] for r in runs for s in r["steps"][1:] if s["lost"] <= GOOD]
    bad = [s[evidence]["passed"] for r in runs for s in r["steps"][1:] if s["lost"] > COLLAPSE]
    reach: dict[str, list[float]] = {}
    stops: dict[str, list[tuple[float, float, float]]] = {}
    for r in runs:
        if r["mode"] != "paoding":
            continue
        ok = [s["ratio"] for s in r["steps"] if s["lost"] <= GOOD]
        deepest = max(ok) if ok else 0.0
        kept = r["steps"][0]
        for s in r["steps"][1:]:
            if not s[evidence]["passed"]:
                break
            kept = s
        reach.setdefault(r["model"], []).append(100 * (deepest - kept["ratio"]))
        stops.setdefault(r["model"], []).append((kept["ratio"], deepest, kept["lost"]))
    return {
        "good_runs": len(good), "good_passed": int(sum(good)),
        "good_pass_rate": float(np.mean(good)) if good else None,
        "collapses": len(bad), "collapses_passed": int(sum(bad)),
        "short_of_deepest": {m: float(np.median(v)) for m, v in reach.items()},
        "short_of_deepest_per_seed": reach,
        "gate_stop_deepest_lost_per_seed": stops,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = ["# The verdict bench: does the default gate deliver good models and refuse "
             "collapses?", "",
             f"{machine_line(report['machine'])}; commit {report['commit']}; seeds "
             f"{report['seeds']}; modes {', '.join(MODES)} (magnitude is deterministic: "
             f"seed 0 only); 5% steps to {MAX_RATIO:.0%} of units; floor {FLOOR}; "
             f"{report['record_seconds']:.0f} s of synthesis and pruning in the records (nice 10, "
             "load 2-12 from other work).", "",
             "A step is good when it loses <= 3 points of test accuracy, a collapse when it "
             "loses > 10. The gate passes a step when the upper 95% Wilson bound of its "
             "figure (pruner.verdict) is at or over the floor: on synthesised inputs the share "
             f"whose margin erosion stays under {SPREAD} x the interquartile range of the "
             "original's margins, on representative inputs the margin-crossed agreement. "
             "'Short of deepest': ratio points between where progressive paoding with the "
             "gate stops and the deepest step within 3 points (median over seeds; negative: it "
             "stopped past that step, and the model kept loses more than 3 points).", "",
             "| evidence | good steps passed (target >= 95%) | collapses refused (target all) "
             "| short of deepest, per model (target <= 5) |", "|---|---|---|---|"]
    for ev, s in report["summary"].items():
        rate = "n/a" if s["good_pass_rate"] is None else f"{100 * s['good_pass_rate']:.1f}%"
        short = ", ".join(f"{m} {v:.0f}" for m, v in s["short_of_deepest"].items())
        lines.append(f"| {ev} | {s['good_passed']} of {s['good_runs']} ({rate}) | "
                     f"{s['collapses'] - s['collapses_passed']} of {s['collapses']} | {short} |")
    lines += ["", "## Validation by model family (synthesised evidence)", "",
              "SPREAD_FACTOR chosen on two families (the most good steps passed with no "
              "collapse passed; the smallest of ties), then applied to the third:", "",
              "| held-out family | factor chosen | on the two others: good passed, collapses "
              "passed | on the held-out family: good passed, collapses passed |",
              "|---|---|---|---|"]
    for v in report["split"]:
        tr, te = v["train"], v["test"]
        lines.append(f"| {v['held_out']} | {v['factor']} | {tr['good_passed']} of {tr['good']}, "
                     f"{tr['collapses_passed']} of {tr['collapses']} | {te['good_passed']} of "
                     f"{te['good']}, {te['collapses_passed']} of {te['collapses']} |")
    lines += ["", "## Candidate synthesised check sets (the same figure and factor)", "",
              "check: the run's (pruner.fidelity.check_inputs: 2n inputs of a separate "
              "50-step synthesis); held: n inputs held out of the fitting batch (the check set "
              "before); noise05/noise15: those plus Gaussian noise of std 0.05/0.15; mix3: "
              "random 3-way mixtures of them; uniform: box-uniform inputs; fit: the inputs the "
              "pruning fits on.", "",
              "| check set | good steps passed | collapses passed |", "|---|---|---|"]
    for kind, c in report["candidates"].items():
        lines.append(f"| {kind} | {c['good_passed']} of {c['good']} | {c['collapses_passed']} "
                     f"of {c['collapses']} |")
    lines += ["", "## Where progressive paoding stops with the default gate", "",
              "| model | evidence | stop ratio | deepest ratio within 3 points | points lost at "
              "the stop |", "|---|---|---|---|---|"]
    for ev, s in report["summary"].items():
        for model, rows in s["gate_stop_deepest_lost_per_seed"].items():
            cells = [" / ".join(f"{100 * r[k]:.0f}%" if k < 2 else f"{r[k]:.1f}" for r in rows)
                     for k in range(3)]
            lines.append(f"| {model} | {ev} | " + " | ".join(cells) + " |")
    lines += ["", "(one figure per seed)", "", "## Per model and mode (synthesised / representative pass rates on good "
              "steps; collapses passed)", "",
              "| model | mode | good steps | passed (synth.) | passed (repr.) | collapses | "
              "passed (synth.) | passed (repr.) |", "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["model"], r["mode"]) for r in report["runs"]},
                  key=lambda k: (ALL_MODELS.index(k[0]), MODES.index(k[1])))
    for model, mode in keys:
        steps = [s for r in report["runs"] if (r["model"], r["mode"]) == (model, mode)
                 for s in r["steps"][1:]]
        good = [s for s in steps if s["lost"] <= GOOD]
        bad = [s for s in steps if s["lost"] > COLLAPSE]
        lines.append(
            f"| {model} | {mode} | {len(good)} | "
            f"{sum(s['synthesised']['passed'] for s in good)} | "
            f"{sum(s['representative']['passed'] for s in good)} | {len(bad)} | "
            f"{sum(s['synthesised']['passed'] for s in bad)} | "
            f"{sum(s['representative']['passed'] for s in bad)} |")
    lines += ["", "Where a target is missed, the figure above is the measurement: the gate is "
              "not tuned per model.", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), squeeze=False)
    for ax, ev in zip(axes[0], ("synthesised", "representative"), strict=True):
        for k, mode in enumerate(MODES):
            steps = [s for r in report["runs"] if r["mode"] == mode for s in r["steps"][1:]]
            ax.scatter([s["lost"] for s in steps], [s[ev]["upper"] for s in steps], s=8,
                       alpha=0.5, color=f"C{k}", label=mode)
        ax.axhline(FLOOR, color="k", lw=1, ls="--", label=f"floor {FLOOR}")
        ax.axvline(GOOD, color="g", lw=0.8, ls=":")
        ax.axvline(COLLAPSE, color="r", lw=0.8, ls=":")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("accuracy points lost")
        ax.set_ylabel("upper bound of the gate's figure")
        ax.set_title(f"{ev} check inputs", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("verdict bench: " + machine_line(report["machine"]), fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--models", nargs="+", choices=ALL_MODELS, default=list(ALL_MODELS))
    p.add_argument("--analyse-only", action="store_true",
                   help="redo the tables from the cached records")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    from bench.common import quiet_tensorflow

    quiet_tensorflow()
    t0 = time.perf_counter()
    if not args.analyse_only:
        for seed in args.seeds:  # seed-major: a partial run still covers every model
            for name in args.models:
                print(f"verdict bench: {name} seed {seed} ...", file=sys.stderr, flush=True)
                record(name, seed, MODES)
    report = {"machine": machine(), "commit": git_commit(), "seeds": args.seeds,
              "floor": FLOOR, "wall_seconds": time.perf_counter() - t0,
              **analyse(args.models, args.seeds)}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "verdict.json", report)
    md = markdown(report)
    (args.out / "verdict.md").write_text(md, encoding="utf-8")
    plot(report, args.out / "verdict.png")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
