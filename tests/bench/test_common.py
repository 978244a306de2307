"""ea_zoo.bench.common: backends from the registry, seeds, schedule."""
import math

import pytest

import ea_zoo
from ea_zoo.bench import common


def test_default_backends_are_the_registry_without_restated_aliases():
    names = common.default_backends(causal=True)
    assert "ea_series" not in names  # = ea6 with its default order
    assert set(names) == set(ea_zoo.list_attentions()) - {"ea_series"}
    assert common.default_backends(causal=False) == names


def test_parse_backends_passes_specs_through():
    assert common.parse_backends("sa, ea6,la") == ["sa", "ea6", "la"]
    assert common.parse_backends(None) == common.default_backends()
    with pytest.raises(ValueError, match="valid names"):
        common.parse_backends("sa,nope")
    with pytest.raises(ValueError, match="twice"):
        common.parse_backends("sa,sa")


def test_hybrid_spec_is_one_more_backend():
    assert common.parse_backends("sa,ea6+sa@1") == ["sa", "ea6+sa@1"]
    assert common.parse_backends("ea6+sa@1,3,la") == ["ea6+sa@1,3", "la"]
    assert common.backend_label("ea6+sa@1") == ea_zoo.registry.parse_attention("ea6+sa@1").label


def test_json_spec_with_options_is_one_backend():
    """A backend with options (here AFT-local with a window shorter than the context) is one
    entry although its JSON has commas; it is labelled by the registry."""
    spec = '{"name": "aft_local", "window": 16}'
    assert common.parse_backends(f"aft_full,{spec},sa") == ["aft_full", spec, "sa"]
    assert common.backend_label(spec) == "aft_local_window16"
    with pytest.raises(ValueError, match="window"):
        common.parse_backends('{"name": "aft_local", "widow": 16}')


def test_seeds_and_schedule():
    assert common.parse_seeds("3") == [0, 1, 2] and common.parse_seeds("1,4") == [1, 4] and common.parse_seeds(2) == [0, 1]
    with pytest.raises(ValueError):
        common.parse_seeds("0")
    lrs = [common.lr_at(s, 100, 10, 1.0, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] > 0.1 - 1e-9
    assert common.lr_at(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)
    m, s, n = common.mean_std([1.0, 3.0, None, math.nan])
    assert (m, n) == (2.0, 2) and s == pytest.approx(math.sqrt(2))


def test_every_record_names_the_commit_and_a_pinned_commit_wins(monkeypatch):
    """Runs from a copy of the package outside the checkout pin their commit with
    EA_ZOO_GIT_COMMIT; the bench records, the training record and the cost-tool environment
    all read the one git_commit()."""
    from ea_zoo.analysis import report
    from ea_zoo.train.run import machine_info

    monkeypatch.setenv("EA_ZOO_GIT_COMMIT", "0123abc")
    assert common.run_record("cpu", 1.0)["git_commit"] == "0123abc"
    assert common.environment("cpu")["git_commit"] == "0123abc"
    assert machine_info()["commit"] == "0123abc"
    monkeypatch.delenv("EA_ZOO_GIT_COMMIT")
    got = report.git_commit()
    assert got is None or len(got.split("+")[0]) >= 7


def _probe(cfg, run_dir, progress):
    from ea_zoo.kernels import cpu_impl

    return {"seen_cpu_impl": cpu_impl()}


def test_run_jobs_sets_cpu_impl_for_the_runs_records_it_and_restores_it(tmp_path):
    from ea_zoo import kernels
    from ea_zoo.train.runs import RunStore

    jobs = [common.Job({"bench": "probe", "i": i}, f"probe{i}") for i in range(2)]
    assert kernels.cpu_impl() == "reference"
    st = common.run_jobs(jobs, f"{__name__}:_probe", tmp_path, quiet=True, cpu_impl="compiled", log=lambda s: None)
    assert st["ran"] == ["probe0", "probe1"] and kernels.cpu_impl() == "reference"
    res = RunStore(tmp_path).load(jobs[0].cfg)
    assert res["seen_cpu_impl"] == "compiled" and res["cpu_impl"] == "compiled"
    note = common.cpu_impl_note([(j.label, RunStore(tmp_path).load(j.cfg)) for j in jobs] + [("old", {})])
    assert note.startswith("Run with `--cpu-impl compiled`") and "probe0, probe1." in note and "old" not in note
    assert common.cpu_impl_note([("a", {"cpu_impl": "reference"}), ("b", None)]) == ""
    with pytest.raises(ValueError, match="reference.*got 'fast'"):
        common.run_jobs(jobs, f"{__name__}:_probe", tmp_path, cpu_impl="fast")
    common._worker_init(1, "compiled")
    try:
        assert kernels.cpu_impl() == "compiled"
    finally:
        kernels.set_cpu_impl("reference")
