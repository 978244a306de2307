"""The README's Tables 3-4 are the committed ablation report's numbers (tools/readme_ablation_tables.py)."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("readme_ablation_tables", ROOT / "tools/readme_ablation_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_tables_match_the_committed_report():
    tool = _tool()
    report = json.loads((ROOT / "benchmarks/results/ablation_tables34/results.json").read_text())
    readme = (ROOT / "README.md").read_text()
    assert tool.replace_tables(readme, tool.build_tables(report)) == readme, \
        "README Tables 3-4 differ from results.json: run python tools/readme_ablation_tables.py"


def test_cells_show_missing_seeds_paper_numbers_and_the_best_in_bold():
    tool = _tool()
    row = {"paper_cell": "JAP", "cell": "JapaneseVowels", "protocol": "val", "metric": "acc", "n": 2,
           "n_planned": 5, "mean": 0.9, "std": 0.01, "paper": 0.97}
    report = {"backends": ["sa", "ea6"], "rows": [{**row, "backend": "sa"},
                                                   {**row, "backend": "ea6", "mean": 0.95, "paper": None, "n": 5}]}
    t3 = tool.build_tables(report)["table3"]
    assert t3[2].startswith("| sa | 0.900 ± 0.010 (2/5 seeds) (paper 0.97) | not run |")
    assert t3[3].startswith("| ea6 | **0.950 ± 0.010** | not run |")


def test_a_single_seed_shows_no_std():
    """One finished seed has no sample std: the cell shows the value and the seed count only."""
    tool = _tool()
    row = {"paper_cell": "SCP1", "cell": "SelfRegulationSCP1", "protocol": "val", "metric": "acc", "n": 1,
           "n_planned": 3, "mean": 0.836, "std": 0.0, "paper": None, "backend": "taylor"}
    t3 = tool.build_tables({"backends": ["taylor"], "rows": [row]})["table3"]
    assert "| **0.836 (1/3 seeds)** |" in t3[2]
