"""The benchmark: statistics, fields, emulated slowdown."""

from __future__ import annotations

import numpy as np
import pytest

from agent.benchmark import latency_stats, peak_rss_mb, rss_mb, run_benchmark
from agent.runtime import select_runtime
from core.protocol import BenchmarkSettings


def test_latency_stats():
    s = latency_stats([1.0, 2.0, 3.0, 4.0])
    assert (s.count, s.mean, s.min, s.max, s.p50) == (4, 2.5, 1.0, 4.0, 2.5)
    assert s.std == pytest.approx(np.std([1, 2, 3, 4]))
    assert s.p90 == pytest.approx(3.7) and s.p99 == pytest.approx(3.97)


def test_benchmark_fields(small_model):
    rt = select_runtime()
    res, loaded = run_benchmark(rt, small_model, BenchmarkSettings(runs=30, warmup_runs=2))
    assert res.runtime.name == "ai-edge-litert" and res.runtime.version
    assert res.latency_ms.count >= 30 and res.warmup_runs == 2
    lat = res.latency_ms
    assert 0 < lat.min <= lat.p50 <= lat.p90 <= lat.p99 <= lat.max
    assert res.init_ms > 0 and res.first_inference_ms > 0
    assert res.peak_memory_mb >= res.rss_before_mb * 0.5 > 0
    assert not res.emulated and res.overhead_ms_per_run < lat.mean + 1
    assert loaded.predict(np.zeros((3, 16), np.float32)).shape == (3, 10)
    assert peak_rss_mb() >= rss_mb() > 0


def test_min_seconds_extends_runs(tiny_model):
    res, _ = run_benchmark(select_runtime(), tiny_model,
                           BenchmarkSettings(runs=1, warmup_runs=0, min_seconds=0.2))
    assert res.measured_seconds >= 0.2 and res.latency_ms.count > 1


def test_slowdown_stretches_each_run(small_model):
    rt = select_runtime()
    s = BenchmarkSettings(runs=200, warmup_runs=5)
    base, _ = run_benchmark(rt, small_model, s)
    slow, _ = run_benchmark(rt, small_model, s, slowdown=4.0, emulation="raspberry-pi-4")
    assert slow.emulated and slow.slowdown == 4.0 and slow.emulation == "raspberry-pi-4"
    assert slow.latency_ms.p50 > 2.0 * base.latency_ms.p50
    with pytest.raises(ValueError, match="slowdown"):
        run_benchmark(rt, small_model, s, slowdown=0.5)


def test_isolated_benchmark_in_a_child_process(small_model, unloadable_model, tmp_path):
    from agent.isolate import run_isolated

    good, bad = tmp_path / "good.tflite", tmp_path / "bad.tflite"
    good.write_bytes(small_model)
    bad.write_bytes(unloadable_model)
    out = run_isolated(good, BenchmarkSettings(runs=20))
    assert out.failure is None and out.benchmark.latency_ms.count >= 20
    assert out.benchmark.peak_memory_mb > 0
    out = run_isolated(bad, BenchmarkSettings(runs=20))
    assert out.kind == "load" and "version '9999'" in out.failure
    out = run_isolated(good, BenchmarkSettings(), runtime="no-such-runtime")
    assert out.kind == "load" and "unknown runtime" in out.failure
    out = run_isolated(good, BenchmarkSettings(runs=10**6, min_seconds=60), timeout=2.0)
    assert out.kind == "run" and "did not finish in 2s" in out.failure
