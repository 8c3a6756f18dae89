"""Pruning benchmark: every mode at every ratio on three trained models.

    python bench/prune_bench.py [--quick]

For each model (digits MLP 784-128-128-64-10, digits Conv2D+BN CNN, breast
cancer MLP), each mode (paoding, greedy, baseline, magnitude, random) and each
ratio, the model is pruned from the original (one run per ratio, so every
mode is compared at exactly the same layer widths; the progressive modes use
their default 5% steps inside a run) and measured: clean accuracy, FGSM and
PGD robust accuracy (eps 0.01, 0.05, 0.1; robust = correct clean and under
attack), fidelity to the original, parameters, MACs, TFLite bytes, measured
TFLite latency (LiteRT, 1 thread, median of interleaved runs) and the pruning
seconds (selection and surgery, no evaluation). Stochastic modes (paoding,
random) report the median over seeds.

The reference package (paoding-dl 1.0.0.post3, run by
bench/reference/run_reference.sh in its own venv) is evaluated with the same
attacks when its results are present in bench/results/reference/.

Writes bench/results/prune.json, prune.md and prune.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.common import (  # noqa: E402
    MODEL_FILES,
    RESULTS,
    dataset_for,
    git_commit,
    machine,
    machine_line,
    measure_latency,
    quiet_tensorflow,
    save_figure,
    write_json,
)

MODES = ("paoding", "greedy", "baseline", "magnitude", "random")
STOCHASTIC = ("paoding", "random")
PROGRESSIVE = ("paoding", "greedy")
EPS = (0.01, 0.05, 0.1)
ATTACKS = ("fgsm", "pgd")
FULL = {
    "ratios": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
    "seeds": [0, 1, 2, 3, 4],
    "n_eval": None,
    "pgd_steps": 10,
    "latency_runs": 300,
}
QUICK = {
    "ratios": [0.3, 0.5, 0.7],
    "seeds": [0],
    "n_eval": 120,
    "pgd_steps": 5,
    "latency_runs": 100,
}
HEADLINE_RATIOS = (0.3, 0.5, 0.7)
REF_DIR = RESULTS / "reference"
BIG_GAP = 2.0  # points of accuracy: ~7 digits test samples, ~3 breast cancer ones
REF_TOLERANCE = 1 / 60  # reference steps are multiples of 1/32 of each layer


# ----------------------------------------------------------------- evaluation


def evaluate_point(
    model: Any, original: Any, x: np.ndarray, y: np.ndarray, box: Any, pgd_steps: int
) -> dict[str, Any]:
    """Accuracy, robust accuracy per attack and eps, fidelity."""
    from pruner import evaluate

    robust = {
        attack: {
            str(e): evaluate.robust_accuracy(
                model, x, y, e, box, attack=attack, steps=pgd_steps, seed=0
            )
            for e in EPS
        }
        for attack in ATTACKS
    }
    return {
        "accuracy": evaluate.accuracy(model, x, y),
        "robust": robust,
        "fidelity": evaluate.fidelity(original, model, x),
    }


def widths_key(model: Any) -> str:
    """The layer widths of a model, as a key (Dense units, Conv2D filters)."""
    out = []
    for layer in model.layers:
        cls = type(layer).__name__
        if cls == "Dense":
            out.append(int(layer.units))
        elif cls == "Conv2D":
            out.append(int(layer.filters))
    return "-".join(str(v) for v in out)


class ArchCache:
    """Size and cost of each distinct architecture (they depend on widths only)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.arch: dict[str, dict[str, Any]] = {}
        self.blobs: dict[str, bytes] = {}

    def measure(self, model: Any) -> str:
        from pruner.export import export_tflite
        from pruner.metrics import count_macs, count_params

        key = widths_key(model)
        if key not in self.arch:
            blob = export_tflite(model)
            self.blobs[key] = blob
            self.arch[key] = {
                "params": count_params(model),
                "macs": count_macs(model),
                "tflite_bytes": len(blob),
            }
        return key


# ----------------------------------------------------------------- reference


def rebuild_from_dense(kernels: list[np.ndarray], biases: list[np.ndarray], acts: list[str],
                       input_dim: int) -> Any:
    """A physically smaller Keras MLP without the units whose outgoing weights are all zero.

    Removing such a unit changes no output, so the rebuilt model computes the
    same function as the reference's zeroed one.
    """
    import keras

    keep_prev = np.arange(input_dim)
    ks, bs = [], []
    for i, (k, b) in enumerate(zip(kernels, biases, strict=True)):
        if i + 1 < len(kernels):
            keep = np.flatnonzero(np.any(kernels[i + 1] != 0.0, axis=1))
        else:
            keep = np.arange(k.shape[1])
        ks.append(k[np.ix_(keep_prev, keep)])
        bs.append(b[keep])
        keep_prev = keep
    x = keras.Input((input_dim,))
    h = x
    layers = []
    for i, (k, act) in enumerate(zip(ks, acts, strict=True)):
        layer = keras.layers.Dense(k.shape[1], activation=act, name=f"fc{i + 1}")
        h = layer(h)
        layers.append(layer)
    model = keras.Model(x, h)
    for layer, k, b in zip(layers, ks, bs, strict=True):
        layer.set_weights([k, b])
    return model


def reference_runs(name: str) -> dict[str, list[dict[str, Any]]]:
    """The reference's results on a model, by mode: [{json, npz path}] per seed."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for mode in ("stochastic", "baseline"):
        for js in sorted(REF_DIR.glob(f"{name}_{mode}_s*.json")):
            npz = js.with_suffix(".npz")
            if npz.exists():
                runs.setdefault(mode, []).append(
                    {"summary": json.loads(js.read_text()), "npz": npz}
                )
    return runs


# ----------------------------------------------------------------- the run


def median_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of the per-seed measurements (architecture fields are shared)."""
    out = dict(rows[0])
    for f in ("accuracy", "fidelity", "prune_seconds", "ratio"):
        vals = [r[f] for r in rows if r.get(f) is not None]
        out[f] = float(np.median(vals)) if vals else None
    out["robust"] = {
        a: {e: float(np.median([r["robust"][a][e] for r in rows])) for e in rows[0]["robust"][a]}
        for a in rows[0]["robust"]
    }
    out["seeds"] = [r["seed"] for r in rows]
    out["accuracy_min"] = float(min(r["accuracy"] for r in rows))
    out["accuracy_max"] = float(max(r["accuracy"] for r in rows))
    out.pop("seed", None)
    return out


def run_model(name: str, cfg: dict[str, Any], modes: list[str], bar: Any,
              use_reference: bool) -> dict[str, Any]:
    """Benchmark one model: every mode, ratio and seed."""
    import keras

    from pruner.api import prune
    from pruner.bounds import InputBox

    original = keras.models.load_model(MODEL_FILES[name], compile=False)
    _, _, x, y = dataset_for(name)
    n_eval = cfg["n_eval"].get(name) if isinstance(cfg["n_eval"], dict) else cfg["n_eval"]
    if n_eval:
        x, y = x[:n_eval], y[:n_eval]
    box = InputBox(0.0, 1.0)
    cache = ArchCache(name)
    key0 = cache.measure(original)
    base = evaluate_point(original, original, x, y, box, cfg["pgd_steps"])
    base.update(mode="original", ratio=0.0, arch=key0, prune_seconds=0.0)
    per_seed: list[dict[str, Any]] = []

    for mode in modes:
        seeds = cfg["seeds"] if mode in STOCHASTIC else [0]
        for seed in seeds:
            for r in cfg["ratios"]:
                bar.set_postfix_str(f"{name} {mode} s{seed} r{r}")
                if mode == "baseline" and r > 0.5:
                    bar.update(1)
                    continue
                step = 0.05 if mode in PROGRESSIVE else r
                t0 = time.perf_counter()
                res = prune(original, target=r, mode=mode, seed=seed, step=step,
                            measure_tflite=False, n_random=0, progress=False,
                            keep_below_floor=True)
                seconds = time.perf_counter() - t0
                model = res.model
                rec = res.final
                row = evaluate_point(model, original, x, y, box, cfg["pgd_steps"])
                row.update(mode=mode, seed=seed, target=r, ratio=float(rec.ratio),
                           arch=cache.measure(model), prune_seconds=seconds)
                per_seed.append(row)
                bar.update(1)

    reference_note = "reference not run"
    if use_reference:
        ref = reference_runs(name)
        if ref:
            reference_note = "paoding-dl 1.0.0.post3 (" + ", ".join(
                f"{m}: {len(v)} seed(s)" for m, v in sorted(ref.items())) + ")"
        acts = [keras.activations.serialize(la.activation) for la in original.layers
                if type(la).__name__ == "Dense"]
        input_dim = int(np.prod(original.inputs[0].shape[1:]))
        for mode, runs in sorted(ref.items()):
            label = "reference" if mode == "stochastic" else "reference-baseline"
            for run in runs:
                summ = run["summary"]
                arrays = np.load(run["npz"])
                steps = summ["steps"]
                n_dense = len(summ["hidden_units"]) + 1
                for r in cfg["ratios"]:
                    best = min(steps, key=lambda s, r=r: abs(s["ratio"] - r), default=None)
                    if best is None or abs(best["ratio"] - r) > REF_TOLERANCE:
                        continue
                    st = best["step"]
                    kernels = [arrays[f"s{st}_kernel_{i}"] for i in range(n_dense)]
                    biases = [arrays[f"s{st}_bias_{i}"] for i in range(n_dense)]
                    model = rebuild_from_dense(kernels, biases, acts, input_dim)
                    row = evaluate_point(model, original, x, y, box, cfg["pgd_steps"])
                    row.update(mode=label, seed=summ["seed"], target=r,
                               ratio=float(best["ratio"]), arch=cache.measure(model),
                               prune_seconds=float(best["seconds"]),
                               accuracy_tf_keras=best["accuracy_tf_keras"])
                    per_seed.append(row)

    bar.set_postfix_str(f"{name} latency")
    samples = {k: x[:1] for k in cache.blobs}
    lat = measure_latency(cache.blobs, samples, runs=cfg["latency_runs"])
    for key, arch in cache.arch.items():
        arch["latency_us"] = lat[key]["median_us"]
        arch["latency_p10_us"] = lat[key]["p10_us"]
        arch["latency_p90_us"] = lat[key]["p90_us"]
        arch["latency_cpu_us"] = lat[key]["cpu_median_us"]
        arch["latency_runs"] = lat[key]["runs"]

    rows: list[dict[str, Any]] = []
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in per_seed:
        groups.setdefault((row["mode"], row["target"]), []).append(row)
    for (_mode, _r), g in groups.items():
        rows.append(median_rows(g))
    for row in [base, *rows, *per_seed]:
        row.update(cache.arch[row["arch"]])
    return {
        "eval_samples": len(x),
        "original": base,
        "rows": rows,
        "per_seed": per_seed,
        "reference": reference_note,
    }


# ----------------------------------------------------------------- reporting


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def cell(row: dict[str, Any] | None, f: str = "accuracy") -> str:
    if row is None:
        return "n/a"
    if f == "accuracy":
        return pct(row["accuracy"])
    attack, e = f.split("@")
    return pct(row["robust"][attack][e])


def find(rows: list[dict[str, Any]], mode: str, r: float) -> dict[str, Any] | None:
    for row in rows:
        if row["mode"] == mode and abs(row["target"] - r) < 1e-9:
            return row
    return None


def mode_order(res: dict[str, Any]) -> list[str]:
    present = {r["mode"] for r in res["rows"]}
    order = [*MODES, "reference", "reference-baseline"]
    return [m for m in order if m in present]


def expectation_checks(report: dict[str, Any]) -> list[str]:
    """Whether paoding beats baseline, magnitude and the reference at every ratio (computed)."""
    lines = []
    metrics = ["accuracy", *[f"{a}@{e}" for a in ATTACKS for e in map(str, EPS)]]
    for name, res in report["models"].items():
        rows = res["rows"]
        for other in ("baseline", "magnitude", "reference"):
            wins = losses = ties = big = 0
            diffs: list[float] = []
            worst: list[str] = []
            for r in report["config"]["ratios"]:
                p, o = find(rows, "paoding", r), find(rows, other, r)
                if p is None or o is None:
                    continue
                for m in metrics:
                    a, b = float(cell(p, m)), float(cell(o, m))
                    diffs.append(a - b)
                    big += a < b - BIG_GAP
                    if a > b:
                        wins += 1
                    elif a < b:
                        losses += 1
                        worst.append(f"{m} at {r}: {a:.1f} < {b:.1f}")
                    else:
                        ties += 1
            if wins + losses + ties == 0:
                continue
            verdict = "holds" if losses == 0 else "does NOT hold"
            line = (f"- {name}: paoding vs {other}: higher on {wins}, equal on {ties}, lower on "
                    f"{losses} of {wins + losses + ties} (ratio, metric) pairs -> {verdict} "
                    f"(lower by more than {BIG_GAP:.0f} points on {big}; mean difference "
                    f"{np.mean(diffs):+.1f} points)")
            if worst:
                line += "; lower: " + "; ".join(worst[:6]) + (" ..." if len(worst) > 6 else "")
            lines.append(line)
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The result tables as markdown."""
    cfg = report["config"]
    sizes = ", ".join(f"{n}: {r['eval_samples']}" for n, r in report["models"].items())
    out = [
        "# Pruning benchmark results",
        "",
        f"Machine: {machine_line(report['machine'])}. Run {report['started']} "
        f"at commit {report.get('commit') or 'unknown'} "
        f"({report['wall_seconds']:.0f} s, {'quick' if cfg['quick'] else 'full'} mode). "
        f"Seeds for paoding/random/reference: {cfg['seeds']} (medians); eval samples: "
        f"the test split ({sizes}); "
        f"PGD {cfg['pgd_steps']} steps of eps/4, random start; robust accuracy = correct both "
        "clean and attacked; input box [0, 1]. Latency: LiteRT float32, 1 thread, batch 1, "
        f"median of {cfg['latency_runs']} interleaved runs.",
        "",
        "## Headline: accuracy / PGD robust accuracy (eps 0.05), % of the test split",
        "",
    ]
    for name, res in report["models"].items():
        base = res["original"]
        out += [
            f"### {name} (original: {pct(base['accuracy'])} / {cell(base, 'pgd@0.05')}; "
            f"reference: {res['reference']})",
            "",
            "| mode | " + " | ".join(f"{r:.0%} acc / PGD" for r in HEADLINE_RATIOS) + " |",
            "|---|" + "---|" * len(HEADLINE_RATIOS),
        ]
        for mode in mode_order(res):
            cells = []
            for r in HEADLINE_RATIOS:
                row = find(res["rows"], mode, r)
                if row is None:
                    cells.append("n/a")
                else:
                    txt = f"{cell(row)} / {cell(row, 'pgd@0.05')}"
                    if abs(row["ratio"] - r) > 1e-3:
                        txt += f" (at {row['ratio']:.3f})"
                    cells.append(txt)
            out.append(f"| {mode} | " + " | ".join(cells) + " |")
        out.append("")
    out += ["## Does paoding keep more than baseline, magnitude and the reference?", ""]
    out += expectation_checks(report) or ["- nothing to compare"]
    out += ["", "## Full tables", ""]
    eps_cols = [f"{a}@{e}" for a in ATTACKS for e in map(str, EPS)]
    for name, res in report["models"].items():
        base = res["original"]
        out += [
            f"### {name}",
            "",
            "| mode | ratio | acc | " + " | ".join(c.replace("@", " ") for c in eps_cols)
            + " | fidelity | params | MACs | TFLite KiB | latency us | MACs x | latency x "
            "| prune s |",
            "|---|---|---|" + "---|" * len(eps_cols) + "---|---|---|---|---|---|---|---|",
        ]
        for row in [base, *sorted(res["rows"], key=lambda r: (mode_order(res).index(r["mode"]),
                                                               r["target"]))]:
            mac_x = row["macs"] / base["macs"]
            lat_x = row["latency_us"] / base["latency_us"]
            seeds = row.get("seeds")
            mode = row["mode"] + (f" (median of {len(seeds)})" if seeds and len(seeds) > 1 else "")
            out.append(
                f"| {mode} | {row['ratio']:.3f} | {cell(row)} | "
                + " | ".join(cell(row, c) for c in eps_cols)
                + f" | {pct(row['fidelity'])} | {row['params']} | {row['macs']} | "
                f"{row['tflite_bytes'] / 1024:.1f} | {row['latency_us']:.1f} | {mac_x:.2f} | "
                f"{lat_x:.2f} | {row['prune_seconds']:.2f} |"
            )
        out.append("")
    out += [
        "Notes: ratio = hidden units (Dense neurons, Conv2D filters) removed / prunable units "
        "of the original. Each (mode, ratio) is its own run from the original model. The "
        "reference prunes in steps of 1/32 of each layer, so its rows are at the nearest "
        "multiple of 1/32 (shown in the ratio column). Latency depends on the layer widths only, "
        "so modes at the same ratio share one measurement. 'MACs x' and 'latency x' are "
        "relative to the original.",
        "",
    ]
    return "\n".join(out)


def plot(report: dict[str, Any], path: Path) -> None:
    """Accuracy and robust accuracy vs ratio, per mode, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["models"])
    cols = [("accuracy", "clean accuracy"), ("fgsm@0.05", "FGSM robust acc. (eps 0.05)"),
            ("pgd@0.05", "PGD robust acc. (eps 0.05)")]
    fig, axes = plt.subplots(len(models), len(cols), figsize=(4.2 * len(cols), 3.3 * len(models)),
                             squeeze=False)
    styles = {"paoding": "o-", "greedy": "s--", "baseline": "^-", "magnitude": "v-",
              "random": "x:", "reference": "D-", "reference-baseline": "d--"}
    for i, name in enumerate(models):
        res = report["models"][name]
        base = res["original"]
        for j, (f, title) in enumerate(cols):
            ax = axes[i][j]
            for mode in mode_order(res):
                rows = sorted((r for r in res["rows"] if r["mode"] == mode),
                              key=lambda r: r["ratio"])
                xs = [0.0] + [r["ratio"] for r in rows]
                ys = [float(cell(base, f))] + [float(cell(r, f)) for r in rows]
                ax.plot(xs, ys, styles.get(mode, "-"), label=mode, markersize=4)
            ax.set_title(f"{name}: {title}", fontsize=9)
            ax.set_xlabel("pruning ratio")
            ax.set_ylabel("%")
            ax.set_ylim(-2, 102)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Paoding Edge pruning benchmark - {machine_line(report['machine'])}",
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description="Pruning benchmark (see bench/README.md)")
    p.add_argument("--quick", action="store_true", help="1 seed, 3 ratios, fewer samples")
    p.add_argument("--models", nargs="+", choices=sorted(MODEL_FILES),
                   default=["digits_mlp", "digits_cnn", "cancer_mlp"])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--no-reference", action="store_true", help="leave the reference out")
    p.add_argument("--out", type=Path, default=RESULTS, help="output directory")
    p.add_argument("--from-json", type=Path, metavar="PRUNE_JSON",
                   help="only re-render prune.md and prune.png from an earlier prune.json")
    p.add_argument("--suite", choices=("modes", "quality"), default="modes",
                   help="modes: every mode on the three original models (default); quality: "
                   "the CNNs by BN placement and the 784-256-128 MLP (bench/prune_quality.py)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                   help="quality suite: pruning seeds (default 0 1 2)")
    p.add_argument("--quality-models", nargs="+", default=None, metavar="NAME",
                   help="quality suite: a subset of its models")
    args = p.parse_args(argv)
    quiet_tensorflow()
    if args.suite == "quality":
        from bench import prune_quality

        return prune_quality.main(args.seeds, args.out, args.quality_models)
    if args.from_json:
        report = json.loads(args.from_json.read_text(encoding="utf-8"))
        md = markdown(report)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "prune.md").write_text(md, encoding="utf-8")
        plot(report, args.out / "prune.png")
        print(md)
        return 0
    cfg = dict(QUICK if args.quick else FULL, quick=args.quick)

    missing = [n for n in args.models if not MODEL_FILES[n].exists()]
    if missing:
        print(f"training the missing models ({', '.join(missing)}) first", file=sys.stderr)
        from bench.train_models import train

        for n in missing:
            train(n)

    import tensorflow as tf
    from tqdm import tqdm

    tf.config.threading.set_inter_op_parallelism_threads(1)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.perf_counter()
    jobs = sum(
        len(cfg["ratios"]) * (len(cfg["seeds"]) if m in STOCHASTIC else 1)
        for m in args.modes
    ) * len(args.models)
    report: dict[str, Any] = {"machine": machine(), "started": started, "commit": git_commit(),
                              "config": cfg, "modes": args.modes, "models": {}}
    with tqdm(total=jobs, desc="prune bench", unit="run") as bar:
        for name in args.models:
            report["models"][name] = run_model(name, cfg, args.modes, bar,
                                               not args.no_reference)
    report["wall_seconds"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "prune.json", report)
    md = markdown(report)
    (args.out / "prune.md").write_text(md, encoding="utf-8")
    plot(report, args.out / "prune.png")
    print(md)
    print(f"wrote {args.out / 'prune.json'}, prune.md, prune.png "
          f"in {report['wall_seconds']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
