"""Agent benchmark: memory, cold start, end-to-end deployment over loopback Mosquitto.

    python bench/agent_bench.py [--repeats 3] [--out bench/results/agent.json]

Measures (nothing is hard-coded; every figure comes from this run):
- agent RSS when idle (before and after deployments; the interpreter runs in a child
  process) and the child's peak RSS with LiteRT and the model loaded (VmHWM);
- cold start: process start -> retained status online=true seen by a subscriber;
- deploy -> final report for 100 KB, 1 MB and 10 MB models, transfer throughput;
- the benchmark's own timing overhead against the measured latency.
Needs mosquitto, TensorFlow (to build the test models on the host) and ai-edge-litert.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from mosquitto import Mosquitto  # noqa: E402

from core.mqtt import Broker, MqttClient  # noqa: E402
from core.protocol import Status, Topics  # noqa: E402
from core.signing import write_key_pair  # noqa: E402
from fleet.broker import stop_process  # noqa: E402
from fleet.publisher import deploy  # noqa: E402

DEVICE = "bench-01"
TARGETS = {"idle_rss_mb": 60.0, "cold_start_s": 1.0, "throughput_mb_s": 20.0}


def build_model(target_bytes: int) -> bytes:
    """A Dense model of about ``target_bytes`` (float32 weights)."""
    import keras
    import tensorflow as tf

    inputs, classes = 64, 10
    units = max(8, int(target_bytes / 4 / (inputs + classes + 1)))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(units, "relu"),
                              keras.layers.Dense(classes)])
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def proc_status(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def wait_online(broker: Mosquitto, since: float, timeout: float = 20) -> float:
    got: list[bytes] = []
    c = MqttClient(Broker(port=broker.port), f"bench-watch-{time.time_ns()}", clean_session=True)
    c.subscribe(Topics(DEVICE).status, lambda _t, p: got.append(p))
    c.connect()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in list(got):
                st = Status.from_json(p)
                if st.online and st.timestamp >= since:
                    return st.timestamp - since
            time.sleep(0.005)
    finally:
        c.close()
    raise RuntimeError("the agent did not come online")


def start_agent(broker: Mosquitto, state: Path, pub: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--device-id", DEVICE, "--broker", broker.url,
         "--state-dir", str(state), "--trust-key", str(pub), "--log-level", "WARNING"],
        cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core {platform.machine()} ({cpu}), Linux {platform.release()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "agent.json"))
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="agent-bench-"))
    broker = Mosquitto(workdir=work / "mosquitto")
    broker.start()
    priv, pub = write_key_pair(work / "keys")
    print(f"machine: {machine()}", flush=True)
    print("building models ...", flush=True)
    sizes = {"100KB": 100_000, "1MB": 1_000_000, "10MB": 10_000_000}
    models = {name: build_model(n) for name, n in sizes.items()}
    results: dict = {"machine": machine(), "python": platform.python_version(),
                     "targets": TARGETS, "repeats": args.repeats}
    try:
        # cold start and idle RSS
        starts, idle = [], []
        for i in range(args.repeats):
            state = work / f"cold-{i}"
            t0 = time.time()
            p = start_agent(broker, state, pub, work / "agent.log")
            starts.append(wait_online(broker, t0))
            time.sleep(1.0)  # settle
            idle.append(proc_status(p.pid, "VmRSS"))
            stop_process(p)
        results["cold_start_s"] = {"median": statistics.median(starts), "all": starts}
        results["idle_rss_mb"] = {"median": statistics.median(idle), "all": idle}

        # end-to-end deployments against one running agent
        t0 = time.time()
        p = start_agent(broker, work / "state", pub, work / "agent.log")
        wait_online(broker, t0)
        deploy(models["100KB"], DEVICE, broker.url, key=priv, timeout=300)
        time.sleep(0.5)
        results["idle_rss_after_deploy_mb"] = proc_status(p.pid, "VmRSS")
        e2e = {}
        for name, blob in models.items():
            runs = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                rep = deploy(blob, DEVICE, broker.url, key=priv, timeout=300,
                             benchmark={"runs": 100, "warmup_runs": 5})
                total = time.perf_counter() - t
                if not rep.ok:
                    raise RuntimeError(f"{name}: {rep.state}: {rep.reason}")
                b = rep.benchmark
                runs.append({
                    "deploy_to_final_s": total,
                    "transfer_s": rep.transfer_seconds,
                    "throughput_mb_s": rep.throughput_mb_s,
                    "agent_transfer_s": rep.transfer.seconds,
                    "latency_mean_ms": b.latency_ms.mean,
                    "latency_p90_ms": b.latency_ms.p90,
                    "overhead_ms_per_run": b.overhead_ms_per_run,
                    "overhead_pct": 100 * b.overhead_ms_per_run / b.latency_ms.mean,
                    "init_ms": b.init_ms,
                    "peak_memory_mb": b.peak_memory_mb,
                })
            e2e[name] = {"bytes": len(blob), "chunks": -(-len(blob) // 65536),
                         **{k: statistics.median(r[k] for r in runs) for k in runs[0]}}
        results["loaded_rss_mb"] = proc_status(p.pid, "VmRSS")
        results["loaded_peak_rss_mb"] = proc_status(p.pid, "VmHWM")
        stop_process(p)
        results["deploy"] = e2e
    finally:
        broker.kill()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    report(results)
    print(f"\nwritten {out}")
    return 0


def report(r: dict) -> None:
    def mark(ok: bool) -> str:
        return "meets target" if ok else "MISSES target"

    print(f"\nAgent benchmark on {r['machine']}, median of {r['repeats']}")
    print(f"{'measure':<44}{'value':>12}  target")
    rows = [
        ("agent idle RSS, before the first model (MB)", r["idle_rss_mb"]["median"],
         f"< {TARGETS['idle_rss_mb']:g} ({mark(r['idle_rss_mb']['median'] < 60)})"),
        ("agent idle RSS after a deployment (MB)", r["idle_rss_after_deploy_mb"],
         f"< {TARGETS['idle_rss_mb']:g} ({mark(r['idle_rss_after_deploy_mb'] < 60)})"),
        ("cold start to online (s)", r["cold_start_s"]["median"],
         f"< {TARGETS['cold_start_s']:g} ({mark(r['cold_start_s']['median'] < 1)})"),
        ("agent RSS after 10 deployments (MB)", r["loaded_rss_mb"], ""),
        ("agent peak RSS over all deployments (MB)", r["loaded_peak_rss_mb"], ""),
    ]
    for name, v, t in rows:
        print(f"{name:<44}{v:>12.3f}  {t}")
    print("\nThe interpreter runs in a child process; 'LiteRT RSS' is that process's peak")
    print("(VmHWM) with LiteRT imported and the model loaded and benchmarked.")
    print(f"\n{'model':<8}{'bytes':>10}{'chunks':>8}{'deploy->final s':>17}{'transfer s':>12}"
          f"{'MB/s':>8}{'mean ms':>10}{'p90 ms':>9}{'overhead':>10}{'LiteRT RSS':>12}")
    for name, d in r["deploy"].items():
        print(f"{name:<8}{d['bytes']:>10}{d['chunks']:>8}{d['deploy_to_final_s']:>17.3f}"
              f"{d['transfer_s']:>12.3f}{d['throughput_mb_s']:>8.1f}{d['latency_mean_ms']:>10.4f}"
              f"{d['latency_p90_ms']:>9.4f}{d['overhead_pct']:>9.2f}%"
              f"{d['peak_memory_mb']:>9.1f} MB")
    tp = r["deploy"]["10MB"]["throughput_mb_s"]
    print(f"\ntransfer throughput (10 MB): {tp:.1f} MB/s, target >= 20 ({mark(tp >= 20)})")


if __name__ == "__main__":
    sys.exit(main())
