"""register_attention / register_alias / add_registration_hook, through the public API only.

Registering is permanent for a process (every hook has run: timm names, sequence models), so
the round trip runs in a fresh interpreter and leaves this test session's registry as it is.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ea_zoo import create_attention, list_attentions
from ea_zoo.attention import BACKEND_MODULES

SCRIPT = textwrap.dedent('''
    import pytest, timm, torch
    import ea_zoo
    from ea_zoo import AttentionBase, create_attention, list_attentions, register_alias, register_attention
    from ea_zoo.registry import add_registration_hook

    seen = []
    add_registration_hook(seen.append)
    assert set(seen) == set(list_attentions())  # every name now ...

    @register_attention("t_identity")
    class Identity(AttentionBase):
        description = "identity mixing (test)"

        def __init__(self, *args, gain: float = 1.0, **kw):
            super().__init__(*args, **kw)
            self.gain = gain

        def attend(self, q, k, v, key_padding_mask, causal):
            return v * self.gain

    register_alias("t_identity2", "t_identity", gain=2.0)
    assert seen[-2:] == ["t_identity", "t_identity2"]  # ... and every one registered later
    assert {"t_identity", "t_identity2"} <= set(list_attentions())
    assert "t_identity2" not in list_attentions(include_aliases=False)
    m = create_attention("t_identity2", dim=8, num_heads=2)
    assert m.gain == 2.0 and Identity.attention_name == "t_identity"
    assert create_attention("t_identity2", dim=8, num_heads=2, gain=3.0).gain == 3.0
    with pytest.raises(ValueError, match="valid options: gain, causal"):
        create_attention("t_identity", dim=8, num_heads=2, gian=3.0)
    with pytest.raises(ValueError, match="already registered"):
        register_attention("t_identity")(Identity)
    with pytest.raises(ValueError, match="unknown attention"):
        register_alias("t_x", "t_missing")
    with pytest.raises(ValueError, match="must be an identifier"):
        register_attention("t-dash")
    assert m(torch.randn(1, 3, 8)).shape == (1, 3, 8)
    # the hooks gave the new names their models
    assert "vit_tiny_patch16_224_t_identity2" in timm.list_models("vit_*t_identity*")
    assert "lm_t_identity" in ea_zoo.list_models("lm_t_*") and "vit_base_patch16_224_t_identity" in ea_zoo.list_models()
    v = timm.create_model("vit_tiny_patch16_224_t_identity2", img_size=16, patch_size=8, depth=1, embed_dim=8,
                          num_heads=2)
    assert v.blocks[0].attn.gain == 2.0 and "identity mixing" in v.pretrained_cfg["description"]
    print("OK")
''')


def test_register_alias_and_hooks_in_a_fresh_process():
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr


def test_every_module_of_the_attention_package_is_imported():
    assert {"sa", "la", "ea", "ea_series", "aft_full", "aft_local", "aft_simple", "hedgehog", "taylor"} \
        <= set(BACKEND_MODULES)
    assert "t_identity" not in list_attentions()  # the subprocess left this registry alone


def test_bad_config_type():
    with pytest.raises(TypeError, match="name"):
        create_attention(42, dim=8)
