"""Runs keyed by their fully resolved config: one folder per config, resumable, never stale.

A *run* is one training (or benchmark) job described by a JSON-serialisable config: the
resolved experiment config with every override applied (backend, dataset, budget, seed, ...).
Its key is a hash of that config's canonical JSON, so a changed override is a new run and a
resume never reports a result trained under another config:

    >>> store = RunStore("runs/ablate")
    >>> cfg = {"attention": "ea6", "data": {"dataset": "JapaneseVowels"}, "seed": 0}
    >>> store.load(cfg) is None          # not run yet
    True
    >>> store.save(cfg, {"test_acc": 0.97})   # runs/ablate/<label>-<hash>/{config,result}.json
    >>> store.load(cfg)["test_acc"]
    0.97

``load`` checks the stored config equals the asked one (a hash collision or a hand-edited
folder is a miss, not a wrong answer). Writes are atomic (temp file + rename), so an
interrupted run leaves no half-written result.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Union

__all__ = ["canonical_json", "config_hash", "RunStore", "read_report"]

#: hex digits of the config hash in run folder names
HASH_LEN = 12


def _plain(obj: Any) -> Any:
    """omegaconf containers, tuples and paths -> JSON types (raises TypeError otherwise)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            obj = OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        raise TypeError(f"config value {obj!r} is not finite; a run config must be plain JSON")
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"config value {obj!r} of type {type(obj).__name__} is not JSON-serialisable")


def canonical_json(cfg: Any) -> str:
    """The config as canonical JSON: sorted keys, no whitespace (the hashed form)."""
    return json.dumps(_plain(cfg), sort_keys=True, separators=(",", ":"))


def config_hash(cfg: Any) -> str:
    """First :data:`HASH_LEN` hex digits of the SHA-256 of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(cfg).encode()).hexdigest()[:HASH_LEN]


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class RunStore:
    """Folder of runs, one sub-folder ``<label>-<hash>`` per resolved config.

    Args:
        root: the folder (created on the first save).

    Each run folder holds ``config.json`` (the resolved config) and, once the run finished,
    ``result.json``; other artefacts (checkpoints, logs, samples) may go beside them.
    """

    def __init__(self, root: Union[str, Path]) -> None:
        self.root = Path(root)

    def run_dir(self, cfg: Any, label: str = "") -> Path:
        """The folder of ``cfg``: ``root/<label>-<hash>`` (``root/<hash>`` without a label)."""
        slug = re.sub(r"[^0-9A-Za-z_.+@,=-]+", "_", label).strip("_")
        name = f"{slug}-{config_hash(cfg)}" if slug else config_hash(cfg)
        return self.root / name

    def _find(self, cfg: Any) -> Optional[Path]:
        h = config_hash(cfg)
        if not self.root.is_dir():
            return None
        for d in sorted(self.root.iterdir()):
            if d.is_dir() and (d.name == h or d.name.endswith("-" + h)):
                return d
        return None

    def load(self, cfg: Any) -> Optional[Dict[str, Any]]:
        """The stored result of ``cfg``, or None when it has not finished (or the stored
        config differs: the run is then redone, never reported)."""
        d = self._find(cfg)
        if d is None or not (d / "result.json").is_file() or not (d / "config.json").is_file():
            return None
        try:
            stored = json.loads((d / "config.json").read_text())
            result = json.loads((d / "result.json").read_text())
        except (OSError, ValueError):
            return None
        if canonical_json(stored) != canonical_json(cfg):
            return None
        return result

    def start(self, cfg: Any, label: str = "") -> Path:
        """Create the run folder with its ``config.json`` (before the run); returns the folder."""
        d = self._find(cfg) or self.run_dir(cfg, label)
        _atomic_write(d / "config.json", json.dumps(_plain(cfg), indent=2, sort_keys=True) + "\n")
        return d

    def save(self, cfg: Any, result: Mapping[str, Any], label: str = "") -> Path:
        """Write ``config.json`` and ``result.json`` (with the config hash) for ``cfg``."""
        d = self.start(cfg, label)
        out = {"config_hash": config_hash(cfg), **_plain(dict(result))}
        _atomic_write(d / "result.json", json.dumps(out, indent=2, sort_keys=True) + "\n")
        return d

    def restore(self, cfg: Any, result: Mapping[str, Any], source: str, label: str = "") -> bool:
        """Save ``result`` (a finished run read back from a committed report ``source``) for
        ``cfg`` unless the store already has it; the saved result carries ``restored_from``.
        Returns whether it was written."""
        if self.load(cfg) is not None:
            return False
        self.save(cfg, {**{k: v for k, v in result.items() if k != "config_hash"}, "restored_from": source}, label)
        return True

    def results(self) -> Iterator[Dict[str, Any]]:
        """Every finished run under ``root``: ``{"config": ..., "result": ..., "dir": ...}``."""
        if not self.root.is_dir():
            return
        for d in sorted(self.root.iterdir()):
            if (d / "result.json").is_file() and (d / "config.json").is_file():
                yield {"config": json.loads((d / "config.json").read_text()),
                       "result": json.loads((d / "result.json").read_text()), "dir": d}


def read_report(path: Union[str, Path], what: str) -> Dict[str, Any]:
    """The JSON object of a committed report (``--restore-from``); ValueError naming the file and
    ``what`` was expected when it cannot be read or is not a JSON object."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"--restore-from {path}: cannot read it ({e.strerror}); give {what}") from None
    except ValueError:
        raise ValueError(f"--restore-from {path}: not JSON; give {what}") from None
    if not isinstance(report, dict):
        raise ValueError(f"--restore-from {path}: not a JSON object; give {what}")
    return report
