"""The wheel ships the configs: build it, install it into a fresh venv, run the CLI there.

Runs in the default suite (``make test`` / CI; about 30 s): ``pip wheel --no-deps
--no-build-isolation`` of a copy of the checkout (nothing is written into the working tree),
``pip install --no-deps`` into a new venv made with ``--system-site-packages`` from this
interpreter. The venv sees this environment's packages (torch, timm, ...) through a ``.pth``
line placed after its own site-packages; that line adds the folder without running its
``.pth`` files, so the editable install of this checkout cannot shadow the wheel. The
commands run from a folder outside the checkout, and the test checks that ``ea_zoo`` and its
configs are imported from the new venv.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("setuptools.build_meta", reason="building the wheel offline needs setuptools installed")
pytest.importorskip("wheel", reason="building the wheel offline needs the wheel package installed")


def _run(cmd, cwd, env, timeout=300):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_installed_wheel_has_its_configs_and_runs_the_cli(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("EA_ZOO_CONFIG_DIR", "EA_ZOO_PLUGINS", "PYTHONPATH",
                                                          "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    src = tmp_path / "src"  # the package as the repository has it, without build outputs
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, src / f)
    shutil.copytree(REPO / "ea_zoo", src / "ea_zoo", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, src],
         tmp_path, env)
    (whl,) = dist.glob("ea_zoo-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    shipped = {Path(p).name for p in (REPO / "ea_zoo" / "configs").rglob("*.yaml")}
    assert shipped and shipped <= {Path(n).name for n in names if n.startswith("ea_zoo/configs/")}
    assert "ea_zoo/configs/experiment/table3_jap.yaml" in names

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", venv], tmp_path, env)
    vpy = venv / "bin" / "python"
    site = Path(_run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env).strip())
    outer = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "zz_outer_site.pth").write_text("\n".join(outer) + "\n")
    _run([vpy, "-m", "pip", "install", "--no-deps", "--no-index", "-q", whl], tmp_path, env)

    where = _run([vpy, "-c", "import ea_zoo; from ea_zoo.configs import config_dir; "
                             "print(ea_zoo.__file__); print(config_dir())"], tmp_path, env).split()
    assert all(Path(p).resolve().is_relative_to(venv.resolve()) for p in where), where
    out = _run([venv / "bin" / "ea-zoo", "train", "--config", "table3_jap", "--print-config"], tmp_path, env)
    assert "name: table3_jap" in out and "attention:" in out and "model:" in out, out[-2000:]
