"""Fault bench: rollouts to real agent processes through host, agent and broker faults.

    nice -n 10 python bench/fault_bench.py [--agents 20]

One Mosquitto (persistence on), N ``paoding-agent run`` processes (real
interpreter, real state directories, the host's public key as trust) and one
fleet record. Each scenario rolls a new model out with ``paoding-edge rollout``
(canary 2, growth 3) and injects its fault while a later wave is in flight
(seen in the registry):

- host kill -9: the rollout command is killed, then the same command is run again;
- agents kill -9: three agents of the wave in flight are killed and restarted;
- broker SIGTERM / kill -9: the broker stops and starts again (same port, same
  persistence file);
- abort: ``rollout --abort ID`` from another process once wave 1 (canary 2, growth
  2: waves of 2, 4, 8 and 6) has a final report, one of its devices held (SIGSTOP)
  until the host's cancel for it is on the broker, so the abort always lands
  mid-wave, before any later wave;
- budget: a latency budget no device meets (the canary rolls back, the rollout aborts).

When the rollout command returns, the bench compares the registry with every
device's own state file (what it runs; each deployment's outcome against what
the device did), counts the retained artifact chunks left on the broker and the
non-final reports the agents sent that the registry lacks.
Writes bench/results/fault.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "tests"))

from mosquitto import Mosquitto  # noqa: E402

from core.mqtt import Broker, MqttClient  # noqa: E402
from core.protocol import FINAL_STATES  # noqa: E402
from core.signing import write_key_pair  # noqa: E402
from fleet.registry import Registry  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ENV = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
PROFILE = "raspberry-pi-4"


class Agents:
    """N agent processes, each with its own state directory."""

    def __init__(self, n: int, broker: Mosquitto, trust: Path, work: Path) -> None:
        self.broker, self.trust, self.work = broker, trust, work
        self.ids = [f"dev-{i:02d}" for i in range(n)]
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, device_id: str) -> None:
        log = open(self.work / f"{device_id}.log", "ab")  # noqa: SIM115 - the child holds it
        self.procs[device_id] = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--device-id", device_id, "--profile",
             PROFILE, "--broker", self.broker.url, "--state-dir", str(self.work / device_id),
             "--trust-key", str(self.trust), "--log-level", "INFO"],
            cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)

    def kill(self, device_id: str) -> None:
        p = self.procs[device_id]
        p.kill()
        p.wait()

    def state(self, device_id: str) -> dict | None:
        path = self.work / device_id / "state.json"
        return json.loads(path.read_text())["active"] if path.exists() else None

    def stop(self) -> None:
        for p in self.procs.values():
            p.kill()
            p.wait()


def poll(ready: Callable[[], bool], timeout: float) -> None:
    """Until ``ready()`` (the registry has no event to wait on: a poll with a deadline)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting after {timeout:g}s")
        time.sleep(0.1)


def wait_online(broker: Mosquitto, ids: list[str], timeout: float = 300) -> None:
    """Until every device's retained status says online (a poll with a deadline)."""
    from fleet.orchestrator import discover

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = discover(broker.url, wait_s=1.0)
        if all(d in found and found[d].online for d in ids):
            return
    raise SystemExit(f"only {len(found)} of {len(ids)} agents came online in {timeout:g}s")


def retained_chunks(broker: Mosquitto) -> int:
    """Retained artifact chunks on the broker: all are delivered before a later marker."""
    got: list[int] = []
    marker = threading.Event()
    topic = f"bench/marker/{uuid.uuid4().hex}"
    client = MqttClient(Broker(port=broker.port), f"bench-{uuid.uuid4().hex[:8]}",
                        clean_session=True)
    client.subscribe("paoding/v2/artifacts/#", lambda _t, p: got.append(len(p)) if p else None)
    client.subscribe(topic, lambda _t, _p: marker.set())
    client.connect()
    client.publish(topic, b"x", qos=1).wait(10)
    if not marker.wait(30):
        raise SystemExit("the broker never delivered the marker")
    client.close()
    return len(got)


def agree(db: Path, agents: Agents, rollout_id: str | None) -> list[str]:
    """Where the registry and a device's own state differ (empty: they agree)."""
    wrong = []
    with Registry(db) as reg:
        rows = {r["device_id"]: r for r in reg.device_rows()}
        deps = reg.rollout_deployments(rollout_id) if rollout_id else []
    for d in agents.ids:
        active = agents.state(d)
        runs = active["sha256"] if active else None
        if rows.get(d, {}).get("active_sha") != runs:
            wrong.append(f"{d}: registry says it runs {str(rows.get(d, {}).get('active_sha'))[:12]}"
                         f", it runs {str(runs)[:12]}")
    for dep in deps:
        active = agents.state(dep["device_id"])
        took = bool(active and active.get("deployment_id") == dep["deployment_id"])
        if dep["outcome"] == "pending" or (dep["outcome"] == "active") != took:
            wrong.append(f"{dep['device_id']}: registry says {dep['outcome']}, device "
                         f"{'activated' if took else 'did not activate'} {dep['deployment_id']}")
    return wrong


def reports_lost(db: Path, agents: Agents, rollout_id: str | None) -> tuple[int, int]:
    """(non-final reports the agents sent for the rollout, how many the registry lacks).

    What an agent sent is its log's ``report DEPLOYMENT STATE`` lines (written as it
    spools each report); the registry keeps each deployment's reports by state.
    """
    if not rollout_id:
        return 0, 0
    sent: set[tuple[str, str]] = set()
    for d in agents.ids:
        log = agents.work / f"{d}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        for dep, state in re.findall(r"agent\.service: report (\S+) (\S+)", text):
            if dep.startswith(f"{rollout_id}-") and state not in FINAL_STATES:
                sent.add((dep, state))
    with Registry(db) as reg:
        got = {(r["deployment_id"], r["state"]) for dep in reg.rollout_deployments(rollout_id)
               for r in reg.reports(dep["deployment_id"])}
    return len(sent), len(sent - got)


def in_flight(db: Path, wave: int) -> str | None:
    """The running rollout once wave ``wave`` has a pending deployment (None: not yet)."""
    with Registry(db) as reg:
        for r in reg.rollouts("running"):
            deps = reg.rollout_deployments(r["rollout_id"])
            if any(d["wave"] >= wave and d["outcome"] == "pending" for d in deps):
                return r["rollout_id"]
    return None


def run_scenario(name: str, fault: Callable[[str, subprocess.Popen], None] | None,
                 command: list[str], db: Path, agents: Agents, broker: Mosquitto,
                 wave: int = 1) -> dict:
    t0 = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    faulted = ""
    if fault is not None:
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            rollout_id = in_flight(db, wave)
            if rollout_id:
                fault(rollout_id, proc)
                faulted = rollout_id
                break
            time.sleep(0.2)  # the registry has no event to wait on: a poll with a deadline
    out, _ = proc.communicate(timeout=1800)
    if proc.returncode == -9:  # the host was killed: the same command continues the rollout
        out = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True,
                             timeout=1800).stdout
    result = json.loads(out[out.index("{"):]) if "{" in out else {}
    rollout_id = result.get("rollout_id") or faulted
    wrong = agree(db, agents, rollout_id)
    sent, lost = reports_lost(db, agents, rollout_id)
    counts: dict[str, int] = {}
    for r in result.get("results", []):
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    row = {"scenario": name, "fault_injected": bool(faulted) or fault is None,
           "decision": result.get("decision"), "outcomes": counts,
           "skipped": result.get("skipped", {}), "reason": result.get("reason"),
           "mismatches": len(wrong), "mismatch_detail": wrong[:10],
           "retained_chunks": retained_chunks(broker),
           "nonfinal_reports_sent": sent, "nonfinal_reports_lost": lost,
           "seconds": round(time.monotonic() - t0, 1)}
    print(f"{name}: {row['decision']} ({row['reason']}) {counts} "
          f"skipped={len(row['skipped'])} mismatches={row['mismatches']} "
          f"retained chunks={row['retained_chunks']} non-final reports lost={lost} of {sent} "
          f"({row['seconds']} s)", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--only", help="comma-separated scenario names")
    args = ap.parse_args(argv)
    from tflitehelp import dense_tflite

    work = Path(tempfile.mkdtemp(prefix="paoding-fault-"))
    from fleet.link import BROKER_INFLIGHT

    broker = Mosquitto(workdir=work / "broker",  # as the generated broker config sets it
                       extra_config=f"max_inflight_messages {BROKER_INFLIGHT}\n")
    broker.start()
    private, public = write_key_pair(work / "keys")
    db = work / "fleet.sqlite"
    agents = Agents(args.agents, broker, public, work)
    from core.signing import device_key
    from hostcli.main import main as host

    for d in agents.ids:  # each device's key, enrolled as an operator would
        pub = work / f"{d}.pub"
        pub.write_bytes(device_key(work / d / "device.key").public_key().public_pem())
        if host(["enrol", d, "--profile", PROFILE, "--public-key", str(pub), "--db", str(db)]):
            raise SystemExit(f"enrol {d} failed")
        agents.start(d)
    rows = []
    try:
        wait_online(broker, agents.ids)

        def command(i: int, *extra: str) -> list[str]:
            model = work / f"model-{i}.tflite"
            model.write_bytes(dense_tflite((16,), inputs=8, classes=4, seed=100 + i)[0])
            return [sys.executable, "-m", "hostcli.main", "rollout", "--variant",
                    f"{PROFILE}={model}", "--broker", broker.url, "--key", str(private),
                    "--db", str(db), "--canary", "2", "--growth", "3", "--runs", "5",
                    "--timeout", "180", "--json", *extra]  # a later --growth replaces 3

        def kill_host(_rid: str, proc: subprocess.Popen) -> None:
            proc.kill()

        def kill_agents(rid: str, _proc: subprocess.Popen) -> None:
            with Registry(db) as reg:
                pending = [d["device_id"] for d in reg.rollout_deployments(rid)
                           if d["outcome"] == "pending"][:3]
            for d in pending:
                agents.kill(d)
            time.sleep(1.0)  # down for a second, as a crash and a supervisor restart would be
            for d in pending:
                agents.start(d)

        def broker_restart(kill: bool) -> Callable[[str, subprocess.Popen], None]:
            def fault(_rid: str, _proc: subprocess.Popen) -> None:
                (broker.kill if kill else broker.stop)()
                broker.start()
            return fault

        def abort(rid: str, _proc: subprocess.Popen) -> None:
            """Abort once wave 1 has a final report, one of its devices held (SIGSTOP) until
            the host's cancel for it is on the broker: wave 1 is mid-flight and no later
            wave can have started when the abort lands."""
            with Registry(db) as reg:
                held = max(d["device_id"] for d in reg.rollout_deployments(rid)
                           if d["wave"] == 1)
            agents.procs[held].send_signal(signal.SIGSTOP)
            cancelled = threading.Event()
            watch = MqttClient(Broker(port=broker.port), f"bench-{uuid.uuid4().hex[:8]}",
                               clean_session=True)
            watch.subscribe(f"paoding/v2/devices/{held}/cancel", lambda _t, _p: cancelled.set())
            watch.connect()
            try:
                with Registry(db) as reg:
                    poll(lambda: any(d["wave"] == 1 and d["outcome"] != "pending"
                                     for d in reg.rollout_deployments(rid)), 600)
                cli = subprocess.Popen([sys.executable, "-m", "hostcli.main", "rollout",
                                        "--abort", rid, "--db", str(db)], cwd=ROOT, env=ENV,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                if not cancelled.wait(120):
                    raise SystemExit(f"no cancel for {held} in 120 s")
            finally:
                agents.procs[held].send_signal(signal.SIGCONT)
                watch.close()
            cli.wait(300)

        scenarios = [
            ("baseline (no fault)", None, command(0)),
            ("host kill -9 mid-wave", kill_host, command(1)),
            ("3 agents kill -9 mid-transfer", kill_agents, command(2)),
            ("broker SIGTERM restart", broker_restart(False), command(3)),
            ("broker kill -9 restart", broker_restart(True), command(4)),
            ("abort mid-wave", abort, command(5, "--growth", "2")),  # waves 2, 4, 8, 6
            ("budget no device meets", None, command(6, "--max-mean-ms", "0.0001")),
        ]
        only = set(args.only.split(",")) if args.only else None
        for name, fault, cmd in scenarios:
            if only and not any(o in name for o in only):
                continue
            wait_online(broker, agents.ids)
            rows.append(run_scenario(name, fault, cmd, db, agents, broker))
    finally:
        agents.stop()
        broker.stop()
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, load "
               f"{os.getloadavg()[0]:.1f} at the end; {args.agents} agent processes")
    write(rows, machine)
    return 0 if all(r["mismatches"] == 0 and r["retained_chunks"] == 0
                    and r["nonfinal_reports_lost"] == 0 for r in rows) else 1


def write(rows: list[dict], machine: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fault.json").write_text(json.dumps({"machine": machine, "rows": rows},
                                                   indent=2))
    lines = [f"Fault bench ({machine}).", "",
             "| scenario | decision | outcomes | registry != device | retained chunks "
             "| non-final reports lost | s |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))
        lines.append(f"| {r['scenario']} | {r['decision']} | {outcomes} | {r['mismatches']} "
                     f"| {r['retained_chunks']} | {r['nonfinal_reports_lost']} of "
                     f"{r['nonfinal_reports_sent']} | {r['seconds']} |")
    (RESULTS / "fault.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    names = [r["scenario"] for r in rows]
    ax.barh(names, [r["seconds"] for r in rows], color=[
        "tab:green" if r["mismatches"] == 0 and r["retained_chunks"] == 0 else "tab:red"
        for r in rows])
    for i, r in enumerate(rows):
        ax.text(r["seconds"], i, f"  {r['mismatches']} mismatches, {r['retained_chunks']} "
                "chunks left", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds until the rollout command returned (green: registry == devices, "
                  "0 chunks left)")
    ax.set_title(f"Fault bench: {machine}", fontsize=9)
    fig.tight_layout()
    fig.savefig(RESULTS / "fault.png", dpi=120)
    print((RESULTS / "fault.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
