"""ea-zoo charlm end to end at the smoke preset on a small fake corpus."""
import json

import pytest

from ea_zoo.cli import main


def test_charlm_smoke(tmp_path, fake_corpus_root):
    out = tmp_path / "lm"
    base = ["charlm", "--preset", "smoke", "--backends", "sa,ea6", "--main-backends", "sa",
            "--main-seeds", "2", "--out", str(out), "--quiet", "--data-root", str(fake_corpus_root), "--no-verify"]
    assert main(base) == 0
    assert main(base + ["--timing-only", "--no-plot"]) == 0
    for ext in ("json", "csv", "md", "png"):
        assert (out / f"charlm.{ext}").is_file()
    rows = {r["backend"]: r for r in json.loads((out / "charlm.json").read_text())["results"]}
    assert rows["sa"]["n_seeds"] == 2 and rows["ea6"]["n_seeds"] == 1
    for r in rows.values():
        assert r["val_loss_mean"] > 0 and r["train_tokens_per_s"] > 0
        assert r["decode_ms_at_16"] > 0 and r["decode_ms_at_64"] > 0
        for s in r["samples"]:
            assert (out / s).is_file() and len((out / s).read_text()) == 41  # prompt + 40 characters
    # recurrent state stays fixed, the KV cache grows
    assert rows["ea6"]["state_bytes_at_64"] < rows["sa"]["state_bytes_at_64"]
    # a fresh clone restores every run (samples included) from the committed report alone
    fresh = tmp_path / "fresh"
    i = base.index("--out")
    assert main([*base[:i + 1], str(fresh), *base[i + 2:], "--restore-from", str(out / "charlm.json"),
                 "--report-only"]) == 0
    again = {r["backend"]: r for r in json.loads((fresh / "charlm.json").read_text())["results"]}
    assert again == rows
    assert all((fresh / s).read_text() == (out / s).read_text() for r in rows.values() for s in r["samples"])


def test_charlm_refuses_a_corpus_with_the_wrong_checksum(tmp_path, fake_corpus_root):
    from ea_zoo.data.download import ChecksumError

    with pytest.raises(ChecksumError):
        main(["charlm", "--preset", "smoke", "--backends", "sa", "--out", str(tmp_path / "x"), "--quiet",
              "--data-root", str(fake_corpus_root)])
