"""How many inputs a run synthesises (pruner.synthesis.counts): the configured counts
up to the reference cost, fewer for costlier models, never below the floors."""

from __future__ import annotations

from pruner.metrics import REFERENCE_MACS, scaled_count
from pruner.synthesis import counts


def test_models_up_to_the_reference_cost_get_the_configured_counts():
    assert counts(192, 10_000) == (192, 96)
    assert counts(192, int(REFERENCE_MACS)) == (192, 96)
    assert counts(16, 10_000) == (16, 32)  # the check set never under 32 there


def test_costlier_models_get_fewer_inputs_down_to_the_floors():
    fit, check = counts(192, int(4 * REFERENCE_MACS))
    assert (fit, check) == (48, 24)
    assert counts(192, int(1000 * REFERENCE_MACS)) == (32, 16)
    assert counts(20, int(1000 * REFERENCE_MACS)) == (20, 16)  # never more than asked


def test_random_inputs_of_a_costly_model_are_scaled_too():
    """The meter's random box inputs follow the same rule (floor 64): a 96x96
    MobileNetV2-0.35 (10.7 M MACs) gets 72 of the default 512."""
    assert scaled_count(512, 10_666_928, 64) == 72
    assert scaled_count(512, int(REFERENCE_MACS), 64) == 512
    assert scaled_count(512, int(1e12), 64) == 64


def test_too_few_synthesis_steps_warn_that_the_fidelity_is_blind():
    """Under MIN_FIDELITY_STEPS the synthesised inputs do not show the loss: the run says so."""
    import warnings

    import pytest

    pytest.importorskip("keras")
    from pruner import zoo
    from pruner.api import prune
    from pruner.synthesis import MIN_FIDELITY_STEPS

    model = zoo.ds_cnn((12, 12, 1), classes=3, filters=8, blocks=1)
    opts = dict(n_random=0, measure_tflite=False, eps=(), keep_below_floor=True,
                progress=False, synthetic=32, step=0.1)
    with pytest.warns(UserWarning, match="synthesis_steps=5 is under.*blind"):
        prune(model, 0.1, synthesis_steps=5, **opts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prune(model, 0.1, synthesis_steps=MIN_FIDELITY_STEPS, **opts)


def test_a_model_loaded_again_reuses_its_synthesis(tmp_path):
    """The cache follows the model's digest: the same model loaded twice gets the same
    inputs without a second optimisation (a copy each time); changed weights do not."""
    import numpy as np
    import pytest

    pytest.importorskip("keras")
    from pruner import synthesis, zoo
    from pruner.bounds import InputBox
    from pruner.io import load_model, model_digest

    model = zoo.ds_cnn((12, 12, 1), classes=3, filters=8, blocks=1)
    model.save(tmp_path / "m.keras")
    twin = load_model(tmp_path / "m.keras")
    assert model_digest(twin) == model_digest(model)
    synthesis.clear_cache()
    x = synthesis.synthesize(model, InputBox(), n=8, steps=3, seed=0)
    x[:] = -1.0  # the caller's copy, not the cached inputs
    y = synthesis.synthesize(twin, InputBox(), n=8, steps=3, seed=0)
    assert y.min() >= 0.0 and len(synthesis._cache) == 1  # a hit: no second entry
    np.testing.assert_array_equal(y, synthesis.synthesize(twin, InputBox(), n=8, steps=3, seed=0))
    kernel, *rest = twin.layers[1].get_weights()
    twin.layers[1].set_weights([kernel * 2.0, *rest])
    assert model_digest(twin) != model_digest(model)
    synthesis.synthesize(twin, InputBox(), n=8, steps=3, seed=0)
    assert len(synthesis._cache) == 2


def test_one_compiled_loop_serves_every_synthesis_of_a_model_and_is_deterministic():
    """The fitting and check syntheses of a run (other counts, seeds and steps) share one
    trace of the optimisation loop, and a fresh loop gives the same inputs bit for bit."""
    import numpy as np
    import pytest

    pytest.importorskip("keras")
    from pruner import synthesis, zoo
    from pruner.bounds import InputBox

    model = zoo.ds_cnn((12, 12, 1), classes=3, filters=8, blocks=1)
    synthesis.clear_cache()
    x = synthesis.synthesize(model, InputBox(), n=8, steps=4, seed=0)
    synthesis.synthesize(model, InputBox(), n=6, steps=2, seed=1000)
    (loop,) = synthesis._compiled.values()
    assert loop.experimental_get_tracing_count() == 1
    synthesis.clear_cache()
    np.testing.assert_array_equal(x, synthesis.synthesize(model, InputBox(), n=8, steps=4, seed=0))
    assert not np.array_equal(x, synthesis.synthesize(model, InputBox(), n=8, steps=0, seed=0))
