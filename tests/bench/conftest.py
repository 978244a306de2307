import gzip

import numpy as np
import pytest


def _idx(path, arr: np.ndarray) -> None:
    magic = (0x08 << 8) | arr.ndim
    head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fmnist_root(tmp_path):
    """A data root with a tiny Fashion-MNIST in the staged layout (gzipped IDX files)."""
    rng = np.random.default_rng(0)
    d = tmp_path / "data" / "fashion-mnist"
    d.mkdir(parents=True)
    for split, n in (("train", 240), ("t10k", 60)):
        y = np.arange(n) % 10
        x = rng.integers(0, 60, size=(n, 28, 28))
        for c in range(10):  # a learnable class signal: a bright row per class
            x[y == c, 2 * c + 4, :] = 250
        _idx(d / f"{split}-images-idx3-ubyte.gz", x)
        _idx(d / f"{split}-labels-idx1-ubyte.gz", y)
    return tmp_path / "data"


@pytest.fixture
def fake_corpus_root(tmp_path):
    """A data root with a small text as tinyshakespeare/input.txt (not the real checksum)."""
    f = tmp_path / "data" / "tinyshakespeare" / "input.txt"
    f.parent.mkdir(parents=True)
    f.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40)
    return tmp_path / "data"
