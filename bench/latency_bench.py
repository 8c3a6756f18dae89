"""Latency vs MACs: does physical pruning make a compute-bound model faster?

    python bench/latency_bench.py [--quick] [--mode magnitude]

A VGG-style CNN on 64x64x3 inputs (three blocks of two Conv2D+BN+ReLU, 32/64/128
filters, max pooling, Dense 256, Dense 10; random weights: latency does not
depend on their values) is pruned at each ratio with the project's pruner,
exported to float32 TFLite and timed in LiteRT with one thread, batch 1. All
variants are timed in one interleaved run (blocks of 10 invocations, shuffled
order each round), so the ratios between them share the same machine load.

Writes bench/results/latency.json, latency.md and latency.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.common import (  # noqa: E402
    RESULTS,
    git_commit,
    machine,
    machine_line,
    measure_latency,
    quiet_tensorflow,
    save_figure,
    write_json,
)

FULL = {"ratios": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], "runs": 300}
QUICK = {"ratios": [0.25, 0.5, 0.75], "runs": 100}


def vgg64(seed: int = 0):  # noqa: ANN201 - keras.Model
    """The VGG-style 64x64x3 CNN, random (seeded) weights."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    x = keras.Input((64, 64, 3))
    h = x
    for b, filters in enumerate((32, 64, 128), start=1):
        for c in (1, 2):
            h = layers.Conv2D(filters, 3, padding="same", name=f"conv{b}_{c}")(h)
            h = layers.BatchNormalization(name=f"bn{b}_{c}")(h)
            h = layers.ReLU(name=f"relu{b}_{c}")(h)
        h = layers.MaxPooling2D(2, name=f"pool{b}")(h)
    h = layers.Flatten(name="flatten")(h)
    h = layers.Dense(256, activation="relu", name="fc1")(h)
    h = layers.Dense(10, activation="softmax", name="out")(h)
    return keras.Model(x, h, name="vgg64")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description="Latency vs MACs (see bench/README.md)")
    p.add_argument("--quick", action="store_true", help="3 ratios, 100 runs each")
    p.add_argument("--mode", default="magnitude",
                   help="pruning mode (widths, hence latency, are the same for every mode)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    quiet_tensorflow()
    cfg = dict(QUICK if args.quick else FULL, quick=args.quick, mode=args.mode)

    from tqdm import tqdm

    from pruner.api import prune
    from pruner.export import export_tflite
    from pruner.metrics import count_macs, count_params

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.perf_counter()
    model = vgg64()
    x = np.random.default_rng(0).random((1, 64, 64, 3), dtype=np.float32)
    variants: dict[str, Any] = {}
    blobs: dict[str, bytes] = {}
    for r in tqdm([0.0, *cfg["ratios"]], desc="prune+export", unit="ratio"):
        if r == 0.0:
            m, seconds = model, 0.0
        else:
            t = time.perf_counter()
            m = prune(model, target=r, mode=args.mode, seed=0,
                      step=r if args.mode not in ("paoding", "greedy") else 0.05,
                      measure_tflite=False, n_random=0, progress=False, synthetic=0,
                      keep_below_floor=True).model
            seconds = time.perf_counter() - t
        key = f"{r:.2f}"
        blobs[key] = export_tflite(m)
        variants[key] = {"ratio": r, "params": count_params(m), "macs": count_macs(m),
                         "tflite_bytes": len(blobs[key]), "prune_seconds": seconds}
    print(f"timing {len(blobs)} variants, {cfg['runs']} runs each, interleaved ...",
          file=sys.stderr)
    lat = measure_latency(blobs, {k: x for k in blobs}, runs=cfg["runs"])
    base = variants["0.00"]
    base_lat = lat["0.00"]["median_us"]
    base_cpu = lat["0.00"]["cpu_median_us"]
    rows = []
    for key, v in variants.items():
        v.update(lat[key])
        v["macs_x"] = v["macs"] / base["macs"]
        v["latency_x"] = v["median_us"] / base_lat
        v["cpu_x"] = v["cpu_median_us"] / base_cpu
        rows.append(v)
    # least-squares slope of latency_x against macs_x through (1, 1)
    mx = np.array([r["macs_x"] for r in rows])
    lx = np.array([r["latency_x"] for r in rows])
    cx = np.array([r["cpu_x"] for r in rows])
    fit = np.polyfit(mx, lx, 1)
    fit_cpu = np.polyfit(mx, cx, 1)
    report = {
        "machine": machine(),
        "started": started, "commit": git_commit(),
        "config": cfg,
        "model": "vgg64: 3x(2x Conv2D+BN+ReLU, maxpool) 32/64/128, Dense 256, Dense 10; "
                 "input 64x64x3; random weights",
        "rows": rows,
        "fit_latency_x_vs_macs_x": {"slope": float(fit[0]), "intercept": float(fit[1])},
        "max_abs_gap": float(np.max(np.abs(lx - mx))),
        "fit_cpu_x_vs_macs_x": {"slope": float(fit_cpu[0]), "intercept": float(fit_cpu[1])},
        "max_abs_gap_cpu": float(np.max(np.abs(cx - mx))),
        "wall_seconds": time.perf_counter() - t0,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "latency.json", report)
    md = markdown(report)
    (args.out / "latency.md").write_text(md, encoding="utf-8")
    plot(report, args.out / "latency.png")
    print(md)
    return 0


def markdown(report: dict[str, Any]) -> str:
    """The latency table as markdown."""
    cfg = report["config"]
    fit = report["fit_latency_x_vs_macs_x"]
    fitc = report["fit_cpu_x_vs_macs_x"]
    out = [
        "# Latency vs MACs (VGG-style CNN, 64x64x3)",
        "",
        f"Machine: {machine_line(report['machine'])}. Run {report['started']} "
        f"at commit {report.get('commit') or 'unknown'}. "
        f"Pruned with mode `{cfg['mode']}`; float32 TFLite in LiteRT, 1 thread, batch 1, "
        f"median of {cfg['runs']} interleaved runs per variant.",
        "",
        "| ratio | params | MACs | MACs x | TFLite KiB | latency ms (p10-p90) | latency x "
        "| CPU ms | CPU x |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        out.append(
            f"| {r['ratio']:.2f} | {r['params']} | {r['macs']} | {r['macs_x']:.3f} | "
            f"{r['tflite_bytes'] / 1024:.0f} | {r['median_us'] / 1e3:.2f} "
            f"({r['p10_us'] / 1e3:.2f}-{r['p90_us'] / 1e3:.2f}) | {r['latency_x']:.3f} | "
            f"{r['cpu_median_us'] / 1e3:.2f} | {r['cpu_x']:.3f} |"
        )
    out += [
        "",
        f"Fit: latency x = {fit['slope']:.2f} * MACs x + {fit['intercept']:.2f}; largest "
        f"|latency x - MACs x| = {report['max_abs_gap']:.3f}. With the thread's CPU time "
        f"(median per invocation; leaves out time spent preempted by other processes): "
        f"CPU x = {fitc['slope']:.2f} * MACs x + {fitc['intercept']:.2f}, largest gap "
        f"{report['max_abs_gap_cpu']:.3f}.",
        "",
    ]
    return "\n".join(out)


def plot(report: dict[str, Any], path: Path) -> None:
    """Latency ratio against MAC ratio, with the identity line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(5, 4.2))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="latency = MACs")
    ax.plot([r["macs_x"] for r in rows], [r["latency_x"] for r in rows], "o-",
            label="wall time (median)")
    ax.plot([r["macs_x"] for r in rows], [r["cpu_x"] for r in rows], "s-",
            label="thread CPU time (median)")
    for r in rows:
        ax.annotate(f"{r['ratio']:.1f}", (r["macs_x"], r["latency_x"]), fontsize=7,
                    xytext=(3, -8), textcoords="offset points")
    ax.set_xlabel("MACs (relative to the original)")
    ax.set_ylabel("TFLite latency (relative)")
    ax.set_title("VGG-style 64x64x3: latency vs MACs\n" + machine_line(report["machine"]),
                 fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
