"""The quality suite of the pruning benchmark: CNNs whatever the BN placement, and MLPs.

    python bench/prune_bench.py --suite quality [--seeds 0 1 2]

Models (bench/train_models.py trains any that are missing): the GAP CNN with
BatchNormalization before the ReLU, after it, and without it, and the
784-256-128-10 digits MLP. For each seed, paoding prunes progressively once
(5% steps, synthesised inputs for scoring, the consumer refit and the
data-free fidelity) and is measured where the trajectory passes 10%, 20%,
... 50% of units removed; magnitude (one-shot) and random (one-shot, same
seeds) are measured at the same ratios. Measured on the held-out test split
(360 digits): accuracy, FGSM and PGD robust accuracy at eps 0.05 (PGD: 10
steps of eps/4, random start; robust = correct clean and attacked) and, for
every mode, the data-free fidelity on the seed's held-out synthesised inputs
and their interpolations (score exp(-KL/0.15), and top-1 agreement). Medians
over seeds. A check asks whether the fidelity tracks the real loss: every run
losing more than 10 points of accuracy is under the default floor. Writes prune_quality.json, .md and
.png in bench/results/.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import MODEL_FILES, dataset_for, git_commit, machine, machine_line, write_json

MODELS = ("cnn_bn_before", "cnn_bn_after", "cnn_no_bn", "mlp_256")
MODES = ("paoding", "magnitude", "random")
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5)
EPS = 0.05
GOALS = {  # (ratio, max points lost by paoding) per family
    "cnn": (0.3, 3.0),
    "mlp": (0.5, 2.0),
}


def measure(model: Any, x: np.ndarray, y: np.ndarray, pgd_steps: int = 10) -> dict[str, float]:
    from pruner import evaluate
    from pruner.bounds import InputBox

    box = InputBox(0.0, 1.0)
    return {
        "accuracy": evaluate.accuracy(model, x, y),
        "fgsm": evaluate.robust_accuracy(model, x, y, EPS, box, attack="fgsm"),
        "pgd": evaluate.robust_accuracy(model, x, y, EPS, box, attack="pgd", steps=pgd_steps,
                                        seed=0),
    }


def run_model(name: str, seeds: list[int], bar: Any) -> dict[str, Any]:
    from pruner.api import prune, prune_steps
    from pruner.bounds import InputBox
    from pruner.io import load_model
    from pruner.synthesis import synthesize

    model = load_model(MODEL_FILES[name])
    _, _, x, y = dataset_for(name)
    base = measure(model, x, y)
    rows: list[dict[str, Any]] = []
    quiet = dict(progress=False, measure_tflite=False, eps=(), keep_below_floor=True)
    for seed in seeds:
        bar.set_postfix_str(f"{name} s{seed} synthesis")
        t = time.perf_counter()
        syn = synthesize(model, InputBox(0.0, 1.0), n=192 + 96, steps=200, seed=seed)
        synth_s = time.perf_counter() - t
        bar.set_postfix_str(f"{name} s{seed} paoding")
        t = time.perf_counter()
        wanted = list(RATIOS)
        for rec, pruned in prune_steps(model, max(RATIOS), "paoding", seed=seed, n_random=0,
                                       synthetic_inputs=syn, **quiet):
            if wanted and rec.ratio >= wanted[0] - 0.02:
                r = wanted.pop(0)
                row = measure(pruned, x, y)
                row.update(mode="paoding", seed=seed, target=r, ratio=rec.ratio,
                           fidelity=rec.data_free_fidelity, agreement=rec.fidelity_synthetic,
                           kl=rec.fidelity_kl, macs=rec.macs,
                           seconds_to_here=time.perf_counter() - t + synth_s)
                rows.append(row)
                bar.update(1)
        for mode in ("magnitude", "random"):
            if mode == "magnitude" and seed != seeds[0]:
                continue  # deterministic
            for r in RATIOS:
                bar.set_postfix_str(f"{name} s{seed} {mode} {r}")
                res = prune(model, r, mode, seed=seed, step=r, n_random=0,
                            synthetic_inputs=syn, **quiet)
                row = measure(res.model, x, y)
                row.update(mode=mode, seed=seed, target=r, ratio=res.final.ratio,
                           fidelity=res.final.data_free_fidelity,
                           agreement=res.final.fidelity_synthetic, kl=res.final.fidelity_kl,
                           macs=res.final.macs)
                rows.append(row)
                bar.update(1)
    med = []
    for mode in MODES:
        for r in RATIOS:
            g = [row for row in rows if row["mode"] == mode and row["target"] == r]
            if g:
                med.append({"mode": mode, "target": r, "seeds": [row["seed"] for row in g],
                            **{k: float(np.median([row[k] for row in g]))
                               for k in ("accuracy", "fgsm", "pgd", "ratio", "fidelity",
                                         "agreement", "kl")}})
    return {"original": base, "rows": med, "per_seed": rows, "eval_samples": len(x)}


def checks(name: str, res: dict[str, Any]) -> list[str]:
    """The issue's goals, each as met / MISSED with the figure."""
    out = []
    base = res["original"]
    find = {(r["mode"], r["target"]): r for r in res["rows"]}
    ratio, points = GOALS["mlp" if name.startswith("mlp") else "cnn"]
    p = find.get(("paoding", ratio))
    if p:
        lost = 100 * (base["accuracy"] - p["accuracy"])
        ok = lost <= points
        out.append(f"{name}: paoding at {ratio:.0%} loses {lost:.1f} points (goal <= {points}): "
                   f"{'met' if ok else 'MISSED'}")
    if name.startswith("mlp") and p:
        keep = p["fgsm"] / base["fgsm"] if base["fgsm"] else float("nan")
        out.append(f"{name}: FGSM robust accuracy at 50% is {keep:.0%} of the original's "
                   f"(goal >= 90%): {'met' if keep >= 0.9 else 'MISSED'}")
    if not name.startswith("mlp"):
        behind = [r for r in RATIOS if find.get(("paoding", r)) and any(
            find.get((m, r)) and find[(m, r)]["accuracy"] >= find[("paoding", r)]["accuracy"]
            for m in ("magnitude", "random"))]
        out.append(f"{name}: paoding ahead of magnitude and random at every ratio 0.1-0.5: "
                   + ("met" if not behind else f"MISSED at {behind}"))
    return out


FLOOR = 0.8  # PruneConfig's default fidelity floor


def fidelity_checks(report: dict[str, Any]) -> list[str]:
    """Does the data-free fidelity track the real loss? Over every run (mode, ratio, seed):
    runs that lose more than 10 points should be under the floor, runs within 3 above it."""
    big, small = [], []
    for res in report["models"].values():
        base = res["original"]["accuracy"]
        for row in res["per_seed"]:
            if row.get("fidelity") is None:
                continue
            lost = 100 * (base - row["accuracy"])
            if lost > 10:
                big.append(row["fidelity"] < FLOOR)
            elif lost <= 3:
                small.append(row["fidelity"] >= FLOOR)
    out = []
    if big:
        out.append(f"fidelity under the floor {FLOOR} on {sum(big)} of {len(big)} runs that lose "
                   f"> 10 points: {'met' if all(big) else 'MISSED'}")
    if small:
        out.append(f"fidelity at or above the floor on {sum(small)} of {len(small)} runs that "
                   "lose <= 3 points (no false alarm)")
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Pruning quality: CNNs by BN placement, and the 784-256-128-10 MLP", "",
             f"{machine_line(report['machine'])}; commit {report['commit']}; seeds "
             f"{report['seeds']}; {report['wall_seconds']:.0f} s in all.", "",
             f"Accuracy / FGSM / PGD robust accuracy (eps {EPS}) in %, medians over seeds, on "
             "the 360 held-out digits, and [the data-free fidelity]: exp(-KL/0.15), KL the mean "
             "KL divergence from the original's outputs on held-out synthesised inputs and "
             "interpolations between them (no data; the default floor is 0.8). Every mode "
             "prunes the same number of units from each layer (budget 'auto': shares growing "
             "with the square of the width for the CNNs with BN, uniform for the CNN without BN "
             "and the MLP).", ""]
    for name, res in report["models"].items():
        b = res["original"]
        lines += [f"## {name} (original {100 * b['accuracy']:.1f} / {100 * b['fgsm']:.1f} / "
                  f"{100 * b['pgd']:.1f})", "",
                  "| ratio | " + " | ".join(MODES) + " | paoding top-1 agreement |",
                  "|---|" + "---|" * (len(MODES) + 1)]
        find = {(r["mode"], r["target"]): r for r in res["rows"]}
        for r in RATIOS:
            cells = []
            for m in MODES:
                row = find.get((m, r))
                fid = "" if row is None or row["fidelity"] is None else (
                    f" [{row['fidelity']:.2f}]")
                cells.append("n/a" if row is None else
                             f"{100 * row['accuracy']:.1f} / {100 * row['fgsm']:.1f} / "
                             f"{100 * row['pgd']:.1f}{fid}")
            p = find.get(("paoding", r))
            fid = "n/a" if p is None or p.get("agreement") is None else f"{p['agreement']:.2f}"
            lines.append(f"| {r:.1f} | " + " | ".join(cells) + f" | {fid} |")
        lines.append("")
    lines += ["## Goals", ""] + [f"- {c}" for c in report["checks"]] + [""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["models"])
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        res = report["models"][name]
        for m in MODES:
            rows = sorted((r for r in res["rows"] if r["mode"] == m), key=lambda r: r["target"])
            ax.plot([0] + [r["target"] for r in rows],
                    [res["original"]["accuracy"]] + [r["accuracy"] for r in rows],
                    marker="o", label=m)
        ax.set_title(name)
        ax.set_xlabel("share of units removed")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (median)")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(seeds: list[int], out: Path, models: list[str] | None = None) -> int:
    import sys

    from tqdm import tqdm

    models = models or list(MODELS)
    missing = [n for n in models if not MODEL_FILES[n].exists()]
    if missing:
        from bench.train_models import train

        for n in missing:
            train(n)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"machine": machine(), "commit": git_commit(), "seeds": seeds,
                              "ratios": list(RATIOS), "eps": EPS, "models": {}}
    jobs = len(models) * (len(seeds) * 2 * len(RATIOS) + len(RATIOS))
    with tqdm(total=jobs, desc="quality bench", unit="run") as bar:
        for name in models:
            report["models"][name] = run_model(name, seeds, bar)
    report["checks"] = [c for n, r in report["models"].items() for c in checks(n, r)]
    report["checks"] += fidelity_checks(report)
    report["wall_seconds"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "prune_quality.json", report)
    md = markdown(report)
    (out / "prune_quality.md").write_text(md, encoding="utf-8")
    plot(report, out / "prune_quality.png")
    print(md)
    print(f"wrote {out / 'prune_quality.json'}, .md, .png in {report['wall_seconds']:.0f} s",
          file=sys.stderr)
    return 0
