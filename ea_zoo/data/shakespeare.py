"""Tiny Shakespeare, character level: the corpus of nanoGPT's ``shakespeare_char`` example.

The file is ``<data root>/tinyshakespeare/input.txt`` (1,115,394 bytes of ASCII, 65 distinct
characters; the data root is the ``root`` argument, else ``$EA_ZOO_DATA``, else the default of
:func:`ea_zoo.data.paths.data_root`, i.e. ``../shared/data`` here). Its SHA-256 is checked on
every load (:data:`SHA256`, as recorded in ``shared/data/PROVENANCE.md``). A missing file is a
:class:`~ea_zoo.data.paths.DataNotFoundError` naming the expected path; with ``download=True``
it is fetched from nanoGPT's address (:data:`URL`, karpathy/char-rnn) and checked against the
same sum before it is kept.

Split as nanoGPT's ``prepare.py``: the first 90% of the characters train, the last 10%
validate. The vocabulary is the sorted set of characters of the whole text (65 for the real
file), ids 0..64 in that order.

    >>> sp = load_shakespeare()
    >>> sp.vocab_size, len(sp.train), len(sp.val)      # 65, 1003854, 111540
    >>> sp.decode(sp.train[:13])                       # 'First Citizen'
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ea_zoo.data.download import ChecksumError, download_url, sha256sum
from ea_zoo.data.paths import DataNotFoundError, data_root

__all__ = ["URL", "SHA256", "NUM_CHARS", "RELPATH", "CharCorpus", "shakespeare_path", "load_shakespeare"]

#: nanoGPT's ``data/shakespeare_char/prepare.py`` downloads this file
URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
#: SHA-256 of input.txt (shared/data/PROVENANCE.md, section 4)
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
#: bytes and distinct characters of the real file
NUM_BYTES = 1115394
NUM_CHARS = 65
#: path under the data root
RELPATH = Path("tinyshakespeare") / "input.txt"


@dataclass
class CharCorpus:
    """A character corpus: ``train`` / ``val`` id tensors (int64), the vocabulary ``chars``."""

    train: torch.Tensor
    val: torch.Tensor
    chars: List[str]
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        stoi = {c: i for i, c in enumerate(self.chars)}
        try:
            return torch.tensor([stoi[c] for c in text], dtype=torch.long)
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the corpus vocabulary") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in (ids.tolist() if torch.is_tensor(ids) else ids))


def shakespeare_path(root=None) -> Path:
    """``<data root>/tinyshakespeare/input.txt`` (see :func:`ea_zoo.data.paths.data_root`)."""
    return data_root(root) / RELPATH


def load_shakespeare(root=None, download: bool = False, verify: bool = True, val_fraction: float = 0.1,
                     path: Optional[os.PathLike] = None) -> CharCorpus:
    """Load Tiny Shakespeare (module docstring).

    Args:
        root: data root (None: ``$EA_ZOO_DATA``, else the default root).
        download: fetch the file from :data:`URL` when it is missing (checked against
            :data:`SHA256`; nothing is kept if the sum differs).
        verify: check the file's SHA-256 against :data:`SHA256` (raise
            :class:`~ea_zoo.data.download.ChecksumError` on a mismatch). ``False`` accepts any
            text file (tests, other corpora).
        val_fraction: the last fraction of the characters that validates (nanoGPT: 0.1).
        path: read this file instead of ``<root>/tinyshakespeare/input.txt``.
    """
    if not (0.0 < float(val_fraction) < 1.0):
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if path is not None:
        file, base = Path(path), None
    else:
        base = data_root(root)
        file = base / RELPATH
    if not file.is_file():
        if download and path is None:
            download_url(URL, file, sha256=SHA256 if verify else None)
        else:
            raise DataNotFoundError(
                "tinyshakespeare", [file], base,
                hint=f"Pass download=True (ea-zoo charlm --download) to fetch it from {URL} "
                     f"(checked against SHA-256 {SHA256}).")
    if verify:
        got = sha256sum(file)
        if got != SHA256:
            raise ChecksumError(f"{file}: SHA-256 mismatch: expected {SHA256} (Tiny Shakespeare, "
                                f"shared/data/PROVENANCE.md), got {got}; the file is not the nanoGPT corpus "
                                "(replace it, or pass verify=False to use it anyway)")
    text = file.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n_train = int(len(ids) * (1.0 - float(val_fraction)))
    if n_train < 2 or len(ids) - n_train < 2:
        raise ValueError(f"{file}: {len(ids)} characters are too few to split train/val at {val_fraction}")
    info = {"file": str(file), "chars": len(ids), "n_train": n_train, "n_val": len(ids) - n_train,
            "val_fraction": float(val_fraction), "verified": bool(verify), "sha256": SHA256 if verify else None}
    return CharCorpus(ids[:n_train].clone(), ids[n_train:].clone(), chars, info)
