#!/usr/bin/env python3
"""Run the ``ea-zoo`` command line from a checkout (as timm's train.py): ``python tools/ea_zoo_cli.py demo``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ea_zoo.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
