"""Downloads against a local http.server (no internet)."""
import functools
import hashlib
import http.server
import io
import threading
import zipfile

import pytest

from ea_zoo.data import ChecksumError, DataNotFoundError, download_url, ensure_dataset
from ea_zoo.data.download import Source, source_for
from ea_zoo.data.paths import data_root


@pytest.fixture()
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    th = threading.Thread(target=httpd.serve_forever, daemon=True)
    th.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_checksum_pass_and_fail(server, tmp_path):
    served, url = server
    payload = b"date,OT\n2016-07-01 00:00:00,1.0\n"
    (served / "toy.csv").write_bytes(payload)
    good = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "root" / "toy.csv"
    assert download_url(f"{url}/toy.csv", dest, sha256=good).read_bytes() == payload
    bad = tmp_path / "root" / "bad.csv"
    with pytest.raises(ChecksumError, match="SHA-256 mismatch"):
        download_url(f"{url}/toy.csv", bad, sha256="0" * 64)
    assert not bad.exists() and not list(bad.parent.glob("*.part"))


def test_ensure_dataset_file_and_zip_archive(server, tmp_path):
    served, url = server
    root = tmp_path / "root"
    # a plain file source (as ETT / Traffic)
    payload = b"date,OT\n"
    (served / "x.csv").write_bytes(payload)
    src = Source(f"{url}/x.csv", {"ETT-small/X.csv": hashlib.sha256(payload).hexdigest()})
    with pytest.raises(DataNotFoundError, match="download=True"):
        ensure_dataset("X", root=root, source=src)
    paths = ensure_dataset("X", root=root, download=True, source=src)
    assert paths["ETT-small/X.csv"].read_bytes() == payload
    # a zip source (as the UEA archive): members checked by their own sums
    tr, te = b"@problemName Toy\n@data\n", b"@problemName Toy\n@data\n1,2:a\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("Toy/Toy_TRAIN.ts", tr)
        zf.writestr("Toy/Toy_TEST.ts", te)
    (served / "Toy.zip").write_bytes(buf.getvalue())
    sums = {"UEA/Toy/Toy_TRAIN.ts": hashlib.sha256(tr).hexdigest(), "UEA/Toy/Toy_TEST.ts": hashlib.sha256(te).hexdigest()}
    paths = ensure_dataset("Toy", root=root, download=True, source=Source(f"{url}/Toy.zip", sums, archive=True))
    assert paths["UEA/Toy/Toy_TEST.ts"].read_bytes() == te
    bad = dict(sums, **{"UEA/Toy/Toy_TRAIN.ts": "f" * 64})
    with pytest.raises(ChecksumError):
        ensure_dataset("Toy", root=tmp_path / "root2", download=True, source=Source(f"{url}/Toy.zip", bad, archive=True))
    assert not (tmp_path / "root2" / "UEA/Toy/Toy_TRAIN.ts").exists()


def test_canonical_sources_and_recorded_sums():
    s = source_for("JapaneseVowels")
    assert s.archive and s.url == "https://timeseriesclassification.com/aeon-toolkit/JapaneseVowels.zip"
    assert s.files["UEA/JapaneseVowels/JapaneseVowels_TRAIN.ts"].startswith("68a430ea")
    assert source_for("SelfRegulationSCP2").files["UEA/SelfRegulationSCP2/SelfRegulationSCP2_TEST.ts"] is None
    assert source_for("ETTh2").url.endswith("zhouhaoyi/ETDataset/main/ETT-small/ETTh2.csv")
    assert source_for("Traffic").files == {"traffic/traffic.csv": None}


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("EA_ZOO_DATA", str(tmp_path))
    assert data_root() == tmp_path.resolve()
    assert data_root(tmp_path / "explicit") == (tmp_path / "explicit").resolve()
    monkeypatch.delenv("EA_ZOO_DATA")
    assert data_root().name in ("data",)
