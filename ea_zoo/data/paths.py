"""Where datasets live: the data root and the "files are missing" error.

The data root is, in order of precedence:

1. an explicit ``root`` argument (from a config's ``data.root``), when not None/empty;
2. the environment variable ``EA_ZOO_DATA``;
3. ``../shared/data`` next to the repository (``<repo>/../shared/data``, or relative to the
   current working directory), when that directory exists;
4. ``~/.cache/ea_zoo/data``.

Layout under the root (the layout of ``/work/shared/data``, see its PROVENANCE.md)::

    UEA/<Name>/<Name>_TRAIN.ts, UEA/<Name>/<Name>_TEST.ts
    ETT-small/ETTh1.csv ... ETTm2.csv
    traffic/traffic.csv
    fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    cifar10/cifar-10-batches-py/...
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

PathLike = Union[str, "os.PathLike[str]"]

ENV_VAR = "EA_ZOO_DATA"
CACHE_DIR = Path("~/.cache/ea_zoo").expanduser()
_REPO_ROOT = Path(__file__).resolve().parents[2]


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are not under the data root.

    The message names every expected path, the data root actually used and how it was
    chosen (given explicitly / ``$EA_ZOO_DATA`` / a default), and how to get the files
    (``download=True`` where the dataset has a public source). Its second line is always the
    first ``expected: <path>``.

    Args:
        dataset: the dataset name.
        missing: the expected paths that are not there.
        root: the data root used (resolved); None when the paths were given directly.
        hint: an extra last line.
        root_source: how ``root`` was chosen; default: inferred with :func:`describe_resolved_root`.
    """

    def __init__(self, dataset: str, missing: Sequence[Path], root: Optional[Path], hint: str = "",
                 root_source: Optional[str] = None) -> None:
        self.dataset = dataset
        self.missing = [Path(p) for p in missing]
        self.root = None if root is None else Path(root)
        if self.root is None:
            self.root_source = root_source or "path given explicitly"
            head = f"dataset {dataset!r}: file(s) not found ({self.root_source}):"
        else:
            self.root_source = root_source or describe_resolved_root(self.root)
            head = f"dataset {dataset!r}: file(s) not found under data root {self.root} ({self.root_source}):"
        lines = [head, *[f"  expected: {p}" for p in self.missing]]
        if self.root is not None:
            lines.append(f"Set the data root with the config key data.root or the env variable {ENV_VAR}.")
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


def default_roots() -> list:
    """Candidate default roots, most preferred first (without the env variable)."""
    return [_REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]


def describe_root_source(root: Optional[PathLike] = None) -> str:
    """How :func:`data_root` chooses the root for the argument ``root`` (None: the implicit chain)."""
    if root not in (None, ""):
        return "given explicitly"
    if os.environ.get(ENV_VAR):
        return f"from ${ENV_VAR}"
    for cand in default_roots():
        if cand.is_dir():
            return f"default {cand.resolve()}"
    return f"default {(CACHE_DIR / 'data').resolve()}"


def describe_resolved_root(resolved: PathLike) -> str:
    """How an already resolved root was (most likely) chosen: the implicit source that yields
    exactly this path (``$EA_ZOO_DATA``, else the first default), otherwise "given explicitly"."""
    resolved = Path(resolved).resolve()
    if resolved == data_root(None):
        return describe_root_source(None)
    return "given explicitly"


def data_root(root: Optional[PathLike] = None) -> Path:
    """Resolve the data root (see the module docstring for the precedence)."""
    if root not in (None, ""):
        return Path(os.path.expanduser(str(root))).resolve()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(os.path.expanduser(env)).resolve()
    for cand in default_roots():
        if cand.is_dir():
            return cand.resolve()
    return (CACHE_DIR / "data").resolve()


def cache_dir(sub: str = "") -> Path:
    """A writable cache directory outside the repository (``~/.cache/ea_zoo/<sub>``)."""
    d = CACHE_DIR / sub if sub else CACHE_DIR
    d.mkdir(parents=True, exist_ok=True)
    return d


def missing_files(paths: Iterable[Path]) -> list:
    return [Path(p) for p in paths if not Path(p).is_file()]
