"""A benchmark like LiteRT's benchmark_model, as a plain function.

Init (create + allocate), first inference, warm-up, then ``runs`` measured
runs or until ``min_seconds`` (whichever is longer, capped by
``max_seconds``). ``slowdown`` > 1 stretches each measured run by busy-waiting
``(slowdown - 1) * t`` so an emulated device is slower in wall time; the
result then says ``emulated=True``.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np

from agent.cpuemu import cpu_emulator
from agent.runtime import Model, Runtime
from core.protocol import BenchmarkResult, BenchmarkSettings, LatencyStats


def rss_mb() -> float:
    """Current resident set size in MB (VmRSS)."""
    return _status_field("VmRSS") or 0.0


def peak_rss_mb() -> float:
    """High-water resident set size in MB (VmHWM, else getrusage)."""
    v = _status_field("VmHWM")
    if v is not None:
        return v
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_field(name: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def _busy_wait(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def latency_stats(times_ms: list[float]) -> LatencyStats:
    a = np.asarray(times_ms, dtype=np.float64)
    if a.size == 0:
        return LatencyStats(count=0, mean=0, std=0, min=0, max=0, p50=0, p90=0, p99=0)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return LatencyStats(count=int(a.size), mean=float(a.mean()), std=float(a.std()),
                        min=float(a.min()), max=float(a.max()),
                        p50=float(p50), p90=float(p90), p99=float(p99))


def measure_overhead(n: int = 2000) -> float:
    """Per-run cost of the timing loop itself, in ms (perf_counter pairs + bookkeeping)."""
    times = []
    t_start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        times.append((time.perf_counter() - t0) * 1e3)
    return (time.perf_counter() - t_start) * 1e3 / n


def run_benchmark(
    runtime: Runtime,
    model: Path | bytes,
    settings: BenchmarkSettings | None = None,
    *,
    slowdown: float = 1.0,
    emulation: str | None = None,
    memory_limit_mb: float | None = None,
) -> tuple[BenchmarkResult, Model]:
    """Benchmark ``model``; returns the result and the loaded model (for the checks)."""
    settings = settings or BenchmarkSettings()
    if not slowdown >= 1.0:
        raise ValueError(f"slowdown {slowdown} must be >= 1.0")
    reset_peak_rss()
    rss_before = rss_mb()
    t0 = time.perf_counter()
    loaded = runtime.load(model, settings.threads, memory_limit_mb)
    init_ms = (time.perf_counter() - t0) * 1e3 * slowdown
    rng = np.random.default_rng(settings.seed)
    loaded.set_input(loaded.random_input(rng))  # once, as benchmark_model does

    def one() -> float:
        t = time.perf_counter()
        loaded.invoke()
        dt = time.perf_counter() - t
        if slowdown > 1.0:
            _busy_wait((slowdown - 1.0) * dt)
        return (time.perf_counter() - t) * 1e3

    first_ms = one()
    warm = [one() for _ in range(settings.warmup_runs)]
    times: list[float] = []
    start = time.perf_counter()
    while True:
        times.append(one())
        elapsed = time.perf_counter() - start
        if elapsed >= settings.max_seconds:
            break
        if len(times) >= settings.runs and elapsed >= settings.min_seconds:
            break
    measured = time.perf_counter() - start
    emulator = cpu_emulator()
    result = BenchmarkResult(
        runtime=runtime.info,
        threads=settings.threads,
        init_ms=init_ms,
        first_inference_ms=first_ms,
        warmup_runs=len(warm),
        warmup_mean_ms=float(np.mean(warm)) if warm else 0.0,
        latency_ms=latency_stats(times),
        peak_memory_mb=peak_rss_mb(),
        rss_before_mb=rss_before,
        measured_seconds=measured,
        overhead_ms_per_run=measure_overhead(),
        emulated=slowdown > 1.0 or emulation is not None or emulator is not None,
        slowdown=slowdown,
        emulation=emulation or (emulator and f"CPU emulated by {emulator}: latency is not "
                                "a device measurement"),
        cpu_emulator=emulator,
    )
    return result, loaded

