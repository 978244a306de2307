"""ea-zoo command line: each subcommand is a thin call into the module that owns it.

A subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
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
}


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``ea-zoo`` parser; only ``command``'s module is imported (to add its arguments)."""
    parser = argparse.ArgumentParser(prog="ea-zoo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in SUBCOMMANDS else None).parse_args(argv)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
