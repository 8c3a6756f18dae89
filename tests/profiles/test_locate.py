"""A profile id names a file in the profile directories, never a path elsewhere."""

from __future__ import annotations

import pytest

import device_profiles
from core.errors import ProfileError


@pytest.mark.parametrize("bad", ["../x", "../../etc/evil", "a/b", "/tmp/evil", "..", "",
                                 "pi\n", "a" * 300, "pï"])
def test_locate_refuses_what_is_not_an_id(tmp_path, monkeypatch, bad):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (tmp_path / "x.yaml").write_text("id: x\n")  # a .yaml beside the profile directory
    (tmp_path / "evil.yaml").write_text("id: evil\n")
    monkeypatch.setenv("PAODING_PROFILES", str(profiles))
    with pytest.raises(ProfileError, match="invalid profile id") as exc:
        device_profiles.locate(bad)
    assert "\n" not in str(exc.value)


def test_locate_finds_a_shipped_profile():
    assert device_profiles.locate("raspberry-pi-4").name == "raspberry-pi-4.yaml"
    assert device_profiles.locate("no-such-profile") is None


def test_enrol_with_a_path_as_profile_is_a_one_line_error(tmp_path, capsys):
    from hostcli.main import main

    code = main(["enrol", "pi-1", "--profile", "../../x", "--db", str(tmp_path / "f.sqlite"),
                 "--bundle", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and "invalid profile id" in err and "Traceback" not in err
