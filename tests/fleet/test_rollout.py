"""Rollout decisions, table by table."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from fleet.rollout import (
    Decision,
    Device,
    Outcome,
    Target,
    WavePolicy,
    apply_timeouts,
    group_by_profile,
    judge,
    plan_waves,
    select,
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


def test_timeouts_turn_pending_into_failures():
    outcomes = {"a": P, "b": P, "c": A}
    started = {"a": 0.0, "b": 90.0, "c": 0.0}
    after = apply_timeouts(outcomes, started, now=100.0, timeout_s=50.0)
    assert after == {"a": T, "b": P, "c": A}


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
    assert sorted(group_by_profile(devices)) == ["android-midrange", "raspberry-pi-4"]


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
