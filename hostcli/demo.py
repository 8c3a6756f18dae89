"""`paoding-edge demo`: the whole product end to end on one host.

Trains (or loads) a CNN on the bundled digits data, tunes it for two device
profiles, starts a broker (Mosquitto when it is installed, else an embedded
amqtt one), starts two emulated agents, deploys each its variant and prints
the reports side by side. Leaves nothing running.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hostcli.options import add_ratio_arguments, flat, listed

MODEL_NAME = "digits_cnn3.keras"


def build_model(seed: int = 0) -> Any:
    """The demo CNN (functional): three 'same' 3x3 convolutions (16, 32, 64 filters), two
    poolings, a 64-unit dense layer with dropout, 10 classes.

    About 7.5 M multiply-accumulates: the convolutions dominate its latency on the
    emulated devices (milliseconds), so removing filters visibly buys latency.
    Dropout leaves the redundancy that pruning removes without hurting accuracy.
    """
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dropout(0.3)(h)
    h = keras.layers.Dense(64, activation="relu")(h)
    h = keras.layers.Dropout(0.3)(h)
    out = keras.layers.Dense(10, activation="softmax")(h)
    return keras.Model(inp, out, name="digits_cnn")


def demo_model(workdir: Path, *, epochs: int = 12, seed: int = 0) -> tuple[Any, tuple[Any, Any]]:
    """Load workdir/digits_cnn.keras or train it; returns (model, (x_test, y_test))."""
    from pruner.datasets import digits28
    from pruner.io import load_model

    x_tr, y_tr, x_te, y_te = digits28(seed=seed, flatten=False)
    path = Path(workdir) / MODEL_NAME
    if path.is_file():
        return load_model(path), (x_te, y_te)
    model = build_model(seed)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_tr, y_tr, epochs=epochs, batch_size=64, verbose=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model, (x_te, y_te)


DEFAULT_PROFILES = "raspberry-pi-4-emulated,raspberry-pi-zero-2w-emulated"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        help="use this broker (mqtt://host:port) instead of starting "
        "one (Mosquitto when installed, else the embedded amqtt broker)",
    )
    parser.add_argument(
        "--embedded-broker",
        action="store_true",
        help="start the embedded amqtt broker even when Mosquitto is installed",
    )
    parser.add_argument(
        "--profiles",
        default=DEFAULT_PROFILES,
        help=f"two or more emulated profiles (default {DEFAULT_PROFILES})",
    )
    parser.add_argument("--model", help="a Keras model for 28x28x1 digits instead of the demo CNN")
    parser.add_argument(
        "--workdir",
        default="out/demo",
        help="where the model, tuned variants, keys and reports go (default ./out/demo)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        help="seconds to wait for each device report (default 180)",
    )
    parser.add_argument("--modes", nargs="+", type=listed(str), default=["paoding"],
                        metavar="MODE", help="pruning modes to search (default paoding; "
                        "each mode more prunes and measures its own steps)")
    add_ratio_arguments(parser)
    parser.add_argument(
        "--rounds",
        type=int,
        default=6,
        help="most candidates deployed per device before giving up (default 6)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


class EmulatedAgents:
    """Emulated agents in child processes (the demo's devices); all terminated on stop."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Any] = []

    def start(self, device_id: str, profile: str, broker: str, trust_key: Path | None,
              mqtt_protocol: str = "3.1.1") -> Any:
        """Start one agent and wait until it is connected; None as ``trust_key``: unsigned.

        MQTT 3.1.1 by default: the embedded amqtt broker speaks nothing newer.
        """
        import os
        import subprocess
        import sys
        import time

        from core.errors import CommandError

        log = self.workdir / "agents" / f"{device_id}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        with open(log, "wb") as f:  # a fresh log: "connected to" must be this run's
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agent.cli",
                    "run",
                    "--device-id",
                    device_id,
                    "--profile",
                    profile,
                    "--emulate",
                    profile,
                    "--broker",
                    broker,
                    "--mqtt-protocol",
                    mqtt_protocol,
                    "--state-dir",
                    str(self.workdir / "agents" / device_id),
                    *(["--trust-key", str(trust_key)] if trust_key else ["--allow-unsigned"]),
                    "--log-level",
                    "INFO",
                ],
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        self.procs.append(proc)
        deadline = time.monotonic() + 60
        while "connected to" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-600:]
                raise CommandError(f"agent {device_id} did not connect to {broker}: {tail}")
            time.sleep(0.1)
        return proc

    def stop(self) -> None:
        import subprocess

        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _budget_flags(c: Any, m: dict[str, Any], profile: Any) -> dict[str, bool | None]:
    b = profile.budgets
    p90, mem = m.get("p90_ms"), m.get("peak_memory_mb")
    return {
        "p90": None if p90 is None else p90 <= b.p90_latency_ms,
        "memory": None if mem is None else mem <= b.peak_memory_mb,
        "size": c.size_kb <= b.model_size_kb,
        "accuracy": (c.accuracy_retention or 0) >= b.min_accuracy_retention,
        "robust": (c.robust_retention or 0) >= b.min_robust_retention,
    }


def _side_by_side(rows: list[dict[str, Any]]) -> str:
    header = [
        "device",
        "model",
        "size KB",
        "p90 ms*",
        "peak MB",
        "acc",
        "robust",
        "probe acc",
        "probe robust",
        "budgets (p90 mem size acc rob)",
        "state",
        "verdict",
    ]

    def yn(v: bool | None) -> str:
        return "-" if v is None else ("yes" if v else "NO")

    table = []
    for r in rows:
        f = r["budgets_met"]
        table.append(
            [
                r["device"],
                r["model"],
                f"{r['size_kb']:.1f}",
                f"{r['p90_ms']:.3f} (x{len(r['p90_runs_ms'] or [])})"
                if r["p90_ms"] is not None
                else "-",
                f"{r['peak_memory_mb']:.1f}" if r["peak_memory_mb"] is not None else "-",
                f"{r['accuracy']:.3f}",
                f"{r['robust']:.3f}",
                f"{r['probe_accuracy']:.3f}" if r["probe_accuracy"] is not None else "-",
                f"{r['probe_min_robust']:.3f}" if r["probe_min_robust"] is not None else "-",
                " ".join(yn(f[k]) for k in ("p90", "memory", "size", "accuracy", "robust")),
                r["state"],
                "-" if r["kind"] == "original" else ("VERIFIED" if r["verified"] else "not verified"),
            ]
        )
    widths = [max(len(x[i]) for x in [header, *table]) for i in range(len(header))]
    out = [
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    out += ["  ".join(v.ljust(w) for v, w in zip(x, widths, strict=True)).rstrip() for x in table]
    return "\n".join(out)


def _plot(rows: list[dict[str, Any]], profiles: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    names = list(profiles)
    metrics = [
        ("p90_ms", "measured p90 (ms, median, emulated device)", "p90_latency_ms"),
        ("size_kb", ".tflite size (KB)", "model_size_kb"),
        ("robust", "robust accuracy (host)", None),
    ]
    for ax, (key, label, budget) in zip(axes, metrics, strict=True):
        for j, kind in enumerate(("original", "tuned")):
            vals = [
                next((r[key] or 0 for r in rows if r["profile"] == p and r["kind"] == kind), 0)
                for p in names
            ]
            ax.bar(
                [i + 0.38 * j for i in range(len(names))],
                vals,
                width=0.36,
                label=kind,
                color=("tab:gray", "tab:blue")[j],
            )
            if key == "p90_ms" and kind == "tuned":
                for i, p in enumerate(names):
                    row = next((r for r in rows if r["profile"] == p and r["kind"] == kind), None)
                    ax.text(
                        i + 0.38,
                        vals[i],
                        "VERIFIED" if row and row["verified"] else "not verified",
                        ha="center",
                        va="bottom",
                        fontsize=7,
                    )
        if budget:
            for i, p in enumerate(names):
                v = getattr(profiles[p].budgets, budget)
                ax.hlines(
                    v,
                    i - 0.2,
                    i + 0.58,
                    colors="red",
                    linestyles="--",
                    label="budget" if i == 0 else None,
                )
        ax.set_xticks([i + 0.19 for i in range(len(names))])
        ax.set_xticklabels([n.replace("-emulated", "\n(emulated)") for n in names], fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _row(device: str, pid: str, kind: str, c: Any, profile: Any) -> dict[str, Any]:
    m = c.measured or {}
    return {
        "device": device,
        "profile": pid,
        "kind": kind,
        "model": "original float32" if kind == "original" else f"{c.mode} r{c.ratio:.2f} {c.export}",
        "size_kb": c.size_kb,
        "p90_ms": m.get("p90_ms"),
        "p90_runs_ms": m.get("p90_runs_ms"),
        "p50_ms": m.get("p50_ms"),
        "peak_memory_mb": m.get("peak_memory_mb"),
        "accuracy": c.accuracy,
        "robust": c.robust,
        "probe_accuracy": m.get("probe_accuracy"),
        "probe_min_robust": m.get("probe_min_robust_accuracy"),
        "state": m.get("state") or "-",
        "verified": bool(m.get("verified")),
        "emulated": m.get("emulated"),
        "emulation": m.get("emulation"),
        "budgets_met": _budget_flags(c, m, profile),
    }


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from tuner.quiet import native_quiet

    with native_quiet():  # TensorFlow's start-up notices
        import tensorflow  # noqa: F401

    import device_profiles
    import tuner as tn
    from core.errors import CommandError
    from core.signing import write_key_pair
    from fleet.broker import local_broker
    from hostcli.tune import probes_for
    from pruner.io import load_model
    from tuner.closed_loop import NoiseRule, measure

    t0 = time.perf_counter()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    pids = [p.strip() for p in args.profiles.split(",") if p.strip()]
    if len(pids) < 2:
        raise CommandError("the demo needs two or more profiles (--profiles a,b)")
    profiles = {p: device_profiles.load(p) for p in pids}
    for p in profiles.values():
        if not p.emulated:
            raise CommandError(
                f"profile {p.id} has no emulation section: the demo emulates "
                "its devices on this host"
            )
    progress = not args.no_progress
    rule = NoiseRule()
    modes = tuple(flat(args.modes))
    if not modes:
        raise CommandError("--modes: give one or more pruning modes (e.g. paoding greedy)")
    if args.rounds < 1:
        raise CommandError(f"--rounds must be >= 1, got {args.rounds}")

    print(f"[1/5] model: {'loading ' + args.model if args.model else 'the digits CNN'}")
    if args.model:
        from pruner.datasets import digits28

        model = load_model(args.model)
        _, _, x_te, y_te = digits28(flatten=len(model.inputs[0].shape) == 2)
        data = (x_te, y_te)
    else:
        model, data = demo_model(work)
    search = tn.Search.create(model, data, progress=progress)

    print(f"[2/5] tuning for {', '.join(pids)} (predicted; verified on the devices in step 4)")
    results = {}
    for pid in pids:
        r = tn.tune(
            model,
            profiles[pid],
            search=search,
            modes=modes,
            max_ratio=args.max_ratio,
            step=args.step,
            progress=progress,
        )
        print()
        print(tn.table(r))
        print(r.statement)
        results[pid] = r
        if r.chosen is None:
            tn.save(r, work / pid)
            raise CommandError(f"{pid}: {r.statement}")
    probes = probes_for(search)

    key_dir = work / "keys"
    if not (key_dir / "paoding.key").exists():
        write_key_pair(key_dir)
    priv, pub = key_dir / "paoding.key", key_dir / "paoding.pub"

    agents = EmulatedAgents(work)
    rows: list[dict[str, Any]] = []
    from contextlib import nullcontext

    broker_cm = (
        nullcontext(None)
        if args.broker
        else local_broker("amqtt" if args.embedded_broker else "auto")
    )
    with broker_cm as local:
        url = args.broker or local.url
        kind = "given" if args.broker else f"{local.kind}, started for the demo"
        print(f"\n[3/5] broker {url} ({kind}); starting {len(pids)} emulated agents")
        try:
            for pid in pids:
                agents.start(f"demo-{pid}", pid, url, pub)
            print(
                "[4/5] on each agent: the original measured, then candidates deployed and "
                f"measured until one is verified (majority of {rule.repeats} measurements, "
                f"p90 within the budget less a {rule.margin:.0%} noise margin)"
            )
            for pid in pids:
                r = results[pid]
                device = f"demo-{pid}"
                deployer = tn.mqtt_deployer(
                    device,
                    url,
                    profiles[pid],
                    probes=probes,
                    key=priv,
                    timeout=args.timeout,
                    save_dir=work / "devices" / device,
                )
                orig = r.original
                step0 = search.steps[(orig.mode, orig.seed)][0]
                orig.measured = measure(
                    orig, search.export(step0, "float32"), deployer, profiles[pid], rule
                )
                m0 = orig.measured
                # its row now: the original may also be a candidate the loop measures again
                rows.append(_row(device, pid, "original", orig, profiles[pid]))
                print(
                    f"  {pid}: original p90 {m0.get('p90_ms') or float('nan'):.3g} ms measured "
                    f"(budget {profiles[pid].budgets.p90_latency_ms:g} ms), {m0.get('state')}"
                )
                tn.verify(
                    r,
                    search,
                    deployer,
                    rounds=args.rounds,
                    rule=rule,
                    device=device,
                    log=lambda s, pid=pid: print(f"  {pid}: {s}"),
                )
                tn.save(r, work / pid)
                if r.chosen is not None:
                    rows.append(_row(device, pid, "tuned", r.chosen, profiles[pid]))
                else:
                    print(f"  {pid}: {r.statement}")
        finally:
            agents.stop()
    print("\n[5/5] measured on each agent: the original against the tuned model, side by side")
    print(_side_by_side(rows))
    print(
        "* p90: median of the measurements (each the p90 of one benchmark) by the agents under "
        "HOST EMULATION (each profile's CPU set, priority, quota, memory limit and deterministic "
        "slowdown): not measurements on real devices."
    )
    print(
        "  acc / robust: host evaluation of the .tflite (robust: white-box FGSM+PGD, "
        f"eps {', '.join(str(e) for e in search.eps)}); probe acc / probe robust: the "
        "agent's own check on probes crafted on the original model."
    )
    for pid in pids:
        print(f"  {pid}: {results[pid].statement}")
    ok = all(results[p].verified for p in pids)
    report = {
        "profiles": pids,
        "broker": url,
        "delivered": ok,
        "noise_rule": {"repeats": rule.repeats, "margin": rule.margin},
        "rows": rows,
        "statements": {p: results[p].statement for p in pids},
        "seconds": round(time.perf_counter() - t0, 1),
        "tune_reports": {p: str(work / p / "report.json") for p in pids},
    }
    (work / "demo_report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    _plot(rows, profiles, work / "demo_report.png")
    print(
        f"\nwrote {work}/demo_report.json, {work}/demo_report.png and one tuned variant per "
        f"profile in {work}/<profile>/; finished in {report['seconds']:.0f} s; "
        "broker and agents stopped."
    )
    if not ok:
        print("NOT DELIVERED: a profile has no model verified on its device (see above)")
    db = record_demo(work, results, Path(args.model) if args.model else work / MODEL_NAME)
    print(f"\nSee it in the fleet console: paoding-edge console --db {db}  "
          "then open http://127.0.0.1:8080/")
    return 0 if ok else 1


def record_demo(work: Path, results: dict[str, Any], source: Path) -> Path:
    """The demo's devices, deployments, reports and lineage in ``work``/fleet.sqlite."""
    import hashlib
    import json

    from core.files import sha256_file
    from fleet.registry import Registry
    from fleet.rollout import Device, Outcome

    db = work / "fleet.sqlite"
    source_sha = (sha256_file(source) if source.is_file()
                  else hashlib.sha256(str(source).encode()).hexdigest())
    with Registry(db) as reg:
        known = {d["deployment_id"] for d in reg.deployments()}
        for pid, r in results.items():
            device = f"demo-{pid}"
            reg.upsert_device(Device(device, pid, frozenset({"demo"})), online=False)
            reports = sorted((work / "devices" / device / "reports").glob("*.json"),
                             key=lambda f: f.stat().st_mtime)
            for f in reports:
                rep = json.loads(f.read_text())
                dep = rep.get("deployment_id")
                if not dep or dep in known or not rep.get("model_sha256"):
                    continue
                size = (rep.get("transfer") or {}).get("bytes") or 0
                reg.add_deployment(dep, device, rep["model_sha256"], size)
                reg.add_report(dep, device, rep["state"], rep, rep.get("report_id"))
                if rep["state"] in {o.value for o in Outcome}:
                    reg.settle([(dep, Outcome(rep["state"]), rep.get("reason") or "")])
                if rep["state"] == "active":  # the model it reported active is what it runs
                    reg.note_devices([(device, None, rep["model_sha256"], dep)])
            c = r.chosen
            if c is not None and r.model_bytes is not None:
                out = hashlib.sha256(r.model_bytes).hexdigest()
                if not any(s["kind"] == "tune" and s["body"].get("profile") == pid
                           for s in reg.lineage(out)):
                    reg.add_lineage("tune", source_sha, out, {
                        "source": source.name, "profile": pid, "key": c.key, "mode": c.mode,
                        "seed": c.seed, "ratio": c.ratio, "export": c.export,
                        "accuracy": c.accuracy, "robust": c.robust,
                        "predicted_p90_ms": c.predicted_p90_ms,
                        "predicted_memory_mb": c.predicted_memory_mb, "outcome": r.outcome,
                        "device": r.device, "measured": c.measured,
                        "path": str(work / pid / "model.tflite")})
    return db
