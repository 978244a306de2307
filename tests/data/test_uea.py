import numpy as np
import pytest
import torch

from ea_zoo.data import DataNotFoundError
from ea_zoo.data.uea import fill_missing, load_uea, read_ts, stratified_split

from ea_zoo.data.paths import data_root

REAL_ROOT = data_root()


def _requires(*rel):
    return pytest.mark.skipif(not all((REAL_ROOT / r).is_file() for r in rel),
                              reason=f"{', '.join(rel)} not under the data root {REAL_ROOT}")


requires_jap = _requires("UEA/JapaneseVowels/JapaneseVowels_TRAIN.ts", "UEA/JapaneseVowels/JapaneseVowels_TEST.ts")

JAP = REAL_ROOT / "UEA" / "JapaneseVowels"


@requires_jap
def test_japanese_vowels_files():
    tr, te = read_ts(JAP / "JapaneseVowels_TRAIN.ts"), read_ts(JAP / "JapaneseVowels_TEST.ts")
    assert (tr.num_cases, te.num_cases) == (270, 370)
    assert tr.num_channels == te.num_channels == 12
    assert tr.header["problemname"] == "JapaneseVowels"
    assert tr.header["equallength"] is False and tr.header["dimensions"] == 12
    assert (tr.lengths.min(), tr.lengths.max()) == (7, 26)
    assert (te.lengths.min(), te.lengths.max()) == (7, 29)
    assert tr.class_labels == [str(i) for i in range(1, 10)]
    assert np.bincount(tr.label_ids()).tolist() == [30] * 9
    assert np.bincount(te.label_ids()).tolist() == [31, 35, 88, 44, 29, 24, 40, 50, 29]
    assert not any(np.isnan(s).any() for s in tr.series)
    assert tr.times[0].tolist() == list(range(tr.series[0].shape[0]))


@requires_jap
def test_load_uea_splits_padding_and_normalisation():
    s = load_uea("JAP")  # short name
    assert s.name == "JapaneseVowels" and s.num_classes == 9 and s.num_channels == 12 and s.max_len == 29
    assert (len(s.train), len(s.val), len(s.test)) == (216, 54, 370)
    # stratified 20 %: 6 of each class's 30 in validation
    assert torch.bincount(s.val.y).tolist() == [6] * 9
    item = s.test[0]
    n = int(item["length"])
    assert item["x"].shape == (29, 12) and item["mask"].sum() == n
    assert torch.all(item["x"][n:] == 0) and torch.all(item["t"][:n] == torch.arange(n, dtype=torch.float32))
    # per_split (TSL): the TEST file is standardised with its own statistics
    valid = s.test.x[s.test.mask]
    assert valid.mean(0).abs().max() < 1e-4 and (valid.std(0) - 1).abs().max() < 1e-3
    # validation as TSL: the TEST file
    t = load_uea("JapaneseVowels", val_source="test")
    assert len(t.train) == 270 and t.val is t.test
    # fixed seed -> same split; another seed -> another split
    assert torch.equal(load_uea("JAP").val.y, s.val.y)
    assert not torch.equal(load_uea("JAP", val_seed=1).val.x, s.val.x)


@requires_jap
def test_train_normalisation_uses_train_cases_only():
    s = load_uea("JAP", normalize="train")
    valid = s.train.x[s.train.mask]
    assert valid.mean(0).abs().max() < 1e-4
    assert s.test.x[s.test.mask].mean(0).abs().max() > 1e-3  # test standardised with train stats


def test_ts_reader_header_missing_and_variable_length(tmp_path):
    p = tmp_path / "Toy_TRAIN.ts"
    p.write_text(
        "# a comment\n@problemName Toy\n@timeStamps false\n@missing true\n@univariate false\n"
        "@dimensions 2\n@equalLength false\n@classLabel true b a\n@data\n"
        "1,?,3,4:5,6,7,?:a\n"
        "?,2,3:4,5:b\n"
    )
    f = read_ts(p)
    assert f.header["missing"] is True and f.class_labels == ["b", "a"]
    assert f.label_ids().tolist() == [1, 0]  # @classLabel order, not alphabetical
    assert f.series[0].shape == (4, 2) and np.isnan(f.series[0][1, 0]) and np.isnan(f.series[0][3, 1])
    assert f.series[1].shape == (3, 2) and np.isnan(f.series[1][2, 1])  # shorter dimension padded with NaN
    filled = fill_missing(f.series[0])
    assert filled[:, 0].tolist() == [1, 2, 3, 4] and filled[:, 1].tolist() == [5, 6, 7, 7]
    assert fill_missing(f.series[1])[:, 0].tolist() == [2, 2, 3]
    assert fill_missing(np.full((3, 1), np.nan)).tolist() == [[0.0]] * 3


def test_ts_reader_timestamps(tmp_path):
    p = tmp_path / "T.ts"
    p.write_text("@problemName T\n@timeStamps true\n@univariate true\n@classLabel true x y\n@data\n"
                 "(0.0,1.5),(2.5,?),(4.0,3.0):y\n")
    f = read_ts(p)
    assert f.times[0].tolist() == [0.0, 2.5, 4.0] and f.label_ids().tolist() == [1]


def test_stratified_split():
    y = np.repeat(np.arange(3), [10, 5, 1])
    keep, held = stratified_split(y, 0.2, seed=0)
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(16))
    assert np.bincount(y[held], minlength=3).tolist() == [2, 1, 0]


def test_missing_dataset_error_names_paths(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        load_uea("SelfRegulationSCP2", root=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "UEA/SelfRegulationSCP2/SelfRegulationSCP2_TRAIN.ts") in msg
    assert str(tmp_path / "UEA/SelfRegulationSCP2/SelfRegulationSCP2_TEST.ts") in msg
    assert "download=True" in msg and "timeseriesclassification.com" in msg and "EA_ZOO_DATA" in msg
