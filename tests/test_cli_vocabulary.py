"""One CLI vocabulary: every renamed option is documented under its one name, old spellings still work."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from avit.cli._app import RENAMED_OPTIONS, rename_options
from avit.cli.main import app


def _help(command: str) -> str:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def _names(text: str) -> set[str]:
    """Option tokens (``--x-y``, ``-o``) in a help text."""
    return set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", text))


@pytest.mark.parametrize("command", sorted(RENAMED_OPTIONS))
def test_help_documents_the_new_names_only(command):
    names = _names(_help(command))
    for old, new in RENAMED_OPTIONS[command].items():
        assert new in names, (command, new)
        assert old not in names, (command, old)


def test_rename_options_rewrites_every_spelling_of_an_old_option():
    renamed = {"--iters": "--rounds", "-o": "--output-dir"}
    args, used = rename_options(["m.onnx", "--iters", "3", "--iters=4", "-o", "d", "-od2", "--iterations", "--", "--iters"],
                                renamed)
    assert args == ["m.onnx", "--rounds", "3", "--rounds=4", "--output-dir", "d", "--output-dir=d2", "--iterations",
                    "--", "--iters"]
    assert used == ["--iters", "--iters", "-o", "-o"]


def test_old_spelling_reaches_the_new_option():
    """``avit profile --iters 0`` is parsed as ``--rounds 0``: the range check names the new option."""
    result = CliRunner().invoke(app, ["profile", "missing.onnx", "--iters", "0"])
    assert result.exit_code == 2 and "'--rounds'" in result.output


def test_unknown_old_spelling_on_another_command_stays_an_error():
    """Aliases are per command: ``--iters`` means nothing to ``avit run``."""
    result = CliRunner().invoke(app, ["run", "m.onnx", "x.png", "--iters", "3"])
    assert result.exit_code == 2 and "No such option" in result.output
