"""Offline: reports made while the broker is down arrive later; Last Will on death."""

from __future__ import annotations

import time

import pytest
from polling import until

from core.protocol import Status, Topics
from fleet.publisher import deploy

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]
DEVICE = "pi-kitchen-01"


def _offline_deploy(broker, inproc_agent, keys, small_model):
    agent = inproc_agent(broker, trust=keys["trust"])
    outage = {}

    def progress(event, info):
        if event == "report" and info["state"] == "installed" and not outage:
            broker.stop()  # the agent is now benchmarking for ~1.5 s
            outage["spooled"] = 0
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # wait for the final report to be spooled
                outage["spooled"] = len(agent.storage.spool_list())
                if agent.storage.history():
                    break
                time.sleep(0.05)
            broker.start()

    rep = deploy(small_model, DEVICE, broker.url, key=keys["private"], progress=progress,
                 benchmark={"runs": 1, "min_seconds": 1.5}, timeout=60)
    assert outage["spooled"] >= 2  # benchmarked and active were made offline
    assert rep.ok and rep.benchmark is not None
    deadline = time.monotonic() + 5
    while agent.storage.spool_list() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent.storage.spool_list() == []  # acknowledged, so removed
    return rep


def test_reports_spooled_while_broker_down_are_all_delivered(broker, inproc_agent,
                                                             keys, small_model):
    """A broker that keeps sessions delivers every report made while it was down.

    Whichever reconnects first, the agent (flushing its spool) or the host: the
    host's persistent session has the broker queue what it missed."""
    rep = _offline_deploy(broker, inproc_agent, keys, small_model)
    assert rep.states == ["received", "verified", "installed", "benchmarked", "active"]


def test_reports_made_offline_are_sent_at_the_reconnect_in_order(broker, inproc_agent, keys,
                                                                 small_model):
    """Reports spooled while the broker was away go out when the agent reconnects, not
    after the benchmark it is busy with: the host hears every state in the device's order."""
    agent = inproc_agent(broker, trust=keys["trust"])
    heard: list[str] = []
    spooled = []

    def progress(event, info):
        if event != "report":
            return
        heard.append(info["state"])
        if info["state"] == "received" and not spooled:
            broker.stop()  # the agent verifies and installs offline, then benchmarks 6 s
            until(lambda: bool(agent.storage.spool_list()), 10,  # the spool has no event
                  "the agent spooled nothing while the broker was away")
            spooled.append(len(agent.storage.spool_list()))
            broker.start()

    rep = deploy(small_model, DEVICE, broker.url, key=keys["private"], progress=progress,
                 benchmark={"runs": 1, "min_seconds": 6}, timeout=90)
    assert spooled[0] >= 1 and rep.ok
    assert heard == ["received", "verified", "installed", "benchmarked", "active"]


def test_final_report_arrives_even_if_the_broker_loses_sessions(volatile_broker, inproc_agent,
                                                                 keys, small_model):
    """Without broker persistence the retained latest report still reaches the host."""
    rep = _offline_deploy(volatile_broker, inproc_agent, keys, small_model)
    assert rep.states[-1] == "active"


def test_last_will_turns_status_offline(broker, agent_process, collector):
    _c, got = collector(broker, Topics(DEVICE).status)
    proc = agent_process(broker)
    proc.wait_log("connected to")

    def last_status(online: bool, timeout: float = 10) -> Status:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if got and Status.from_json(got[-1][1]).online is online:
                return Status.from_json(got[-1][1])
            time.sleep(0.05)
        raise AssertionError(f"status never became online={online}: {got[-1:]}")

    assert last_status(True).profile == "raspberry-pi-4"
    proc.kill()  # SIGKILL: no goodbye, the broker publishes the will
    st = last_status(False)
    assert st.device_id == DEVICE
