"""Tiny Shakespeare loader (ea_zoo.data.shakespeare): checksum, split, errors."""
import pytest
import torch

import ea_zoo.data.shakespeare as shk
from ea_zoo.data.download import ChecksumError
from ea_zoo.data.paths import DataNotFoundError, data_root

REAL = data_root() / shk.RELPATH


@pytest.mark.skipif(not REAL.is_file(), reason=f"{REAL} not staged")
def test_real_corpus_split_and_vocabulary():
    sp = shk.load_shakespeare()
    assert sp.vocab_size == shk.NUM_CHARS == 65
    assert len(sp.train) + len(sp.val) == shk.NUM_BYTES
    assert len(sp.train) == int(shk.NUM_BYTES * 0.9)
    assert sp.decode(sp.train[:13]) == "First Citizen"
    assert torch.equal(sp.encode(sp.decode(sp.val[:100])), sp.val[:100])
    again = shk.load_shakespeare()
    assert torch.equal(again.train, sp.train) and again.chars == sp.chars


def _fake(root, text="to be or not to be, that is the question\n" * 20):
    f = root / "tinyshakespeare" / "input.txt"
    f.parent.mkdir(parents=True)
    f.write_text(text)
    return f, text


def test_checksum_mismatch_is_an_error_naming_the_file(tmp_path):
    f, text = _fake(tmp_path)
    with pytest.raises(ChecksumError, match="SHA-256 mismatch") as e:
        shk.load_shakespeare(tmp_path)
    assert str(f) in str(e.value) and shk.SHA256 in str(e.value)
    sp = shk.load_shakespeare(tmp_path, verify=False)
    assert sp.chars == sorted(set(text)) and len(sp.train) == int(len(text) * 0.9)
    assert sp.decode(torch.cat([sp.train, sp.val])) == text


def test_missing_file_names_the_expected_path(tmp_path, monkeypatch):
    with pytest.raises(DataNotFoundError) as e:
        shk.load_shakespeare(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "tinyshakespeare" / "input.txt") in msg and "download=True" in msg and shk.URL in msg
    monkeypatch.setenv("EA_ZOO_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(DataNotFoundError, match="elsewhere"):
        shk.load_shakespeare()


def test_download_goes_to_the_nanogpt_url_with_the_checksum(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, dest, sha256=None, **kw):
        calls.append((url, sha256))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text("abc\n" * 10)
        return dest

    monkeypatch.setattr(shk, "download_url", fake_download)
    sp = shk.load_shakespeare(tmp_path, download=True, verify=False)
    assert calls == [(shk.URL, None)] and sp.vocab_size == 4
    assert (tmp_path / shk.RELPATH).is_file()
    calls.clear()
    (tmp_path / shk.RELPATH).unlink()
    with pytest.raises(ChecksumError):  # the fake file is not the corpus
        shk.load_shakespeare(tmp_path, download=True)
    assert calls == [(shk.URL, shk.SHA256)]


def test_bad_val_fraction(tmp_path):
    _fake(tmp_path)
    with pytest.raises(ValueError, match="val_fraction"):
        shk.load_shakespeare(tmp_path, verify=False, val_fraction=1.0)
