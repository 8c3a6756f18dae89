"""Mobile and keyword-spotting CNNs: size, MACs and LiteRT latency against ratio pruned.

    python bench/dag_bench.py [--quick] [--mode paoding]

MobileNetV2 (alpha 0.35, 96x96x3, 10 classes, keras.applications with
weights=None) and the DS-CNN keyword-spotting model (49x10 MFCC frames, 64
filters, 4 depthwise-separable blocks, 12 classes; ``pruner.zoo``) are
pruned progressively with ``pruner.api.prune_steps`` (coupled channel groups:
residual Adds and depthwise layers lose channels together), and once more per
ratio with the kept widths rounded to multiples of 8 (``Schedule(round_to=8)``);
each model is exported to float32 TFLite and timed in LiteRT with one thread, batch
1, all variants of a model interleaved (``bench.common.measure_latency``).
Weights are random with non-trivial BatchNormalization statistics: latency
does not depend on their values.

Also measured: the wall time to prune MobileNetV2 to 30% (paoding, 5% steps,
no evaluation) and how it grows with the model (alpha 0.35 / 0.5 / 1.0).

Writes bench/results/dag.json, dag.md and dag.png.
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
    write_json,
)

FULL = {"ratios": [0.1, 0.2, 0.3, 0.4, 0.5], "runs": 300, "alphas": [0.35, 0.5, 1.0]}
QUICK = {"ratios": [0.3, 0.5], "runs": 200, "alphas": [0.35]}
GOAL = 1.25  # latency ratio <= GOAL x MAC ratio


def _models() -> dict[str, Any]:
    from pruner import zoo

    return {
        "mobilenet_v2_0.35": lambda: zoo.mobilenet_v2((96, 96, 3), alpha=0.35, classes=10),
        "ds_cnn": lambda: zoo.ds_cnn((49, 10, 1), classes=12, filters=64),
    }


def prune_time(alpha: float, mode: str) -> dict[str, Any]:
    """Seconds to prune MobileNetV2(alpha) to 30% in 5% steps, without evaluation."""
    from pruner import zoo
    from pruner.api import prune
    from pruner.metrics import count_params

    model = zoo.mobilenet_v2((96, 96, 3), alpha=alpha, classes=10)
    t = time.perf_counter()
    result = prune(model, 0.3, mode, step=0.05, n_random=0, measure_tflite=False,
                   progress=False)
    seconds = time.perf_counter() - t
    return {"alpha": alpha, "params": count_params(model), "layers": len(model.layers),
            "steps": len(result.trajectory) - 1, "ratio": result.final.ratio,
            "seconds": seconds}


def run_model(name: str, build: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    from pruner.api import prune, prune_steps
    from pruner.export import export_tflite, run_tflite
    from pruner.schedule import Schedule

    model = build()
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    wanted = [0.0, *cfg["ratios"]]
    variants: dict[str, dict[str, Any]] = {}
    blobs: dict[str, bytes] = {}
    t = time.perf_counter()
    records = [(rec, pruned, time.perf_counter() - t) for rec, pruned in prune_steps(
        model, max(wanted), cfg["mode"], step=0.05, n_random=0, measure_tflite=False,
        progress=False)]
    for r in wanted:  # the step nearest each wanted ratio
        rec, pruned, seconds = min(records, key=lambda item: abs(item[0].ratio - r))
        key = f"{rec.ratio:.2f}"
        if key in variants:
            continue
        blobs[key] = export_tflite(pruned)
        y_keras = np.asarray(pruned(x))
        parity = float(np.max(np.abs(run_tflite(blobs[key], x) - y_keras)))
        variants[key] = {"ratio": rec.ratio, "aligned": False, "params": rec.params,
                         "macs": rec.macs, "tflite_bytes": len(blobs[key]),
                         "tflite_max_abs_diff": parity, "seconds_to_here": seconds}
        print(f"  {name}: ratio {rec.ratio:.2f} exported ({len(blobs[key]) / 1024:.0f} KiB)",
              file=sys.stderr)
    del records
    for r in cfg["ratios"]:  # kept widths rounded to multiples of 8: one run per ratio
        result = prune(model, mode=cfg["mode"], schedule=Schedule(r, 0.05, round_to=8),
                       n_random=0, measure_tflite=False, progress=False)
        key = f"{result.final.ratio:.2f}/8"
        if key in variants:  # a narrow model: two ratios round to the same widths
            continue
        blobs[key] = export_tflite(result.model)
        parity = float(np.max(np.abs(run_tflite(blobs[key], x) - np.asarray(result.model(x)))))
        variants[key] = {"ratio": result.final.ratio, "aligned": True,
                         "params": result.final.params, "macs": result.final.macs,
                         "tflite_bytes": len(blobs[key]), "tflite_max_abs_diff": parity}
        print(f"  {name}: ratio {r:.2f}, widths multiples of 8, exported", file=sys.stderr)
    print(f"  {name}: timing {len(blobs)} variants, {cfg['runs']} runs each ...",
          file=sys.stderr)
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
        rows.append(v)
    return {"input_shape": list(shape), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description="DAG models: latency vs MACs (bench/README.md)")
    p.add_argument("--quick", action="store_true", help="ratios 0.3/0.5, one alpha")
    p.add_argument("--mode", default="paoding")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL, quick=args.quick, mode=args.mode)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.perf_counter()
    print("pruning time, MobileNetV2 to 30% ...", file=sys.stderr)
    from pruner import zoo
    from pruner.api import prune

    prune(zoo.ds_cnn(filters=8), 0.3, n_random=0, measure_tflite=False, progress=False)  # warm-up
    timing = [prune_time(a, args.mode) for a in cfg["alphas"]]
    for row in timing:
        print(f"  alpha {row['alpha']}: {row['params']} params, {row['seconds']:.1f} s",
              file=sys.stderr)
    models = {}
    for name, build in _models().items():
        print(f"{name}: pruning and exporting ...", file=sys.stderr)
        models[name] = run_model(name, build, cfg)
    report = {
        "machine": machine(), "started": started, "commit": git_commit(), "config": cfg,
        "goal_latency_over_macs": GOAL, "prune_time": timing, "models": models,
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
            "| ratio | widths | params | MACs | MACs x | TFLite KiB | latency ms (p10-p90) "
            "| latency x | latency x / MACs x | CPU x / MACs x | TFLite vs Keras max abs diff |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(res["rows"], key=lambda r: (r["aligned"], r["ratio"])):
            ok = "" if r["latency_over_macs"] <= GOAL else " (goal missed)"
            out.append(
                f"| {r['ratio']:.2f} | {'x8' if r['aligned'] else 'as pruned'} | {r['params']} | "
                f"{r['macs']} | {r['macs_x']:.3f} | "
                f"{r['tflite_bytes'] / 1024:.0f} | {r['median_us'] / 1e3:.2f} "
                f"({r['p10_us'] / 1e3:.2f}-{r['p90_us'] / 1e3:.2f}) | {r['latency_x']:.3f} | "
                f"{r['latency_over_macs']:.2f}{ok} | {r['cpu_over_macs']:.2f} | "
                f"{r['tflite_max_abs_diff']:.1e} |"
            )
        out.append("")
    out += [
        "## Pruning time (MobileNetV2, 96x96x3, to 30% in 5% steps, no evaluation)",
        "",
        "| alpha | params | layers | steps | ratio reached | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for t in report["prune_time"]:
        out.append(f"| {t['alpha']} | {t['params']} | {t['layers']} | {t['steps']} | "
                   f"{t['ratio']:.3f} | {t['seconds']:.1f} |")
    if len(report["prune_time"]) > 1:
        a, b = report["prune_time"][0], report["prune_time"][-1]
        out += ["", f"From {a['params']} to {b['params']} parameters "
                f"({b['params'] / a['params']:.1f}x, same layer count) the time grows "
                f"{b['seconds'] / a['seconds']:.2f}x."]
    out.append("")
    return "\n".join(out)


def plot(report: dict[str, Any], path: Path) -> None:
    """Latency ratio against MAC ratio per model, with the identity and goal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="latency = MACs")
    ax.plot([0, 1 / GOAL], [0, 1], "k:", lw=1, label=f"latency = {GOAL} x MACs")
    for name, res in report["models"].items():
        for aligned, style in ((False, "o-"), (True, "s--")):
            rows = sorted((r for r in res["rows"] if r["aligned"] == aligned or r["ratio"] == 0),
                          key=lambda r: r["ratio"])
            label = name + (", widths x8" if aligned else "")
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
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
