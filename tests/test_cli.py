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


# --------------------------------------------------------------------------- user errors: one line, no traceback
def _fails_cleanly(capsys, argv, *parts, hints=()):
    """``main(argv)`` exits non-zero with one stderr line naming every part (and one of ``hints``)."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    out = capsys.readouterr()
    err = out.err
    lines = [l for l in err.splitlines() if l.strip()]
    assert rc not in (0, None), (argv, out.out[-500:], err)
    assert "Traceback" not in err + out.out, err
    assert len(lines) == 1 and lines[0].startswith("ea-zoo "), err
    for p in parts:
        assert p in err, (p, err)
    if hints:
        assert any(h in err.lower() for h in hints), (hints, err)
    return err, out.out


@pytest.mark.parametrize("argv, parts, hints", [
    (["train", "--config", "nosuch"], ["'nosuch'", "table3_jap"], ()),
    (["train", "--config", "table3_jap", "nonsense.key=1"], ["'nonsense.key'", "trainer"], ("allowed", "valid")),
    (["train", "--config", "table3_jap", "data.batch_szie=8"], ["'data.batch_szie'", "data.batch_size"], ()),
    (["train", "--config", "table3_jap", "trainer.max_epochz=1"], ["'trainer.max_epochz'", "trainer.max_epochs"], ()),
    (["train", "--config", "table3_jap", "optim.lrr=1"], ["'optim.lrr'", "optim.lr"], ()),
    (["ablate", "--datasets", "JAP", "--backends", "nosuch", "--dry-run"], ["'nosuch'", "ea6"], ()),
    (["ablate", "--suite", "table3", "--cells", "nosuch", "--dry-run"], ["'nosuch'", "JAP"], ()),
])
def test_user_errors_are_one_line_without_traceback(capsys, tmp_path, monkeypatch, argv, parts, hints):
    monkeypatch.chdir(tmp_path)
    _fails_cleanly(capsys, argv, *parts, hints=hints)


def test_bad_attention_fails_before_print_config(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err, out = _fails_cleanly(capsys, ["train", "--config", "table3_jap", "attention=nosuch", "--print-config"],
                              "'nosuch'", "ea6")
    assert out.strip() == ""  # nothing printed of the bad config


def test_missing_data_names_the_given_root(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err, _ = _fails_cleanly(capsys, ["train", "--config", "table3_jap", f"data.root={tmp_path}", "threads=1"],
                            str(tmp_path / "UEA" / "JapaneseVowels"))
    assert "given explicitly" in err and "default ../shared/data" not in err


def test_debug_shows_the_traceback(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="nosuch"):
        main(["--debug", "train", "--config", "table3_jap", "attention=nosuch"])
    with pytest.raises(FileNotFoundError):
        main(["train", "--config", "nosuch", "--debug"])


def test_train_and_ablate_document_threads(capsys):
    for command in ("train", "ablate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--threads" in text and "auto" in text and "oversubscribe" in text, command


# The cost tools (ea_zoo/analysis, another change) raise ValueError for these before any work;
# the CLI prints it as one line. Cheap settings keep these fast either way.
_CHEAP = ["--no-plot", "--quiet"]


_CX = ["--backends", "sa", "--dims", "16", "--orders", "2", "--length", "16", "--no-time", "--no-decode"]
_TC = ["--backends", "sa", "--depth", "1", "--dim", "16", "--heads", "2", "--no-curve"]
_IC = ["--backends", "sa", "--depth", "1", "--dim", "16", "--heads", "2", "--batch-sizes", "1"]


@pytest.mark.parametrize("argv, parts, hints", [
    (["complexity", *_CX, "--lengths", "abc"], ["abc"], ("integer", "int")),
    (["complexity", *_CX, "--lengths", "0,16"], ["0"], (">= 1", "positive", ">= ", "at least")),
    (["complexity", *_CX, "--lengths", "16", "--dim", "30", "--heads", "4"], ["30", "4"], ("divisible", "multiple")),
    (["complexity", *_CX, "--lengths", "16", "--device", "tpu"], ["tpu"], ("cpu",)),
    (["train-cost", *_TC, "--lengths", "abc"], ["abc"], ("integer", "int")),
    (["train-cost", *_TC, "--lengths", "16", "--device", "tpu"], ["tpu"], ("cpu",)),
    (["infer-cost", *_IC, "--lengths", "abc"], ["abc"], ("integer", "int")),
    (["infer-cost", *_IC, "--lengths", "16", "--device", "tpu"], ["tpu"], ("cpu",)),
])
def test_cost_tool_errors_are_one_line(capsys, tmp_path, argv, parts, hints):
    _fails_cleanly(capsys, [*argv, *_CHEAP, "--out", str(tmp_path / "out")], *parts, hints=hints)
