"""The latency model against published latencies of real Raspberry Pi boards.

    python bench/device_latency_bench.py                   # predict, fit, report
    python bench/device_latency_bench.py --write-profiles  # also store the fitted models

Data: bench/data/device_latency.json, every figure with its source address and
thread count. Models: the keras.applications graphs of the published models,
built with ``weights=None`` (the real graphs with random weights, as the
published benchmarks use) and exported to .tflite (float32; int8 per-channel with
random calibration data); the features are read from those .tflite files by
``device_profiles.latency.features_from_tflite`` (cached in
bench/results/device_latency_features.json).

Model form (few parameters, fitted jointly to both boards' figures):

    ms = s_board * sum over kernel classes of q_board,class *
         (MACs + w_dw * depthwise MACs + w_el * elements + w_op * ops)

``s`` is the board's time per float MAC, ``q`` its int8/float ratio (1 for
float), ``w_*`` the cost of a depthwise MAC, an output element of a non-conv op
and an op, in float-MAC units, shared by the boards: 2 parameters per board and
3 shared; each figure is judged leave-one-out (predicted by a fit that did not
see it). A board without a profile (the Pi 4's 32-bit build) is fitted for the
shared costs only. The published figures are 4-threaded and are fitted as published; the
profiles (one thread) get the fit times the cited single-thread factor (and the
Zero 2 W the Pi 3B+'s times its clock ratio). Writes
bench/results/device_latency.{json,md,png}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DATA = ROOT / "bench" / "data" / "device_latency.json"
RESULTS = ROOT / "bench" / "results"
FEATURES = RESULTS / "device_latency_features.json"
TOLERANCE = 0.10
CLASSES = ("float", "int8")
# The chosen form and, for the report, the simpler ones it is compared with.
FORM = ("dw", "el", "op")
ABLATION = ((), ("dw",), ("dw", "el"), FORM)
TERM_FEATURES = {"dw": ("dw_macs",), "el": ("elements",), "op": ("ops", "conv_ops")}
TERM_START = {"dw": 3.0, "el": 5.0, "op": 1e5}


def build(name: str):
    """One keras.applications graph at 224x224 with random weights."""
    import keras

    apps = keras.applications
    kw = {"weights": None, "input_shape": (224, 224, 3)}
    if name == "mobilenet_v1":
        return apps.MobileNet(**kw)
    if name == "mobilenet_v2":
        return apps.MobileNetV2(**kw)
    if name == "mobilenet_v3_large":
        return apps.MobileNetV3Large(include_preprocessing=False, **kw)
    if name == "mobilenet_v3_small":
        return apps.MobileNetV3Small(include_preprocessing=False, **kw)
    raise SystemExit(f"no graph for model {name!r} in {DATA}")


def features(pairs: set[tuple[str, str]]) -> dict[str, dict]:
    """Latency-model features of each (model, export), from a cache or by exporting."""
    from device_profiles import latency as lat

    cache = json.loads(FEATURES.read_text()) if FEATURES.is_file() else {}
    missing = sorted(p for p in pairs if f"{p[0]}/{p[1]}" not in cache)
    if missing:
        from pruner.export import export_tflite
        from tuner.quiet import native_quiet

        calib = np.random.default_rng(0).random((8, 224, 224, 3), dtype=np.float32)
        for model_name, export in missing:
            t0 = time.perf_counter()
            with native_quiet():
                blob = export_tflite(
                    build(model_name), quantization=export, representative_data=calib
                )
                f = lat.features_from_tflite(blob)
            cache[f"{model_name}/{export}"] = f.to_dict()
            print(f"  exported {model_name} {export}: {len(blob) / 1e6:.1f} MB "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        FEATURES.parent.mkdir(parents=True, exist_ok=True)
        FEATURES.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
    return cache


def _terms(counts: dict[str, float], kclass: str, form: tuple[str, ...]) -> np.ndarray:
    """[MACs, then one amount per term of the form] of one kernel class."""
    def g(f: str) -> float:
        return float(counts.get(f"{f}.{kclass}", 0.0))

    row = [g("conv_macs") + g("dense_macs")]
    row += [sum(g(f) for f in TERM_FEATURES[t]) for t in form]
    return np.array(row)


class ShapeModel:
    """ms = s_b * sum_k q_bk * (MACs + sum_t w_t * term_t), fitted on log(pred / published)."""

    def __init__(self, boards: list[str], form: tuple[str, ...]):
        self.boards, self.form = boards, form
        nb = len(boards)
        self.p0 = np.concatenate(
            [np.full(nb, np.log(1e-7)), np.zeros(nb), np.log([TERM_START[t] for t in form])]
        )

    def _unpack(self, p: np.ndarray):
        nb = len(self.boards)
        return np.exp(p[:nb]), np.exp(p[nb:2 * nb]), np.exp(p[2 * nb:])

    def predict(self, p: np.ndarray, rows: list[tuple[int, dict]]) -> np.ndarray:
        s, q, w = self._unpack(p)
        weights = np.concatenate([[1.0], w])
        out = []
        for b, counts in rows:
            total = sum(
                (q[b] if k == "int8" else 1.0) * float(weights @ _terms(counts, k, self.form))
                for k in CLASSES
            )
            out.append(s[b] * total)
        return np.array(out)

    def fit(self, rows: list[tuple[int, dict]], ms: np.ndarray) -> np.ndarray:
        from scipy.optimize import least_squares

        return least_squares(lambda p: np.log(self.predict(p, rows) / ms), self.p0).x

    def coefficients(self, p: np.ndarray, board: int, scale: float) -> dict[str, float]:
        """The profile's coefficients (ms per unit of each feature) for one board."""
        s, q, w = self._unpack(p)
        out: dict[str, float] = {}
        for k in CLASSES:
            unit = s[board] * (q[board] if k == "int8" else 1.0) * scale
            out[f"conv_macs.{k}"] = out[f"dense_macs.{k}"] = unit
            out[f"conv_elements.{k}"] = 0.0
            for t, wt in zip(self.form, w, strict=True):
                for f in TERM_FEATURES[t]:
                    out[f"{f}.{k}"] = unit * wt
        return {key: float(f"{v:.6g}") for key, v in sorted(out.items())}


def loo_fits(model: ShapeModel, rows, ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relative error of each figure predicted by a fit without it, and those fits' parameters."""
    errs, params = [], []
    for i in range(len(ms)):
        keep = [j for j in range(len(ms)) if j != i]
        p = model.fit([rows[j] for j in keep], ms[keep])
        errs.append(model.predict(p, [rows[i]])[0] / ms[i] - 1.0)
        params.append(p)
    return np.array(errs), np.array(params)


def summary(errors: np.ndarray) -> dict[str, float]:
    """The profiles' error summary, with the share within this bench's +-10% beside it."""
    from device_profiles.latency import error_summary

    out = error_summary(errors)
    out["within_10pct"] = round(float(np.mean(np.abs(errors) <= TOLERANCE)), 4)
    return out


def run(write_profiles: bool) -> dict:
    import device_profiles as dp
    from device_profiles import latency as lat

    data = json.loads(DATA.read_text())
    recs = data["records"]
    cache = features({(r["model"], r["export"]) for r in recs})
    boards = sorted(data["boards"])
    fitted = [r for r in recs if r.get("fit", True)]
    rows = [(boards.index(r["board"]), cache[f"{r['model']}/{r['export']}"]["counts"])
            for r in fitted]
    ms = np.array([float(r["ms"]) for r in fitted])
    if any(r.get("threads") != 4 for r in fitted):
        raise SystemExit("every fitted figure must be a 4-thread one (the form fits them as such)")
    factor = float(data["single_thread_factor"]["value"])

    ablation = []
    for form in ABLATION:
        e, _ = loo_fits(ShapeModel(boards, form), rows, ms)
        ablation.append({"form": "MACs" + "".join(f" + {t}" for t in form), **summary(e)})
    model = ShapeModel(boards, FORM)
    held, loo_params = loo_fits(model, rows, ms)
    p = model.fit(rows, ms)
    nb = len(boards)
    spread = {f"w_{t}": [float(f"{v:.4g}") for v in (np.exp(loo_params[:, 2 * nb + j].min()),
                                                      np.exp(loo_params[:, 2 * nb + j].max()))]
              for j, t in enumerate(FORM)}
    in_fit = model.predict(p, rows)
    s, q, w = model._unpack(p)
    params = {
        "s_ms_per_mac": {b: float(f"{s[i]:.6g}") for i, b in enumerate(boards)},
        "q_int8": {b: round(float(q[i]), 4) for i, b in enumerate(boards)},
        **{f"w_{t}": float(f"{v:.6g}") for t, v in zip(FORM, w, strict=True)},
    }

    profiles, report_rows = {}, []
    for bi, board in enumerate(boards):
        info = data["boards"][board]
        scale = factor * float(info["clock_scale"])
        mine = [i for i, r in enumerate(fitted) if r["board"] == board]
        lm = None
        if info.get("profile"):
            coefs = model.coefficients(p, bi, scale)
            lm = dp.load(info["profile"]).latency.model_copy(update={
                "provenance": "calibrated",
                "source": (
                    f"Fitted by bench/device_latency_bench.py to {len(ms)} published 4-thread "
                    f"XNNPACK end2end-bench latencies (MobileNet v1/v2/v3, float32 and int8) of "
                    f"{', '.join(boards)} (bench/data/device_latency.json), jointly (shared "
                    f"depthwise/element/op costs); this board's scale x {factor} single-thread "
                    "factor"
                    + (f" x {info['clock_scale']} for the clock" if info["clock_scale"] != 1 else "")
                    + "; real-device figures, not measured here"
                ),
                "calibrated_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "calibration_reports": len(mine),
                "calibration_error": summary(held[mine]),
                "coefficients": coefs,
            })
            profiles[info["profile"]] = {
                "board": board, "coefficients": coefs, "one_thread_scale": scale,
                "calibration_error": summary(held[mine]), "model": lm,
            }
        for r in (x for x in recs if x["board"] == board):
            feats = lat.ModelFeatures.from_dict(cache[f"{r['model']}/{r['export']}"])
            one_thread = lat.predict_latency_ms(lm, feats) if lm is not None else None
            i = fitted.index(r) if r in fitted else None
            four = float(in_fit[i]) if i is not None else (one_thread - lm.overhead_ms) / scale
            row = {
                "board": board, "profile": info.get("profile"), "model": r["model"],
                "export": r["export"], "published_ms": r["ms"], "threads": r.get("threads"),
                "fitted": i is not None, "predicted_in_fit_ms": round(four, 2),
                "predicted_one_thread_ms": None if one_thread is None else round(one_thread, 2),
                "source": r["source"],
            }
            if i is not None:
                row["predicted_held_out_ms"] = round(float(ms[i] * (1 + held[i])), 2)
                row["error_held_out"] = round(float(held[i]), 4)
            elif r.get("threads") == 1:
                row["error_one_thread"] = round(one_thread / float(r["ms"]) - 1, 4)
            report_rows.append(row)

    by_board = {b: summary(held[[i for i, r in enumerate(fitted) if r["board"] == b]])
                for b in boards}
    report = {
        "goal": f"90% of figures within +-{TOLERANCE:.0%} (held out)",
        "n": len(ms),
        "form": "ms = s_board * sum_class q_board,class * (MACs + w_dw*dw_MACs + "
                "w_el*elements + w_op*ops)",
        "held_out": summary(held),
        "held_out_by_board": by_board,
        "in_fit": summary(in_fit / ms - 1),
        "parameters": params,
        "parameters_range_over_leave_one_out_fits": spread,
        "ablation_held_out": ablation,
        "single_thread_factor": data["single_thread_factor"],
        "profiles": {pid: {k: v for k, v in d.items() if k != "model"}
                     for pid, d in profiles.items()},
        "rows": report_rows,
    }
    if write_profiles:
        for pid, d in profiles.items():
            board = d["board"]
            cited = sorted({r["source"] for r in fitted})
            sources = [f"latencies ({', '.join(boards)}): {u}" for u in cited] + [
                f"single-thread factor {factor}: {data['single_thread_factor']['source']}"
            ]
            note = data["boards"][board].get("clock_note")
            if note:
                sources.append(note)
            _write_profile(pid, dp.load(pid), d["model"], sources)
    return report


def _write_profile(pid: str, profile, fitted, sources: list[str]) -> None:
    """Store the fitted latency model, its provenance in the header and its sources."""
    import device_profiles as dp

    path = dp.PACKAGE_DIR / f"{pid}.yaml"
    header = [line for line in path.read_text().splitlines() if line.startswith("#")][:1]
    header += [
        "# The latency model is FITTED to published latencies of real boards (see",
        "# latency.source, sources and bench/data/device_latency.json; error table in",
        "# bench/results/device_latency.md), not measured here. Recalibrate with",
        "# `paoding-edge profiles calibrate` from the agent's reports on the device.",
    ]
    kept = [x for x in profile.sources
            if not any(s in x for s in ("latencies", "single-thread factor", "clock ratio",
                                        "runs at 1.0 GHz, the 3B+"))]
    new = profile.model_copy(update={"latency": fitted, "sources": kept + sources})
    dp.validate(new.model_dump(mode="json"), pid)
    path.write_text("\n".join(header) + "\n" + dp.dump(new))
    print(f"  wrote the fitted latency model to {path}")


def _md_table(head: list[str], lines: list[list[str]]) -> list[str]:
    w = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    out = ["| " + " | ".join(h.ljust(n) for h, n in zip(head, w, strict=True)) + " |",
           "|" + "|".join("-" * (n + 2) for n in w) + "|"]
    return out + ["| " + " | ".join(v.ljust(n) for v, n in zip(x, w, strict=True)) + " |"
                  for x in lines]


def table(report: dict) -> str:
    head = ["board", "model", "export", "published ms", "threads", "held-out pred (4 thr)",
            "error", "profile pred (1 thr)"]
    lines = []
    for r in report["rows"]:
        if r["fitted"]:
            pred, err = f"{r['predicted_held_out_ms']:.1f}", f"{r['error_held_out']:+.1%}"
        elif "error_one_thread" in r:
            pred, err = "(1 thread, not fitted)", f"{r['error_one_thread']:+.1%} (1 thr)"
        else:
            pred, err = "(not fitted)", "-"
        lines.append([r["board"], r["model"], r["export"], f"{r['published_ms']:g}",
                      str(r["threads"] or "not stated"), pred, err,
                      "-" if r["predicted_one_thread_ms"] is None
                      else f"{r['predicted_one_thread_ms']:.1f}"])
    out = _md_table(head, lines)
    h = report["held_out"]
    out.append(
        f"\nheld out (leave-one-out) over {report['n']} fitted figures: "
        f"**{h['within_10pct']:.0%} within +-10%** (goal 90%), median |error| "
        f"{h['median_abs']:.1%}, max {h['max_abs']:.1%}; in-fit max {report['in_fit']['max_abs']:.1%}; "
        + "; ".join(f"{b}: {v['within_10pct']:.0%} of {v['n']:.0f}"
                    for b, v in report["held_out_by_board"].items())
        + "."
    )
    out.append(
        "\nprofile pred: the profile's one-thread prediction (the 4-thread fit x the "
        f"single-thread factor {report['single_thread_factor']['value']}; raspberry-pi-3b-plus "
        "rows: the raspberry-pi-zero-2w profile, x 1.4 for the clock)."
    )
    out.append(f"\nform: {report['form']}; parameters: {json.dumps(report['parameters'])}; "
               "range over the leave-one-out fits: "
               f"{json.dumps(report['parameters_range_over_leave_one_out_fits'])}\n")
    out += _md_table(
        ["form (held out)", "within +-10%", "median abs error", "max abs error"],
        [[a["form"], f"{a['within_10pct']:.0%}", f"{a['median_abs']:.1%}", f"{a['max_abs']:.1%}"]
         for a in report["ablation_held_out"]],
    )
    return "\n".join(out)


def plot(report: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 5))
    for board, mk in (("raspberry-pi-4", "o"), ("raspberry-pi-4-armv7", "^"),
                      ("raspberry-pi-3b-plus", "s")):
        rs = [r for r in report["rows"] if r["board"] == board and r["fitted"]]
        for export, color in (("float32", "tab:blue"), ("int8", "tab:orange")):
            sel = [r for r in rs if r["export"] == export]
            ax.scatter([r["published_ms"] for r in sel], [r["predicted_held_out_ms"] for r in sel],
                       marker=mk, color=color, label=f"{board} {export}")
    xs = np.geomspace(10, 150, 10)
    ax.plot(xs, xs, "k-", lw=0.8)
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="green", alpha=0.15, label="+-10%")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("published latency, 4 threads (ms)")
    ax.set_ylabel("predicted from the .tflite, held out (ms)")
    ax.set_title("leave-one-out prediction of published Pi figures")
    ax.legend(fontsize=7)
    forms = report["ablation_held_out"]
    ax2.bar(range(len(forms)), [a["within_10pct"] * 100 for a in forms], color="tab:blue")
    ax2.axhline(90, color="k", ls="--", lw=0.8, label="goal 90%")
    shipped = "MACs" + "".join(f" + {t}" for t in FORM)
    ax2.set_xticks(range(len(forms)),
                   [a["form"] + (" (shipped)" if a["form"] == shipped else "") for a in forms],
                   rotation=15, fontsize=8)
    ax2.set_ylabel("% of figures within +-10% (held out)")
    ax2.set_title("model form")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-profiles", action="store_true",
                    help="store the fitted latency models in device_profiles/*.yaml")
    args = ap.parse_args(argv)
    report = run(args.write_profiles)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "device_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    text = table(report)
    (RESULTS / "device_latency.md").write_text(text + "\n")
    plot(report, RESULTS / "device_latency.png")
    print(text)
    print(f"wrote {RESULTS}/device_latency.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
