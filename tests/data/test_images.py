import pytest

from ea_zoo.data.paths import data_root

REAL_ROOT = data_root()


def _requires(*rel):
    return pytest.mark.skipif(not all((REAL_ROOT / r).is_file() for r in rel),
                              reason=f"{', '.join(rel)} not under the data root {REAL_ROOT}")


requires_fmnist = _requires(*(f"fashion-mnist/{s}-ubyte.gz" for s in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")))


@requires_fmnist
def test_fashion_mnist_from_gz_through_torchvision():
    from torchvision.datasets import FashionMNIST

    from ea_zoo.data.images import LocalFashionMNIST, load_images

    ds = LocalFashionMNIST(REAL_ROOT / "fashion-mnist", train=False)
    assert isinstance(ds, FashionMNIST) and len(ds) == 10000 and ds.data.shape == (10000, 28, 28)
    assert ds.targets.bincount().tolist() == [1000] * 10
    img, y = ds[0]
    assert img.size == (28, 28) and 0 <= y < 10  # a PIL image, as torchvision returns
    s = load_images("fashion_mnist", limit_train=100)
    assert (s.num_classes, s.in_chans, s.img_size) == (10, 1, 28)
    assert (s.info["n_train"], s.info["n_val"], s.info["n_test"]) == (100, 5000, 10000)
    x, _ = s.val[0]
    assert x.shape == (1, 28, 28)
    assert not (REAL_ROOT / "fashion-mnist" / "FashionMNIST").exists()  # nothing written next to the data


def test_missing_images_error(tmp_path):
    from ea_zoo.data import DataNotFoundError
    from ea_zoo.data.images import load_images

    with pytest.raises(DataNotFoundError, match="t10k-images-idx3-ubyte.gz"):
        load_images("fashion_mnist", root=tmp_path)
    with pytest.raises(DataNotFoundError, match="cifar-10-batches-py"):
        load_images("cifar10", root=tmp_path)
