"""`paoding-edge prune` and `paoding-edge probes` end to end, in-process, and the report."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")
pytest.importorskip("ai_edge_litert")

from hostcli.main import main  # noqa: E402
from pruner import datasets, report  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A digits MLP trained for a few epochs, its evaluation data, and bad inputs."""
    d = tmp_path_factory.mktemp("cli")
    x_tr, y_tr, x_te, y_te = datasets.digits28(0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x_tr, y_tr, epochs=4, batch_size=64, verbose=0)
    model.save(d / "model.keras")
    np.savez(d / "data.npz", x=x_te[:120], y=y_te[:120])
    np.savez(d / "wrong_shape.npz", x=np.zeros((10, 64), np.float32), y=np.zeros(10, int))
    np.savez(d / "pickled.npz", x=np.array([None] * 3, dtype=object), y=np.zeros(3, int))
    np.savez(d / "pixels.npz", x=x_te[:10] * 255, y=y_te[:10])
    np.savez(d / "labels.npz", x=x_te[:10], y=y_te[:10] + 10)
    (d / "corrupt.keras").write_bytes(b"PK\x03\x04 this is not a model" * 10)
    odd = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.LayerNormalization(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    odd.save(d / "layernorm.keras")
    acc = float(np.mean(np.asarray(model(x_te[:120])).argmax(1) == y_te[:120]))
    return {"dir": d, "acc": acc, "x": x_te[:120], "y": y_te[:120]}


def siblings(path):
    """Entries beside path whose name starts like a staging directory for it."""
    return [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]


def test_prune_end_to_end(files, tmp_path, capsys):
    d = files["dir"]
    out = tmp_path / "out"
    rc = main(["prune", str(d / "model.keras"), "--target", "0.3", "--mode", "paoding",
               "--seed", "7", "--eval-data", str(d / "data.npz"), "--eps", "0.02", "0.1",
               "--export", "float32", "dynamic", "--step", "0.1", "--max-accuracy-drop", "0.2",
               "-o", str(out)])
    # this 4-epoch MLP loses ~5 points at 21% (83 -> 79%); the eval data decides, and the
    # happy path allows that drop
    assert rc == 0, capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["pruned.keras", "pruned.tflite", "pruned_dynamic.tflite", "report.json",
                     "report.png"]
    assert siblings(out) == []
    body = json.loads((out / "report.json").read_text())
    rows = body["trajectory"]
    assert len(rows) >= 2
    assert rows[-1]["ratio"] == pytest.approx(0.3, abs=0.06)
    assert rows[-1]["params"] < rows[0]["params"]
    assert 0.0 <= rows[-1]["accuracy"] <= 1.0
    assert set(body["exports"]) == {"float32", "dynamic"}
    assert body["exports"]["dynamic"]["bytes"] < body["exports"]["float32"]["bytes"]
    assert ["FULLY_CONNECTED", 1] in body["exports"]["float32"]["ops"]
    assert body["config"]["seed"] == 7 and body["config"]["eps"] == [0.02, 0.1]
    assert 0.0 <= body["data_free_fidelity"] <= 1.0
    assert body["deciding_evidence"] == "labelled" and body["verdict"]["passed"]
    assert body["verdict"]["fidelity"] == body["data_free_fidelity"]  # the figure beside
    assert body["ratio_reached"] == rows[-1]["ratio"] and body["target"] == 0.3
    assert body["stop_explanation"].startswith("target reached")
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    from core.files import file_mode

    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {file_mode()}
    # the exports are the pruned model
    from pruner.export import run_tflite

    pruned = keras.models.load_model(out / "pruned.keras", compile=False)
    assert pruned.count_params() < keras.models.load_model(d / "model.keras").count_params()
    tfl = run_tflite((out / "pruned.tflite").read_bytes(), files["x"])
    np.testing.assert_allclose(tfl, np.asarray(pruned(files["x"])), atol=1e-4)
    printed = capsys.readouterr().out
    assert "wrote" in printed and "stopped: target reached" in printed
    assert "verdict (labelled evidence decided): accuracy" in printed


def test_eval_data_decides_and_a_refusal_says_what_was_measured(files, tmp_path, capsys):
    """With labelled data the measured accuracy stops the run; the one-line refusal
    names the accuracy, the data-free figure and the last good step; nothing is written."""
    out = tmp_path / "refused"
    rc = main(["prune", str(files["dir"] / "model.keras"), "--target", "0.9", "--mode",
               "random", "--step", "0.3", "--eval-data", str(files["dir"] / "data.npz"),
               "--eps", "0.1", "--synthetic", "48", "--fidelity-floor", "0.0", "--no-progress",
               "-o", str(out)])
    err = capsys.readouterr().err
    assert rc != 0 and len(err.strip().splitlines()) == 1, err
    assert "labelled evidence: accuracy" in err and "data-free fidelity" in err
    assert "last model within the floor is step" in err
    assert not out.exists() and siblings(out) == []


def test_representative_data_is_read_and_used(files, tmp_path, capsys):
    """An .npy of unlabeled inputs checks the verdict and calibrates int8."""
    rep = tmp_path / "rep.npy"
    np.save(rep, files["x"][:50])
    out = tmp_path / "rep"
    rc = main(["prune", str(files["dir"] / "model.keras"), "--target", "0.2", "--step", "0.1",
               "--synthetic", "32", "--representative-data", str(rep), "--export", "int8",
               "--fidelity-floor", "0.3", "--no-progress", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    body = json.loads((out / "report.json").read_text())
    assert body["deciding_evidence"] == "representative"
    assert body["verdict"]["samples"] == 50
    assert all(r["verdict"]["evidence"] == "representative" for r in body["trajectory"])
    assert body["exports"]["int8"]["calibration"] == "50 representative inputs"
    assert body["command"]["representative_samples"] == 50


def test_representative_images_of_the_wrong_size_are_one_line(files, tmp_path, capsys):
    from PIL import Image

    from pruner.representative import load_representative

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(folder / f"{i}.png")
    x = load_representative(folder, (28, 28, 1))  # the right size reads, scaled to the box
    assert x.shape == (3, 28, 28, 1) and x.max() == pytest.approx(80 / 255)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "big.png")
    cnn = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 3),
                            keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    cnn.save(tmp_path / "cnn.keras")
    out = tmp_path / "never"
    rc = main(["prune", str(tmp_path / "cnn.keras"), "--representative-data", str(folder),
               "--no-progress", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc != 0 and len(err.strip().splitlines()) == 1, err
    assert "big.png is 32x32" in err and "28x28" in err
    assert not out.exists()


def test_prune_into_existing_dir_keeps_other_files(files, tmp_path, capsys):
    d = files["dir"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (out / "report.json").write_text("old")
    db = tmp_path / "fleet.sqlite"
    rc = main(["prune", str(d / "model.keras"), "--target", "0.2", "--mode", "magnitude",
               "--export", "int8", "--fidelity-floor", "0.3", "--no-progress", "-o", str(out),
               "--db", str(db)])
    # magnitude loses 5 points of this 4-epoch MLP at 6% (score 0.48 < the default 0.8)
    assert rc == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "random inputs" in err  # int8 without data says so
    assert f"lineage recorded in {db}" in err
    assert (out / "keep.txt").read_text() == "mine"
    body = json.loads((out / "report.json").read_text())  # replaced
    assert body["config"]["mode"] == "magnitude" and body["command"]["eval_data"] is None
    assert body["exports"]["int8"]["calibration"] == "random inputs from the input box"
    assert sorted(p.name for p in out.iterdir()) == [
        "keep.txt", "pruned.keras", "pruned_int8.tflite", "report.json", "report.png"]
    assert siblings(out) == []
    # --db: the lineage of each output, from the source model's digest, in the fleet record
    from core.files import sha256_file
    from fleet.registry import Registry

    with Registry(db) as reg:
        for name, export in (("pruned.keras", "keras"), ("pruned_int8.tflite", "int8")):
            (step,) = reg.lineage(sha256_file(out / name))
            assert step["kind"] == "prune"
            assert step["source_sha256"] == sha256_file(d / "model.keras")
            b = step["body"]
            assert (b["mode"], b["target"], b["seed"], b["export"]) == (
                "magnitude", 0.2, 0, export)
            assert b["accuracy"] is None and b["fidelity"] == body["data_free_fidelity"]


def test_report_records_every_option(files, tmp_path, capsys):
    """report.json holds every PruneConfig field, and from_config gives the run's config."""
    from pruner.config import PruneConfig

    out = tmp_path / "opts"
    rc = main(["prune", str(files["dir"] / "model.keras"), "--target", "0.2", "--step", "0.1",
               "--mode", "greedy", "--scope", "global", "--seed", "3", "--fidelity-floor", "0.5",
               "--synthetic", "48", "--compensation", "bias", "--input-range", "0", "1",
               "--no-progress", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    body = json.loads((out / "report.json").read_text())
    fields = set(PruneConfig.__dataclass_fields__)
    assert set(body["config"]) == fields
    for name in ("scope", "t0", "cooling", "tau_start", "synthetic", "compensation"):
        assert name in body["config"]
    again = PruneConfig.from_config(body["config"])
    assert again == PruneConfig(target=0.2, step=0.1, mode="greedy", scope="global", seed=3,
                                fidelity_floor=0.5, synthetic=48, compensation="bias")


def test_fidelity_floor_fails_the_run_and_writes_nothing(files, tmp_path, capsys):
    """A run whose data-free fidelity collapses exits non-zero, says why on stderr and
    writes no result; --keep-below-floor keeps the model and still warns."""
    model = str(files["dir"] / "model.keras")
    out = tmp_path / "collapse"
    argv = ["prune", model, "--target", "0.9", "--mode", "random", "--step", "0.3",
            "--fidelity-floor", "0.95", "--synthetic", "48", "--no-progress", "-o", str(out)]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc != 0
    assert "fidelity" in err and "floor 0.95" in err and "--keep-below-floor" in err
    assert not out.exists() and siblings(out) == []
    rc = main([*argv, "--keep-below-floor"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "below the floor" in captured.err
    body = json.loads((out / "report.json").read_text())
    assert body["data_free_fidelity"] < 0.95
    assert body["trajectory"][-1]["ratio"] == pytest.approx(0.9, abs=0.05)


def test_too_few_synthesis_steps_warn_in_one_line(files, tmp_path, capsys):
    out = tmp_path / "rough"
    rc = main(["prune", str(files["dir"] / "model.keras"), "--target", "0.2", "--step", "0.2",
               "--synthetic", "32", "--synthesis-steps", "5", "--keep-below-floor",
               "--no-progress", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    lines = [ln for ln in err.splitlines() if "synthesis_steps=5" in ln]
    assert len(lines) == 1 and lines[0].startswith("paoding-edge prune: warning:")
    assert "UserWarning" not in err


BAD = [
    (["MISSING.keras"], "not found|does not exist"),
    (["corrupt.keras"], "cannot load"),
    (["layernorm.keras"], "LayerNormalization"),
    (["model.keras", "--target", "1.5"], "target"),
    (["model.keras", "--target", "0"], "target"),
    (["model.keras", "--eval-data", "wrong_shape.npz"], "shape"),
    (["model.keras", "--eval-data", "pickled.npz"], "unreadable"),
    (["model.keras", "--eval-data", "MISSING.npz"], "does not exist"),
    (["model.keras", "--input-range", "1", "0"], "input-range"),
    (["model.keras", "--eval-data", "pixels.npz"], "outside --input-range"),
    (["model.keras", "--eval-data", "labels.npz"], "labels must be in"),
    (["model.keras", "--mode", "magnitude", "--scope", "sequential"], "paoding and greedy"),
    (["model.keras", "--round-to", "-1"], "--round-to should be an integer >= 0"),
    (["model.keras", "--synthesis-steps", "-1"], "--synthesis-steps"),
]


def test_prune_sequential_scope(files, tmp_path, capsys):
    out = tmp_path / "seq"
    rc = main(["prune", str(files["dir"] / "model.keras"), "--target", "0.3", "--scope",
               "sequential", "--no-progress", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    body = json.loads((out / "report.json").read_text())
    assert body["config"]["scope"] == "sequential"
    assert abs(body["trajectory"][-1]["ratio"] - 0.3) < 0.05


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
@pytest.mark.parametrize("existing", [False, True], ids=["new-dir", "existing-dir"])
def test_prune_bad_input(files, tmp_path, capsys, argv, message, existing):
    d = files["dir"]
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "report.json").write_text("previous")
    args = [str(d / a) if a.endswith((".keras", ".npz")) else a for a in argv]
    capsys.readouterr()
    rc = main(["prune", *args, "--no-progress", "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("paoding-edge prune: error: ")
    import re

    assert re.search(message, err), err
    if existing:
        assert sorted(p.name for p in out.iterdir()) == ["report.json"]
        assert (out / "report.json").read_text() == "previous"
    else:
        assert not out.exists()
    assert siblings(out) == []


def test_probes_command(files, tmp_path, capsys):
    d = files["dir"]
    out = tmp_path / "sub" / "probes.npz"
    rc = main(["probes", str(d / "model.keras"), "--eval-data", str(d / "data.npz"),
               "--eps", "0.05", "--n", "20", "-o", str(out)])
    assert rc == 0
    from core.probes import load_probes

    bundle = load_probes(out)
    assert bundle["x"].shape == (20 * 3, 784)
    meta = json.loads(str(bundle["meta"]))
    from core.files import sha256_file

    assert meta["model_sha256"] == sha256_file(d / "model.keras")
    clean = bundle["kind"] == "clean"
    acc = np.mean(bundle["reference"][clean].argmax(1) == bundle["y"][clean])
    pgd = bundle["kind"] == "pgd"
    assert np.mean(bundle["reference"][pgd].argmax(1) == bundle["y"][pgd]) <= acc
    assert "60 probes" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["probes.npz"]

    bad = tmp_path / "bad.npz"
    rc = main(["probes", str(d / "model.keras"), "--eval-data", str(d / "wrong_shape.npz"),
               "-o", str(bad)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "shape" in err
    assert not bad.exists() and list(tmp_path.glob(".bad.npz*")) == []


def test_report_json_and_plot(tmp_path):
    rows = [
        {"step": 0, "ratio": 0.0, "params": 1000, "macs": 900, "tflite_bytes": 5000,
         "accuracy": np.float32(0.9), "robust": {"fgsm": {0.01: 0.8, 0.1: 0.2},
                                                 "pgd": {0.01: 0.7}},
         "fidelity": 1.0, "fidelity_random": 1.0, "seconds": 0.1},
        {"step": 1, "ratio": np.float64(0.25), "params": np.int64(700), "macs": 600,
         "tflite_bytes": 3500, "accuracy": 0.85, "robust": {"fgsm": {0.01: 0.75, 0.1: 0.1},
                                                            "pgd": {0.01: float("nan")}},
         "fidelity": 0.95, "fidelity_random": 0.9, "units": np.array([10, 5]), "seconds": 1},
    ]
    path = report.write_json({"trajectory": rows}, tmp_path / "r.json")
    back = json.loads(path.read_text())
    assert back["trajectory"][0]["robust"]["fgsm"] == {"0.01": 0.8, "0.1": 0.2}
    assert back["trajectory"][1]["robust"]["pgd"]["0.01"] is None
    assert back["trajectory"][1]["units"] == [10, 5] and back["trajectory"][1]["params"] == 700
    png = report.plot_trajectory(back, tmp_path / "r.png")
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000
    # data-free runs have no accuracy: still a plot
    bare = [{"ratio": 0.0, "params": 10, "accuracy": None}, {"ratio": 0.5, "params": 5}]
    assert report.plot_trajectory(bare, tmp_path / "b.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.png", "r.json", "r.png"]


def test_report_plot_draws_the_deciding_figure_and_its_floor(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pruner.verdict import labelled

    rows = [{"ratio": r, "verdict": labelled(a, 0.95, 300, fidelity=f).to_dict()}
            for r, a, f in ((0.0, 0.95, 1.0), (0.2, 0.94, 0.97), (0.4, 0.70, 0.6))]
    fig, ax = plt.subplots()
    report._plot_verdict(ax, rows)
    labels = ax.get_legend_handles_labels()[1]
    plt.close(fig)
    assert labels == ["95% interval", "accuracy (labelled, decides)", "floor", "refused",
                      "data-free fidelity (beside)"]
    assert report.plot_trajectory({"trajectory": rows}, tmp_path / "v.png").exists()
