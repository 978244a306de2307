import warnings
from pathlib import Path

import numpy as np
import pytest

from ea_zoo.data.paths import data_root

ROOT = data_root()

#: overrides that make any experiment a seconds-long smoke run (budget in optimizer steps)
TINY_STEPS = [
    "threads=1", "trainer.max_epochs=-1", "trainer.min_steps=2", "trainer.max_steps=4", "optim.warmup_steps=0",
    "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "early_stopping.patience=1",
    "model.embed_dim=16", "model.depth=1", "model.num_heads=2",
]


def requires(*rel):
    return pytest.mark.skipif(not all((ROOT / r).is_file() for r in rel), reason=f"{', '.join(rel)} not under {ROOT}")


requires_jap = requires("UEA/JapaneseVowels/JapaneseVowels_TRAIN.ts", "UEA/JapaneseVowels/JapaneseVowels_TEST.ts")


def write_toy_uea(root: Path, name: str = "ToyGestures", n_train: int = 24, n_test: int = 12, dims: int = 3,
                  length: int = 8) -> Path:
    """A tiny two-class UEA archive ``root/UEA/<name>/<name>_{TRAIN,TEST}.ts`` (class = sign of a ramp)."""
    rng = np.random.default_rng(0)
    d = Path(root) / "UEA" / name
    d.mkdir(parents=True, exist_ok=True)
    header = (f"@problemName {name}\n@timeStamps false\n@missing false\n@univariate false\n@dimensions {dims}\n"
              "@equalLength true\n@classLabel true up down\n@data\n")
    for split, n in (("TRAIN", n_train), ("TEST", n_test)):
        lines = []
        for i in range(n):
            lab = ("up", "down")[i % 2]
            sign = 1.0 if lab == "up" else -1.0
            dims_txt = [",".join(f"{sign * t / length + 0.1 * rng.standard_normal():.4f}" for t in range(length))
                        for _ in range(dims)]
            lines.append(":".join(dims_txt) + f":{lab}")
        (d / f"{name}_{split}.ts").write_text(header + "\n".join(lines) + "\n")
    return d


def write_toy_csv(path: Path, rows: int = 400) -> Path:
    """An ETT-style csv: hourly ``date``, two variables and the target ``OT`` (a noisy daily sine)."""
    rng = np.random.default_rng(1)
    start = np.datetime64("2020-01-06T00:00:00")
    lines = ["date,HUFL,MUFL,OT"]
    for i in range(rows):
        t = start + np.timedelta64(i, "h")
        ot = 10 + 3 * np.sin(2 * np.pi * i / 24) + 0.2 * rng.standard_normal()
        lines.append(f"{str(t).replace('T', ' ')},{rng.standard_normal():.3f},{rng.standard_normal():.3f},{ot:.3f}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def tiny():
    """:data:`TINY_STEPS` (a seconds-long run in optimizer steps)."""
    return list(TINY_STEPS)


@pytest.fixture
def toy_root(tmp_path):
    """A data root with the toy UEA archive ``ToyGestures`` and ``toy.csv`` beside it."""
    root = tmp_path / "data"
    write_toy_uea(root)
    write_toy_csv(root / "toy.csv")
    return root


@pytest.fixture(autouse=True)
def _quiet_lightning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        yield
