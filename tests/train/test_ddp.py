"""2-process DDP on CPU with gloo: both ranks must end with identical weights."""
import json
import os
import subprocess
import sys

import pytest

from ea_zoo.data.paths import data_root

ROOT = data_root()

def _requires(*rel):
    return pytest.mark.skipif(not all((ROOT / r).is_file() for r in rel), reason=f"{', '.join(rel)} not under {ROOT}")


requires_jap = _requires("UEA/JapaneseVowels/JapaneseVowels_TRAIN.ts", "UEA/JapaneseVowels/JapaneseVowels_TEST.ts")


@requires_jap
def test_ddp_two_cpu_processes_gloo_identical_weights(tmp_path):
    cmd = [sys.executable, "-m", "ea_zoo.cli", "train", "--config", "table3_jap",
           "attention=ea6", f"output_dir={tmp_path}", "debug.weight_hash=true", "threads=1",
           "trainer.accelerator=cpu", "trainer.strategy=ddp", "trainer.devices=2",
           "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
           "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false",
           "model.embed_dim=16", "model.depth=1", "model.num_heads=2"]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    hashes = [(tmp_path / f"weights_rank{r}.sha256").read_text().strip() for r in (0, 1)]
    assert len(hashes[0]) == 64 and hashes[0] == hashes[1]
    assert (tmp_path / "results.json").is_file()
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["world_size"] == 2
