"""What a run says it did: the stop, the ratio reached, the refusal's one line."""

from __future__ import annotations

from types import SimpleNamespace as NS

from pruner.outcome import outcome, refusal_message, stop_explanation
from pruner.verdict import data_free, labelled, refusal

CFG = NS(target=0.3)


def test_target_reached_short_of_the_target_says_the_widths_were_rounded():
    final = NS(step=5, ratio=0.228, stop="target reached", verdict=None)
    text = stop_explanation("target reached", final, final, CFG)
    assert text.startswith("target reached: 22.8% of units removed (target 30.0%)")
    assert "rounded" in text
    exact = NS(step=6, ratio=0.3, stop="target reached", verdict=None)
    assert "rounded" not in stop_explanation("target reached", exact, exact, CFG)


def test_outcome_names_the_deciding_evidence_and_a_verdict_kept_below_the_floor():
    import numpy as np

    ref = np.random.default_rng(0).normal(size=(100, 5))
    bad = data_free(ref, -ref, 0.9, "synthesised").to_dict()
    final = NS(step=3, ratio=0.3, stop="target reached", verdict=bad)
    out = outcome([final], final, CFG)
    assert out["deciding_evidence"] == "synthesised" and out["ratio_reached"] == 0.3
    assert "keep_below_floor" in out["stop_explanation"]


def test_refusal_message_says_what_was_measured_and_where_the_last_good_model_was():
    v = labelled(0.80, 0.99, 300, fidelity=0.71).to_dict()
    refused = NS(step=4, ratio=0.4, stop=refusal(v), verdict=v)
    last_ok = NS(step=3, ratio=0.3)
    msg = refusal_message(refused, last_ok, NS(target=0.5))
    assert "\n" not in msg
    assert "step 4 (40.0% of units removed), labelled evidence: accuracy 0.800" in msg
    assert "data-free fidelity 0.710" in msg and "step 3 (30.0%; target 50.0%)" in msg
    text = stop_explanation(refused.stop, last_ok, refused, NS(target=0.5))
    assert text.startswith("refused at step 4 (40.0% of units): accuracy 0.800")
