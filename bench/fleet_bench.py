"""Fleet benchmark: one rollout to N simulated devices over a real Mosquitto, N = 1k and 10k.

    python bench/fleet_bench.py [--sizes 1000,10000] [--model-kb 1024]

For each N: a Mosquitto of its own (``$SYS`` every second), the device
simulator in a process of its own (``python tests/fleetsim.py``: real
protocol, Ed25519-signed status/reports, host signature and chunk digests
checked, no interpreter), and the host rollout in a third process that
measures itself. Every figure comes from the run:
- devices settled (final outcome recorded) and reports lost (published by the
  devices, missing from the registry; must be 0);
- host peak RSS, CPU seconds, peak open file descriptors and threads;
- broker messages and bytes per device (``$SYS/broker/...`` deltas over the rollout);
- bytes the host published (artifacts) and the rollout's wall time.
Writes bench/results/fleet.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "tests"))

from mosquitto import Mosquitto  # noqa: E402

from core.mqtt import Broker, MqttClient  # noqa: E402
from core.signing import load_signing_key, write_key_pair  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SYS_TOPICS = {
    "messages_received": "$SYS/broker/messages/received",
    "messages_sent": "$SYS/broker/messages/sent",
    "bytes_received": "$SYS/broker/bytes/received",
    "bytes_sent": "$SYS/broker/bytes/sent",
}


def _broker_counters(port: int, settle_s: float = 2.5) -> dict[str, int]:
    """The broker's cumulative counters ($SYS, published every second)."""
    found: dict[str, int] = {}
    by_topic = {t: k for k, t in SYS_TOPICS.items()}
    client = MqttClient(Broker(port=port), f"bench-sys-{os.getpid()}-{time.time_ns()}",
                        clean_session=True)
    client.subscribe("$SYS/broker/#",
                     lambda t, p: found.__setitem__(by_topic[t], int(p)) if t in by_topic
                     else None)
    client.connect()
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline and len(found) < len(SYS_TOPICS):
        time.sleep(0.1)
    time.sleep(1.2)  # one more $SYS period, so the counters include everything before now
    client.close()
    return found


def host_run(spec_path: str) -> int:
    """The host process: run the rollout, measure itself, print one JSON line."""
    from fleetsim import device_ids, simulated_key

    from fleet.orchestrator import run_rollout
    from fleet.registry import Registry
    from fleet.rollout import WavePolicy

    spec = json.loads(Path(spec_path).read_text())
    fds = threads = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal fds, threads
        while not stop.is_set():
            fds = max(fds, len(os.listdir("/proc/self/fd")))
            threads = max(threads, threading.active_count())
            time.sleep(0.2)

    with Registry(spec["db"]) as reg:
        ids = device_ids(spec["n"])
        for d in ids:  # enrolment: the host checks every device message's signature
            reg.set_identity(d, "simulated", simulated_key(d).public_key().public_pem().decode(),
                             d)
        model = Path(spec["model"]).read_bytes()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        result = run_rollout({"simulated": model}, Broker(port=spec["port"]), reg,
                             key=load_signing_key(spec["key"]), discover_s=spec["discover_s"],
                             policy=WavePolicy(canary=spec["canary"], growth=spec["growth"],
                                               timeout_s=600, max_failure_rate=0.5))
        wall = time.monotonic() - t0
        stop.set()
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        rows = reg.rollout_deployments(result.rollout_id)
        recorded = reg.db.query("SELECT COUNT(*) AS n FROM reports")[0]["n"]
        settled = sum(1 for r in rows if r["outcome"] != "pending")
        outcomes: dict[str, int] = {}
        for r in rows:
            outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        active_sha = sum(1 for r in reg.device_rows() if r["active_sha"])
    print(json.dumps({
        "rollout_id": result.rollout_id, "decision": result.decision.value,
        "wall_s": wall, "cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "fds_peak": fds, "threads_peak": threads, "deployments": len(rows),
        "settled": settled, "outcomes": outcomes, "reports_recorded": recorded,
        "devices_with_active_sha": active_sha, "skipped": len(result.skipped),
        **result.stats,
    }), flush=True)
    return 0


def run_size(n: int, model: Path, key: Path, work: Path, canary: int, growth: float) -> dict:
    from fleet.link import BROKER_INFLIGHT  # as the generated broker config sets it

    broker = Mosquitto(workdir=work / f"mosq-{n}", persistence=False, extra_config=(
        f"sys_interval 1\nmax_inflight_messages {BROKER_INFLIGHT}\n"))
    broker.start()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    sim = None
    try:
        sim = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "fleetsim.py"), "--broker", f"mqtt://127.0.0.1:{broker.port}",
             "--devices", str(n), "--trust-key", str(key.with_suffix(".pub"))],
            stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        ready = sim.stdout.readline().strip()
        if not ready.startswith("ready"):
            raise RuntimeError(f"simulator did not start: {ready!r}")
        before = _broker_counters(broker.port)
        spec = {"n": n, "db": str(work / f"fleet-{n}.sqlite"), "port": broker.port,
                "model": str(model), "key": str(key), "discover_s": 3.0 + n / 2000,
                "canary": canary, "growth": growth}
        spec_path = work / f"host-{n}.json"
        spec_path.write_text(json.dumps(spec))
        host = subprocess.run([sys.executable, __file__, "--host-run", str(spec_path)],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
        if host.returncode != 0:
            raise RuntimeError(f"host run failed: {host.stderr[-2000:]}")
        out = json.loads(host.stdout.strip().splitlines()[-1])
        after = _broker_counters(broker.port)
        sim.terminate()
        tail = sim.communicate(timeout=60)[0]
        stats_line = next((ln for ln in tail.splitlines() if ln.startswith("stats ")), "")
        published = int(stats_line.split("reports=")[1].split(",")[0]) if stats_line else -1
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in SYS_TOPICS}
        out.update(
            n=n,
            reports_published=published,
            reports_lost=published - out["reports_recorded"],
            broker=delta,
            broker_messages_per_device=(delta["messages_received"] + delta["messages_sent"]) / n,
            broker_bytes_per_device=(delta["bytes_received"] + delta["bytes_sent"]) / n,
        )
        return out
    finally:
        if sim is not None and sim.poll() is None:
            sim.kill()
            sim.wait()
        broker.kill()


def write_outputs(results: list[dict], meta: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = [
        "# Fleet rollout at scale (simulated devices, real Mosquitto, one host process)",
        "",
        f"Model {meta['model_bytes'] // 1024} KiB in {meta['chunks']} chunks; canary "
        f"{meta['canary']}, growth {meta['growth']}; {meta['machine']}; commit "
        f"{meta.get('commit')}. Host threads include the benchmark's own sampling thread "
        "(the rollout runs two: its own and the MQTT network loop). The simulator "
        "multiplexes its devices over one connection, so the broker sends it each chunk "
        "once: broker bytes per device exclude the artifact's fan-out to real devices.",
        "",
        "| devices | settled | reports lost | wall s | host CPU s | host RSS MB | host fds | "
        "host threads | host bytes published | broker msgs/device | broker bytes/device |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['n']} | {r['settled']} | {r['reports_lost']} | {r['wall_s']:.1f} | "
            f"{r['cpu_s']:.1f} | {r['rss_peak_mb']:.0f} | {r['fds_peak']} | "
            f"{r['threads_peak']} | {r['published_bytes']} | "
            f"{r['broker_messages_per_device']:.1f} | {r['broker_bytes_per_device']:.0f} |")
    lines += ["", "Outcomes: " + "; ".join(
        f"N={r['n']}: {r['outcomes']}" for r in results), ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in results]
    panels = [("rollout wall time (s)", "wall_s"), ("host CPU (s)", "cpu_s"),
              ("host peak RSS (MB)", "rss_peak_mb"), ("host open fds (peak)", "fds_peak"),
              ("broker messages / device", "broker_messages_per_device"),
              ("broker bytes / device", "broker_bytes_per_device")]
    fig, axes = plt.subplots(2, 3, figsize=(11, 6))
    for ax, (title, key) in zip(axes.flat, panels, strict=True):
        ax.plot(ns, [r[key] for r in results], "o-")
        ax.set_xscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("devices")
        ax.set_ylim(bottom=0)
    fig.suptitle("One host, one MQTT connection, N simulated devices", fontsize=10)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--model-kb", type=int, default=1024)
    ap.add_argument("--canary", type=int, default=10)
    ap.add_argument("--growth", type=float, default=4.0)
    ap.add_argument("--out", default=str(RESULTS / "fleet.json"))
    ap.add_argument("--host-run", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.host_run:
        return host_run(args.host_run)
    from bench.common import git_commit, machine

    work = Path(tempfile.mkdtemp(prefix="paoding-fleet-bench-"))
    model = work / "model.tflite"
    model.write_bytes(random.Random(0).randbytes(args.model_kb * 1024))
    key, _pub = write_key_pair(work / "keys")
    results = []
    for n in [int(s) for s in args.sizes.split(",")]:
        print(f"N={n}: running ...", file=sys.stderr, flush=True)
        r = run_size(n, model, key, work, args.canary, args.growth)
        print(f"N={n}: {r['settled']}/{r['deployments']} settled, {r['reports_lost']} reports "
              f"lost, {r['wall_s']:.1f} s, host {r['cpu_s']:.1f} CPU s, "
              f"{r['rss_peak_mb']:.0f} MB, {r['fds_peak']} fds", file=sys.stderr, flush=True)
        results.append(r)
    m = machine()
    meta = {"machine": f"{m.get('cpu', '')} x{m.get('cores', '')}, load "
                       f"{os.getloadavg()[0]:.1f} at the end".strip(),
            "machine_full": m, "model_bytes": args.model_kb * 1024,
            "chunks": -(-args.model_kb * 1024 // (64 * 1024)), "canary": args.canary,
            "growth": args.growth, "commit": git_commit(), "generated_at": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                 time.gmtime())}
    write_outputs(results, meta, Path(args.out))
    print(Path(args.out).with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
