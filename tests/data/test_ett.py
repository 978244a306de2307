import numpy as np
import pytest
import torch

from ea_zoo.data import DataNotFoundError, StandardScaler, load_forecast, read_series_csv, tsl_borders

from ea_zoo.data.paths import data_root

REAL_ROOT = data_root()


def _requires(*rel):
    return pytest.mark.skipif(not all((REAL_ROOT / r).is_file() for r in rel),
                              reason=f"{', '.join(rel)} not under the data root {REAL_ROOT}")


requires_etth2 = _requires("ETT-small/ETTh2.csv")


def test_tsl_borders():
    assert tsl_borders(17420, 6, "ETTh") == ([0, 8634, 11514], [8640, 11520, 14400])
    assert tsl_borders(69680, 6, "ETTm") == ([0, 34554, 46074], [34560, 46080, 57600])
    # 70 / 10 / 20 (TSL Dataset_Custom): train int(0.7n), test int(0.2n), val the rest
    assert tsl_borders(17544, 6, "custom") == ([0, 12274, 14030], [12280, 14036, 17544])
    with pytest.raises(ValueError):
        tsl_borders(1000, 6, "ETTh")


@requires_etth2
def test_etth2_reader_and_windows():
    dates, cols, vals = read_series_csv(REAL_ROOT / "ETT-small/ETTh2.csv")
    assert vals.shape == (17420, 7) and cols == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    assert str(dates[0]) == "2016-07-01T00:00:00" and str(dates[-1]) == "2018-06-26T19:00:00"
    s = load_forecast("ETTh2", seq_len=6, pred_len=12, features="S")
    # windows: rows - L - L' + 1 per split
    assert [len(s.train), len(s.val), len(s.test)] == [8640 - 17, 2886 - 17, 2886 - 17]
    # the first validation window's targets start at the boundary row 8640
    data = s.scaler.transform(vals[:, [6]])
    assert np.allclose(s.val[0]["y"].numpy(), data[8640:8652], atol=1e-6)
    assert np.allclose(s.val[0]["x"].numpy(), data[8634:8640], atol=1e-6)
    assert np.allclose(s.test[-1]["y"].numpy(), data[14388:14400], atol=1e-6)
    # scaler fitted on the 8640 training rows only
    assert np.allclose(s.scaler.mean, vals[:8640, 6].mean()) and np.allclose(s.scaler.std, vals[:8640, 6].std())
    assert not np.allclose(s.scaler.mean, vals[:14400, 6].mean())
    assert s.out_mean.shape == (1,)
    # hour-of-week timestamps: 2016-07-01 was a Friday
    assert s.train[0]["t_x"].tolist() == [96.0, 97.0, 98.0, 99.0, 100.0, 101.0]
    assert s.train[0]["t_y"][0] == 102.0
    w = load_forecast("ETTh2", 6, 6, timestamps="window")
    assert w.val[3]["t_x"].tolist() == [0, 1, 2, 3, 4, 5] and w.val[3]["t_y"].tolist() == [6, 7, 8, 9, 10, 11]
    m = load_forecast("ETTh2", 6, 6, features="MS")
    assert m.train[0]["x"].shape == (6, 7) and m.train[0]["y"].shape == (6, 1) and m.out_columns == ["OT"]
    assert load_forecast("ETTh2", 6, 6, features="M").train[0]["y"].shape == (6, 7)


def test_scaler_roundtrip_and_inverse_columns():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(100, 3))
    sc = StandardScaler().fit(x[:50])
    z = sc.transform(x)
    assert np.allclose(z[:50].mean(0), 0) and np.allclose(z[:50].std(0), 1)
    assert np.allclose(sc.inverse_transform(z), x)
    t = torch.as_tensor(z[:, [2]], dtype=torch.float64)
    assert np.allclose(sc.inverse_transform(t, columns=[2]).numpy(), x[:, [2]])


def test_custom_csv_70_10_20_and_target_last(tmp_path):
    n = 200
    p = tmp_path / "toy.csv"
    start = np.datetime64("2016-07-04T00:00:00")  # a Monday
    lines = ["date,OT,a,b"] + [f"{str(start + np.timedelta64(h, 'h')).replace('T', ' ')},{h},{2 * h},{-h}" for h in range(n)]
    p.write_text("\n".join(lines) + "\n")
    s = load_forecast("toy", 4, 2, features="M", path=p)
    assert s.in_columns == ["a", "b", "OT"]  # TSL Dataset_Custom puts the target last
    assert s.borders == ([0, 136, 156], [140, 160, 200])
    assert [len(s.train), len(s.val), len(s.test)] == [140 - 5, 24 - 5, 44 - 5]
    assert s.train[0]["t_x"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_missing_traffic_error(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        load_forecast("traffic", root=tmp_path)
    assert str(tmp_path / "traffic/traffic.csv") in str(e.value) and "download=True" in str(e.value)
