"""Rollout decisions, table by table."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from fleet.rollout import (
    Action,
    Decision,
    Device,
    Outcome,
    Seen,
    Target,
    Verdict,
    WavePolicy,
    classify,
    gate,
    judge,
    next_wave,
    plan_waves,
    reported_outcome,
    select,
    settle,
)

A, R, P, T = Outcome.ACTIVE, Outcome.ROLLED_BACK, Outcome.PENDING, Outcome.TIMED_OUT


def fleet(n: int, profile: str = "raspberry-pi-4", tags: frozenset = frozenset()) -> list[Device]:
    return [Device(f"{profile}-{i:02d}", profile, tags) for i in range(n)]


@pytest.mark.parametrize(
    ("n", "canary", "growth", "sizes"),
    [
        (0, 1, 2.0, []),
        (1, 1, 2.0, [1]),
        (10, 1, 2.0, [1, 2, 4, 3]),
        (10, 2, 1.5, [2, 3, 5]),
        (7, 3, 1.0, [3, 3, 1]),
        (5, 10, 2.0, [5]),
    ],
)
def test_plan_waves_sizes(n, canary, growth, sizes):
    waves = plan_waves(fleet(n), WavePolicy(canary=canary, growth=growth))
    assert [len(w) for w in waves] == sizes
    flat = [d.device_id for w in waves for d in w]
    assert flat == [d.device_id for d in fleet(n)]  # every device once, order kept


@pytest.mark.parametrize(
    ("outcomes", "policy", "last", "decision"),
    [
        ({"a": A}, WavePolicy(), False, Decision.CONTINUE),
        ({"a": A}, WavePolicy(), True, Decision.DONE),
        ({"a": P}, WavePolicy(), False, Decision.WAIT),
        ({"a": R}, WavePolicy(), False, Decision.ABORT),  # a failed canary stops the rollout
        (
            {"a": A, "b": A, "c": A, "d": A, "e": R},
            WavePolicy(max_failure_rate=0.2),
            False,
            Decision.CONTINUE,
        ),  # 20% is not above 20%
        (
            {"a": A, "b": A, "c": A, "d": R, "e": R},
            WavePolicy(max_failure_rate=0.2),
            False,
            Decision.ABORT,
        ),
        ({"a": R, "b": P, "c": P}, WavePolicy(min_finished=3), False, Decision.WAIT),
        (
            {"a": A, "b": T, "c": A},
            WavePolicy(max_failures=1, max_failure_rate=1.0),
            False,
            Decision.ABORT,
        ),
        (
            {"a": A, "b": R, "c": A},
            WavePolicy(max_failures=2, max_failure_rate=1.0),
            True,
            Decision.DONE,
        ),
    ],
)
def test_judge(outcomes, policy, last, decision):
    verdict = judge(outcomes, policy, last_wave=last)
    assert verdict.decision is decision, verdict.reason
    assert verdict.failures == sum(o.failed for o in outcomes.values())


def test_abort_reason_names_the_threshold():
    verdict = judge({"a": A, "b": R}, WavePolicy(max_failure_rate=0.25), last_wave=False)
    assert verdict.decision is Decision.ABORT
    assert "50%" in verdict.reason and "max_failure_rate" in verdict.reason


def test_targeting_by_profile_and_tags():
    devices = [
        Device("k1", "raspberry-pi-4", frozenset({"kitchen", "beta"})),
        Device("k2", "raspberry-pi-4", frozenset({"kitchen"})),
        Device("p1", "android-midrange", frozenset({"beta"})),
    ]
    assert [d.device_id for d in select(devices, Target(tags=frozenset({"beta"})))] == ["k1", "p1"]
    only_pi = Target(profiles=frozenset({"raspberry-pi-4"}))
    assert [d.device_id for d in select(devices, only_pi)] == ["k1", "k2"]
    by_id = Target(device_patterns=("k*",))
    assert [d.device_id for d in select(devices, by_id)] == ["k1", "k2"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"canary": 0}, "canary"),
        ({"growth": 0.5}, "growth"),
        ({"max_failure_rate": 1.5}, "max_failure_rate"),
        ({"max_failures": 0}, "max_failures"),
        ({"timeout_s": 0}, "timeout_s"),
    ],
)
def test_policy_validation_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        WavePolicy(**kwargs)


def test_policy_config_round_trip():
    policy = WavePolicy(canary=2, growth=3.0, max_failures=4)
    assert WavePolicy.from_config(policy.get_config()) == policy


SHA, OLD = "a" * 64, "b" * 64


@pytest.mark.parametrize(
    ("seen", "include_offline", "action"),
    [
        (None, False, Action.UNKNOWN),
        (Seen(online=True, active_sha=SHA), False, Action.ALREADY),
        (Seen(online=False, active_sha=SHA), False, Action.ALREADY),
        (Seen(online=True, active_sha=OLD), False, Action.DEPLOY),
        (Seen(online=True), False, Action.DEPLOY),
        (Seen(online=False, active_sha=OLD), False, Action.OFFLINE),
        (Seen(online=False, active_sha=OLD), True, Action.DEPLOY),
    ],
)
def test_classify(seen, include_offline, action):
    got, why = classify(seen, SHA, include_offline=include_offline)
    assert got is action
    assert (why == "") == (action is Action.DEPLOY)


@pytest.mark.parametrize(
    ("seen", "expected"),
    [
        (None, None),
        (Seen(online=True), None),
        (Seen(online=True, final_deployment="d1", final_state="active"), Outcome.ACTIVE),
        (Seen(online=True, final_deployment="d1", final_state="rolled_back"), Outcome.ROLLED_BACK),
        (Seen(online=True, final_deployment="d1", final_state="error"), Outcome.FAILED),
        (Seen(online=True, final_deployment="d1", final_state="cancelled"), Outcome.CANCELLED),
        (Seen(online=True, final_deployment="d1", final_state="received"), None),
        # another deployment's final report says nothing about this one
        (Seen(online=True, final_deployment="d0", final_state="active"), None),
        # the report was lost but the status names this deployment as running
        (Seen(online=True, active_sha=SHA, active_deployment="d1"), Outcome.ACTIVE),
        (Seen(online=True, active_sha=OLD, active_deployment="d1"), None),
        (Seen(online=False), Outcome.OFFLINE),
        # a final report beats the Last Will that came after it
        (Seen(online=False, final_deployment="d1", final_state="active"), Outcome.ACTIVE),
    ],
)
def test_settle(seen, expected):
    got = settle("d1", SHA, seen)
    assert (got[0] if got else None) is expected


W = Seen(online=False, offline_since=100.0)  # a Last Will heard at 100 s of connected time


@pytest.mark.parametrize(
    ("seen", "now", "grace_s", "final_only", "expected"),
    [
        # a Last Will stands only after the grace (a broker shutdown publishes every Will;
        # the devices are back online before it is over)
        (W, 105.0, 10.0, False, None),
        (W, 110.0, 10.0, False, Outcome.OFFLINE),
        (W, 1e6, None, False, None),  # a direct deployment: a Will never ends it
        # a caller that needs the measurements waits for the final report
        (Seen(online=True, active_sha=SHA, active_deployment="d1"), 0.0, 0.0, True, None),
        (Seen(online=True, final_deployment="d1", final_state="active"), 0.0, None, True,
         Outcome.ACTIVE),
    ],
)
def test_settle_with_grace_and_final_only(seen, now, grace_s, final_only, expected):
    got = settle("d1", SHA, seen, now=now, grace_s=grace_s, final_only=final_only)
    assert (got[0] if got else None) is expected


@pytest.mark.parametrize(
    ("state", "outcome"),
    [("active", A), ("rolled_back", R), ("rejected", Outcome.REJECTED),
     ("expired", Outcome.EXPIRED), ("error", Outcome.FAILED), ("received", None),
     ("benchmarked", None)],
)
def test_reported_outcome(state, outcome):
    assert reported_outcome(state) is outcome


@pytest.mark.parametrize(
    ("started", "expected"),
    [(set(), 0), ({"a"}, 1), ({"a", "b"}, 1), ({"a", "b", "c"}, 2), ({"a", "b", "c", "d"}, None),
     ({"b", "c", "d"}, 0)],
)
def test_next_wave(started, expected):
    assert next_wave([["a"], ["b", "c"], ["d"]], started) == expected


@pytest.mark.parametrize(
    ("decision", "connected", "expected"),
    [
        (Decision.WAIT, True, Decision.WAIT),
        (Decision.WAIT, False, Decision.PAUSE),
        (Decision.CONTINUE, False, Decision.PAUSE),  # no next wave while the broker is away
        (Decision.CONTINUE, True, Decision.CONTINUE),
        (Decision.ABORT, False, Decision.ABORT),
        (Decision.DONE, False, Decision.DONE),
    ],
)
def test_gate(decision, connected, expected):
    assert gate(Verdict(decision, "x"), connected=connected).decision is expected


@pytest.mark.parametrize(
    ("outcome", "failed", "revisable"),
    [(A, False, False), (P, False, True), (T, True, True), (Outcome.OFFLINE, True, True),
     (Outcome.CANCELLED, False, True), (R, True, False), (Outcome.EXPIRED, True, False)],
)
def test_outcome_kinds(outcome, failed, revisable):
    assert outcome.failed is failed and outcome.revisable is revisable


def test_dead_devices_count_as_failures_in_the_judgement():
    outcomes = {f"d{i}": A for i in range(9)} | {"dead": Outcome.OFFLINE}
    v = judge(outcomes, WavePolicy(max_failure_rate=0.2), last_wave=True)
    assert v.decision is Decision.DONE and v.failures == 1
    v = judge(outcomes, WavePolicy(max_failure_rate=0.05), last_wave=False)
    assert v.decision is Decision.ABORT
