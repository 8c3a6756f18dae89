"""Benchmark and probe checks in a child process.

The agent itself never imports the interpreter: a model that crashes it (a
segfault in a kernel, memory exhaustion) kills only the child, the agent
rolls back and reports why, and the agent's idle memory stays small. The
child's peak RSS is the model's real footprint. The child dies with the agent.

Child usage (internal): ``python -m agent.isolate '<json request>'`` prints one
JSON line: ``{"ok": true, "benchmark": ..., "checks": ...}`` or
``{"ok": false, "kind": "load|probes|run", "message": ...}``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from core.protocol import BenchmarkResult, BenchmarkSettings, CheckResults


@dataclass(frozen=True)
class Outcome:
    """What the child measured, or why it could not (``failure`` names the problem)."""

    benchmark: BenchmarkResult | None = None
    checks: CheckResults | None = None
    failure: str | None = None
    kind: str | None = None  # load, probes, run, crash


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_isolated(model: Path, settings: BenchmarkSettings, *, probes: Path | None = None,
                 slowdown: float = 1.0, emulation: str | None = None,
                 runtime: str | None = None, timeout: float | None = None) -> Outcome:
    """Benchmark ``model`` (and run the probes) in a child process."""
    request = {"model": str(model), "probes": str(probes) if probes else None,
               "settings": settings.model_dump(mode="json"), "slowdown": slowdown,
               "emulation": emulation, "runtime": runtime}
    timeout = timeout or settings.max_seconds + 120
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "agent.isolate", json.dumps(request)],
            capture_output=True, timeout=timeout, preexec_fn=_die_with_parent,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL",
                                                                     "2")))
    except subprocess.TimeoutExpired:
        return Outcome(failure=f"the benchmark did not finish in {timeout:g}s", kind="run")
    line = proc.stdout.decode(errors="replace").strip().splitlines()[-1:] or [""]
    try:
        data = json.loads(line[0])
    except ValueError:
        err = " ".join(proc.stderr.decode(errors="replace").split())[-600:]
        how = (f"signal {-proc.returncode} ({signal.Signals(-proc.returncode).name})"
               if proc.returncode < 0 else f"exit status {proc.returncode}")
        return Outcome(failure=f"the interpreter process died with {how}: {err or 'no output'}",
                       kind="crash")
    if not data.get("ok"):
        bench = data.get("benchmark")
        return Outcome(failure=data.get("message", "unknown failure"), kind=data.get("kind"),
                       benchmark=BenchmarkResult.model_validate(bench) if bench else None)
    return Outcome(benchmark=BenchmarkResult.model_validate(data["benchmark"]),
                   checks=CheckResults.model_validate(data["checks"]) if data.get("checks")
                   else None)


def _child(request: dict) -> dict:
    from agent.benchmark import run_benchmark
    from agent.checks import run_checks
    from agent.runtime import select_runtime
    from core.errors import ProbeError, RuntimeLoadError
    from core.probes import load_probes

    settings = BenchmarkSettings.model_validate(request["settings"])
    try:
        rt = select_runtime(request.get("runtime"))
        result, loaded = run_benchmark(rt, Path(request["model"]), settings,
                                       slowdown=request["slowdown"],
                                       emulation=request.get("emulation"))
    except RuntimeLoadError as exc:
        return {"ok": False, "kind": "load", "message": str(exc)}
    except Exception as exc:  # noqa: BLE001 - the interpreter failing at invoke
        return {"ok": False, "kind": "run",
                "message": f"the model failed to run: {' '.join(str(exc).split())}"}
    checks = None
    if request.get("probes"):
        try:
            checks = run_checks(loaded, load_probes(request["probes"]))
        except ProbeError as exc:
            return {"ok": False, "kind": "probes", "message": f"probe checks failed: {exc}",
                    "benchmark": result.model_dump(mode="json")}
        except Exception as exc:  # noqa: BLE001
            return {"ok": False, "kind": "probes", "benchmark": result.model_dump(mode="json"),
                    "message": f"the model failed on the probes: {' '.join(str(exc).split())}"}
    return {"ok": True, "benchmark": result.model_dump(mode="json"),
            "checks": checks.model_dump(mode="json") if checks else None}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(json.dumps({"ok": False, "kind": "run", "message": "usage: agent.isolate JSON"}))
        return 2
    out = _child(json.loads(argv[0]))
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
