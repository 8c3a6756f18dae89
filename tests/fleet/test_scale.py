"""Rollouts over simulated devices on a real Mosquitto: scale properties and faults.

Each test ends with the registry and the devices agreeing (``assert_agree``).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fleetsim import Simulator, device_ids, simulated_key, simulated_public_keys
from polling import until
from simhelp import assert_agree, variant

from core.mqtt import Broker
from core.signing import SigningKey, TrustStore, write_key_pair
from fleet.orchestrator import RolloutLocked, run_rollout
from fleet.registry import Registry
from fleet.rollout import Decision, Outcome, WavePolicy

pytestmark = pytest.mark.broker
HERE = Path(__file__).parent
ROOT = HERE.parent.parent


@pytest.fixture
def host_key() -> SigningKey:
    return SigningKey.generate()


def enrol(reg: Registry, ids: list[str], profile: str = "simulated") -> None:
    for d in ids:
        pem = simulated_key(d).public_key().public_pem().decode()
        reg.set_identity(d, profile, pem, d)


def start_sim(broker, ids, host_key, **kw) -> Simulator:
    sim = Simulator(Broker(port=broker.port), ids, trust=TrustStore([host_key.public_key()]),
                    **kw)
    sim.start()
    sim.wait_born()
    return sim


def test_one_connection_artifacts_once_and_the_record(broker, host_key, tmp_path):
    ids = device_ids(60)
    model = variant()
    with start_sim(broker, ids, host_key, dead=ids[:6]) as sim, \
            Registry(tmp_path / "f.sqlite") as reg:
        enrol(reg, ids)
        result = run_rollout({"simulated": model}, Broker(port=broker.port), reg, key=host_key,
                             policy=WavePolicy(canary=4, growth=4, timeout_s=30),
                             discover_s=0.5)
        assert result.decision is Decision.DONE, result.reason
        assert len(result.results) == 54 and all(
            r.outcome is Outcome.ACTIVE for r in result.results)
        assert {why for d, why in result.skipped.items()} == {"offline (its Last Will)"}
        # the model went out once, whatever the number of devices
        assert result.stats["published_bytes"] == len(model)
        assert result.stats["messages_dropped"] == 0
        counts = assert_agree(reg, sim, result.rollout_id)
        assert counts == {"active": 54}
        assert reg.rollouts("running") == []
        assert all(r["lock_rollout"] is None for r in reg.device_rows())
        # the same rollout again: every device already runs the variant
        again = run_rollout({"simulated": model}, Broker(port=broker.port), reg, key=host_key,
                            discover_s=0.5)
        assert again.results == [] and again.decision is Decision.DONE
        assert set(again.skipped.values()) == {"already runs " + result_sha(model)[:12],
                                               "offline (its Last Will)"}
        assert sum(len(d.accepted) for d in sim.devices.values()) == 54


def result_sha(model: bytes) -> str:
    import hashlib

    return hashlib.sha256(model).hexdigest()


def test_unsigned_or_forged_device_messages_are_dropped(broker, host_key, tmp_path):
    ids = device_ids(4)
    with start_sim(broker, ids, host_key) as sim, Registry(tmp_path / "f.sqlite") as reg:
        # the registry holds other keys for two of them: their word is not taken
        enrol(reg, ids[:2])
        for d in ids[2:]:
            reg.set_identity(d, "simulated",
                             SigningKey.generate().public_key().public_pem().decode(), d)
        result = run_rollout({"simulated": variant()}, Broker(port=broker.port), reg,
                             key=host_key, policy=WavePolicy(canary=4, timeout_s=3),
                             discover_s=0.5)
        outcomes = {r.device_id: r.outcome for r in result.results}
        assert outcomes == {ids[0]: Outcome.ACTIVE, ids[1]: Outcome.ACTIVE}
        assert {ids[2], ids[3]} <= set(result.skipped)  # their status never verified
        assert result.stats["messages_dropped"] > 0
        del sim


def test_dead_devices_settle_at_once_and_abort_cancels_the_wave(broker, host_key, tmp_path):
    ids = device_ids(40)
    slow = ids[10:]
    with start_sim(broker, ids, host_key, step_s=0.05, slow=slow) as sim, \
            Registry(tmp_path / "f.sqlite") as reg:
        enrol(reg, ids)
        killed = threading.Event()

        def progress(event: str, info: dict) -> None:
            if event == "wave" and info["wave"] == 1 and not killed.is_set():
                sim.kill(info["devices"][:3])  # their Last Will goes out mid-wave
                killed.set()

        t0 = time.monotonic()
        result = run_rollout({"simulated": variant()}, Broker(port=broker.port), reg,
                             key=host_key, progress=progress, discover_s=0.5,
                             policy=WavePolicy(canary=2, growth=100, timeout_s=120,
                                               max_failure_rate=1.0, max_failures=3,
                                               offline_grace_s=0.5))
        took = time.monotonic() - t0
        assert killed.is_set()
        assert result.decision is Decision.ABORT and "max_failures=3" in result.reason
        assert took < 30  # not the 120 s timeout: the Last Will settled them
        outcomes = [r.outcome for r in result.results]
        assert outcomes.count(Outcome.OFFLINE) == 3
        assert outcomes.count(Outcome.CANCELLED) > 10  # the wave in progress was stopped
        assert_agree(reg, sim, result.rollout_id)  # the devices answered the cancel
        assert not any(sim.devices[d].active for d in slow)


def _release(tmp_path: Path) -> tuple[Path, Path, SigningKey]:
    """A model variant and a fresh signing key pair on disk: (model, key file, key)."""
    from core.signing import load_signing_key

    model_path = tmp_path / "model.tflite"
    model_path.write_bytes(variant())
    key_path, _pub = write_key_pair(tmp_path / "keys")
    return model_path, key_path, load_signing_key(key_path)


def _worker(spec: dict, tmp_path: Path, name: str, max_fds: int | None = None
            ) -> subprocess.Popen:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{HERE}")

    def limit() -> None:
        if max_fds is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max_fds, max_fds))

    return subprocess.Popen([sys.executable, str(HERE / "rollout_worker.py"), str(path)],
                            stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                            preexec_fn=limit)


def _wait_line(proc: subprocess.Popen, prefix: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line.strip()
        seen.append(line.strip())
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no {prefix!r} line from the worker: {seen[-5:]}")


def test_kill9_mid_wave_then_the_same_command_resumes(broker, host_key, tmp_path):
    ids = device_ids(40)
    model_path, key_path, key = _release(tmp_path)
    db = tmp_path / "fleet.sqlite"
    spec = {"db": str(db), "broker": f"mqtt://127.0.0.1:{broker.port}", "profile": "simulated",
            "model": str(model_path), "key": str(key_path),
            "policy": {"canary": 4, "growth": 3, "timeout_s": 60}, "discover_s": 0.5}
    with start_sim(broker, ids, key, step_s=0.15) as sim:
        with Registry(db) as reg:
            enrol(reg, ids)
        proc = _worker(spec, tmp_path, "first")
        rollout_id = _wait_line(proc, "planned").split()[1]
        # wait until a wave is in flight (some active, some still pending), then kill -9
        with Registry(db) as reg:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                outcomes = list(reg.outcomes(rollout_id).values())
                if outcomes.count(Outcome.ACTIVE) >= 4 and Outcome.PENDING in outcomes:
                    break
                time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with Registry(db) as reg:
            before = reg.outcomes(rollout_id)
            assert Outcome.PENDING in before.values() and len(before) < 40
            result = run_rollout({"simulated": model_path}, Broker(port=broker.port), reg,
                                 key=key, discover_s=0.5,
                                 policy=WavePolicy(canary=4, growth=3, timeout_s=60))
            assert result.rollout_id == rollout_id and result.resumed
            assert result.decision is Decision.DONE, result.reason
            assert {r.outcome for r in result.results} == {Outcome.ACTIVE}
            assert len(result.results) == 40
            assert assert_agree(reg, sim, rollout_id) == {"active": 40}
            # every device took exactly one deployment: nothing deployed twice
            assert all(len(d.accepted) == 1 for d in sim.devices.values())
            assert reg.rollout(rollout_id)["state"] == "done"


def test_a_report_the_host_heard_but_had_not_stored_survives_its_kill9(broker, tmp_path):
    """The host acks a report only once the registry holds it: killed in between (its
    registry writes held up here by a lock), its session gets the report again."""
    import sqlite3

    from core.protocol import FINAL_STATES

    ids = device_ids(6)
    model_path, key_path, key = _release(tmp_path)
    db = tmp_path / "fleet.sqlite"
    policy = {"canary": 6, "timeout_s": 60}  # one wave: nothing else writes mid-wave
    spec = {"db": str(db), "broker": f"mqtt://127.0.0.1:{broker.port}", "profile": "simulated",
            "model": str(model_path), "key": str(key_path), "policy": policy,
            "discover_s": 0.5, "print_reports": True}
    with start_sim(broker, ids, key, step_s=0.3) as sim:
        with Registry(db) as reg:
            enrol(reg, ids)
        proc = _worker(spec, tmp_path, "host")
        rollout_id = _wait_line(proc, "planned").split()[1]
        with Registry(db) as reg:
            until(lambda: len(reg.outcomes(rollout_id)) == 6, 30, "the wave never started")
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the host's next registry write waits for it
        locked_at = time.time()
        heard: tuple[str, str] | None = None
        while heard is None:
            _, _, dep, state, at = _wait_line(proc, "heard report").split()
            if float(at) > locked_at and state not in FINAL_STATES:
                heard = (dep, state)  # taken, and its write is held up
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        lock.execute("ROLLBACK")
        lock.close()
        with Registry(db) as reg:
            assert heard[1] not in {r["state"] for r in reg.reports(heard[0])}
            result = run_rollout({"simulated": model_path}, Broker(port=broker.port), reg,
                                 key=key, discover_s=0.5, policy=WavePolicy(**policy))
            assert result.resumed and result.decision is Decision.DONE, result.reason
            assert assert_agree(reg, sim, rollout_id) == {"active": 6}
            sent = {s for dev in sim.devices.values() for s in dev.sent}
            stored = {(r["deployment_id"], r["state"]) for d in reg.rollout_deployments(rollout_id)
                      for r in reg.reports(d["deployment_id"])}
            assert heard in stored
            assert sent <= stored, f"lost: {sorted(sent - stored)}"


def test_two_rollouts_at_once_the_second_is_refused(broker, host_key, tmp_path):
    ids = device_ids(20)
    db = tmp_path / "fleet.sqlite"
    with start_sim(broker, ids, host_key, step_s=0.2) as sim, Registry(db) as reg:
        enrol(reg, ids)
        results: dict[str, object] = {}

        def first() -> None:
            with Registry(db) as reg1:
                results["first"] = run_rollout(
                    {"simulated": variant(seed=1)}, Broker(port=broker.port), reg1,
                    key=host_key, discover_s=0.5, policy=WavePolicy(canary=5, timeout_s=60))

        t = threading.Thread(target=first)
        t.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
                reg.rollouts("running") and reg.outcomes(reg.rollouts("running")[0]["rollout_id"])):
            time.sleep(0.05)  # the first rollout holds its devices and has started
        with pytest.raises(RolloutLocked, match="held by rollout r"):
            run_rollout({"simulated": variant(seed=2)}, Broker(port=broker.port), reg,
                        key=host_key, discover_s=0.5)
        t.join(60)
        first_result = results["first"]
        assert first_result.decision is Decision.DONE
        assert assert_agree(reg, sim, first_result.rollout_id) == {"active": 20}
        assert [r["state"] for r in reg.rollouts()] == ["done", "refused"]
        assert {len(d.accepted) for d in sim.devices.values()} == {1}


@pytest.mark.parametrize("outage_s", [0.0, pytest.param(30.0, marks=pytest.mark.slow)])
def test_broker_restart_or_outage_mid_wave_pauses_the_rollout(
        volatile_broker, host_key, tmp_path, outage_s):
    """A broker without persistence: a restart loses every retained message and session."""
    broker = volatile_broker
    ids = device_ids(30)
    events: list[str] = []
    with start_sim(broker, ids, host_key, step_s=0.3) as sim, \
            Registry(tmp_path / "f.sqlite") as reg:
        enrol(reg, ids)
        restarted = threading.Event()

        def outage() -> None:
            broker.stop()
            time.sleep(outage_s)
            broker.start()
            restarted.set()

        def progress(event: str, info: dict) -> None:
            events.append(event)
            if event == "wave" and info["wave"] == 1:
                threading.Thread(target=outage).start()

        result = run_rollout({"simulated": variant()}, Broker(port=broker.port), reg,
                             key=host_key, progress=progress, discover_s=0.5,
                             policy=WavePolicy(canary=3, growth=4, timeout_s=10))
        assert restarted.wait(outage_s + 30)
        assert "pause" in events and "resume" in events
        assert result.decision is Decision.DONE, (result.reason, [
            (r.device_id, r.outcome.value, r.reason) for r in result.results])
        assert assert_agree(reg, sim, result.rollout_id) == {"active": 30}  # no timeouts


def test_lost_chunks_are_served_again_within_the_bound(broker, host_key, tmp_path):
    ids = device_ids(20)
    model = variant(size=64 * 1024 * 6)
    with start_sim(broker, ids, host_key, loss=0.3, need_after_s=0.3) as sim, \
            Registry(tmp_path / "f.sqlite") as reg:
        enrol(reg, ids)
        result = run_rollout({"simulated": model}, Broker(port=broker.port), reg, key=host_key,
                             discover_s=0.5, policy=WavePolicy(canary=20, timeout_s=60))
        assert result.decision is Decision.DONE
        assert sim.stats.need_requests > 0 and result.stats["reserved_chunks"] > 0
        # one re-publish serves every device missing the chunk: far fewer than the requests
        assert result.stats["reserved_chunks"] <= 6 * 64
        assert assert_agree(reg, sim, result.rollout_id) == {"active": 20}


def test_several_host_processes_on_postgres_with_a_shared_intake(broker, host_key, tmp_path,
                                                                 pg_url):
    ids = device_ids(30)
    model_path, key_path, key = _release(tmp_path)
    with start_sim(broker, ids, key, step_s=0.05) as sim:
        with Registry(pg_url) as reg:
            enrol(reg, ids)
        base = {"db": pg_url, "broker": f"mqtt://127.0.0.1:{broker.port}",
                "profile": "simulated", "model": str(model_path), "key": str(key_path),
                "share_group": "paoding-hosts", "discover_s": 1.0,
                "policy": {"canary": 3, "growth": 3, "timeout_s": 60}}
        a = _worker({**base, "devices": ["sim-0000*", "sim-00010", "sim-00011"]}, tmp_path, "a")
        b = _worker({**base, "devices": ["sim-0001[2-9]", "sim-0002*"]}, tmp_path, "b")
        outs = [json.loads(_wait_line(p, "{", timeout=120)) for p in (a, b)]
        assert [p.wait(30) for p in (a, b)] == [0, 0]
        assert [o["decision"] for o in outs] == ["done", "done"]
        with Registry(pg_url) as reg:
            total: dict[str, int] = {}
            for o in outs:
                for k, v in assert_agree(reg, sim, o["rollout_id"]).items():
                    total[k] = total.get(k, 0) + v
            assert total == {"active": 30}
            assert sum(1 for r in reg.device_rows() if r["active_sha"]) == 30


def test_fleet_command_shows_what_each_device_runs(broker, host_key, tmp_path, capsys):
    from hostcli.main import main

    ids = device_ids(5)
    model = variant()
    db = tmp_path / "f.sqlite"
    with start_sim(broker, ids, host_key), Registry(db) as reg:
        enrol(reg, ids)
        run_rollout({"simulated": model}, Broker(port=broker.port), reg, key=host_key,
                    discover_s=0.5, policy=WavePolicy(canary=5))
    assert main(["fleet", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert out.count(result_sha(model)[:16]) == 5


def test_resume_with_nothing_in_progress_is_a_clear_error(tmp_path, broker):
    with Registry(tmp_path / "f.sqlite") as reg, pytest.raises(Exception, match="no rollout in"):
        run_rollout(None, Broker(port=broker.port), reg, resume=True, discover_s=0.1)


def test_simulated_keys_are_stable():
    assert simulated_public_keys(["a"])["a"].key_id == simulated_key("a").key_id


def test_a_host_limited_to_64_file_descriptors_rolls_out_to_150_devices(broker, tmp_path):
    """Once each in-flight device cost the host ~5 descriptors: 128 were not enough for 100."""
    ids = device_ids(150)
    model_path, key_path, key = _release(tmp_path)
    db = tmp_path / "fleet.sqlite"
    with start_sim(broker, ids, key) as sim:
        with Registry(db) as reg:
            enrol(reg, ids)
        spec = {"db": str(db), "broker": f"mqtt://127.0.0.1:{broker.port}",
                "profile": "simulated", "model": str(model_path), "key": str(key_path),
                "policy": {"canary": 150, "timeout_s": 60}, "discover_s": 1.0}
        proc = _worker(spec, tmp_path, "limited", max_fds=64)
        out = json.loads(_wait_line(proc, "{", timeout=120))
        assert proc.wait(30) == 0 and out["decision"] == "done"
        with Registry(db) as reg:
            assert assert_agree(reg, sim, out["rollout_id"]) == {"active": 150}


def test_rollout_command_resume_and_postgres_record(broker, host_key, tmp_path, pg_url, capsys):
    from hostcli.main import main

    assert main(["rollout", "--resume", "--db", pg_url, "--broker", broker.url,
                 "--unsigned"]) == 2
    assert "no rollout in progress" in capsys.readouterr().err
    assert main(["rollout", "--db", pg_url, "--broker", broker.url, "--unsigned"]) == 2
    assert "--variant PROFILE=MODEL.tflite, or --resume" in capsys.readouterr().err
    ids = device_ids(6)
    model = tmp_path / "m.tflite"
    model.write_bytes(variant())
    key_path, _pub = write_key_pair(tmp_path / "keys")
    from core.signing import load_signing_key

    with start_sim(broker, ids, load_signing_key(key_path)):
        with Registry(pg_url) as reg:
            enrol(reg, ids)
        rc = main(["rollout", "--variant", f"simulated={model}", "--db", pg_url, "--broker",
                   broker.url, "--key", str(key_path), "--canary", "2", "--json",
                   "--discover-seconds", "0.5"])
        out = json.loads(capsys.readouterr().out)
        assert rc == 0 and out["decision"] == "done" and len(out["results"]) == 6
    assert main(["fleet", "--db", pg_url]) == 0
    text = capsys.readouterr().out
    assert text.count(result_sha(model.read_bytes())[:16]) == 6 and out["rollout_id"] in text


def _started(db: Path) -> str:
    """The id of the rollout in progress once it has deployments."""
    with Registry(db) as reg:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            running = reg.rollouts("running")
            if running and reg.outcomes(running[0]["rollout_id"]):
                return running[0]["rollout_id"]
            time.sleep(0.05)
    raise AssertionError("no rollout started")


def test_abort_from_another_process_cancels_the_wave_in_progress(broker, tmp_path, capsys):
    from hostcli.main import main

    ids = device_ids(12)
    key_path, _pub = write_key_pair(tmp_path / "keys")
    from core.signing import load_signing_key

    key = load_signing_key(key_path)
    db = tmp_path / "fleet.sqlite"
    with start_sim(broker, ids, key, step_s=0.2, slow=ids) as sim:  # 8 s per deployment
        with Registry(db) as reg:
            enrol(reg, ids)
        results: dict[str, object] = {}

        def roll() -> None:
            with Registry(db) as reg:
                results["r"] = run_rollout({"simulated": variant()}, Broker(port=broker.port),
                                           reg, key=key, discover_s=0.5,
                                           policy=WavePolicy(canary=6, timeout_s=60))

        t = threading.Thread(target=roll)
        t.start()
        rollout_id = _started(db)
        assert main(["rollout", "--abort", rollout_id, "--db", str(db), "--broker",
                     broker.url, "--key", str(key_path)]) == 0
        assert "aborted" in capsys.readouterr().out
        t.join(30)
        result = results["r"]
        assert result.decision is Decision.ABORT and result.reason == "aborted by the operator"
        assert {r.outcome for r in result.results} == {Outcome.CANCELLED}
        assert len(result.results) == 6 and len(result.skipped) == 6  # wave 2 never started
        with Registry(db) as reg:
            assert assert_agree(reg, sim, rollout_id) == {"cancelled": 6}
            assert reg.rollout(rollout_id)["state"] == "aborted"
        assert not any(d.active for d in sim.devices.values())


def test_abort_of_a_crashed_rollout_is_finished_by_the_abort_command(broker, tmp_path, capsys):
    from hostcli.main import main

    ids = device_ids(8)
    model_path = tmp_path / "model.tflite"
    model_path.write_bytes(variant())
    key_path, _pub = write_key_pair(tmp_path / "keys")
    from core.signing import load_signing_key

    db = tmp_path / "fleet.sqlite"
    with start_sim(broker, ids, load_signing_key(key_path), step_s=0.2, slow=ids) as sim:
        with Registry(db) as reg:
            enrol(reg, ids)
        spec = {"db": str(db), "broker": f"mqtt://127.0.0.1:{broker.port}",
                "profile": "simulated", "model": str(model_path), "key": str(key_path),
                "policy": {"canary": 8, "timeout_s": 60}, "discover_s": 0.5}
        proc = _worker(spec, tmp_path, "crashing")
        rollout_id = _started(db)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert main(["rollout", "--abort", rollout_id, "--db", str(db), "--broker",
                     broker.url, "--key", str(key_path), "--discover-seconds", "0.5"]) == 0
        assert "ABORT" in capsys.readouterr().out
        with Registry(db) as reg:
            assert reg.rollout(rollout_id)["state"] == "aborted"
            assert assert_agree(reg, sim, rollout_id) == {"cancelled": 8}
            assert all(r["lock_rollout"] is None for r in reg.device_rows())


def _retained_chunks(broker, sha: str) -> int:
    """Retained chunks of ``sha`` on the broker (all delivered before a later marker)."""
    from core.mqtt import MqttClient

    got: list[str] = []
    done = threading.Event()
    c = MqttClient(Broker(port=broker.port), f"count-{time.time_ns()}", clean_session=True)
    c.subscribe(f"paoding/v2/artifacts/{sha}/#", lambda t, p: got.append(t) if p else None)
    c.subscribe("marker/retained-count", lambda _t, _p: done.set())
    c.connect()
    try:
        c.publish("marker/retained-count", b"m", qos=1).wait(10)
        assert done.wait(10)
    finally:
        c.close()
    return len(got)


def test_a_need_for_an_artifact_of_a_finished_rollout_is_not_served(broker, host_key,
                                                                      tmp_path):
    """A valid, signed 'need' for an earlier rollout's artifact once got it republished,
    retained, and left on the broker."""
    from core.mqtt import MqttClient
    from core.protocol import ChunkRequest, Topics

    ids = device_ids(6)
    old, new = variant(seed=1), variant(seed=2)
    with start_sim(broker, ids, host_key) as sim, Registry(tmp_path / "f.sqlite") as reg:
        enrol(reg, ids)
        first = run_rollout({"simulated": old}, Broker(port=broker.port), reg, key=host_key,
                            discover_s=0.5, policy=WavePolicy(canary=6, timeout_s=30))
        assert first.decision is Decision.DONE
        dep = reg.deployments(ids[0])[0]
        sha = result_sha(old)
        assert _retained_chunks(broker, sha) == 0  # cleared, and awaited before closing
        asker = MqttClient(Broker(port=broker.port), f"ask-{time.time_ns()}",
                           clean_session=True)
        asker.connect()
        need = simulated_key(ids[0]).sign_device(ChunkRequest(
            device_id=ids[0], deployment_id=dep["deployment_id"], artifact=sha,
            ranges=[(0, 3)], have=0))

        def progress(event: str, info: dict) -> None:
            if event == "wave":  # the second rollout is listening
                asker.publish(Topics(ids[0]).need, need.to_json(), qos=1).wait(10)

        try:
            second = run_rollout({"simulated": new}, Broker(port=broker.port), reg,
                                 key=host_key, discover_s=0.5, progress=progress,
                                 policy=WavePolicy(canary=6, timeout_s=30))
        finally:
            asker.close()
        assert second.decision is Decision.DONE
        # dropped: the need (sent before the devices' answers, so heard by then) and each
        # device's retained final report of the finished rollout, stale now
        assert second.stats["messages_dropped"] == len(ids) + 1
        assert second.stats["published_bytes"] == len(new)  # nothing of the old one
        assert _retained_chunks(broker, sha) == 0
        assert assert_agree(reg, sim, second.rollout_id) == {"active": 6}


def test_an_abort_mid_wave_reaches_no_later_wave_and_the_next_rollout_agrees(broker, host_key,
                                                                             tmp_path):
    """The abort lands after wave 1's first final report while one of its devices is slow:
    the devices of wave 2 get nothing, and the record agrees with every device after this
    rollout and the next one."""
    ids = device_ids(8)  # canary 2, growth 2: waves of 2, 4 and 2
    stop = threading.Event()
    policy = WavePolicy(canary=2, growth=2, timeout_s=60)

    def progress(event: str, info: dict) -> None:
        if event == "device" and info["device_id"] in ids[2:6]:
            stop.set()  # wave 1's first final report

    with start_sim(broker, ids, host_key, step_s=0.1, slow=[ids[5]]) as sim, \
            Registry(tmp_path / "f.sqlite") as reg:
        enrol(reg, ids)
        first = run_rollout({"simulated": variant(seed=1)}, Broker(port=broker.port), reg,
                            key=host_key, discover_s=0.5, policy=policy, abort=stop,
                            progress=progress)
        assert first.decision is Decision.ABORT, first.reason
        assert set(first.skipped) == set(ids[6:])  # wave 2: not reached
        assert not any(sim.devices[d].accepted for d in ids[6:])
        counts = assert_agree(reg, sim, first.rollout_id)
        assert counts.get("active", 0) >= 3 and sum(counts.values()) == 6, counts
        second = run_rollout({"simulated": variant(seed=2)}, Broker(port=broker.port), reg,
                             key=host_key, discover_s=0.5, policy=policy)
        assert second.decision is Decision.DONE, second.reason
        assert assert_agree(reg, sim, second.rollout_id) == {"active": 8}
        runs = {d: dev.active.sha256 for d, dev in sim.devices.items()}
        assert {r["device_id"]: r["active_sha"] for r in reg.device_rows()} == runs
