"""How the tuner presents its candidates: a fixed-width table and a PNG plot."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from core.errors import ConfigError
from core.files import staged_dir
from device_profiles import calibration_note
from device_profiles.schema import DeviceProfile
from tuner.candidates import OUTPUT_FILES, Candidate, TuneResult


def format_table(candidates: Sequence[Candidate], profile: DeviceProfile) -> str:
    """The candidates as a fixed-width table.

    '*' marks the chosen one; VERIFIED: measured on the device, every budget met;
    'ok (predicted)': predicted to meet, not measured; 'meas p90' is the median of
    (xN) measurements.
    """
    b = profile.budgets
    emu = " (emulated)" if profile.emulated else ""
    header = [
        "",
        "candidate",
        "params",
        "size KB",
        "pred p90 ms",
        f"meas p90 ms{emu}",
        "pred MB",
        "meas MB",
        "acc",
        "robust",
        "budgets",
    ]
    rows = []
    for c in candidates:
        m = c.measured or {}
        if m.get("verified"):
            status = "VERIFIED"
        elif c.runtime_error:
            status = "runtime"
        elif c.meets and not c.measured_miss:
            status = "ok (predicted)"
        else:
            status = "miss: " + ", ".join(_short(x) for x in c.misses)
        n = m.get("measurements")
        rows.append(
            [
                "*" if c.chosen else "",
                c.key,
                str(c.params),
                f"{c.size_kb:.1f}",
                f"{c.predicted_p90_ms:.3g}",
                (f"{m['p90_ms']:.3g}" + (f" (x{n})" if n else ""))
                if m.get("p90_ms") is not None
                else ("n/a" if m else "-"),
                f"{c.predicted_memory_mb:.1f}",
                f"{m['peak_memory_mb']:.1f}" if m.get("peak_memory_mb") is not None else "-",
                f"{c.accuracy:.3f}" if c.accuracy is not None else "-",
                f"{c.robust:.3f}" if c.robust is not None else "-",
                status,
            ]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join
    out = [
        f"{profile.id}: p90 <= {b.p90_latency_ms:g} ms, memory <= {b.peak_memory_mb:g} MB, "
        f"size <= {b.model_size_kb:g} KB, accuracy retention >= {b.min_accuracy_retention:g}, "
        f"robust retention >= {b.min_robust_retention:g}; runtime {profile.runtime.interpreter} "
        f"{profile.runtime.version}; latency model {profile.latency.provenance}"
        + (f": {note}" if (note := calibration_note(profile)) else ""),
        line(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
        line("-" * w for w in widths),
    ]
    out += [line(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(out)


def _short(miss: str) -> str:
    """'p90 latency 1.2 ms > ...' -> 'p90 latency'; 'device rolled_back: ...' -> 'device'."""
    words = miss.split(" ")
    return " ".join(words[:2]) if miss.startswith(("p90", "peak", "model", "robust")) else words[0]


def plot(result: TuneResult, png: str | os.PathLike[str]) -> Path:
    """Accuracy and robust accuracy against predicted p90 latency, with the budget lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = result.profile
    b = p.budgets
    cs = [c for c in result.candidates if c.evaluated]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    markers = {"float32": "o", "float16": "s", "dynamic": "^", "int8": "D"}
    for export, mk in markers.items():
        sel = [c for c in cs if c.export == export]
        if not sel:
            continue
        xs = [c.predicted_p90_ms for c in sel]
        ax.scatter(
            xs,
            [c.accuracy for c in sel],
            marker=mk,
            color="tab:blue",
            alpha=0.7,
            label=f"accuracy ({export})",
        )
        ax.scatter(
            xs,
            [c.robust for c in sel],
            marker=mk,
            color="tab:red",
            alpha=0.7,
            label=f"robust ({export})",
        )
        ax2.scatter(
            xs, [c.size_kb for c in sel], marker=mk, color="tab:green", alpha=0.7, label=export
        )
    refused = [c for c in cs if c.runtime_error]
    if refused:
        ax.scatter(
            [c.predicted_p90_ms for c in refused],
            [c.robust for c in refused],
            marker="x",
            s=90,
            color="black",
            label=f"{p.runtime.interpreter} {p.runtime.version} cannot load",
        )
    for c in cs:
        if c.measured and c.measured.get("p90_ms"):
            ax.annotate(
                "",
                xy=(c.measured["p90_ms"], c.robust),
                xytext=(c.predicted_p90_ms, c.robust),
                arrowprops={"arrowstyle": "->", "color": "gray"},
            )
            ax.scatter(
                [c.measured["p90_ms"]], [c.robust], facecolors="none", edgecolors="black", s=80
            )
    if result.chosen:
        c = result.chosen
        at = (c.measured or {}).get("p90_ms") or c.predicted_p90_ms
        ax.scatter(
            [at],
            [c.robust],
            marker="*",
            s=300,
            color="gold",
            edgecolors="black",
            zorder=5,
            label="verified on the device" if result.verified else "chosen (predicted)",
        )
        ax2.scatter(
            [at],
            [c.size_kb],
            marker="*",
            s=300,
            color="gold",
            edgecolors="black",
            zorder=5,
            label="chosen",
        )
    o = result.original
    for a in (ax, ax2):
        a.axvline(
            b.p90_latency_ms,
            color="black",
            ls="--",
            lw=1,
            label=f"p90 budget {b.p90_latency_ms:g} ms",
        )
        a.set_xscale("log")
        a.set_xlabel(
            "p90 latency (ms): predicted; circles measured"
            + (" (emulated device)" if p.emulated else "")
        )
    if o.accuracy:
        ax.axhline(
            o.accuracy * b.min_accuracy_retention,
            color="tab:blue",
            ls=":",
            lw=1,
            label="accuracy floor",
        )
    if o.robust:
        ax.axhline(
            o.robust * b.min_robust_retention, color="tab:red", ls=":", lw=1, label="robust floor"
        )
    ax.set_ylabel("accuracy / robust accuracy")
    ax.set_title(f"{p.id}: candidates ({result.outcome})")
    ax.legend(fontsize=7, loc="lower right")
    ax2.axhline(
        b.model_size_kb, color="black", ls="-.", lw=1, label=f"size budget {b.model_size_kb:g} KB"
    )
    ax2.set_yscale("log")
    ax2.set_ylabel(".tflite size (KB)")
    ax2.set_title("size against latency")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return Path(png)


def table(result: TuneResult) -> str:
    """The result's candidates as a table (see format_table)."""
    return format_table(result.candidates, result.profile)


def save(result: TuneResult, out_dir: str | os.PathLike[str]) -> Path:
    """Write model.tflite (+ model.keras), report.json and report.png into ``out_dir``, atomically."""
    out = Path(out_dir)
    if out.exists() and (
        not out.is_dir() or any(f.name not in OUTPUT_FILES for f in out.iterdir())
    ):
        raise ConfigError(
            f"output {out} exists and holds other files: give a new or empty directory "
            "(or a previous tune output)"
        )
    with staged_dir(out, replace=True) as tmp:
        if result.model_bytes is not None:
            (tmp / "model.tflite").write_bytes(result.model_bytes)
            if result.keras_model is not None:
                result.keras_model.save(tmp / "model.keras")
        (tmp / "report.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        plot(result, tmp / "report.png")
    return out
