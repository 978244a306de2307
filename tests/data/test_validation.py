"""Bad data files and lengths: a one-line DataError (or DataNotFoundError) from the loaders.

Every file here is tiny and synthetic, written into tmp_path. The assertions are on the
exception's type (ValueError / FileNotFoundError, which the old loaders also raised) and on
its message: it must name the file (and line / column where relevant) and the bad value.
"""
from pathlib import Path

import numpy as np
import pytest

from ea_zoo.data import DataNotFoundError, load_forecast, load_uea, read_series_csv
from ea_zoo.data.uea import read_ts


def _check(err, file, *parts):
    """The message is one line, names ``file`` and contains every part; the error is a DataError."""
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert str(file) in msg, msg
    for p in parts:
        assert str(p) in msg, msg
    from ea_zoo.data import DataError  # new in this change: imported after the message checks

    assert isinstance(err.value, DataError)
    return msg


# --------------------------------------------------------------------------- .ts (UEA)

def _case(n_dims, length, label, value=lambda d, t: d + 0.5 * t):
    return ":".join(",".join(str(value(d, t)) for t in range(length)) for d in range(n_dims)) + f":{label}"


def _header(n_dims=None, labels=("a", "b"), equal=True):
    lines = ["# synthetic", "@problemName Toy", "@timeStamps false", "@missing true", "@univariate false"]
    if n_dims is not None:
        lines.append(f"@dimensions {n_dims}")
    lines += [f"@equalLength {'true' if equal else 'false'}", f"@classLabel true {' '.join(labels)}", "@data"]
    return "\n".join(lines) + "\n"


def _archive(root, train_cases, test_cases, name="Toy", n_dims=None, labels=("a", "b"), equal=True):
    d = Path(root) / "UEA" / name
    d.mkdir(parents=True, exist_ok=True)
    tr, te = d / f"{name}_TRAIN.ts", d / f"{name}_TEST.ts"
    tr.write_text(_header(n_dims, labels, equal) + "".join(c + "\n" for c in train_cases))
    te.write_text(_header(n_dims, labels, equal) + "".join(c + "\n" for c in test_cases))
    return tr, te


HEADER_LINES = 8  # lines of _header() without @dimensions: the first case is line 9


def _good_cases(n_dims, n=4, length=5):
    return [_case(n_dims, length, "ab"[i % 2], lambda d, t, i=i: d + 0.5 * t + i) for i in range(n)]


def test_ts_test_file_with_fewer_channels_than_train(tmp_path):
    tr, te = _archive(tmp_path, _good_cases(12), _good_cases(11))
    with pytest.raises(ValueError) as e:
        load_uea("Toy", root=tmp_path)
    _check(e, te, "got 11", "expected 12", "TRAIN", str(tr))


def test_ts_inconsistent_channels_between_cases(tmp_path):
    cases = _good_cases(3)
    cases.insert(2, _case(2, 5, "a"))  # line HEADER_LINES + 3
    p = _archive(tmp_path, cases, _good_cases(3))[0]
    with pytest.raises(ValueError) as e:
        load_uea("Toy", root=tmp_path)
    _check(e, p, f"{p}:{HEADER_LINES + 3}", "got 2", "expected 3")
    # with @dimensions the header is the reference
    q = tmp_path / "D.ts"
    q.write_text(_header(3) + _case(3, 4, "a") + "\n" + _case(4, 4, "b") + "\n")  # + 1 header line
    with pytest.raises(ValueError) as e:
        read_ts(q)
    _check(e, q, f"{q}:{HEADER_LINES + 3}", "got 4", "@dimensions")


@pytest.mark.parametrize("bad", ["inf", "nan", "-inf", "NaN", "Infinity"])
def test_ts_non_finite_values(tmp_path, bad):
    cases = _good_cases(2)
    cases[1] = f"1,2,3:4,{bad},6:b"  # line HEADER_LINES + 2, dimension 2, value 2
    p = _archive(tmp_path, cases, _good_cases(2))[0]
    with pytest.raises(ValueError) as e:
        load_uea("Toy", root=tmp_path)
    _check(e, p, f"{p}:{HEADER_LINES + 2}", "dimension 2, value 2", repr(bad), "finite")


def test_ts_non_finite_in_test_file_and_timestamps(tmp_path):
    cases = _good_cases(2)
    cases[0] = "inf,1:2,3:a"
    te = _archive(tmp_path, _good_cases(2), cases)[1]
    with pytest.raises(ValueError) as e:
        load_uea("Toy", root=tmp_path)
    _check(e, te, f"{te}:{HEADER_LINES + 1}", "dimension 1, value 1", "'inf'")
    p = tmp_path / "T.ts"
    p.write_text("@problemName T\n@timeStamps true\n@univariate true\n@classLabel true x y\n@data\n"
                 "(0.0,1.5),(2.5,?),(4.0,nan):y\n")
    with pytest.raises(ValueError) as e:
        read_ts(p)
    _check(e, p, f"{p}:6", "value 3", "'nan'")


def test_ts_question_marks_and_unequal_lengths_still_load(tmp_path):
    train = ["1,?,3,4:5,6,7,?:a", "?,2,3:4,5:b", "1,2:3,4:a", "2,3,4,5,6,7:1,1,1,1,1,1:b", "1,2,3:?,?,?:a"]
    test = ["1,2,3:4,5,6:b", "7,8:9,?:a"]
    _archive(tmp_path, train, test, n_dims=2, equal=False)
    s = load_uea("Toy", root=tmp_path, val_source="test")
    assert (s.num_channels, s.num_classes, s.max_len) == (2, 2, 6)
    assert s.train.lengths.tolist() == [4, 3, 2, 6, 3]
    assert bool(np.isfinite(s.train.x.numpy()).all() and np.isfinite(s.test.x.numpy()).all())


def test_ts_header_only_file(tmp_path):
    tr, _ = _archive(tmp_path, [], _good_cases(2))
    with pytest.raises(ValueError) as e:
        load_uea("Toy", root=tmp_path)
    _check(e, tr, "no cases")
    q = tmp_path / "H.ts"
    q.write_text(_header(2) + "\n# nothing\n")
    with pytest.raises(ValueError) as e:
        read_ts(q)
    _check(e, q, "no cases")


@pytest.mark.parametrize("cell,shown", [("x", "'x'"), ("", "''"), ("1.2.3", "'1.2.3'")])
def test_ts_non_numeric_value(tmp_path, cell, shown):
    cases = _good_cases(2)
    cases[2] = f"1,2,3:4,5,{cell}:a"  # line HEADER_LINES + 3, dimension 2, value 3
    p = _archive(tmp_path, cases, _good_cases(2))[0]
    with pytest.raises(ValueError) as e:
        load_uea("Toy", root=tmp_path)
    _check(e, p, f"{p}:{HEADER_LINES + 3}", "dimension 2, value 3", f"got {shown}", "not a number")


def test_ts_undeclared_label_in_test_file(tmp_path):
    test = _good_cases(2)
    test[1] = _case(2, 5, "zz")
    te = _archive(tmp_path, _good_cases(2), test)[1]
    with pytest.raises(ValueError) as e:
        load_uea("Toy", root=tmp_path)
    _check(e, te, f"{te}:{HEADER_LINES + 2}", "'zz'", "a, b")


def test_ts_malformed_lines(tmp_path):
    p = tmp_path / "M.ts"
    p.write_text(_header(2) + "1,2,3\n")  # labels declared, none given
    with pytest.raises(ValueError) as e:
        read_ts(p)
    _check(e, p, f"{p}:{HEADER_LINES + 2}", "label")
    p.write_text("@problemName M\n1,2:a\n@data\n")
    with pytest.raises(ValueError) as e:
        read_ts(p)
    _check(e, p, f"{p}:2", "@data")


def test_any_uea_archive_by_name_and_describe(tmp_path):
    from ea_zoo.data import describe_uea

    labels = ("w", "x", "y", "z")
    train = [_case(3, 7 + i % 3, labels[i % 4], lambda d, t, i=i: (d + 1) * t - i) for i in range(12)]
    test = [_case(3, 6 + i % 5, labels[i % 4], lambda d, t, i=i: d - t + i) for i in range(8)]
    _archive(tmp_path, train, test, name="MyArchive", labels=labels, equal=False)
    d = describe_uea("MyArchive", root=tmp_path)
    assert {k: d[k] for k in ("n_channels", "n_classes", "max_len", "n_train", "n_test")} == {
        "n_channels": 3, "n_classes": 4, "max_len": 10, "n_train": 12, "n_test": 8}
    assert d["class_labels"] == list(labels)
    s = load_uea("MyArchive", root=tmp_path)
    assert (s.num_channels, s.num_classes, s.max_len) == (3, 4, 10)
    assert len(s.train) + len(s.val) == 12 and len(s.test) == 8
    with pytest.raises(ValueError) as e:
        load_uea("MyArchive", root=tmp_path, max_len=0)
    assert "max_len" in str(e.value) and "MyArchive_TRAIN.ts" in str(e.value)


# --------------------------------------------------------------------------- csv (ETT-style)

def _rows(n, cols=("a", "OT"), start="2016-07-04T00:00:00"):
    t0 = np.datetime64(start)
    return [f"{str(t0 + np.timedelta64(h, 'h')).replace('T', ' ')}," + ",".join(str(h * (j + 1) % 17 + 0.5)
            for j in range(len(cols))) for h in range(n)]


def _csv(tmp_path, n=200, cols=("a", "OT"), edit=None, name="toy.csv"):
    """A csv with a header and ``n`` rows; ``edit(lines)`` may change the lines (line k = lines[k-1])."""
    lines = ["date," + ",".join(cols)] + _rows(n, cols)
    if edit is not None:
        edit(lines)
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


def _set(lineno, col, value):
    def edit(lines):
        cells = lines[lineno - 1].split(",")
        cells[col - 1] = value
        lines[lineno - 1] = ",".join(cells)
    return edit


def test_csv_empty_file(tmp_path):
    p = tmp_path / "empty.csv"
    p.write_text("")
    with pytest.raises(ValueError) as e:
        load_forecast("empty", path=p)
    _check(e, p, "empty")
    p.write_text("\n\n")
    with pytest.raises(ValueError) as e:
        read_series_csv(p)
    _check(e, p, "empty")


def test_csv_header_only(tmp_path):
    p = _csv(tmp_path, n=0)
    with pytest.raises(ValueError) as e:
        load_forecast("toy", path=p)
    _check(e, p, "no data rows")


def test_csv_binary_file(tmp_path):
    p = tmp_path / "bin.csv"
    p.write_bytes(b"date,OT\n2016-07-01 00:00:00,1.0\n" + bytes(range(128, 256)) + b"\n")
    with pytest.raises(ValueError) as e:
        load_forecast("bin", path=p)
    _check(e, p, f"{p}:3", "UTF-8")
    p.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError) as e:
        read_series_csv(p)
    _check(e, p, "NUL")


@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-inf"])
def test_csv_non_finite_cell(tmp_path, bad):
    p = _csv(tmp_path, edit=_set(51, 3, bad))
    with pytest.raises(ValueError) as e:
        load_forecast("toy", path=p)
    _check(e, p, f"{p}:51", "column 3 (OT)", repr(bad), "finite")


@pytest.mark.parametrize("bad", ["abc", "", "?", "1,5"])
def test_csv_non_numeric_cell(tmp_path, bad):
    if bad == "1,5":  # a stray comma: one field too many
        p = _csv(tmp_path, edit=_set(40, 2, bad))
        with pytest.raises(ValueError) as e:
            load_forecast("toy", path=p)
        _check(e, p, f"{p}:40", "fields", "got 4", "expected 3")
        return
    p = _csv(tmp_path, edit=_set(40, 2, bad))
    with pytest.raises(ValueError) as e:
        load_forecast("toy", path=p, features="M")
    _check(e, p, f"{p}:40", "column 2 (a)", f"got {bad!r}", "not a number")


def test_csv_bad_date(tmp_path):
    for bad in ("2016-13-45 00:00:00", "yesterday", "NaT"):
        p = _csv(tmp_path, edit=_set(7, 1, bad))
        with pytest.raises(ValueError) as e:
            load_forecast("toy", path=p)
        _check(e, p, f"{p}:7", "column 1 (date)", repr(bad), "ISO 8601")


def test_csv_no_numeric_columns(tmp_path):
    p = tmp_path / "dates.csv"
    p.write_text("date\n" + "\n".join(r.split(",")[0] for r in _rows(50)) + "\n")
    with pytest.raises(ValueError) as e:
        load_forecast("dates", path=p)
    _check(e, p, "no value columns")
    q = tmp_path / "text.csv"
    q.write_text("date,city,OT\n" + "\n".join(f"{r.split(',')[0]},Paris,high" for r in _rows(50)) + "\n")
    with pytest.raises(ValueError) as e:
        load_forecast("text", path=q)
    _check(e, q, f"{q}:2", "no numeric columns")
    r = tmp_path / "nodate.csv"
    r.write_text("a,OT\n1,2\n3,4\n")
    with pytest.raises(ValueError) as e:
        load_forecast("nodate", path=r)
    _check(e, r, f"{r}:1", "'date'")


def test_csv_rows_of_the_wrong_width(tmp_path):
    def drop(lines):
        lines[60] = lines[60].rsplit(",", 1)[0]  # line 61: 2 fields

    def extra(lines):
        lines[61] = lines[61] + ",7.5"  # line 62: 4 fields

    for edit, line, got in ((drop, 61, 2), (extra, 62, 4)):
        p = _csv(tmp_path, edit=edit)
        with pytest.raises(ValueError) as e:
            load_forecast("toy", path=p, features="M")
        _check(e, p, f"{p}:{line}", "wrong number of fields", f"got {got}", "expected 3")


def test_csv_too_long_horizon_and_window(tmp_path):
    p = _csv(tmp_path, n=200)  # custom split: train [0, 140), val [134, 160), test [154, 200) at seq_len 6
    with pytest.raises(ValueError) as e:
        load_forecast("toy", seq_len=6, pred_len=5000, path=p)
    _check(e, p, "pred_len", "got 5006", "train split")
    with pytest.raises(ValueError) as e:
        load_forecast("toy", seq_len=6, pred_len=30, path=p)  # fits train (140), not val (20 + 6)
    _check(e, p, "got 36", "val split", "at most 26 rows")
    with pytest.raises(ValueError) as e:
        load_forecast("toy", seq_len=150, pred_len=2, path=p)
    _check(e, p, "got 152", "train split", "at most 140 rows")
    s = load_forecast("toy", seq_len=6, pred_len=20, path=p)  # the largest horizon that fits val
    assert [len(s.train), len(s.val), len(s.test)] == [140 - 25, 1, 46 - 25]


def test_etth_kind_too_long_horizon_and_too_few_rows(tmp_path):
    p = _csv(tmp_path, n=14400, cols=("OT",))
    with pytest.raises(ValueError) as e:
        load_forecast("toy", seq_len=6, pred_len=5000, path=p, kind="ETTh")
    _check(e, p, "got 5006", "val split", "[8634, 11520)")
    q = _csv(tmp_path, n=300, cols=("OT",), name="short.csv")
    with pytest.raises(ValueError) as e:
        load_forecast("short", path=q, kind="ETTh")
    _check(e, q, "got 300", "14400")


@pytest.mark.parametrize("kw", [dict(seq_len=0), dict(pred_len=0), dict(pred_len=-3), dict(seq_len=2.5)])
def test_csv_non_positive_lengths(tmp_path, kw):
    p = _csv(tmp_path)
    with pytest.raises(ValueError) as e:
        load_forecast("toy", path=p, **kw)
    (what, value), = kw.items()
    _check(e, p, what, f"got {value}", "positive")


def test_csv_by_path_and_describe(tmp_path):
    p = _csv(tmp_path, cols=("x", "y", "OT", "z"), name="my.csv")
    s = load_forecast(str(p), 4, 2, features="M")  # the dataset given as a path
    assert s.name == "my" and s.num_inputs == 4 and s.in_columns == ["x", "y", "z", "OT"]
    assert s.info["file"] == str(p.resolve()) and s.borders == ([0, 136, 156], [140, 160, 200])
    # a relative path: under the data root
    sub = tmp_path / "root" / "mine"
    sub.mkdir(parents=True)
    p.rename(sub / "my.csv")
    s = load_forecast("mine/my.csv", 4, 2, root=tmp_path / "root")
    assert s.info["file"] == str((sub / "my.csv").resolve()) and s.num_inputs == 1
    from ea_zoo.data import describe_forecast

    d = describe_forecast("mine/my.csv", root=tmp_path / "root", features="MS")
    assert (d["n_rows"], d["n_columns"], d["n_inputs"], d["n_outputs"]) == (200, 4, 4, 1)
    assert d["split_rows"] == [140, 20, 40] and d["max_window"] == 140 and d["max_pred_len"] == 20
    with pytest.raises(ValueError) as e:
        load_forecast("mine/my.csv", root=tmp_path / "root", target="nope")
    _check(e, (sub / "my.csv").resolve(), "'nope'", "x, y, OT, z")


# --------------------------------------------------------------------------- missing files

def test_missing_files_name_the_root_actually_used(tmp_path, monkeypatch):
    monkeypatch.delenv("EA_ZOO_DATA", raising=False)
    with pytest.raises(DataNotFoundError) as e:
        load_uea("MyArchive", root=tmp_path)
    head, *rest = str(e.value).splitlines()
    assert str(tmp_path) in head and "given explicitly" in head and "default" not in head, head
    assert rest[0].strip() == f"expected: {tmp_path / 'UEA/MyArchive/MyArchive_TRAIN.ts'}"
    assert f"expected: {tmp_path / 'UEA/MyArchive/MyArchive_TEST.ts'}" in str(e.value)
    with pytest.raises(DataNotFoundError) as e:
        load_forecast("ETTh1", root=tmp_path)
    head = str(e.value).splitlines()[0]
    assert "given explicitly" in head and str(tmp_path / "ETT-small/ETTh1.csv") in str(e.value)
    monkeypatch.setenv("EA_ZOO_DATA", str(tmp_path / "env"))
    with pytest.raises(DataNotFoundError) as e:
        load_uea("MyArchive")
    head = str(e.value).splitlines()[0]
    assert str(tmp_path / "env") in head and "$EA_ZOO_DATA" in head


def test_missing_csv_path(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        load_forecast("x", path=tmp_path / "nope.csv")
    assert str(tmp_path / "nope.csv") in str(e.value)
    with pytest.raises(DataNotFoundError) as e:
        load_forecast("sub/nope.csv", root=tmp_path / "root")
    msg = str(e.value)
    assert str(tmp_path / "root" / "sub/nope.csv") in msg and str(tmp_path / "root") in msg.splitlines()[0]


def test_data_error_fields():
    from ea_zoo.data import DataError

    e = DataError("/d/x.csv", "not a number", line=3, column="column 2 (a)", value="a\nb", expected="a number")
    assert str(e) == "/d/x.csv:3, column 2 (a): not a number: got 'a\\nb'; expected a number"
    assert (e.file, e.line, e.column, e.value, e.expected) == (Path("/d/x.csv"), 3, "column 2 (a)", "a\nb", "a number")
    assert isinstance(e, ValueError)
