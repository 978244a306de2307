import pytest
import torch

from ea_zoo import AttentionBase, create_attention, list_attentions, register_alias, register_attention
from ea_zoo.registry import _ALIASES, _BACKENDS


def test_register_and_alias_roundtrip():
    @register_attention("_test_identity")
    class _Identity(AttentionBase):
        def __init__(self, dim, num_heads=8, *args, gain: float = 1.0, **kw):
            super().__init__(dim, num_heads, *args, **kw)
            self.gain = gain

        def attend(self, q, k, v, key_padding_mask, causal):
            return v * self.gain

    try:
        register_alias("_test_identity2", "_test_identity", gain=2.0)
        assert "_test_identity" in list_attentions() and "_test_identity2" in list_attentions()
        assert "_test_identity2" not in list_attentions(include_aliases=False)
        m = create_attention("_test_identity2", dim=8, num_heads=2)
        assert m.gain == 2.0 and _Identity.attention_name == "_test_identity"
        assert create_attention("_test_identity2", dim=8, num_heads=2, gain=3.0).gain == 3.0
        with pytest.raises(ValueError, match="already registered"):
            register_attention("_test_identity")(_Identity)
        with pytest.raises(ValueError, match="unknown attention"):
            register_alias("_x", "_missing")
        assert m(torch.randn(1, 3, 8)).shape == (1, 3, 8)
    finally:
        _BACKENDS.pop("_test_identity", None)
        _ALIASES.pop("_test_identity2", None)


def test_bad_config_type():
    with pytest.raises(TypeError, match="name"):
        create_attention(42, dim=8)
