"""Opt-in downloads of the public datasets, with SHA-256 checks.

Nothing is downloaded unless a loader is called with ``download=True`` (or
:func:`ensure_dataset` directly). Each dataset has a :class:`Source`: the canonical public
address and, per file, the SHA-256 recorded in ``shared/data/PROVENANCE.md`` where it is
known. A file whose checksum does not match is deleted and :class:`ChecksumError` is raised;
a file with no recorded checksum is accepted with a warning naming its computed SHA-256.

Sources (the dataset's canonical public address):

* UEA archive: ``https://timeseriesclassification.com/aeon-toolkit/<Name>.zip`` (a zip with
  ``<Name>_TRAIN.ts`` / ``<Name>_TEST.ts``; the sums checked are those of the ``.ts`` members).
* ETT: the zhouhaoyi/ETDataset GitHub raw files.
* Traffic: the Time-Series-Library's copy on the Hugging Face hub
  (``thuml/Time-Series-Library``, ``traffic/traffic.csv``); no recorded checksum.
* Fashion-MNIST / CIFAR-10: torchvision's own download (its md5 checks).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

from ea_zoo.data.paths import DataNotFoundError, data_root, missing_files

__all__ = [
    "ChecksumError",
    "Source",
    "SOURCES",
    "sha256sum",
    "download_url",
    "ensure_dataset",
    "source_for",
]

_CHUNK = 1 << 20


class ChecksumError(RuntimeError):
    """A downloaded file's SHA-256 differs from the recorded one."""


def sha256sum(path: os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_sha256(path: os.PathLike, expected: Optional[str]) -> str:
    """Check ``path`` against ``expected``; return the computed sum. ``expected=None``: warn only."""
    got = sha256sum(path)
    if expected is None:
        warnings.warn(f"{path}: no recorded SHA-256 to check against (computed {got})", stacklevel=2)
    elif got.lower() != expected.lower():
        raise ChecksumError(f"{path}: SHA-256 mismatch: expected {expected}, got {got}")
    return got


def download_url(url: str, dest: os.PathLike, sha256: Optional[str] = None, timeout: float = 60.0,
                 progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` atomically (temp file then rename) and check its SHA-256.

    On a checksum mismatch the partial file is removed and :class:`ChecksumError` raised, so a
    failed download never leaves a file that later passes for the dataset.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "ea-zoo"})
        with urllib.request.urlopen(req, timeout=timeout) as resp, os.fdopen(fd, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            bar = None
            if progress and total > _CHUNK:
                try:
                    from tqdm import tqdm

                    bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name)
                except ImportError:  # pragma: no cover
                    bar = None
            while True:
                chunk = resp.read(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
        verify_sha256(tmp, sha256)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


@dataclass(frozen=True)
class Source:
    """Where a dataset's files come from.

    Attributes:
        url: address of one file, or of a zip archive when ``archive`` is True.
        files: relative path under the data root -> SHA-256 (None when unknown).
        archive: ``url`` is a zip; ``members`` maps each relative path to its member name
            (matched by basename when absent).
    """

    url: str
    files: Dict[str, Optional[str]]
    archive: bool = False
    members: Dict[str, str] = field(default_factory=dict)


_ETT_SHA = {
    "ETTh1": "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",
    "ETTh2": "a3dc2c597b9218c7ce1cd55eb77b283fd459a1d09d753063f944967dd6b9218b",
    "ETTm1": "6ce1759b1a18e3328421d5d75fadcb316c449fcd7cec32820c8dafda71986c9e",
    "ETTm2": "db973ca252c6410a30d0469b13d696cf919648d0f3fd588c60f03fdbdbadd1fd",
}
_UEA_SHA: Dict[str, Tuple[str, str]] = {
    "JapaneseVowels": (
        "68a430eabd919cc77f40b1f5f3bc0dcafacc1486bca9260785aeb7d262cc78cd",
        "b3d41d6a0ca3bcad3afb9ca7d4365382aa51341e2e58bae2a574babdda5b9462",
    ),
    "UWaveGestureLibrary": (
        "e1d656037ceb880fe3d4ef7f83f2ee38459897ebaaada93527a17a86823bc92d",
        "734b30171297cc4c209485020466d83dabd2b7ecf76edc10957354f2557d0964",
    ),
    "SelfRegulationSCP1": (
        "9678dd74c841163fd50d76c698f5529c13651450d1e7abc13d0bec0ff2451e6d",
        "d55d6ad5ec66daf11740fce3b6f050a391158835346cd2ddae5e822a5246adb9",
    ),
}
UEA_URL = "https://timeseriesclassification.com/aeon-toolkit/{name}.zip"
ETT_URL = "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/{name}.csv"
TRAFFIC_URL = "https://huggingface.co/datasets/thuml/Time-Series-Library/resolve/main/traffic/traffic.csv"


def uea_source(name: str) -> Source:
    tr, te = _UEA_SHA.get(name, (None, None))
    return Source(
        url=UEA_URL.format(name=name),
        files={f"UEA/{name}/{name}_TRAIN.ts": tr, f"UEA/{name}/{name}_TEST.ts": te},
        archive=True,
    )


SOURCES: Dict[str, Source] = {
    **{n: Source(ETT_URL.format(name=n), {f"ETT-small/{n}.csv": s}) for n, s in _ETT_SHA.items()},
    "traffic": Source(TRAFFIC_URL, {"traffic/traffic.csv": None}),
}


def source_for(name: str) -> Source:
    """The :class:`Source` of ``name``: an ETT name, ``traffic``, or any UEA archive name."""
    key = "traffic" if name.lower() == "traffic" else name
    if key in SOURCES:
        return SOURCES[key]
    return uea_source(name)


def ensure_dataset(name: str, root=None, download: bool = False, source: Optional[Source] = None,
                   timeout: float = 60.0) -> Dict[str, Path]:
    """Make sure the files of ``name`` are under the data root; return rel-path -> absolute path.

    Missing files raise :class:`DataNotFoundError` (naming the expected paths) unless
    ``download=True``, in which case they are fetched from ``source`` (default: the dataset's
    canonical :class:`Source`) and checked against the recorded SHA-256.
    """
    src = source or source_for(name)
    base = data_root(root)
    paths = {rel: base / rel for rel in src.files}
    missing = missing_files(paths.values())
    if not missing:
        return paths
    if not download:
        raise DataNotFoundError(
            name, missing, base,
            hint=f"Pass download=True (config: data.download=true) to fetch them from {src.url}.",
        )
    if src.archive:
        _fetch_archive(src, base, timeout)
    else:
        for rel, sha in src.files.items():
            if not paths[rel].is_file():
                download_url(src.url, paths[rel], sha, timeout=timeout)
    still = missing_files(paths.values())
    if still:
        raise DataNotFoundError(name, still, base, hint=f"The download from {src.url} did not provide them.")
    return paths


def _fetch_archive(src: Source, base: Path, timeout: float) -> None:
    with tempfile.TemporaryDirectory() as tmpd:
        zpath = Path(tmpd) / "archive.zip"
        _download_unchecked(src.url, zpath, timeout)
        with zipfile.ZipFile(zpath) as zf:
            names = zf.namelist()
            for rel, sha in src.files.items():
                member = src.members.get(rel)
                if member is None:
                    want = Path(rel).name
                    cands = [n for n in names if Path(n).name == want]
                    if not cands:
                        raise DataNotFoundError(src.url, [base / rel], base,
                                                hint=f"archive members: {', '.join(names[:20])}")
                    member = cands[0]
                dest = base / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_suffix(dest.suffix + ".part")
                with zf.open(member) as fin, open(tmp, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
                try:
                    verify_sha256(tmp, sha)
                except ChecksumError:
                    tmp.unlink()
                    raise
                os.replace(tmp, dest)


def _download_unchecked(url: str, dest: Path, timeout: float) -> None:
    """Fetch an archive whose own sum is not recorded; its members are checked instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        download_url(url, dest, None, timeout=timeout)
