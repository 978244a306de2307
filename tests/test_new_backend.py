"""Adding a backend is one file: a module that registers it (here in a temporary folder, not
in ea_zoo/attention/) is found by list_attentions(), every ViT and sequence family, the
config loader (with its YAML in a config folder), the conformance suite's parametrisation
and the complexity / train-cost / infer-cost tools, with no other file touched.

Two fresh interpreters (registering is permanent for a process): one imports the module
(``PYTHONPATH=tmp``) and uses it everywhere; one runs the conformance suite with
``EA_ZOO_PLUGINS=toy_backend`` (the plugin hook of ``import ea_zoo``) and ``-k toy_backend``.
"""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import ea_zoo
from ea_zoo.configs import config_dir

REPO = Path(__file__).resolve().parents[1]

#: the whole backend: causal (or global) mean of the values over the valid keys, gated by
#: sigmoid(q); decodes with a fixed state (running sum and count)
TOY = textwrap.dedent('''
    """toy_backend: mean pooling over the keys, gated by sigmoid(q); a fixed decoding state."""
    import torch

    from ea_zoo import AttentionBase, register_attention


    @register_attention("toy_backend")
    class ToyMeanAttention(AttentionBase):
        """Toy mixer: y_i = sigmoid(q_i) * scale * mean_{j <= i (causal) or all j} v_j."""

        description = "toy mean-pooling mixer (tests)"
        paper_equation = ""
        recurrent = True

        def __init__(self, *args, scale: float = 1.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.scale = float(scale)

        def _acc(self, t):
            return t.to(torch.promote_types(t.dtype, torch.float32))

        def attend(self, q, k, v, key_padding_mask, causal):
            w = torch.ones_like(v[..., :1]) if key_padding_mask is None else \\
                key_padding_mask[:, None, :, None].to(v.dtype).expand_as(v[..., :1])
            w, vv = self._acc(w), self._acc(v) * self._acc(w)
            if causal:
                s, n = vv.cumsum(2), w.cumsum(2)
            else:
                s, n = vv.sum(2, keepdim=True), w.sum(2, keepdim=True)
            mean = s / n.clamp_min(1.0)
            return (torch.sigmoid(self._acc(q)) * self.scale * mean).to(v.dtype)

        def init_state(self, batch_size=1, device=None, dtype=None):
            self._require_step()
            f = self.state_factory(device, dtype)
            return {"s": torch.zeros(batch_size, self.num_heads, self.head_dim, **f),
                    "n": torch.zeros(batch_size, self.num_heads, 1, **f)}

        def step_attend(self, q, k, v, state):
            s = state["s"] + v.to(state["s"].dtype)
            n = state["n"] + 1
            y = torch.sigmoid(q.to(s.dtype)) * self.scale * s / n
            return y.to(v.dtype), {"s": s, "n": n}

        def state_numel(self, seq_len):
            return self.num_heads * (self.head_dim + 1)
''')

USE = textwrap.dedent('''
    import json, sys, timm, torch
    import toy_backend  # noqa: F401  (registers it)
    import ea_zoo
    from ea_zoo.cli import main
    from ea_zoo.models import SEQUENCE_FAMILIES
    from ea_zoo.models.factory import load_config

    assert "toy_backend" in ea_zoo.list_attentions()
    # every ViT size, with timm
    for size in ("tiny", "small", "base"):
        assert f"vit_{size}_patch16_224_toy_backend" in timm.list_models("*toy_backend")
    vit = timm.create_model("vit_tiny_patch16_224_toy_backend", img_size=32, patch_size=8, depth=2, embed_dim=32,
                            num_heads=4, num_classes=3)
    assert vit.blocks[0].attn.attention_name == "toy_backend" and vit(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    # every sequence family
    for fam in SEQUENCE_FAMILIES:
        kw = dict(depth=2, embed_dim=16, num_heads=2)
        m = ea_zoo.create_model(f"{fam}_toy_backend", **kw)
        assert all(b.attn.attention_name == "toy_backend" for b in m.blocks), fam
        x = torch.randint(0, m.vocab_size, (2, 6)) if m.vocab_size else torch.randn(2, 6, m.in_chans)
        assert torch.isfinite(m(x)).all(), fam
    lm = ea_zoo.create_model("lm_toy_backend", depth=2, embed_dim=16, num_heads=2, attention="toy_backend+sa@1")
    assert lm.generate(torch.randint(0, 256, (1, 3)), max_new_tokens=2).shape == (1, 5)
    # its YAML (one file in the config folder) and validated overrides
    cfg = load_config("tsc", ["attention=toy_backend", "attention.scale=2.0"])
    assert dict(cfg.attention) == {"name": "toy_backend", "scale": 2.0}, cfg.attention
    try:
        load_config("tsc", ["attention=toy_backend", "attention.gain=2"])
        raise SystemExit("attention.gain was accepted")
    except ValueError as e:
        assert "valid options: scale, causal" in str(e), e
    # the three cost tools
    out = sys.argv[1]
    assert main(["complexity", "--preset", "tiny", "--backends", "toy_backend,toy_backend+sa@1", "--no-time",
                 "--lengths", "16,32", "--dims", "8,16", "--no-plot", "--quiet", "--out", out + "/cx"]) == 0
    fits = json.load(open(out + "/cx/complexity.json"))["fits"]
    assert {"toy_backend", "toy_backend+sa@1"} <= set(fits)
    assert main(["train-cost", "--preset", "tiny", "--backends", "toy_backend", "--no-curve", "--lengths", "16,32",
                 "--no-plot", "--quiet", "--out", out + "/tc"]) == 0
    assert main(["infer-cost", "--preset", "tiny", "--backends", "toy_backend", "--lengths", "4,8",
                 "--batch-sizes", "1", "--no-plot", "--quiet", "--out", out + "/ic"]) == 0
    rows = json.load(open(out + "/ic/infer_cost.json"))["results"]
    assert {r["state_numel_per_seq"] for r in rows if r["backend"] == "toy_backend"} == {2 * (16 + 1)}  # H (d + 1)
    print("OK")
''')


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("EA_ZOO_PLUGINS", "EA_ZOO_CONFIG_DIR", "PYTHONPATH")}
    # this checkout's package first (not whichever ea_zoo the interpreter has installed)
    env.update(PYTHONPATH=os.pathsep.join([str(tmp_path / "plugins"), str(REPO)]), OMP_NUM_THREADS="1", **extra)
    return env


def test_a_backend_is_one_module_plus_one_yaml(tmp_path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "toy_backend.py").write_text(TOY)
    configs = tmp_path / "configs"  # the shipped configs plus the backend's one YAML
    shutil.copytree(config_dir(), configs, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (configs / "attention" / "toy_backend.yaml").write_text("# toy_backend: mean pooling (tests)\nname: toy_backend\n"
                                                             "scale: 1.0\n")
    r = subprocess.run([sys.executable, "-c", USE, str(tmp_path / "out")], capture_output=True, text=True,
                       timeout=600, cwd=tmp_path, env=_env(tmp_path, EA_ZOO_CONFIG_DIR=str(configs)))
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout[-3000:] + r.stderr[-3000:]

    # the conformance suite parametrises over it: EA_ZOO_PLUGINS imports it in `import ea_zoo`
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "toy_backend",
                        "tests/attention/test_conformance.py"], capture_output=True, text=True, timeout=600,
                       cwd=REPO, env=_env(tmp_path, EA_ZOO_PLUGINS="toy_backend"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "failed" not in r.stdout and "deselected" in r.stdout, r.stdout[-2000:]
    assert int(r.stdout.split(" passed")[0].split()[-1]) >= 30  # every contract test ran for it

    # and nothing of it is in the package
    assert "toy_backend" not in ea_zoo.list_attentions()
    assert not list(Path(ea_zoo.__file__).parent.rglob("toy_backend*"))


def test_a_plugin_that_cannot_be_imported_is_named():
    import pytest

    with pytest.raises(ImportError, match=r"EA_ZOO_PLUGINS plugin 'no_such_plugin_module' cannot be imported"):
        ea_zoo.load_plugins("json, no_such_plugin_module")  # what `import ea_zoo` runs on $EA_ZOO_PLUGINS
    assert ea_zoo.load_plugins(" json ,") == ["json"] and ea_zoo.load_plugins("") == []
