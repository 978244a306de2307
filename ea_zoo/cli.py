"""ea-zoo command line: each subcommand is a thin call into the module that owns it.

A subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``.

User errors (a bad config name, key, value, backend, dataset or file: ``ValueError``,
``FileNotFoundError``, omegaconf errors, :class:`ea_zoo.data.errors.DataError`) end the
command with one line on stderr, ``ea-zoo <command>: error: <message>``, and exit status 2
(3 when a dataset's files are missing); ``--debug`` (anywhere on the command line, or
``EA_ZOO_DEBUG=1``) shows the full traceback instead. Anything else is a bug and keeps its
traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

#: subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "demo": ("ea_zoo.demo", "the main job on built-in defaults (no data needed)"),
    "complexity": ("ea_zoo.analysis.complexity", "Table 1 measured: FLOPs, memory, state, time vs L, D, t"),
    "train-cost": ("ea_zoo.analysis.train_cost", "Figure 4: training memory, BS-L curve, throughput"),
    "infer-cost": ("ea_zoo.analysis.infer_cost", "Figure 5: decoding memory and latency"),
    "train": ("ea_zoo.train.run", "train one experiment config (Lightning)"),
    "ablate": ("ea_zoo.train.ablate", "Tables 3-4 grids over backends and seeds"),
    "mqar": ("ea_zoo.bench.mqar", "associative recall (MQAR) accuracy vs decode-state size, every backend"),
    "bench-vit": ("ea_zoo.bench.vit_fmnist", "small ViT on Fashion-MNIST, every backend, over seeds"),
    "charlm": ("ea_zoo.bench.charlm", "character-level LM on Tiny Shakespeare: val loss, tokens/s, decode ms/token"),
    "which-backend": ("ea_zoo.bench.summary", "the 'Which backend?' table from the benchmark result files"),
}


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``ea-zoo`` parser; only ``command``'s module is imported (to add its arguments)."""
    parser = argparse.ArgumentParser(prog="ea-zoo", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also accepted after the command)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


#: exit status of a user error, and of missing data files
EXIT_USAGE, EXIT_DATA = 2, 3


def _user_error(exc: BaseException) -> bool:
    if isinstance(exc, (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return True
    try:
        from omegaconf.errors import OmegaConfBaseException
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, OmegaConfBaseException)


def error_line(exc: BaseException) -> str:
    """An exception's message on one line (newlines and runs of spaces collapsed)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, KeyError) and text.startswith("'") and text.endswith("'"):
        text = text[1:-1]
    return text or type(exc).__name__


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("EA_ZOO_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in SUBCOMMANDS else None).parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"ea-zoo {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - user errors become one line, bugs keep their traceback
        if debug or not _user_error(exc):
            raise
        print(f"ea-zoo {args.command}: error: {error_line(exc)}", file=sys.stderr)
        data_missing = type(exc).__name__ == "DataNotFoundError"
        return EXIT_DATA if data_missing else EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
