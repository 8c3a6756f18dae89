"""Benchmark and probe checks in a child process.

The agent itself never imports the interpreter: a model that crashes it (a
segfault in a kernel, memory exhaustion) kills only the child, the agent
rolls back and reports why, and the agent's idle memory stays small. The
child's peak RSS is the model's real footprint. The child dies with the agent.

With a memory limit (the agent's ``memory_limit_mb``, default the device
profile's RAM) the child's address space is capped (RLIMIT_AS) before it
loads anything, and the tensors a model declares and a probe bundle's
uncompressed size are checked against the limit first, so a small model
declaring a huge tensor or a zip bomb fails with one line instead of taking
the device's memory.

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
                 runtime: str | None = None, timeout: float | None = None,
                 memory_limit_mb: float | None = None) -> Outcome:
    """Benchmark ``model`` (and run the probes) in a child process."""
    request = {"model": str(model), "probes": str(probes) if probes else None,
               "settings": settings.model_dump(mode="json"), "slowdown": slowdown,
               "emulation": emulation, "runtime": runtime, "memory_limit_mb": memory_limit_mb}
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
        if memory_limit_mb is not None and ("MemoryError" in err or "bad_alloc" in err):
            return Outcome(failure=f"the model needs more than the memory limit of "
                                   f"{memory_limit_mb:,.0f} MB", kind="run")
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
    limit = request.get("memory_limit_mb")
    try:
        rt = select_runtime(request.get("runtime"))
        if limit is not None:
            cap_address_space(limit)
        result, loaded = run_benchmark(rt, Path(request["model"]), settings,
                                       slowdown=request["slowdown"],
                                       emulation=request.get("emulation"),
                                       memory_limit_mb=limit)
    except RuntimeLoadError as exc:
        return {"ok": False, "kind": "load", "message": str(exc)}
    except MemoryError:
        return {"ok": False, "kind": "run",
                "message": f"the model needs more than the memory limit of {limit:,.0f} MB"}
    except Exception as exc:  # noqa: BLE001 - the interpreter failing at invoke
        return {"ok": False, "kind": "run",
                "message": f"the model failed to run: {' '.join(str(exc).split())}"}
    checks = None
    if request.get("probes"):
        try:
            checks = run_checks(loaded, load_probes(request["probes"], max_mb=limit))
        except MemoryError:
            return {"ok": False, "kind": "probes", "benchmark": result.model_dump(mode="json"),
                    "message": f"the probe checks need more than the memory limit of "
                               f"{limit:,.0f} MB"}
        except ProbeError as exc:
            return {"ok": False, "kind": "probes", "message": f"probe checks failed: {exc}",
                    "benchmark": result.model_dump(mode="json")}
        except Exception as exc:  # noqa: BLE001
            return {"ok": False, "kind": "probes", "benchmark": result.model_dump(mode="json"),
                    "message": f"the model failed on the probes: {' '.join(str(exc).split())}"}
    return {"ok": True, "benchmark": result.model_dump(mode="json"),
            "checks": checks.model_dump(mode="json") if checks else None}


def cap_address_space(limit_mb: float) -> None:
    """RLIMIT_AS of this process: ``limit_mb`` (never above a hard limit already set)."""
    import resource

    limit = int(limit_mb * 2**20)
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


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
