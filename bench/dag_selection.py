"""How a DAG step's budget is shared between groups: the variants on one trained model.

    python bench/dag_selection.py [--models ds_cnn mobilenet_v2_0.35] [--variants ...]

Trains the digits models of bench/dag_bench.py (seed 0) and prunes each by paoding with
the default refit (compensation="reconstruct"), exact widths, once per variant:
``uniform`` (the same share of every group) and ``width`` (budget="width", the default
for convolutional models with BatchNormalization). The saliency variants this bench
once compared (dag_saliency "activations", "energy") were removed with the option:
paoding scores every model with the robustness criterion.
The width budget removes fewer MACs per unit, so it runs to a higher unit target in
10% steps (the budget is spread over the steps). Accuracy on 200 test inputs against
MACs removed; writes bench/results/dag_selection.json and .md.
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

from bench.common import RESULTS, git_commit, machine, machine_line, write_json  # noqa: E402
from tuner.quiet import native_quiet  # noqa: E402

VARIANTS = {"uniform": {"budget": "uniform"}, "width": {"budget": "width"}}
# unit target and step per model and budget: the width budget needs more units for the MACs
TARGETS = {"ds_cnn": {"uniform": (0.35, 0.05), "width": (0.35, 0.05)},
           "mobilenet_v2_0.35": {"uniform": (0.25, 0.05), "width": (0.6, 0.1)}}


def run(name: str, variants: list[str], seed: int = 0) -> dict[str, Any]:
    """Per variant: (unit ratio, MACs removed, accuracy) of every step."""
    from bench.dag_bench import trained
    from pruner.api import prune_steps

    with native_quiet():
        model, data = trained(name, seed)
    out = {}
    for v in variants:
        options = VARIANTS[v]
        target, step = TARGETS[name][options["budget"]]
        t, rows = time.perf_counter(), []
        with native_quiet():
            for rec, _ in prune_steps(model, target, "paoding", step=step, round_to=1,
                                      eval_data=data, attacks=(), n_random=0,
                                      measure_tflite=False, progress=False, seed=seed,
                                      **options):
                rows.append({"ratio": rec.ratio, "macs": rec.macs, "accuracy": rec.accuracy})
        for r in rows:
            r["macs_removed"] = 1 - r["macs"] / rows[0]["macs"]
        out[v] = {"rows": rows, "seconds": time.perf_counter() - t}
        print(f"{name} {v}: " + " ".join(f"{100 * r['macs_removed']:.0f}%/{r['accuracy']:.3f}"
                                         for r in rows), file=sys.stderr)
    return out


def markdown(report: dict[str, Any]) -> str:
    out = ["# DAG selection variants (paoding with refit, exact widths, 1 seed)", "",
           f"Machine: {machine_line(report['machine'])}, shared with other jobs. Run "
           f"{report['started']} at commit {report.get('commit') or 'unknown'}; "
           "`python bench/dag_selection.py`. Cells: MACs removed / accuracy (200 test "
           "inputs), one per step.", ""]
    for name, res in report["models"].items():
        out += [f"## {name}", "", "| variant | steps |", "|---|---|"]
        for v, r in res.items():
            cells = ", ".join(f"{100 * x['macs_removed']:.0f}% / {100 * x['accuracy']:.1f}"
                              for x in r["rows"])
            out.append(f"| {v} | {cells} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="DAG selection variants (bench/dag_selection.py)")
    p.add_argument("--models", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    report = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "commit": git_commit(), "models": {m: run(m, args.variants) for m in args.models}}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "dag_selection.json", report)
    md = markdown(report)
    (args.out / "dag_selection.md").write_text(md, encoding="utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
