"""What the synthesis steps buy on a 96x96 MobileNetV2: time against kept accuracy.

    python bench/synthesis_steps.py [--quick]

MobileNetV2-0.35 on 96x96x3 (trained here on scikit-learn's digits upsampled, as
``bench/dag_bench.py`` does at 32x32) is pruned by paoding with every default but
``synthesis_steps`` (the optimisation steps of ``pruner.synthesis.synthesize``) to 60%
of its units in 5% steps. Per step count: the seconds of the synthesis and of the rest
of the run (selection, surgery, refit, data-free fidelity; no TFLite size, evaluation
on 300 test inputs included), and test accuracy and the data-free fidelity figure
against MACs removed. The default, 200 steps, is the 32x32 calibration; fewer steps are
the way to a faster run, and this says what they cost.
Writes bench/results/synthesis_steps.json, .md and .png.
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

from bench.common import (  # noqa: E402
    RESULTS,
    git_commit,
    machine,
    machine_line,
    save_figure,
    write_json,
)
from tuner.quiet import native_quiet  # noqa: E402

FULL = {"steps": [200, 100, 50, 20], "target": 0.6, "epochs": 20, "seed": 0}
QUICK = {"steps": [200, 20], "target": 0.3, "epochs": 5, "seed": 0}


def model_and_data(cfg: dict[str, Any], cache: Path | None) -> tuple[Any, Any]:
    """The trained model and its 300 test inputs: from ``cache`` (a .keras file with its
    .npz of test inputs beside it) when it exists, else trained (and saved there)."""
    import numpy as np

    from bench.dag_bench import trained
    from pruner.io import load_model

    if cache is not None and cache.is_file():
        with np.load(cache.with_suffix(".npz")) as d:
            return load_model(cache), (d["x"], d["y"])
    print(f"training MobileNetV2-0.35 96x96 on digits ({cfg['epochs']} epochs) ...",
          file=sys.stderr, flush=True)
    with native_quiet():
        model, data = trained("mobilenet_v2_0.35", cfg["seed"], 96, cfg["epochs"], 300)
    if cache is not None:
        model.save(cache)
        np.savez(cache.with_suffix(".npz"), x=data[0], y=data[1])
    return model, data


def run(cfg: dict[str, Any], cache: Path | None = None) -> list[dict[str, Any]]:
    """One pruning run per step count on one trained model."""
    from pruner.api import prune_steps
    from pruner.bounds import InputBox
    from pruner.metrics import count_macs
    from pruner.synthesis import counts, synthesize

    model, data = model_and_data(cfg, cache)
    n = sum(counts(192, count_macs(model)))
    rows = []
    for steps in cfg["steps"]:
        print(f"  {steps} synthesis steps ...", file=sys.stderr, flush=True)
        with native_quiet():
            t = time.perf_counter()
            x = synthesize(model, InputBox(), n=n, steps=steps, seed=cfg["seed"])
            t_synth = time.perf_counter() - t
            t = time.perf_counter()
            trajectory = [
                {"ratio": rec.ratio, "macs": rec.macs, "accuracy": rec.accuracy,
                 "fidelity": rec.data_free_fidelity}
                for rec, _ in prune_steps(
                    model, cfg["target"], "paoding", step=0.05, eval_data=data, eps=(),
                    attacks=(), n_random=0, measure_tflite=False, progress=False,
                    seed=cfg["seed"], synthetic_inputs=x, keep_below_floor=True)
            ]
            t_rest = time.perf_counter() - t
        for r in trajectory:
            r["macs_removed"] = 1 - r["macs"] / trajectory[0]["macs"]
        rows.append({"steps": steps, "inputs": n, "synthesis_seconds": t_synth,
                     "rest_seconds": t_rest, "trajectory": trajectory,
                     **tracking(trajectory)})
        last = trajectory[-1]
        print(f"    synthesis {t_synth:.1f} s, rest {t_rest:.1f} s; accuracy "
              f"{trajectory[0]['accuracy']:.3f} -> {last['accuracy']:.3f} at "
              f"{last['macs_removed']:.0%} of MACs", file=sys.stderr, flush=True)
    return rows


def tracking(trajectory: list[dict[str, Any]]) -> dict[str, Any]:
    """How the figure follows the loss: its rank correlation with test accuracy over the
    steps, its lowest value while accuracy is within 3 points of the original (a gate
    must pass those) and its highest once more than 10 points are lost (a gate must
    refuse those)."""
    import numpy as np

    acc0 = trajectory[0]["accuracy"]
    rows = trajectory[1:]
    good = [r["fidelity"] for r in rows if acc0 - r["accuracy"] <= 0.03]
    bad = [r["fidelity"] for r in rows if acc0 - r["accuracy"] > 0.10]

    def ranks(v: list[float]) -> np.ndarray:
        return np.argsort(np.argsort(v)).astype(float)

    fid, acc = [r["fidelity"] for r in rows], [r["accuracy"] for r in rows]
    rho = (float(np.corrcoef(ranks(fid), ranks(acc))[0, 1])
           if len(rows) > 2 and np.std(fid) > 0 and np.std(acc) > 0 else None)
    return {"spearman": rho, "lowest_good": min(good) if good else None,
            "highest_collapsed": max(bad) if bad else None}


def plot(report: dict[str, Any], path: Path) -> None:
    """Accuracy (solid) and data-free fidelity (dotted) against MACs removed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for i, row in enumerate(report["runs"]):
        traj, color = row["trajectory"], f"C{i}"
        x = [100 * r["macs_removed"] for r in traj]
        ax.plot(x, [100 * r["accuracy"] for r in traj], "o-", color=color, ms=3,
                label=f"{row['steps']} steps ({row['synthesis_seconds']:.0f} s synthesis)")
        ax.plot(x, [100 * r["fidelity"] for r in traj], ":", color=color, lw=1)
    ax.axhline(80, color="k", lw=0.6, ls="--", label="fidelity floor (0.8)")
    ax.set_xlabel("MACs removed (%)")
    ax.set_ylabel("test accuracy (solid), data-free fidelity x 100 (dotted)")
    ax.set_title("MobileNetV2-0.35 96x96: synthesis steps\n"
                 + machine_line(report["machine"]), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def steps_flag(report: dict[str, Any]) -> str:
    cfg = report["config"]
    default = (QUICK if cfg.get("quick") else FULL)["steps"]
    return "" if cfg["steps"] == default else " --steps " + " ".join(map(str, cfg["steps"]))


def markdown(report: dict[str, Any]) -> str:
    runs = report["runs"]
    head = "| steps | synthesis s | rest s | rank corr. | lowest <=3 pts | highest >10 pts | " + " | ".join(
        f"{100 * r['macs_removed']:.0f}% MACs" for r in runs[0]["trajectory"][1:]) + " |"
    lines = [head, "|" + "---|" * (6 + len(runs[0]["trajectory"]) - 1)]

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for row in runs:
        cells = [f"{100 * r['accuracy']:.1f} [{r['fidelity']:.2f}]"
                 for r in row["trajectory"][1:]]
        lines.append(f"| {row['steps']} | {row['synthesis_seconds']:.1f} | "
                     f"{row['rest_seconds']:.1f} | {num(row.get('spearman'))} | "
                     f"{num(row.get('lowest_good'))} | {num(row.get('highest_collapsed'))} | "
                     + " | ".join(cells) + " |")
    original = 100 * runs[0]["trajectory"][0]["accuracy"]
    return "\n".join([
        "# Synthesis steps: time against kept accuracy (MobileNetV2-0.35, 96x96x3)", "",
        f"Machine: {machine_line(report['machine'])}. Run {report['started']} at commit "
        f"{report.get('commit') or 'unknown'}; `python bench/synthesis_steps.py"
        f"{' --quick' if report['config'].get('quick') else ''}{steps_flag(report)}`. "
        "Trained on digits "
        f"upsampled to 96x96 ({original:.1f}% on 300 test inputs), pruned by paoding with "
        f"every default but the synthesis steps ({runs[0]['inputs']} synthesised inputs) "
        f"to {100 * report['config']['target']:.0f}% of units in 5% steps, one seed. "
        "Cells: test accuracy [data-free fidelity] per step; 'rest' is the run after the "
        "synthesis with the test evaluation, without the TFLite size.", "", *lines, "",
    ])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="200 and 20 steps to 30%%, 5 epochs")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--steps", type=int, nargs="+", help="step counts (default: the config's)")
    p.add_argument("--model-cache", type=Path, metavar="FILE.keras",
                   help="load the trained model from here (with FILE.npz, its test inputs), "
                        "or train it and save it there")
    args = p.parse_args()
    cfg = dict(QUICK if args.quick else FULL, quick=args.quick)
    if args.steps:
        cfg["steps"] = args.steps
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.perf_counter()
    report = {"machine": machine(), "started": started, "commit": git_commit(), "config": cfg,
              "runs": run(cfg, args.model_cache)}
    report["wall_seconds"] = time.perf_counter() - t0
    report["load"] = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / "synthesis_steps"
    write_json(stem.with_suffix(".json"), report)
    md = markdown(report)
    stem.with_suffix(".md").write_text(md, encoding="utf-8")
    plot(report, stem.with_suffix(".png"))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
