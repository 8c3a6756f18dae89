"""Validate the latency model: predicted against measured p90 on host-emulated profiles.

    python bench/latency_model_bench.py                 # measure, fit, validate, report
    python bench/latency_model_bench.py --write-profiles  # also store the calibrated models

1. Calibration set: a family of CNNs and MLPs of many widths (random weights),
   including the demo CNN's shape at widths none of its candidates has, each
   exported as float32, float16, dynamic-range and int8.
2. Validation set (held out): the tuner's candidates for the demo model
   (digits CNN) on each profile, as `tuner.search` produces them.
3. Every model is benchmarked in a child process that applies the profile's
   emulation (`agent.emulation.apply`: CPU set, quota, memory limit, slowdown)
   and runs the agent's own benchmark (`agent.benchmark.run_benchmark`).
4. The latency model is fitted on the calibration set only and judged on the
   validation set: relative error of predicted p90 against measured p90.

Writes bench/results/latency_model.json and .png. The figures are host
emulation measurements, not measurements on real devices.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ("raspberry-pi-4-emulated", "raspberry-pi-zero-2w-emulated", "dev-host")
EXPORTS = ("float32", "float16", "dynamic", "int8")

CHILD = r"""
import json, sys
from agent.benchmark import run_benchmark
from core.protocol import BenchmarkSettings
from agent.runtime import select_runtime
import device_profiles
profile = device_profiles.load(sys.argv[1])
slowdown, desc = 1.0, None
if profile.emulation is not None:
    from agent import emulation
    slowdown, desc = emulation.apply(profile.id)
runtime = select_runtime()
settings = BenchmarkSettings(runs=int(sys.argv[2]), min_seconds=float(sys.argv[3]),
                             warmup_runs=20, threads=profile.runtime.threads)
for path in sys.argv[4:]:
    res, _ = run_benchmark(runtime, open(path, "rb").read(), settings, slowdown=slowdown,
                           emulation=desc)
    print(json.dumps({"path": path, "p90_ms": res.latency_ms.p90, "p50_ms": res.latency_ms.p50,
                      "peak_memory_mb": res.peak_memory_mb, "emulated": res.emulated,
                      "emulation": desc, "runs": res.latency_ms.count}), flush=True)
"""


def calibration_models() -> list[tuple[str, object]]:
    """CNNs and MLPs of many widths on 28x28x1 inputs (random weights are real for latency)."""
    import keras

    keras.utils.set_random_seed(1)
    out = []
    for c1, c2, d in [
        (4, 8, 16),
        (8, 8, 32),
        (8, 16, 64),
        (12, 24, 48),
        (16, 32, 128),
        (24, 32, 96),
        (32, 48, 192),
        (32, 64, 256),
    ]:
        inp = keras.Input((28, 28, 1))
        h = keras.layers.Conv2D(c1, 3, activation="relu")(inp)
        h = keras.layers.MaxPooling2D()(h)
        h = keras.layers.Conv2D(c2, 3, activation="relu")(h)
        h = keras.layers.MaxPooling2D()(h)
        h = keras.layers.Flatten()(h)
        h = keras.layers.Dense(d, activation="relu")(h)
        out.append((f"cnn-{c1}-{c2}-{d}", keras.Model(inp, keras.layers.Dense(10)(h))))
    for d1, d2 in [(32, 16), (128, 64), (512, 256), (1024, 512)]:
        inp = keras.Input((28, 28, 1))
        h = keras.layers.Flatten()(inp)
        h = keras.layers.Dense(d1, activation="relu")(h)
        h = keras.layers.Dense(d2, activation="relu")(h)
        out.append((f"mlp-{d1}-{d2}", keras.Model(inp, keras.layers.Dense(10)(h))))
    # The demo CNN's shape ('same' 3x3 convolutions at 28x28 and 14x14), at widths that
    # are none of its pruned candidates' (those are the held-out set).
    for c1, c2, c3, d in [
        (6, 12, 24, 32),
        (8, 24, 48, 64),
        (10, 20, 40, 48),
        (13, 26, 52, 64),
        (15, 30, 60, 96),
        (20, 40, 80, 128),
    ]:
        inp = keras.Input((28, 28, 1))
        h = keras.layers.Conv2D(c1, 3, padding="same", activation="relu")(inp)
        h = keras.layers.Conv2D(c2, 3, padding="same", activation="relu")(h)
        h = keras.layers.MaxPooling2D()(h)
        h = keras.layers.Conv2D(c3, 3, padding="same", activation="relu")(h)
        h = keras.layers.MaxPooling2D()(h)
        h = keras.layers.Flatten()(h)
        h = keras.layers.Dense(d, activation="relu")(h)
        out.append((f"same-{c1}-{c2}-{c3}-{d}", keras.Model(inp, keras.layers.Dense(10)(h))))
    return out


def measure(profile: str, paths: list[str], runs: int, min_seconds: float) -> dict[str, dict]:
    """Benchmark files in one emulated child process; {path: result}."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    order = list(paths)
    np.random.default_rng(0).shuffle(order)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, profile, str(runs), str(min_seconds), *order],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child for {profile} failed: {proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {r["path"]: r for r in rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", nargs="+", default=list(PROFILES))
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--min-seconds", type=float, default=0.5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "latency_model"))
    ap.add_argument(
        "--workdir",
        default=str(Path.home() / ".cache" / "paoding-edge" / "demo"),
        help="where the demo model is trained or loaded",
    )
    ap.add_argument(
        "--modes",
        default="paoding,magnitude",
        help="pruning modes of the tuner runs that give the held-out candidates",
    )
    ap.add_argument(
        "--write-profiles",
        action="store_true",
        help="store the calibrated latency models in device_profiles/*.yaml",
    )
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from tqdm.auto import tqdm

    import device_profiles as dp
    import tuner as tn
    from device_profiles import latency as lat
    from hostcli.demo import demo_model
    from pruner.datasets import digits28
    from pruner.export import export_tflite

    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="latbench-"))
    calib: dict[str, lat.ModelFeatures] = {}
    xtr = digits28(flatten=False)[0][:100]
    models = calibration_models()
    for name, m in tqdm(models, desc="calibration exports"):
        for e in EXPORTS:
            blob = export_tflite(m, quantization=e, representative_data=xtr)
            path = tmp / f"calib-{name}-{e}.tflite"
            path.write_bytes(blob)
            calib[str(path)] = lat.features_from_tflite(blob)

    model, (x_te, y_te) = demo_model(Path(args.workdir))
    search = tn.Search.create(model, (x_te, y_te), progress=True)
    valid: dict[str, dict[str, tuple[lat.ModelFeatures, str]]] = {}
    for pid in args.profiles:
        result = tn.tune(model, pid, search=search, modes=args.modes.split(","), progress=True)
        valid[pid] = {}
        for c in result.candidates:
            step = next(s for s in search.steps[(c.mode, c.seed)] if s.step == c.step)
            blob = search.export(step, c.export)
            path = tmp / f"valid-{pid}-{c.key.replace('/', '_')}.tflite"
            path.write_bytes(blob)
            valid[pid][str(path)] = (lat.features_from_tflite(blob), c.key)

    report: dict = {"profiles": {}, "note": "host emulation measurements, not real devices"}
    fig_rows = []
    for pid in args.profiles:
        profile = dp.load(pid)
        paths = list(calib) + list(valid[pid])
        print(f"measuring {len(paths)} models under {pid} ...", flush=True)
        meas = measure(pid, paths, args.runs, args.min_seconds)
        emulated = profile.emulated
        cal_data = [
            lat.Measurement(
                calib[p], meas[p]["p90_ms"], meas[p]["peak_memory_mb"], emulated, Path(p).stem
            )
            for p in calib
        ]
        val_data = [
            lat.Measurement(f, meas[p]["p90_ms"], meas[p]["peak_memory_mb"], emulated, key)
            for p, (f, key) in valid[pid].items()
        ]
        source = (
            f"Calibrated by bench/latency_model_bench.py from {len(cal_data)} models "
            f"(CNN/MLP family x 4 export types) measured "
            f"{'under host emulation' if emulated else 'on the development host'} with the "
            f"agent's benchmark; validated on {len(val_data)} held-out tuner candidates."
        )
        fitted = lat.fit(profile.latency, cal_data, source=source)
        prior_err = lat.relative_errors(profile.latency, val_data)
        fit_err = lat.relative_errors(fitted, val_data)
        cal_err = lat.relative_errors(fitted, cal_data)
        mem_err = [
            (lat.predict_memory_mb(fitted, m.features) - m.peak_memory_mb) / m.peak_memory_mb
            for m in val_data
            if m.peak_memory_mb
        ]
        summary = lat.error_summary(fit_err)
        report["profiles"][pid] = {
            "emulated": emulated,
            "emulation": next(iter(meas.values())).get("emulation"),
            "validation": summary,
            "validation_with_profile_model": lat.error_summary(prior_err),
            "calibration_in_sample": lat.error_summary(cal_err),
            "memory_validation": lat.error_summary(np.array(mem_err)),
            "fitted": fitted.model_dump(mode="json"),
            "candidates": [
                {
                    "candidate": m.label,
                    "measured_p90_ms": m.p90_ms,
                    "predicted_p90_ms": lat.predict_latency_ms(fitted, m.features),
                    "error": float(e),
                    "measured_memory_mb": m.peak_memory_mb,
                }
                for m, e in zip(val_data, fit_err, strict=True)
            ],
            "calibration": [m.to_dict() for m in cal_data],
        }
        fig_rows.append((pid, val_data, fitted, fit_err, cal_data))
        print(
            f"{pid}: held-out candidates n={summary['n']:.0f}: within +-15%: "
            f"{summary['within_15pct']:.0%}, median |error| {summary['median_abs']:.1%}, "
            f"p90 |error| {summary['p90_abs']:.1%}, max {summary['max_abs']:.1%}"
        )
        if args.write_profiles:
            _write_profile(pid, profile, fitted)

    report["seconds"] = round(time.time() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(fig_rows, out.with_suffix(".png"))
    print(
        f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')} "
        f"({report['seconds']:.0f} s)"
    )
    return 0


def _write_profile(pid: str, profile, fitted) -> None:
    import device_profiles as dp

    path = dp.PACKAGE_DIR / f"{pid}.yaml"
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    new = profile.model_copy(update={"latency": fitted})
    dp.validate(new.model_dump(mode="json"), pid)
    path.write_text("\n".join(header) + "\n" + dp.dump(new))
    print(f"  wrote calibrated latency model to {path}")


def _plot(rows, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from device_profiles import latency as lat

    fig, axes = plt.subplots(2, len(rows), figsize=(5 * len(rows), 8.5), squeeze=False)
    for i, (pid, val, fitted, err, cal) in enumerate(rows):
        ax = axes[0][i]
        mv = [m.p90_ms for m in val]
        pv = [lat.predict_latency_ms(fitted, m.features) for m in val]
        mc = [m.p90_ms for m in cal]
        pc = [lat.predict_latency_ms(fitted, m.features) for m in cal]
        ax.scatter(mc, pc, s=12, color="lightgray", label="calibration (fit)")
        ax.scatter(mv, pv, s=20, color="tab:blue", label="tuner candidates (held out)")
        lo, hi = min(mv + mc) * 0.8, max(mv + mc) * 1.2
        xs = np.geomspace(lo, hi, 50)
        ax.plot(xs, xs, "k-", lw=1)
        ax.fill_between(xs, xs * 0.85, xs * 1.15, color="green", alpha=0.12, label="+-15%")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("measured p90 (ms, emulated)" if "emulated" in pid else "measured p90 (ms)")
        ax.set_ylabel("predicted p90 (ms)")
        ax.set_title(pid, fontsize=10)
        ax.legend(fontsize=7)
        ax2 = axes[1][i]
        ax2.hist(np.asarray(err) * 100, bins=15, color="tab:blue")
        ax2.axvspan(-15, 15, color="green", alpha=0.12)
        within = float(np.mean(np.abs(err) <= 0.15)) if len(err) else 0.0
        ax2.set_title(f"held-out error: {within:.0%} within +-15%", fontsize=10)
        ax2.set_xlabel("(predicted - measured) / measured, %")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
