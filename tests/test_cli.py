"""The ``ea-zoo`` entry point: every subcommand resolves to a module with the agreed API."""
import argparse
import importlib
import subprocess
import sys

import pytest

from ea_zoo.cli import SUBCOMMANDS, build_parser, main


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_subcommand_module_exposes_add_arguments_and_run(command):
    module = importlib.import_module(SUBCOMMANDS[command][0])
    assert callable(module.add_arguments) and callable(module.run)
    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    assert sub.get_default("_module") == SUBCOMMANDS[command][0]
    assert "usage: ea-zoo " + command in sub.format_help()


def test_help_lists_commands_without_importing_them():
    out = subprocess.run([sys.executable, "-c", (
        "import sys; from ea_zoo.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('LOADED', sorted(m for m in sys.modules if m.startswith('ea_zoo.analysis') or m.startswith('ea_zoo.train')))"
    )], capture_output=True, text=True, check=True).stdout
    for command in SUBCOMMANDS:
        assert command in out
    assert "LOADED []" in out


def test_unknown_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        main(["nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
