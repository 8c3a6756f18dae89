"""`paoding-edge console` and `keys console-token`: the token file, and one-line errors."""

from __future__ import annotations

import stat

from hostcli.main import main


def test_console_token_is_private_and_not_overwritten(tmp_path, capsys):
    assert main(["keys", "console-token", str(tmp_path / "k")]) == 0
    token = tmp_path / "k" / "console.token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert len(token.read_text().strip()) >= 40
    first = token.read_text()
    assert main(["keys", "console-token", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"paoding-edge keys: error: {token} already exists (use --force to "
                   "overwrite)"]
    assert token.read_text() == first


def test_console_bad_inputs_are_one_line_each(tmp_path, capsys):
    missing = tmp_path / "none.sqlite"
    assert main(["console", "--db", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"paoding-edge console: error: no fleet record at {missing}: give --db FILE_OR_URL")
    db = tmp_path / "fleet.sqlite"
    from fleet.registry import Registry

    Registry(db).close()
    short = tmp_path / "short.token"
    short.write_text("abc\n")
    assert main(["console", "--db", str(db), "--token", str(short)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"paoding-edge console: error: console token {short} is too short (make one with "
        "`paoding-edge keys console-token DIR`)")
    assert main(["console", "--db", str(db), "--token", str(tmp_path / "no.token")]) == 2
    assert "cannot read console token" in capsys.readouterr().err
    assert main(["console", "--db", str(db), "--port", "70000"]) == 2
    assert capsys.readouterr().err.strip() == (
        "paoding-edge console: error: --port must be 1..65535, got 70000")
    assert not missing.exists()


def test_lineage_is_recorded_only_into_a_fleet_record(tmp_path):
    from fleet.registry import Registry
    from hostcli import lineage

    db = tmp_path / "fleet.sqlite"
    assert not lineage.wanted(str(db)) and not lineage.wanted(None)
    Registry(db).close()
    assert lineage.wanted(str(db))
    assert lineage.record(str(db), [("prune", "a" * 64, "b" * 64, {"mode": "paoding"})]) == str(db)
    with Registry(db) as reg:
        (step,) = reg.lineage("b" * 64)
    assert step["kind"] == "prune" and step["source_sha256"] == "a" * 64
    assert step["body"] == {"mode": "paoding"}
