"""The YAML configs that ship inside the package (omegaconf), found one way.

Layout: ``attention/<backend>.yaml`` (one backend config each), ``model/<family>.yaml``,
``data/<dataset>.yaml`` and ``experiment/<name>.yaml``. :func:`config_dir` is the one place
that says where they are: ``$EA_ZOO_CONFIG_DIR`` when set (a folder with the same layout),
else this package folder, so an installed wheel finds them as a checkout does.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

__all__ = ["config_dir", "config_names", "config_path"]

#: the config kinds (sub-folders)
KINDS = ("attention", "model", "data", "experiment")


def config_dir() -> Path:
    """The configs folder: ``$EA_ZOO_CONFIG_DIR`` or the one inside the installed package."""
    env = os.environ.get("EA_ZOO_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parent


def config_names(kind: str) -> List[str]:
    """Names of the ``kind`` configs (sorted file stems of ``config_dir()/kind/*.yaml``)."""
    _check_kind(kind)
    d = config_dir() / kind
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def config_path(kind: str, name: str) -> Path:
    """``config_dir()/kind/name.yaml`` (which may not exist)."""
    _check_kind(kind)
    return config_dir() / kind / f"{name}.yaml"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown config kind {kind!r}; valid kinds: {', '.join(KINDS)}")
