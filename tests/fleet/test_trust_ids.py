"""Enrolment ids: one pattern, checked whole; every other id is a one-line error, nothing written."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from core.protocol import ID_PATTERN, check_id
from fleet.brokerconf import PasswordFile, write_broker_config
from fleet.enrol import enrol_device, revoke_device
from fleet.registry import Registry
from hostcli.main import main

PROFILE = "raspberry-pi-4"
HOSTILE = ["pi-1\n", "pi-1\nevil:$7$1$x$y", "../x", "a/b", "+", "#", "", "a" * 300, "pï-1",
           "-lead", ".hidden", "a b", "a:b", "pi\r", "\u0661"]


@pytest.mark.parametrize("bad", HOSTILE, ids=[repr(b)[:20] for b in HOSTILE])
def test_hostile_ids_are_one_line_errors_and_write_nothing(tmp_path, capsys, bad):
    bdir = tmp_path / "broker"
    write_broker_config(bdir)
    before = (bdir / "devices.passwd").read_bytes()
    db = tmp_path / "fleet.sqlite"
    code = main(["enrol", "--profile", PROFILE, "--db", str(db), "--broker-dir", str(bdir),
                 "--bundle", str(tmp_path / "bundles"), "--", bad])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "invalid device id" in lines[0], err
    assert (bdir / "devices.passwd").read_bytes() == before
    assert not (tmp_path / "bundles").exists() or not any((tmp_path / "bundles").iterdir())
    assert main(["enrol", "--revoke", "--db", str(db), "--broker-dir", str(bdir), "--", bad]) == 2
    assert "invalid device id" in capsys.readouterr().err


def test_the_pattern_is_checked_whole():
    assert check_id("pi-kitchen_01.a") == "pi-kitchen_01.a"
    assert check_id("a" * 64) and ID_PATTERN.startswith("[A-Za-z0-9]")
    for bad in ("pi-1\n", "a" * 65):
        with pytest.raises(ConfigError, match="invalid device id"):
            check_id(bad)


def test_enrol_after_a_refused_id_still_works_and_revoke_is_whole(tmp_path):
    bdir = tmp_path / "broker"
    write_broker_config(bdir)
    with Registry(tmp_path / "fleet.sqlite") as reg:
        with pytest.raises(ConfigError):
            enrol_device(reg, "pi-1\n", PROFILE, broker_dir=bdir, bundle_dir=tmp_path / "b")
        enrol_device(reg, "pi-1", PROFILE, broker_dir=bdir, bundle_dir=tmp_path / "b")
        enrol_device(reg, "pi-2", PROFILE, broker_dir=bdir, bundle_dir=tmp_path / "b")
        assert sorted(PasswordFile(bdir / "devices.passwd").entries()) == ["pi-1", "pi-2"]
        assert revoke_device(reg, "pi-1", bdir) == ["public key", "broker password", "broker ACL"]
        assert reg.public_key("pi-1") is None and reg.public_key("pi-2") is not None
        assert list(PasswordFile(bdir / "devices.passwd").entries()) == ["pi-2"]


def test_revoke_with_an_unreadable_password_file_changes_nothing(tmp_path):
    bdir = tmp_path / "broker"
    write_broker_config(bdir)
    with Registry(tmp_path / "fleet.sqlite") as reg:
        enrol_device(reg, "pi-1", PROFILE, broker_dir=bdir, bundle_dir=tmp_path / "b")
        passwd = bdir / "devices.passwd"
        passwd.write_text(passwd.read_text() + "broken line without a colon\n")
        with pytest.raises(ConfigError, match="not a 'user:hash' line"):
            revoke_device(reg, "pi-1", bdir)
        assert reg.public_key("pi-1") is not None  # not half done


def test_password_file_is_replaced_atomically_and_never_holds_a_bad_user(tmp_path):
    pw = PasswordFile(tmp_path / "devices.passwd")
    pw.set("pi-1", "one")
    with pytest.raises(ConfigError, match="invalid broker user name"):
        pw.set("pi-2\nx", "two")
    with pytest.raises(ConfigError, match="invalid broker user name"):
        pw._write({"pi-1": "h", "a/b": "h"})
    assert list(pw.entries()) == ["pi-1"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".devices")] == []
    assert (tmp_path / "devices.passwd").stat().st_mode & 0o077 == 0


def test_enrolling_on_an_older_pattern_acl_keeps_the_devices_enrolled_before(tmp_path):
    from fleet.brokerconf import AclFile, enrol_broker_user

    bdir = tmp_path / "broker"
    write_broker_config(bdir)
    enrol_broker_user(bdir, "pi-old")
    # an ACL as it was written before per-device blocks: patterns only
    (bdir / "acl").write_text("user paoding-host\ntopic readwrite paoding/v2/#\n\n"
                              "pattern write paoding/v2/devices/%u/status\n")
    enrol_broker_user(bdir, "pi-new")
    assert AclFile(bdir / "acl").devices() == {"pi-old", "pi-new"}
    assert "pattern" not in (bdir / "acl").read_text()
