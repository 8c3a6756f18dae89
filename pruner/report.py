"""The JSON report and the PNG plot of a pruning trajectory."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core.files import atomic_path, write_atomic

SIZE_KEYS = (("params", "parameters"), ("macs", "MACs"), ("tflite_bytes", "TFLite bytes"))


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars and arrays converted, keys as strings,
    NaN and infinities as null, objects with ``to_dict``/``get_config`` expanded."""
    if isinstance(obj, Mapping):
        return {_key(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    for attr in ("to_dict", "get_config"):
        if callable(getattr(obj, attr, None)):
            return to_jsonable(getattr(obj, attr)())
    if hasattr(obj, "__dataclass_fields__"):
        return to_jsonable({f: getattr(obj, f) for f in obj.__dataclass_fields__})
    return str(obj)


def _key(k: Any) -> str:
    if isinstance(k, (float, np.floating)):
        return repr(float(k))
    return str(k)


def write_json(report_dict: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write the report as indented JSON, atomically; return the path."""
    text = json.dumps(to_jsonable(report_dict), indent=2, sort_keys=False, allow_nan=False)
    return write_atomic(path, text + "\n")


def _rows(report_dict: Any) -> list[Mapping[str, Any]]:
    rows = report_dict.get("trajectory", []) if isinstance(report_dict, Mapping) else report_dict
    return [to_jsonable(r) for r in rows]


def _series(rows: list[Mapping[str, Any]], get: Any) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        value = get(r)
        if value is not None and r.get("ratio") is not None:
            xs.append(100.0 * float(r["ratio"]))
            ys.append(float(value))
    return xs, ys


def _plot_verdict(ax: Any, rows: list[Mapping[str, Any]]) -> None:
    """The figure that decides (pruner.verdict), its 95% interval and its floor."""
    pts = [(100.0 * float(r["ratio"]), r["verdict"]) for r in rows
           if r.get("verdict") and r.get("ratio") is not None]
    if not pts:
        return
    xs = [x for x, _ in pts]
    v = [d for _, d in pts]
    label = "accuracy" if v[-1]["evidence"] == "labelled" else "fidelity"
    label = f"{label} ({v[-1]['evidence']}, decides)"
    ax.fill_between(xs, [d["lower"] for d in v], [d["upper"] for d in v], color="k",
                    alpha=0.12, label="95% interval")
    ax.plot(xs, [d["figure"] for d in v], "D-", color="k", lw=1.6, ms=4, label=label)
    ax.plot(xs, [d["floor"] for d in v], "--", color="r", lw=1.2, label="floor")
    refused = [(x, d["figure"]) for x, d in pts if not d["passed"]]
    if refused:
        ax.plot(*zip(*refused, strict=True), "x", color="r", ms=9, mew=2, label="refused")
    if v[-1]["evidence"] == "labelled" and any(d.get("fidelity") is not None for d in v):
        fx = [x for x, d in pts if d.get("fidelity") is not None]
        ax.plot(fx, [d["fidelity"] for d in v if d.get("fidelity") is not None], "^:",
                color="grey", ms=4, label="data-free fidelity (beside)")


def plot_trajectory(report_dict: Mapping[str, Any] | list, png_path: str | os.PathLike) -> Path:
    """Plot the verdict's deciding figure with its interval and floor, accuracy, robust
    accuracy per attack and eps, and fidelity (left) and the relative size (right)
    against the share of units pruned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows(report_dict)
    fig, (ax, ax_size) = plt.subplots(
        1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1.4, 1], "wspace": 0.55})
    try:
        styles = {"fgsm": ":", "pgd": "--"}
        for name, label in (("accuracy", "accuracy"), ("fidelity", "fidelity (eval set)"),
                            ("fidelity_random", "fidelity (random inputs)")):
            xs, ys = _series(rows, lambda r, n=name: r.get(n))
            if xs:
                ax.plot(xs, ys, "o-" if name == "accuracy" else "s-", label=label)
        attacks = sorted({a for r in rows for a in (r.get("robust") or {})})
        all_eps = sorted({e for r in rows for a in attacks
                          for e in (r.get("robust") or {}).get(a, {})}, key=float)
        colours = plt.get_cmap("plasma")(np.linspace(0.15, 0.8, max(len(all_eps), 1)))
        for attack in attacks:
            for colour, e in zip(colours, all_eps, strict=False):
                xs, ys = _series(rows, lambda r, a=attack, e=e: (r.get("robust") or {})
                                 .get(a, {}).get(e))
                if xs:
                    ax.plot(xs, ys, styles.get(attack, "-."), marker=".", color=colour,
                            label=f"{attack.upper()} eps={e}")
        _plot_verdict(ax, rows)
        ax.set_xlabel("units pruned (%)")
        ax.set_ylabel("share of samples")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("quality")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        for key, label in SIZE_KEYS:
            first = next((r.get(key) for r in rows if r.get(key)), None)
            xs, ys = _series(rows, lambda r, k=key, f=first: (
                100.0 * r[k] / f if f and r.get(k) is not None else None))
            if xs:
                ax_size.plot(xs, ys, "o-", label=label)
        ax_size.set_xlabel("units pruned (%)")
        ax_size.set_ylabel("% of the first row")
        ax_size.set_title("size")
        ax_size.grid(alpha=0.3)
        if ax_size.get_legend_handles_labels()[0]:
            ax_size.legend(fontsize=8)
        fig.subplots_adjust(left=0.06, right=0.97, bottom=0.12)
        path = Path(png_path)
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path
