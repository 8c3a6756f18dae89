"""Mobile and keyword-spotting CNNs: size, MACs and LiteRT latency against ratio pruned.

    python bench/dag_bench.py [--quick] [--mode paoding]

MobileNetV2 (alpha 0.35, 96x96x3, 10 classes, keras.applications with
weights=None) and the DS-CNN keyword-spotting model (49x10 MFCC frames, 64
filters, 4 depthwise-separable blocks, 12 classes; ``pruner.zoo``) are
pruned progressively with ``pruner.api.prune_steps`` with the widths as
pruned (``round_to=1``; coupled channel groups: residual Adds and depthwise
layers lose channels together), and once more per ratio with the kept widths
rounded to multiples of 8 (``round_to=8``) and with the default AUTO rounding
(multiples of 16 for layers of 64 channels or more, of 8 from 16); each model
is exported to float32 TFLite and timed in LiteRT with one thread, batch 1,
all variants of a model interleaved (``bench.common.measure_latency``).
Weights are random with non-trivial BatchNormalization statistics: latency
does not depend on their values.

Selection quality: the DS-CNN (28x28x1, 32 filters) and MobileNetV2-0.35
(32x32x3) trained on scikit-learn's digits upsampled (offline), pruned
progressively in 5% steps by paoding (the robustness criterion, as on every model),
magnitude and random with exact widths; test accuracy, FGSM and PGD robust accuracy
against MACs removed.

Each variant also records its activations (elements of every layer's output):
where latency follows them rather than the MACs, no width rounding helps.

Also measured: DS-CNNs of uniform width 64, 60, ..., 8 (why its latency does
not follow its MACs: channel tiles and a fixed cost), and the wall time to
prune MobileNetV2 to 30% with every default, per phase (synthesis, scoring, surgery,
measurement, export; bench/phases.py), and how it grows with the model (alpha 0.35 and
1.0 at 96x96 and 224x224).

Writes bench/results/dag.json, dag.md and dag.png; ``--quality-only`` runs only the
selection-quality part for paoding with the data-free refit (the default), with the
BN-statistics bias correction alone, and with neither (bench/results/dag_quality.json and .md).
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
    RESULTS,
    git_commit,
    machine,
    machine_line,
    measure_latency,
    save_figure,
    write_json,
)
from tuner.quiet import native_quiet  # noqa: E402

# timed: (alpha, input size) of the MobileNetV2s of the pruning-time part
FULL = {"ratios": [0.1, 0.2, 0.3, 0.4, 0.5], "runs": 300,
        "timed": [[0.35, 96], [1.0, 96], [0.35, 224], [1.0, 224]],
        "widths": list(range(64, 4, -4)), "quality_seeds": {"ds_cnn": 3, "mobilenet_v2_0.35": 1},
        "quality_ratio": 0.2, "timing_repeats": 3}
QUICK = {"ratios": [0.3, 0.5], "runs": 200, "timed": [[0.35, 96]],
         "widths": [64, 48, 44, 32, 16],
         "quality_seeds": {"ds_cnn": 1}, "quality_ratio": 0.1, "timing_repeats": 1}
ROUNDINGS = {"as pruned": 1, "x8": 8, "auto": 0}  # round_to of each variant
QUALITY = {"paoding": {}, "paoding (no refit)": {"compensation": "bias"},
           "paoding (no bias corr.)": {"compensation": "none"}, "magnitude": {}, "random": {}}
# --quality-only: paoding with the refit (compensate.refit), with the bias correction alone
# (compensate.bias, then the intercepts on synthesised inputs) and with neither
CORRECTION = ("paoding", "paoding (no refit)", "paoding (no bias corr.)")
QUALITY_EPS = 0.01


def trained(
    name: str, seed: int = 0, size: int = 32, epochs: int = 25, n_test: int = 200
) -> tuple[Any, tuple[np.ndarray, np.ndarray]]:
    """``name`` (ds_cnn, or mobilenet_v2_0.35 on ``size`` x ``size`` x 3 for ``epochs``)
    trained on upsampled digits; ``n_test`` test inputs."""
    import keras

    from pruner import zoo
    from pruner.datasets import digits28, upsample

    x_tr, y_tr, x_te, y_te = digits28(seed, flatten=False)
    if name == "ds_cnn":
        model, epochs = zoo.ds_cnn((28, 28, 1), classes=10, filters=32, seed=seed), 15
    else:
        def rgb(x: np.ndarray) -> np.ndarray:
            return np.repeat(upsample(x[..., 0], size)[..., None], 3, axis=-1).astype(np.float32)

        x_tr, x_te = rgb(x_tr), rgb(x_te)
        model = zoo.mobilenet_v2((size, size, 3), alpha=0.35, classes=10, seed=seed)
    for layer in model.layers:  # zoo's random statistics must be forgotten within the run
        if type(layer).__name__ == "BatchNormalization":
            layer.momentum = 0.8
    model.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_tr, y_tr, epochs=epochs, batch_size=64, verbose=0)
    return model, (x_te[:n_test], y_te[:n_test])


def quality(
    seeds: dict[str, int], max_ratio: float, methods: tuple[str, ...] = tuple(QUALITY)
) -> dict[str, Any]:
    """Accuracy, FGSM and PGD robust accuracy against MACs removed, per selection method:
    medians over ``seeds[name]`` trainings (seeds 0, 1, ...), the per-seed figures kept."""
    from pruner.api import prune_steps

    out = {}
    for name, n_seeds in seeds.items():
        per_seed: dict[str, list[list[dict[str, float]]]] = {k: [] for k in methods}
        for seed in range(n_seeds):
            print(f"{name}: seed {seed}, training on digits, then pruning by {len(methods)} "
                  "methods ...", file=sys.stderr)
            with native_quiet():
                model, data = trained(name, seed)
            for label in methods:
                options = QUALITY[label]
                rows = []
                with native_quiet():
                    for rec, _ in prune_steps(
                        model, max_ratio, label.split(" ")[0], step=0.05, round_to=1,
                        eval_data=data, eps=(QUALITY_EPS,), attacks=("fgsm", "pgd"), n_random=0,
                        measure_tflite=False, progress=False, seed=seed, keep_below_floor=True,
                        **options,
                    ):
                        rows.append({"ratio": rec.ratio, "macs": rec.macs,
                                     "accuracy": rec.accuracy,
                                     "fgsm": rec.robust["fgsm"][QUALITY_EPS],
                                     "robust": rec.robust["pgd"][QUALITY_EPS],
                                     "fidelity": rec.data_free_fidelity or 0.0})
                for r in rows:
                    r["macs_removed"] = 1 - r["macs"] / rows[0]["macs"]
                per_seed[label].append(rows)
                print(f"  {name} {label}: accuracy {rows[0]['accuracy']:.3f} -> "
                      f"{rows[-1]['accuracy']:.3f} at {rows[-1]['ratio']:.2f}", file=sys.stderr)
        out[name] = {
            label: [
                {key: float(np.median([rows[i][key] for rows in runs])) for key in runs[0][i]}
                for i in range(min(len(rows) for rows in runs))
            ]
            for label, runs in per_seed.items()
        }
        out[name]["seeds"] = n_seeds
        out[name]["per_seed"] = per_seed
    return out


GOAL = 1.25  # latency ratio <= GOAL x MAC ratio


def _models() -> dict[str, Any]:
    from pruner import zoo

    return {
        "mobilenet_v2_0.35": lambda: zoo.mobilenet_v2((96, 96, 3), alpha=0.35, classes=10),
        "ds_cnn": lambda: zoo.ds_cnn((49, 10, 1), classes=12, filters=64),
    }


def prune_time(alpha: float, size: int, mode: str, repeats: int = 3) -> dict[str, Any]:
    """Seconds to prune MobileNetV2(alpha) on size x size x 3 inputs to 30% in 5% steps with
    every default (synthesised inputs, refit, data-free fidelity, TFLite size of the first
    and last model; no evaluation data; pruned to the target whatever the verdict), per
    phase (bench.phases), the median of ``repeats`` runs with the synthesis not cached; and
    once more on the same model, as the tuner and the demo prune it again."""
    from bench.phases import PHASES, phase_timer
    from pruner import synthesis, zoo
    from pruner.api import prune
    from pruner.metrics import count_macs, count_params

    runs = []
    with native_quiet():
        model = zoo.mobilenet_v2((size, size, 3), alpha=alpha, classes=10)
        for _ in range(repeats):
            synthesis.clear_cache()
            with phase_timer() as seconds:
                result = prune(model, 0.3, mode, keep_below_floor=True, progress=False)
            runs.append(seconds)
        again = None
        if repeats > 1:  # the synthesis cached from the last run
            with phase_timer() as again:
                prune(model, 0.3, mode, keep_below_floor=True, progress=False)
    keys = ("total", *PHASES)
    return {"alpha": alpha, "size": size, "params": count_params(model),
            "macs": count_macs(model), "layers": len(model.layers),
            "steps": len(result.trajectory) - 1, "ratio": result.final.ratio,
            "seconds": {k: float(np.median([r[k] for r in runs])) for k in keys},
            "cpu": {k: float(np.median([r["cpu"][k] for r in runs])) for k in keys},
            "seconds_all": runs, "again": again}


def timings(cfg: dict[str, Any], mode: str) -> list[dict[str, Any]]:
    """prune_time for every (alpha, size) of ``cfg``, after a warm-up run."""
    print("pruning time, MobileNetV2 to 30% ...", file=sys.stderr)
    with native_quiet():
        from pruner import zoo
        from pruner.api import prune

        prune(zoo.ds_cnn(filters=8), 0.3, n_random=0, measure_tflite=False, progress=False,
              keep_below_floor=True)
    timing = []
    for alpha, size in cfg["timed"]:
        repeats = cfg["timing_repeats"] if size * size * alpha <= 96 * 96 else 1
        timing.append(prune_time(alpha, size, mode, repeats))
        row = timing[-1]
        print(f"  alpha {alpha} {size}x{size}: {row['params']} params, "
              + ", ".join(f"{k} {v:.1f} s ({row['cpu'][k]:.1f} CPU s)"
                          for k, v in row["seconds"].items())
              + (f"; again {row['again']['total']:.1f} s" if row["again"] else ""),
              file=sys.stderr, flush=True)
    return timing


def timing_only(cfg: dict[str, Any], started: str, t0: float, out: Path) -> int:
    """The pruning-time section alone: dag_time.json, .md and .png."""
    timing = timings(cfg, cfg["mode"])
    load = os.getloadavg()
    report = _section(
        out / "dag_time", cfg, started, t0, "prune_time", timing, cfg["argv"],
        "Pruning time: MobileNetV2 to 30% of channels in 5% steps, per phase",
        f"Load average when done: {load[0]:.1f} (1 min), {load[2]:.1f} (15 min): these "
        "seconds are upper bounds. Every default (inputs synthesised from the model, the "
        "refit, the data-free fidelity figure, the TFLite size of the first and last model), "
        "no evaluation data, pruned to the target whatever the verdict; "
        f"median of {cfg['timing_repeats']} run(s) up to 96x96 at alpha 1, one run above. "
        "Phases (bench/phases.py): synthesis; surgery (cutting, the refit, model rebuilds); "
        "measurement (the fidelity check and verdict per step); export (TFLite "
        "conversions); scoring (the rest: bounds, saliency, annealing). 'again': the same "
        "model pruned once more in the process (the synthesis cached, as in the tuner and "
        "the demo), with more than one repeat only.",
        _timing_md(timing),
    )
    plot_timing(report, out / "dag_time.png")
    return 0


def _section(
    stem: Path, cfg: dict[str, Any], started: str, t0: float, key: str, value: Any,
    flag: str, title: str, text: str, table: list[str],
) -> dict[str, Any]:
    """Write one section's JSON and markdown (``stem``.json/.md), print the markdown and
    return the report."""
    report = {"machine": machine(), "started": started, "commit": git_commit(), "config": cfg,
              key: value, "wall_seconds": time.perf_counter() - t0}
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_json(stem.with_suffix(".json"), report)
    md = "\n".join([
        f"# {title}", "",
        f"Machine: {machine_line(report['machine'])}, shared with other jobs. Run {started} "
        f"at commit {report.get('commit') or 'unknown'}; `python bench/dag_bench.py {flag}`. "
        + text, "", *table,
    ])
    stem.with_suffix(".md").write_text(md, encoding="utf-8")
    print(md)
    return report


def plot_timing(report: dict[str, Any], path: Path) -> None:
    """CPU seconds per phase (stacked) for each model, MACs on the labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.phases import PHASES

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    timing = report["prune_time"]
    labels = [f"{t['alpha']}@{t['size']}\n{t['macs'] / 1e6:.0f} M MACs" for t in timing]
    bottom = np.zeros(len(timing))
    for phase in PHASES:
        vals = np.array([t["cpu"][phase] for t in timing])
        ax.bar(labels, vals, bottom=bottom, label=phase)
        bottom += vals
    ax.plot(labels, [t["seconds"]["total"] for t in timing], "kD", ms=5,
            label="wall seconds (shared machine)")
    ax.axhline(30, color="k", ls=":", lw=1, label="goal for 0.35@96: 30 s")
    ax.set_ylabel("CPU seconds to 30% of channels")
    ax.set_title("MobileNetV2 pruning time per phase\n" + machine_line(report["machine"]),
                 fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def activations(model: Any) -> int:
    """Elements of every layer's output for one input: the memory traffic of the
    element-wise and depthwise layers, which scales with the kept share, not its square."""
    return int(sum(np.prod([int(d) for d in layer.output.shape[1:]]) for layer in model.layers
                   if type(layer).__name__ != "InputLayer"))


def width_sweep(widths: list[int], runs: int) -> dict[str, Any]:
    """DS-CNNs of uniform width: latency against MACs, and the fixed cost (a line through
    the widths that are multiples of 16, extrapolated to no MACs)."""
    from pruner import zoo
    from pruner.export import export_tflite
    from pruner.metrics import count_macs

    blobs, macs = {}, {}
    with native_quiet():
        for w in widths:
            model = zoo.ds_cnn((49, 10, 1), classes=12, filters=w)
            blobs[str(w)], macs[str(w)] = export_tflite(model), count_macs(model)
        x = np.random.default_rng(0).random((1, 49, 10, 1), dtype=np.float32)
        lat = measure_latency(blobs, {k: x for k in blobs}, runs=runs)
    top = str(widths[0])
    rows = [{"width": int(k), "macs": macs[k], "macs_x": macs[k] / macs[top],
             "median_us": lat[k]["median_us"], "cpu_median_us": lat[k]["cpu_median_us"],
             "latency_x": lat[k]["median_us"] / lat[top]["median_us"]} for k in blobs]
    aligned = [r for r in rows if r["width"] % 16 == 0]
    fit = {}
    if len(aligned) >= 2:
        slope, fixed = np.polyfit([r["macs"] for r in aligned],
                                  [r["median_us"] for r in aligned], 1)
        share = fixed / lat[top]["median_us"]
        # latency x = share + (1 - share) * macs x <= GOAL * macs x  <=>  macs x >= this
        fit = {"fixed_us": float(fixed), "us_per_mmac": float(slope * 1e6),
               "fixed_share": float(share),
               "min_macs_x_for_goal": float(share / (GOAL - 1 + share)) if share > 0 else 0.0}
    return {"rows": rows, "fit": fit}


def run_model(name: str, build: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    from pruner.api import prune, prune_steps
    from pruner.export import export_tflite, run_tflite

    with native_quiet():
        model = build()
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    wanted = [0.0, *cfg["ratios"]]
    variants: dict[str, dict[str, Any]] = {}
    blobs: dict[str, bytes] = {}
    t = time.perf_counter()
    with native_quiet():
        records = [(rec, pruned, time.perf_counter() - t) for rec, pruned in prune_steps(
            model, max(wanted), cfg["mode"], step=0.05, round_to=1, n_random=0,
            measure_tflite=False, progress=False)]

    def add(key: str, rec: Any, pruned: Any, widths: str, **extra: Any) -> None:
        with native_quiet():
            blobs[key] = export_tflite(pruned)
            y_keras = np.asarray(pruned(x))
            parity = float(np.max(np.abs(run_tflite(blobs[key], x) - y_keras)))
        variants[key] = {"ratio": rec.ratio, "widths": widths, "aligned": widths != "as pruned",
                         "params": rec.params, "macs": rec.macs, "tflite_bytes": len(blobs[key]),
                         "activations": activations(pruned),
                         "tflite_max_abs_diff": parity, **extra}
        print(f"  {name}: ratio {rec.ratio:.2f}, widths {widths}, exported "
              f"({len(blobs[key]) / 1024:.0f} KiB)", file=sys.stderr)

    for r in wanted:  # the step nearest each wanted ratio
        rec, pruned, seconds = min(records, key=lambda item: abs(item[0].ratio - r))
        if f"{rec.ratio:.2f}" not in variants:
            add(f"{rec.ratio:.2f}", rec, pruned, "as pruned", seconds_to_here=seconds)
    del records
    for widths, round_to in ROUNDINGS.items():  # rounded widths: one run per ratio
        if round_to == 1:
            continue
        for r in cfg["ratios"]:
            with native_quiet():
                result = prune(model, r, cfg["mode"], step=0.05, round_to=round_to,
                               n_random=0, measure_tflite=False, progress=False)
            key = f"{result.final.ratio:.2f}/{widths}"
            if key not in variants and result.final.ratio > 0:  # two ratios may round alike
                add(key, result.final, result.model, widths)
    print(f"  {name}: timing {len(blobs)} variants, {cfg['runs']} runs each ...",
          file=sys.stderr)
    with native_quiet():
        lat = measure_latency(blobs, {k: x for k in blobs}, runs=cfg["runs"])
    base = variants["0.00"]
    rows = []
    for key, v in variants.items():
        v.update(lat[key])
        v["macs_x"] = v["macs"] / base["macs"]
        v["params_x"] = v["params"] / base["params"]
        v["latency_x"] = v["median_us"] / lat["0.00"]["median_us"]
        v["cpu_x"] = v["cpu_median_us"] / lat["0.00"]["cpu_median_us"]
        v["latency_over_macs"] = v["latency_x"] / v["macs_x"]
        v["cpu_over_macs"] = v["cpu_x"] / v["macs_x"]
        v["activations_x"] = v["activations"] / base["activations"]
        rows.append(v)
    return {"input_shape": list(shape), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description="DAG models: latency vs MACs (bench/README.md)")
    p.add_argument("--quick", action="store_true", help="ratios 0.3/0.5, one alpha")
    p.add_argument("--mode", default="paoding")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--quality-only", action="store_true",
                   help="only paoding's accuracy with and without bias correction "
                        "(dag_quality.md/.json)")
    p.add_argument("--timing-only", action="store_true",
                   help="only the pruning time of MobileNetV2 (dag_time.md/.json/.png)")
    p.add_argument("--methods-only", action="store_true",
                   help="only paoding, magnitude and random on the digits models "
                        "(dag_methods.md/.json/.png)")
    p.add_argument("--seeds", type=int, help="trainings per model of the quality parts")
    p.add_argument("--ratio", type=float, help="units removed at the end of the quality parts")
    p.add_argument("--timed", nargs="+", metavar="ALPHA@SIZE",
                   help="MobileNetV2s of the pruning-time part, e.g. 0.35@96 1.0@224 "
                        "(default: the config's)")
    p.add_argument("--repeats", type=int, help="runs per pruning time (default: the config's)")
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL, quick=args.quick, mode=args.mode)
    if args.timed:
        try:
            cfg["timed"] = [[float(a), int(z)] for a, z in (t.split("@") for t in args.timed)]
        except ValueError:
            p.error(f"--timed takes ALPHA@SIZE values such as 0.35@96, got {args.timed}")
    if args.repeats:
        cfg["timing_repeats"] = args.repeats
    if args.seeds:
        cfg["quality_seeds"] = {"ds_cnn": args.seeds, "mobilenet_v2_0.35": args.seeds}
    if args.ratio:
        cfg["quality_ratio"] = args.ratio
    cfg["argv"] = " ".join(sys.argv[1:] if argv is None else argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.perf_counter()
    if args.quality_only:
        return quality_only(cfg, started, t0, args.out)
    if args.timing_only:
        return timing_only(cfg, started, t0, args.out)
    if args.methods_only:
        return methods_only(cfg, started, t0, args.out)
    timing = timings(cfg, args.mode)
    print(f"ds_cnn: {len(cfg['widths'])} uniform widths, {cfg['runs']} runs each ...",
          file=sys.stderr)
    sweep = width_sweep(cfg["widths"], cfg["runs"])
    selection = quality(cfg["quality_seeds"], cfg["quality_ratio"])
    models = {}
    for name, build in _models().items():
        print(f"{name}: pruning and exporting ...", file=sys.stderr)
        models[name] = run_model(name, build, cfg)
    report = {
        "machine": machine(), "started": started, "commit": git_commit(), "config": cfg,
        "goal_latency_over_macs": GOAL, "prune_time": timing, "models": models,
        "ds_cnn_widths": sweep, "quality": selection,
        "wall_seconds": time.perf_counter() - t0,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "dag.json", report)
    md = markdown(report)
    (args.out / "dag.md").write_text(md, encoding="utf-8")
    plot(report, args.out / "dag.png")
    print(md)
    return 0


def markdown(report: dict[str, Any]) -> str:
    """The tables as markdown."""
    cfg = report["config"]
    out = [
        "# Mobile and keyword-spotting CNNs: size and latency against ratio pruned",
        "",
        f"Machine: {machine_line(report['machine'])}, shared with other jobs. Run "
        f"{report['started']} at commit {report.get('commit') or 'unknown'}. Mode "
        f"`{cfg['mode']}`, 5% steps; float32 TFLite in LiteRT, 1 thread, batch 1, median of "
        f"{cfg['runs']} interleaved runs per variant. Goal: latency x <= {GOAL} x MACs x.",
        "",
    ]
    for name, res in report["models"].items():
        out += [
            f"## {name} (input {'x'.join(str(d) for d in res['input_shape'])})",
            "",
            "| ratio | widths | params | MACs | MACs x | activations x | TFLite KiB "
            "| latency ms (p10-p90) | latency x | latency x / MACs x | CPU x / MACs x "
            "| TFLite vs Keras max abs diff |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        order = list(ROUNDINGS)
        for r in sorted(res["rows"], key=lambda r: (order.index(r["widths"]), r["ratio"])):
            ok = "" if r["latency_over_macs"] <= GOAL else " (goal missed)"
            out.append(
                f"| {r['ratio']:.2f} | {r['widths']} | {r['params']} | "
                f"{r['macs']} | {r['macs_x']:.3f} | {r['activations_x']:.3f} | "
                f"{r['tflite_bytes'] / 1024:.0f} | {r['median_us'] / 1e3:.2f} "
                f"({r['p10_us'] / 1e3:.2f}-{r['p90_us'] / 1e3:.2f}) | {r['latency_x']:.3f} | "
                f"{r['latency_over_macs']:.2f}{ok} | {r['cpu_over_macs']:.2f} | "
                f"{r['tflite_max_abs_diff']:.1e} |"
            )
        out.append("")
    out += _sweep_md(report["ds_cnn_widths"])
    out += _quality_md(report["quality"])
    out += [
        "## Pruning time (MobileNetV2 to 30% in 5% steps, no evaluation, per phase)",
        "",
    ]
    out += _timing_md(report["prune_time"])
    return "\n".join(out)


def _timing_md(timing: list[dict[str, Any]]) -> list[str]:
    from bench.phases import PHASES

    out = [
        "Cells: wall seconds / CPU seconds of the process (on a loaded machine the wall "
        "time is mostly waiting for a core; on a quiet one it is at most about the CPU "
        "time, less where TensorFlow uses both cores).", "",
        "| alpha | input | params | MACs | ratio reached | total | "
        + " | ".join(PHASES) + " | again |",
        "|---|---|---|---|---|---|" + "---|" * (len(PHASES) + 1),
    ]

    def cell(t: dict[str, Any], k: str) -> str:
        return f"{t['seconds'][k]:.1f} / {t.get('cpu', {}).get(k, float('nan')):.1f}"

    for t in timing:
        again = t["again"]
        out.append(f"| {t['alpha']} | {t['size']}x{t['size']} | {t['params']} | "
                   f"{t['macs'] / 1e6:.1f} M | {t['ratio']:.3f} | {cell(t, 'total')} | "
                   + " | ".join(cell(t, k) for k in PHASES)
                   + (f" | {again['total']:.1f} / {again['cpu']['total']:.1f} |" if again
                      else " | - |"))
    if len(timing) > 1:
        a, b = timing[0], timing[-1]
        grows = ", ".join(f"{k} {b['cpu'][k] / max(a['cpu'][k], 1e-9):.1f}x"
                          for k in ("total", *PHASES))
        out += ["", f"From alpha {a['alpha']} at {a['size']}x{a['size']} to alpha "
                f"{b['alpha']} at {b['size']}x{b['size']} (parameters "
                f"{b['params'] / a['params']:.1f}x, MACs {b['macs'] / a['macs']:.1f}x, same "
                f"layer count) the CPU time grows: {grows}."]
    out.append("")
    return out


def quality_only(cfg: dict[str, Any], started: str, t0: float, out: Path) -> int:
    """The selection-quality section for paoding with and without bias correction."""
    selection = quality(cfg["quality_seeds"], cfg["quality_ratio"], CORRECTION)
    _section(
        out / "dag_quality", cfg, started, t0, "quality", selection, "--quality-only",
        "DAG models: paoding with the data-free refit, the bias correction alone, neither",
        "The correction (pruner/compensate/bias.py) adds each removed channel's expectation "
        "from BatchNormalization statistics to its readers' biases (or the moving mean of the "
        "BN after them); the refit (pruner/compensate/refit.py, the default) then refits every "
        "Dense/Conv2D reader of the step's pruned channels by ridge least squares on inputs "
        "synthesised from those statistics (`compensation='bias'`: their intercepts alone).",
        _quality_md(selection, CORRECTION),
    )
    return 0


METHODS = ("paoding", "magnitude", "random")


def methods_only(cfg: dict[str, Any], started: str, t0: float, out: Path) -> int:
    """paoding against magnitude and random on the digits models: dag_methods.json, .md
    and .png (accuracy and PGD robust accuracy against MACs removed)."""
    selection = quality(cfg["quality_seeds"], cfg["quality_ratio"], METHODS)
    report = _section(
        out / "dag_methods", cfg, started, t0, "quality", selection, cfg["argv"],
        "DAG models: paoding against magnitude and random, accuracy against MACs removed",
        "Every default (width budget for MobileNetV2, refit) but `round_to=1`; magnitude "
        "and random remove the same units per group, without compensation.",
        _quality_md(selection, METHODS),
    )
    plot_methods(report, out / "dag_methods.png")
    return 0


def plot_methods(report: dict[str, Any], path: Path) -> None:
    """Accuracy (solid) and PGD robust accuracy (dotted) against MACs removed, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quality = report["quality"]
    fig, axes = plt.subplots(1, len(quality), figsize=(5.2 * len(quality), 4.0), squeeze=False)
    for ax, (name, runs) in zip(axes[0], quality.items(), strict=True):
        for i, label in enumerate(METHODS):
            rows = runs[label]
            x = [100 * r["macs_removed"] for r in rows]
            ax.plot(x, [100 * r["accuracy"] for r in rows], "o-", ms=3, color=f"C{i}",
                    label=label)
            ax.plot(x, [100 * r["robust"] for r in rows], ":", color=f"C{i}", lw=1)
        ax.set_title(f"{name} (median of {runs.get('seeds', 1)} seeds)", fontsize=9)
        ax.set_xlabel("MACs removed (%)")
        ax.set_ylabel(f"accuracy (solid), PGD eps {QUALITY_EPS} (dotted)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(machine_line(report["machine"]), fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def _quality_md(quality: dict[str, Any], methods: tuple[str, ...] = tuple(QUALITY)) -> list[str]:
    out = []
    for name, runs in quality.items():
        n_seeds = runs.get("seeds", 1)
        runs = {k: v for k, v in runs.items() if k in methods}
        labels = list(runs)
        steps = max(len(rows) for rows in runs.values())
        out += [
            f"## {name} trained on digits: accuracy / FGSM / PGD robust accuracy (eps {QUALITY_EPS}) "
            f"against MACs removed ({'median of ' + str(n_seeds) + ' seeds' if n_seeds > 1 else '1 seed'}, "
            "200 test inputs)",
            "",
            "| units removed | " + " | ".join(f"{k}: MACs removed, acc, FGSM, PGD" for k in labels)
            + " |",
            "|---|" + "---|" * len(labels),
        ]
        for i in range(steps):
            cells = []
            for k in labels:
                rows = runs[k]
                r = rows[min(i, len(rows) - 1)]
                cells.append(f"{100 * r['macs_removed']:.0f}%, {r['accuracy']:.3f}, "
                             f"{r.get('fgsm', float('nan')):.3f}, {r['robust']:.3f}")
            ratio = runs[labels[0]][min(i, len(runs[labels[0]]) - 1)]["ratio"]
            out.append(f"| {ratio:.2f} | " + " | ".join(cells) + " |")
        out.append("")
    return out


def _sweep_md(sweep: dict[str, Any]) -> list[str]:
    out = [
        "## DS-CNN of uniform width: where latency stops following MACs",
        "",
        "| width | MACs x | latency us | latency x | latency x / MACs x |",
        "|---|---|---|---|---|",
    ]
    for r in sweep["rows"]:
        out.append(f"| {r['width']} | {r['macs_x']:.3f} | {r['median_us']:.1f} | "
                   f"{r['latency_x']:.3f} | {r['latency_x'] / r['macs_x']:.2f} |")
    fit = sweep.get("fit")
    if fit:
        out += ["", f"A line through the widths that are multiples of 16: "
                f"{fit['us_per_mmac']:.1f} us per million MACs plus a fixed "
                f"{fit['fixed_us']:.1f} us ({100 * fit['fixed_share']:.0f}% of the full "
                f"model). With that fixed cost, latency x <= {GOAL} x MACs x needs MACs x >= "
                f"{fit['min_macs_x_for_goal']:.2f} even with perfectly aligned widths."]
    return [*out, ""]


def plot(report: dict[str, Any], path: Path) -> None:
    """Latency ratio against MAC ratio per model, with the identity and goal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quality = report.get("quality") or {}
    fig, axes = plt.subplots(1, 1 + len(quality), figsize=(5.2 * (1 + len(quality)), 4.4),
                             squeeze=False)
    ax = axes[0][0]
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="latency = MACs")
    ax.plot([0, 1 / GOAL], [0, 1], "k:", lw=1, label=f"latency = {GOAL} x MACs")
    for name, res in report["models"].items():
        for widths, style in zip(ROUNDINGS, ("o-", "s--", "^:"), strict=True):
            rows = sorted((r for r in res["rows"] if r["widths"] == widths or r["ratio"] == 0),
                          key=lambda r: r["ratio"])
            label = f"{name}, widths {widths}"
            ax.plot([r["macs_x"] for r in rows], [r["latency_x"] for r in rows], style,
                    label=label)
        for r in res["rows"]:
            ax.annotate(f"{r['ratio']:.1f}", (r["macs_x"], r["latency_x"]), fontsize=7,
                        xytext=(3, -8), textcoords="offset points")
    ax.set_xlabel("MACs (relative to the original)")
    ax.set_ylabel("LiteRT latency, 1 thread (relative)")
    ax.set_title("Pruned DAG models: latency vs MACs\n" + machine_line(report["machine"]),
                 fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    for ax, (name, runs) in zip(axes[0][1:], quality.items(), strict=True):
        for label in QUALITY:
            rows = runs[label]
            macs = [100 * r["macs_removed"] for r in rows]
            line = ax.plot(macs, [r["accuracy"] for r in rows], "o-", label=f"{label}: acc")
            ax.plot(macs, [r["robust"] for r in rows], "x--", color=line[0].get_color(),
                    label=f"{label}: PGD eps {QUALITY_EPS}")
        ax.set_xlabel("MACs removed (%)")
        ax.set_ylabel("test accuracy (digits)")
        ax.set_title(f"{name} trained on digits: selection quality", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
