"""``ea-zoo`` command line: each subcommand is a thin call into a module that owns it.

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ea-zoo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as err:  # a subcommand whose module is not installed
            if err.name != module:
                raise
            p.set_defaults(_missing=str(err))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "_missing", None):
        print(f"ea-zoo {args.command}: not available ({args._missing})", file=sys.stderr)
        return 2
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
