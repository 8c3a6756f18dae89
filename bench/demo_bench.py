"""Does the demo deliver? Run `paoding-edge demo` several times in a row and count.

    python bench/demo_bench.py            # 5 runs (goal: 5 of 5)
    python bench/demo_bench.py --runs 3

A run delivers when the command exits 0: every profile's tuned model VERIFIED on its
agent (measured under host emulation, every budget met with the noise margin, active
there). Runs one after the other in one work directory, as a user repeating the
command would (the first run trains the demo model, the others reuse it), on whatever
else the machine is doing. Per run: exit status, seconds, per profile the original
and the tuned model's measured p90 against the budget, the rounds used, and the
verdict. Writes bench/results/demo.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def one_run(i: int, work: Path, log_dir: Path) -> dict:
    """One `paoding-edge demo` in a child process; its outcome from its exit status and report."""
    log = log_dir / f"demo-run{i}.log"
    report = work / "demo_report.json"
    report.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "wb") as f:
        rc = subprocess.call(
            [sys.executable, "-m", "hostcli.main", "demo", "--workdir", str(work),
             "--no-progress"],
            cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
        )
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the demo, its agents and broker
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    out = {"run": i, "exit": rc, "delivered": rc == 0, "seconds": round(seconds, 1),
           "cpu_seconds": round(cpu, 1),
           "load_average_after": os.getloadavg()[0], "profiles": {}}
    text = log.read_text(errors="replace")
    out["stray_lines"] = [
        line for line in text.splitlines()
        if any(k in line for k in ("I0000", "W0000", "oneDNN", "XNNPACK", "fully_quantize",
                                   "absl::", "WARNING:"))
    ][:5]
    if report.is_file():
        rep = json.loads(report.read_text())
        for pid in rep["profiles"]:
            rows = {r["kind"]: r for r in rep["rows"] if r["profile"] == pid}
            tune = json.loads(Path(rep["tune_reports"][pid]).read_text())
            out["profiles"][pid] = {
                "budget_p90_ms": tune["budgets"]["p90_latency_ms"],
                "original_p90_ms": rows.get("original", {}).get("p90_ms"),
                "tuned": rows.get("tuned", {}).get("model"),
                "tuned_p90_ms": rows.get("tuned", {}).get("p90_ms"),
                "tuned_p90_runs_ms": rows.get("tuned", {}).get("p90_runs_ms"),
                "tuned_state": rows.get("tuned", {}).get("state"),
                "candidates_deployed": len(tune["verification"]),
                "outcome": tune["outcome"],
                "statement": tune["statement"],
            }
    else:
        out["error_tail"] = text[-800:]
    return out


def table(runs: list[dict]) -> str:
    head = ["run", "exit", "s", "profile", "original p90", "tuned", "tuned p90 (runs)",
            "budget", "deployed", "outcome"]
    rows = []
    for r in runs:
        if not r["profiles"]:
            rows.append([str(r["run"]), str(r["exit"]), f"{r['seconds']:.0f}", "-", "-", "-",
                         "-", "-", "-", "no report"])
        for pid, p in r["profiles"].items():
            runs_ms = ", ".join(f"{v:.2f}" for v in p["tuned_p90_runs_ms"] or [])
            rows.append([
                str(r["run"]), str(r["exit"]), f"{r['seconds']:.0f}",
                pid.replace("-emulated", " (emu)"),
                f"{p['original_p90_ms']:.2f}" if p["original_p90_ms"] else "-",
                p["tuned"] or "-",
                f"{p['tuned_p90_ms']:.2f} ({runs_ms})" if p["tuned_p90_ms"] else "-",
                f"{p['budget_p90_ms']:g}", str(p["candidates_deployed"]), p["outcome"],
            ])
    w = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    out = ["| " + " | ".join(h.ljust(n) for h, n in zip(head, w, strict=True)) + " |",
           "|" + "|".join("-" * (n + 2) for n in w) + "|"]
    out += ["| " + " | ".join(v.ljust(n) for v, n in zip(x, w, strict=True)) + " |"
            for x in rows]
    ok = sum(r["delivered"] for r in runs)
    out.append(f"\ndelivered: {ok} of {len(runs)} runs (goal: all); p90 in ms, measured by "
               "the agents under host emulation")
    out.append("seconds per run (wall / CPU of the demo, its agents and broker; load average "
               "after the run): " + "; ".join(
                   f"run {r['run']}: {r['seconds']:.0f} / {r.get('cpu_seconds', float('nan')):.0f}"
                   f" (load {r['load_average_after']:.1f})" for r in runs)
               + ". On a loaded host the wall time is mostly waiting for a core.")
    return "\n".join(out)


def plot(runs: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pids = sorted({p for r in runs for p in r["profiles"]})
    fig, axes = plt.subplots(1, max(len(pids), 1), figsize=(6 * max(len(pids), 1), 4.2),
                             squeeze=False)
    for ax, pid in zip(axes[0], pids, strict=False):
        xs = [r["run"] for r in runs if pid in r["profiles"]]
        ps = [r["profiles"][pid] for r in runs if pid in r["profiles"]]
        ax.bar([x - 0.2 for x in xs], [p["original_p90_ms"] or 0 for p in ps], 0.4,
               color="tab:gray", label="original (measured)")
        ax.bar([x + 0.2 for x in xs], [p["tuned_p90_ms"] or 0 for p in ps], 0.4,
               color=["tab:blue" if p["outcome"] == "verified" else "tab:red" for p in ps],
               label="tuned, verified (red: not verified)")
        if ps:
            ax.axhline(ps[0]["budget_p90_ms"], color="black", ls="--", lw=1, label="p90 budget")
        ax.set_xticks(xs)
        ax.set_xlabel("run")
        ax.set_ylabel("p90 ms (median of measurements, emulated)")
        ax.set_title(pid)
        ax.legend(fontsize=7)
    ok = sum(r["delivered"] for r in runs)
    fig.suptitle(f"paoding-edge demo: {ok} of {len(runs)} runs delivered")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workdir", help="demo work directory (default: a fresh temporary one)")
    args = ap.parse_args(argv)
    from bench.common import machine

    work = Path(args.workdir or tempfile.mkdtemp(prefix="paoding-demo-bench-"))
    log_dir = RESULTS / "demo_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for i in range(1, args.runs + 1):
        r = one_run(i, work, log_dir)
        runs.append(r)
        print(f"run {i}: exit {r['exit']} in {r['seconds']:.0f} s "
              f"({'delivered' if r['delivered'] else 'NOT delivered'})", flush=True)
    text = table(runs)
    report = {"runs": runs, "delivered": sum(r["delivered"] for r in runs),
              "of": len(runs), "machine": machine()}
    (RESULTS / "demo.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "demo.md").write_text(text + "\n")
    plot(runs, RESULTS / "demo.png")
    print(text)
    print(f"wrote {RESULTS}/demo.json, demo.md, demo.png (logs in {log_dir})")
    return 0 if report["delivered"] == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
