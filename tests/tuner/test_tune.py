"""The tuner on a small model: search, choice, report, impossible budgets, op-version rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tunehelp import TUNE_KW

import device_profiles as dp
import tuner as tn
from core.errors import BudgetError
from hostcli.main import main


def test_search_chooses_best_robust_that_meets_budgets(search, make_profile, tmp_path):
    pid = make_profile(
        "loose",
        budgets__model_size_kb=60,
        budgets__p90_latency_ms=5.0,
        budgets__min_accuracy_retention=0.9,
        budgets__min_robust_retention=0.5,
    )
    r = tn.tune(search.model, pid, search=search, **TUNE_KW)
    assert r.chosen is not None and r.chosen.meets and r.chosen.chosen
    ok = [c for c in r.candidates if c.meets]
    assert r.chosen.robust == max(c.robust for c in ok)
    assert all(c.size_kb <= 60 for c in ok)
    assert {c.export for c in r.candidates} >= {"float32", "int8"}
    # sizes are the exact .tflite sizes of what would be shipped
    assert r.model_bytes is not None and len(r.model_bytes) / 1024 == pytest.approx(
        r.chosen.size_kb
    )
    table = tn.table(r)
    assert table.count("\n*  ") == 1 and r.chosen.key in table
    out = tn.save(r, tmp_path / "out")
    assert {p.name for p in out.iterdir()} == {
        "model.tflite",
        "model.keras",
        "report.json",
        "report.png",
    }
    rep = json.loads((out / "report.json").read_text())
    assert rep["chosen"]["key"] == r.chosen.key
    assert len(rep["candidates"]) == len(r.candidates)
    assert (out / "report.png").stat().st_size > 10_000


def test_pruning_is_needed_when_size_is_tight(search, make_profile):
    f32 = tn.tune(search.model, make_profile("f32", exports=["float32"]), search=search, **TUNE_KW)
    full = f32.original.size_kb
    pid = make_profile(
        "tight",
        exports=["float32"],
        budgets__model_size_kb=round(full * 0.7),
        budgets__min_accuracy_retention=0.5,
        budgets__min_robust_retention=0.3,
    )
    r = tn.tune(search.model, pid, search=search, **TUNE_KW)
    assert r.chosen is not None and r.chosen.ratio > 0
    assert r.original.misses and "model size" in r.original.misses[0]


def test_impossible_budget_names_closest_and_miss(search, make_profile):
    pid = make_profile("impossible", budgets__model_size_kb=1, budgets__p90_latency_ms=0.0001)
    r = tn.tune(search.model, pid, search=search, **TUNE_KW)
    assert r.chosen is None and r.model_bytes is None
    assert "no candidate meets every budget of impossible" in r.statement
    assert "the closest is" in r.statement and "model size" in r.statement
    assert "p90 latency" in r.statement
    with pytest.raises(BudgetError, match="closest"):
        tn.raise_if_impossible(r)


def test_cli_impossible_exits_2_and_writes_report(small_model, make_profile, tmp_path, capsys):
    path, (x, y) = small_model
    np.savez(tmp_path / "eval.npz", x=x, y=y)
    pid = make_profile("impossible-cli", budgets__model_size_kb=1)
    out = tmp_path / "out"
    rc = main(
        [
            "tune",
            str(path),
            "--profile",
            pid,
            "--eval-data",
            str(tmp_path / "eval.npz"),
            "--max-ratio",
            "0.4",
            "--step",
            "0.2",
            "--export",
            "float32",
            "int8",
            "--modes",
            "paoding",
            "--no-progress",
            "-o",
            str(out),
        ]
    )
    assert rc == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) >= 1 and "no candidate meets every budget" in err[-1]
    assert "model size" in err[-1]
    assert "candidate" in captured.out  # the table was printed
    assert (out / "report.json").is_file() and not (out / "model.tflite").exists()


def test_cli_records_lineage_in_the_fleet_record(small_model, make_profile, tmp_path, capsys):
    import hashlib
    import json

    from core.files import sha256_file
    from fleet.registry import Registry

    path, (x, y) = small_model
    np.savez(tmp_path / "eval.npz", x=x, y=y)
    pid = make_profile("lineage-cli")
    db = tmp_path / "fleet.sqlite"
    Registry(db).close()
    out = tmp_path / "out"
    rc = main(["tune", str(path), "--profile", pid, "--eval-data", str(tmp_path / "eval.npz"),
               "--max-ratio", "0.4", "--step", "0.2", "--export", "float32", "--modes",
               "paoding", "--no-progress", "--db", str(db), "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert f"lineage recorded in {db}" in capsys.readouterr().out
    chosen = json.loads((out / "report.json").read_text())["chosen"]
    sha = hashlib.sha256((out / "model.tflite").read_bytes()).hexdigest()
    with Registry(db) as reg:
        (step,) = reg.lineage(sha)
    assert step["kind"] == "tune" and step["source_sha256"] == sha256_file(path)
    b = step["body"]
    assert (b["profile"], b["key"], b["outcome"]) == (pid, chosen["key"], "predicted")
    assert b["predicted_p90_ms"] == chosen["predicted_p90_ms"]
    assert b["path"] == str((out / "model.tflite").resolve())


def test_cli_rejects_bad_input(small_model, tmp_path, capsys):
    path, _ = small_model
    rc = main(
        [
            "tune",
            str(path),
            "--profile",
            "raspberry-pi-4",
            "--eval-data",
            str(tmp_path / "missing.npz"),
            "-o",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["tune", str(path), "--profile", "raspberry-pi-4", "--eps", "x", "-o",
              str(tmp_path / "o")])
    assert exit_.value.code == 2
    assert "argument --eps: invalid float value: 'x'" in capsys.readouterr().err
    rc = main(
        [
            "tune",
            str(path),
            "--profile",
            "raspberry-pi-4",
            "--verify-on",
            "d1",
            "--db",
            str(tmp_path / "fleet.sqlite"),
            "-o",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2 and "device 'd1' is not enrolled" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    rc = main(["tune", str(path), "--profile", "raspberry-pi-4", "-o", str(tmp_path / "busy")])
    assert rc == 2 and "holds other files" in capsys.readouterr().err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"


def test_op_version_rule():
    p14 = dp.load("raspberry-pi-zero-2w")
    reason = tn.runtime_check(p14, [("FULLY_CONNECTED", 12), ("SOFTMAX", 1)])
    assert reason == "tflite-runtime 2.14 cannot load FULLY_CONNECTED v12 > v10"
    assert tn.runtime_check(p14, [("FULLY_CONNECTED", 9), ("QUANTIZE", 3)]) is None
    assert "not in the" in tn.runtime_check(p14, [("STABLEHLO_ADD", 1)])
    assert tn.runtime_check(dp.load("raspberry-pi-4"), [("FULLY_CONNECTED", 12)]) is None


def test_tflite_runtime_profile_never_ships_unloadable(search, make_profile):
    pid = make_profile(
        "old-runtime",
        base="raspberry-pi-zero-2w",
        exports=["dynamic", "float32"],
        budgets__p90_latency_ms=1000,
        budgets__model_size_kb=10_000,
        budgets__min_accuracy_retention=0.5,
        budgets__min_robust_retention=0.1,
    )
    r = tn.tune(search.model, pid, search=search, **TUNE_KW)
    # dynamic-range is exported per tensor (FULLY_CONNECTED v9), which 2.14 loads
    dyn = [c for c in r.candidates if c.export == "dynamic"]
    assert dyn and not any(c.runtime_error for c in dyn), [c.runtime_error for c in dyn]
    assert r.chosen is not None
    pid12 = make_profile("older-runtime", base="raspberry-pi-zero-2w",
                         runtime__version="2.12", exports=["float32"])
    assert "refusing to guess" in tn.runtime_check(dp.load(pid12), [("FULLY_CONNECTED", 1)])


def test_search_cache_follows_floor_and_schedule(small_model, monkeypatch):
    """A run stopped at a profile's floor is resumed for a lower floor, not pruned again."""
    import pruner.api
    from pruner.io import load_model

    started = []
    real = pruner.api.prune_steps

    def counted(*args, **kwargs):
        started.append(kwargs.get("mode"))
        return real(*args, **kwargs)

    monkeypatch.setattr(pruner.api, "prune_steps", counted)
    path, data = small_model
    s = tn.Search.create(load_model(path), data, robust_samples=50, progress=False)
    high = s.prune("paoding", 0, 0.6, 0.2, stop_retention=1.01)  # stops after step 0
    assert len(high) == 1 and s.stopped_at[("paoding", 0)] == 1.01
    low = s.prune("paoding", 0, 0.6, 0.2, stop_retention=0.1)
    assert len(low) == 4 and low[0] is high[0]  # measured steps are reused
    assert started == ["paoding"] and not s.runs  # one run, resumed to its end
    assert [x.step for x in low] == [0, 1, 2, 3]
    other = s.prune("paoding", 0, 0.4, 0.4)
    assert [round(x.ratio, 1) for x in other][-1] <= 0.4 + 1e-6 and len(other) == 2


def test_without_eval_data_uses_agreement(small_model, make_profile):
    from pruner.io import load_model

    path, _ = small_model
    pid = make_profile("unlabelled", exports=["float32"], budgets__min_robust_retention=0.01)
    s = tn.Search.create(load_model(path), None, robust_samples=50, progress=False)
    r = tn.tune(s.model, pid, search=s, max_ratio=0.4, step=0.2, progress=False)
    assert not s.labelled and r.original.accuracy == 1.0  # agreement with itself
    assert r.chosen is not None and "chosen" in r.statement
    assert "agreement with the original" in r.to_dict()["accuracy_measure"]


def test_representative_data_replaces_random_inputs(small_model, tmp_path, capsys):
    """Without labels, agreement is measured on the representative inputs, which also
    calibrate int8; inputs of the wrong shape are a one-line error."""
    from pruner.io import load_model

    path, (x, _) = small_model
    s = tn.Search.create(load_model(path), None, robust_samples=10, progress=False,
                         representative=x[:40])
    np.testing.assert_array_equal(s.x, x[:40])
    np.testing.assert_array_equal(s.calibration, x[:40])
    np.save(tmp_path / "wrong.npy", np.zeros((5, 64), np.float32))
    rc = main(["tune", str(path), "--profile", "raspberry-pi-4", "--representative-data",
               str(tmp_path / "wrong.npy"), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "(64,)" in err and "(784,)" in err
    assert not (tmp_path / "o").exists()
