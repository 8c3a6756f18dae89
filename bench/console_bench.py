"""Console benchmark: time to the first page with 1,000 and 10,000 devices in the registry.

    python bench/console_bench.py [--sizes 1000,10000] [--rollouts 3] [--repeats 20]
                                  [--postgres postgresql://postgres@127.0.0.1:5432/postgres]

For each fleet size and registry (SQLite file; PostgreSQL when --postgres is
given): a registry holding N enrolled devices over three profiles and
``--rollouts`` rollouts to every device (one deployment and one final report
each), then ``paoding-edge console`` in a process of its own, and an HTTP
client timing the fleet page (HTML and its .json twin), the last rollout's
page (N devices) and one device's page: the first request after start (cold)
and the median of ``--repeats`` more (pages in that order: the fleet HTML is
the first request after start). Writes bench/results/console.{json,md,png}.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, git_commit, machine, machine_line, save_figure, write_json  # noqa: E402
from fleet.registry import Registry  # noqa: E402
from fleet.rollout import Device, Outcome  # noqa: E402

PROFILES = ("raspberry-pi-4", "raspberry-pi-zero-2w", "android-midrange")
GOAL_S = 1.0


def populate(target: str, n: int, rollouts: int) -> tuple[str, str]:
    """N devices and ``rollouts`` rollouts to all of them; returns (last rollout, a device)."""
    ids = [f"dev-{i:05d}" for i in range(n)]
    with Registry(target) as reg:
        reg.upsert_devices([(Device(d, PROFILES[i % 3], frozenset()), "litert", i % 10 != 0,
                             None) for i, d in enumerate(ids)])
        for r in range(rollouts):
            rid = f"r{r}"
            sha = f"{r:x}" * 64
            waves = [ids[:10], ids[10:100], ids[100:]]
            reg.create_rollout(rid, {"waves": waves, "variants": {p: [sha[:64], None]
                                                                   for p in PROFILES},
                                     "policy": {"max_failure_rate": 0.2}, "skipped": {}})
            reg.add_deployments([(f"{rid}-{d}", d, sha[:64], 100_000, rid,
                                  0 if i < 10 else 1 if i < 100 else 2, None, r + 1)
                                 for i, d in enumerate(ids)])
            reg.add_reports([(uuid.uuid4().hex, f"{rid}-{d}", d, "active", {
                "state": "active", "final": True,
                "benchmark": {"latency_ms": {"p50": 8.0 + i % 7, "p90": 9.0 + i % 7},
                              "peak_memory_mb": 40.0},
                "checks": {"count": 20, "agreement": 0.98}}) for i, d in enumerate(ids)])
            reg.settle([(f"{rid}-{d}", Outcome.ACTIVE, "") for d in ids])
            reg.set_rollout_state(rid, "done", "every wave finished")
        reg.note_devices([(d, None, f"{rollouts - 1:x}" * 64, None) for d in ids])
    return f"r{rollouts - 1}", ids[n // 2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_pages(target: str, rollout: str, device: str, repeats: int) -> dict[str, dict]:
    port = free_port()
    exe = Path(sys.executable).with_name("paoding-edge")
    proc = subprocess.Popen([str(exe), "console", "--db", target, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()  # printed just before the server starts listening
        if "console on" not in banner:
            raise RuntimeError(f"the console did not start: {banner.strip()}")
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=60) as client:
            deadline = time.monotonic() + 60
            while True:  # wait until the port accepts connections
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("the console did not listen") from None
                    time.sleep(0.05)
            pages = {"fleet (HTML)": "/fleet", "fleet (JSON)": "/fleet.json",
                     "rollout (HTML)": f"/rollout/{rollout}", "device (HTML)": f"/device/{device}"}
            out = {}
            for name, path in pages.items():
                times = []
                for _ in range(repeats + 1):
                    t0 = time.perf_counter()
                    r = client.get(path)
                    times.append(time.perf_counter() - t0)
                    r.raise_for_status()
                out[name] = {"path": path, "cold_s": times[0],
                             "median_s": statistics.median(times[1:]),
                             "max_s": max(times[1:]), "bytes": len(r.content)}
            return out
    finally:
        proc.terminate()
        proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--rollouts", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--postgres", help="also a PostgreSQL registry (admin URL; a database "
                    "is created and dropped)")
    ap.add_argument("--out", default=str(RESULTS / "console"))
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for backend in ["sqlite"] + (["postgres"] if args.postgres else []):
        for n in sizes:
            with tempfile.TemporaryDirectory() as tmp:
                if backend == "sqlite":
                    target, drop = str(Path(tmp) / "fleet.sqlite"), None
                else:
                    import psycopg

                    name = f"paoding_console_bench_{uuid.uuid4().hex[:8]}"
                    admin = psycopg.connect(args.postgres, autocommit=True)
                    admin.execute(f"CREATE DATABASE {name}")
                    target, drop = args.postgres.rsplit("/", 1)[0] + f"/{name}", name
                try:
                    t0 = time.perf_counter()
                    rollout, device = populate(target, n, args.rollouts)
                    print(f"{backend} {n} devices: registry filled in "
                          f"{time.perf_counter() - t0:.1f} s; timing pages", file=sys.stderr)
                    for page, t in time_pages(target, rollout, device, args.repeats).items():
                        rows.append({"backend": backend, "devices": n, "page": page, **t})
                finally:
                    if drop:
                        admin.execute(f"DROP DATABASE IF EXISTS {drop} WITH (FORCE)")
                        admin.close()
    worst = max(r["cold_s"] for r in rows if r["devices"] == max(sizes)
                and r["page"].startswith("fleet"))
    result = {"machine": machine(), "commit": git_commit(), "rollouts": args.rollouts,
              "repeats": args.repeats, "goal_first_page_s": GOAL_S,
              "load": os.getloadavg(), "rows": rows,
              "first_page_worst_s": worst, "goal_met": worst < GOAL_S}
    out = Path(args.out)
    write_json(out.with_suffix(".json"), result)
    lines = [
        "# Console: time to the first page",
        "",
        f"Machine: {machine_line(result['machine'])}; load average at the end "
        f"{result['load'][0]:.1f}. Each registry holds the devices and {args.rollouts} "
        "rollouts to all of them (one deployment and one final report per device each). "
        "The console runs as `paoding-edge console` in its own process; times are HTTP "
        "round trips from a client on the same machine, pages in the order of the table: "
        "cold is each page's first request (the fleet HTML is the first request after the "
        f"console starts), then the median and max of {args.repeats} more.",
        "",
        "| registry | devices | page | cold ms | median ms | max ms | KB |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['devices']:,} | {r['page']} | "
                     f"{1000 * r['cold_s']:.0f} | {1000 * r['median_s']:.0f} | "
                     f"{1000 * r['max_s']:.0f} | {r['bytes'] / 1024:.0f} |")
    lines += ["", f"Goal: the first fleet page under {GOAL_S:g} s with {max(sizes):,} devices: "
              f"worst cold fleet page {1000 * worst:.0f} ms, "
              f"{'met' if result['goal_met'] else 'MISSED'}."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(rows, out.with_suffix(".png"))
    print("\n".join(lines))
    return 0


def plot(rows: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["backend"], r["devices"]) for r in rows})
    pages = list(dict.fromkeys(r["page"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / len(groups)
    for k, (backend, n) in enumerate(groups):
        ys = [1000 * next(r["cold_s"] for r in rows if r["backend"] == backend
                          and r["devices"] == n and r["page"] == p) for p in pages]
        ax.bar([i + k * width for i in range(len(pages))], ys, width,
               label=f"{backend}, {n:,} devices")
    ax.axhline(1000 * GOAL_S, color="#b00020", linestyle="--", label="goal (first page)")
    ax.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(len(pages))], pages)
    ax.set_ylabel("first request after start (ms)")
    ax.set_title("Console: cold page time by registry size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, png)


if __name__ == "__main__":
    sys.exit(main())
