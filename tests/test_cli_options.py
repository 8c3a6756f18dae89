"""The host commands' shared options: the broker profile, list syntax, plain progress."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hostcli.main import build_parser, main
from hostcli.options import apply_profile, flat


def parse(*argv: str):
    args = build_parser().parse_args(list(argv))
    apply_profile(args)
    return args


@pytest.fixture
def profile(tmp_path, monkeypatch):
    p = tmp_path / "host.json"
    p.write_text(json.dumps({"broker": "mqtts://127.0.0.1:8884", "username": "paoding-host",
                             "password_file": "/x/pw", "ca_file": "/x/ca.crt",
                             "db": str(tmp_path / "fleet.sqlite"), "broker_dir": "/x"}))
    monkeypatch.setenv("PAODING_BROKER_PROFILE", str(p))
    monkeypatch.delenv("PAODING_DB", raising=False)
    monkeypatch.delenv("PAODING_BROKER", raising=False)
    return p


@pytest.mark.parametrize("command", [
    ["deploy", "m.tflite", "--device", "pi"], ["rollout"], ["tune", "m.keras", "--profile", "p",
                                                            "-o", "o", "--verify-on", "pi"]])
def test_every_broker_command_reads_the_profile(profile, tmp_path, command):
    args = parse(*command)
    assert (args.broker, args.username, args.password_file, args.ca_file) == (
        "mqtts://127.0.0.1:8884", "paoding-host", "/x/pw", "/x/ca.crt")
    assert args.db == str(tmp_path / "fleet.sqlite")


def test_flags_win_and_another_broker_takes_no_credentials(profile):
    args = parse("deploy", "m.tflite", "--device", "pi", "--username", "me")
    assert args.username == "me" and args.ca_file == "/x/ca.crt"
    args = parse("deploy", "m.tflite", "--device", "pi", "--broker", "mqtt://10.0.0.2:1883")
    assert args.username is None and args.ca_file is None


def test_fleet_and_enrol_read_the_record_from_the_profile(profile, tmp_path):
    assert parse("fleet").db == str(tmp_path / "fleet.sqlite")
    assert parse("enrol", "pi").profile_data["broker_dir"] == "/x"


def test_no_profile_no_env_the_record_is_in_the_data_dir(monkeypatch, tmp_path):
    for k in ("PAODING_BROKER_PROFILE", "PAODING_DB", "PAODING_BROKER"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    args = parse("fleet")
    assert args.db == str(tmp_path / "data" / "paoding-edge" / "fleet.sqlite")
    assert parse("deploy", "m", "--device", "d").broker == "mqtt://127.0.0.1:1883"


def test_a_missing_profile_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PAODING_BROKER_PROFILE", str(tmp_path / "nope.json"))
    assert main(["fleet"]) == 2
    err = capsys.readouterr().err
    assert "cannot read broker profile" in err and "broker-config" in err
    assert len(err.strip().splitlines()) == 1


def test_a_missing_record_names_enrol(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PAODING_DB", str(tmp_path / "none.sqlite"))
    monkeypatch.delenv("PAODING_BROKER_PROFILE", raising=False)
    assert main(["fleet"]) == 2
    assert "`paoding-edge enrol` creates it" in capsys.readouterr().err


def test_one_list_syntax_for_every_list_option():
    a = build_parser().parse_args(["prune", "m", "-o", "o", "--eps", "0.01", "0.05"])
    b = build_parser().parse_args(["prune", "m", "-o", "o", "--eps", "0.01,0.05"])
    assert flat(a.eps) == flat(b.eps) == [0.01, 0.05]
    t = build_parser().parse_args(["tune", "m", "--profile", "p", "-o", "o", "--eps", "0.01",
                                   "0.05", "--input-range", "-1", "1", "--modes", "paoding,greedy",
                                   "--export", "float32", "int8", "--seeds", "0", "1"])
    assert flat(t.eps) == [0.01, 0.05] and t.input_range == [-1.0, 1.0]
    assert flat(t.modes) == ["paoding", "greedy"] and flat(t.export) == ["float32", "int8"]
    assert flat(t.seeds) == [0, 1]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["tune", "m", "--profile", "p", "-o", "o", "--input-box",
                                   "0", "1"])


def test_the_demo_keeps_its_own_broker(profile):
    """demo starts a broker unless given --broker: the profile must not give it one."""
    assert parse("demo").broker is None


def test_plan_text():
    from hostcli.rollout import plan_text

    assert plan_text([["a"], ["b"]]) == "2 devices in 2 waves (1, 1)"
    assert plan_text([["a"]]) == "1 device in 1 wave (1)"
    assert plan_text([]) == "no device to deploy to"


def test_plain_progress_lines_off_a_terminal(capsys):
    from pruner.progress import progress_bar

    bar = progress_bar(total=8, desc="prune paoding", unit="step")  # stderr is captured
    for _ in range(8):
        bar.update(1)
        bar.set_postfix(ratio="0.10")
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines() == ["prune paoding: 1/8 step"] + [
        f"prune paoding: {n}/8 step (ratio=0.10)" for n in (2, 4, 6, 8)]


def test_closed_pipe_is_no_traceback(tmp_path):
    """`paoding-edge fleet --json | head -1`: the reader goes away, no BrokenPipeError."""
    from fleet.registry import Registry
    from fleet.rollout import Device

    db = tmp_path / "fleet.sqlite"
    with Registry(db) as reg:
        reg.upsert_devices([(Device(f"pi-{i:04d}", "raspberry-pi-4", frozenset()), None, None, None)
                            for i in range(3000)])
    cmd = (f"{sys.executable} -m hostcli.main fleet --json --db {db} | head -1; "
           "exit ${PIPESTATUS[0]}")
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "{"
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr
