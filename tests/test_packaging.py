"""The install is what it says: light imports, every command registered."""

from __future__ import annotations

import subprocess
import sys

from hostcli.main import COMMANDS, build_parser


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return set(out.split())


def test_every_command_is_registered():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)


def test_cli_help_and_pruner_import_do_not_import_tensorflow():
    mods = _modules_after("import pruner, hostcli.main; hostcli.main.build_parser()")
    assert "tensorflow" not in mods
    assert "keras" not in mods


def test_lazy_public_verbs_resolve():
    mods = _modules_after("import pruner; pruner.InputBox; pruner.evaluate.accuracy")
    assert "pruner.bounds" in mods and "pruner.evaluate" in mods
