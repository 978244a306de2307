"""Per-layer (hybrid) attention in every ViT: timm names, any timm ViT, ea_zoo.create_model and
build_model; errors before anything is built; export round trip; host arguments carried."""
import copy
import json
import pickle

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

import ea_zoo
from ea_zoo.registry import parse_attention

VIT_TINY = dict(img_size=32, patch_size=8, depth=4, embed_dim=32, num_heads=4, num_classes=3)


def kinds(model):
    return [b.attn.attention_name for b in model.blocks]


@pytest.mark.parametrize("form", [
    "ea6+sa@1,3",
    ["ea6", "sa", "ea6", "sa"],
    {"default": "ea6", "layers": {1: "sa", "3": "sa"}},
])
def test_every_form_through_timm_create_model(form, images):
    m = timm.create_model("vit_ea6", attention=form, **VIT_TINY)
    assert isinstance(m, VisionTransformer)
    assert kinds(m) == ["ea_series", "sa", "ea_series", "sa"] and m.blocks[0].attn.order == 6
    assert m.attention_spec == parse_attention(form).to_config()
    y = m(images)
    y.sum().backward()
    assert y.shape == (2, 3) and all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_generic_timm_vit_and_factory_entry_points(images):
    m = ea_zoo.create_model("vit_small_patch16_224", attention="ea2+sa@0", **VIT_TINY)
    assert kinds(m) == ["sa", "ea_series", "ea_series", "ea_series"] and m.blocks[1].attn.order == 2
    assert m.attention_spec == {"default": "ea2", "layers": {0: "sa"}} and "attn_layer" not in m._model_args
    assert m(images).shape == (2, 3)
    m = ea_zoo.create_model("vit_tiny_patch16_224_la", attention={"default": "la", "layers": {2: "aft_full"}},
                            **VIT_TINY)
    assert kinds(m) == ["la", "la", "aft_full", "la"] and m.blocks[2].attn.max_len == 17  # 16 patches + cls
    m = ea_zoo.build_model("vit_tiny", ["model.img_size=32", "model.patch_size=8", "model.depth=3",
                                        "model.embed_dim=32", "model.num_heads=4", "attention.layers.2=sa"])
    assert kinds(m) == ["ea_series", "ea_series", "sa"]


@pytest.mark.parametrize("attention, match", [
    ("ea6+sa@4", r"index 4 is out of range for a model of depth 4 \(valid indices 0..3\)"),
    (["ea6", "sa"], r"lists 2 specs but the model has depth 4"),
    ({"default": "ea6", "layers": {"1": "sa", 1: "la"}}, r"layer 1 is given twice"),
    ("ea6+nosuch@1", r"unknown attention 'nosuch'"),
    ("ea6+sa@1,x", r"index 'x' must be a non-negative int"),
])
def test_bad_per_layer_specs_fail_before_any_model_is_built(attention, match, monkeypatch):
    init = VisionTransformer.__init__

    def built(self, *args, **kwargs):  # the depth probe of a timm name builds on the meta device only
        if torch.empty(()).device.type != "meta":
            raise AssertionError("a model was built")
        init(self, *args, **kwargs)

    monkeypatch.setattr(VisionTransformer, "__init__", built)
    for make in (lambda: timm.create_model("vit_ea6", attention=attention, **VIT_TINY),
                 lambda: ea_zoo.create_model("vit_small_patch16_224", attention=attention, **VIT_TINY)):
        with pytest.raises(ValueError, match=match):
            make()


def test_replaced_layers_keep_the_host_arguments():
    m = timm.create_model("vit_ea6", attention="ea6+sa@1", qkv_bias=True, qk_norm=True, proj_drop_rate=0.1,
                          **VIT_TINY)
    ea, sa = m.blocks[0].attn, m.blocks[1].attn
    assert sa.host_config()["norm_layer"].keywords == {"eps": 1e-6}
    for k in ("dim", "num_heads", "qkv_bias", "qk_norm", "scale_norm", "proj_bias", "attn_drop", "proj_drop"):
        assert sa.host_config()[k] == ea.host_config()[k], k
    assert sa.qkv.bias is not None and isinstance(sa.q_norm, torch.nn.LayerNorm) and sa.q_norm.eps == 1e-6
    assert sa.proj_drop.p == 0.1
    # every projection is initialised as timm initialises the ViT (trunc normal, std 0.02)
    assert 0.01 < float(sa.qkv.weight.detach().std()) < 0.03 and float(sa.qkv.bias.detach().abs().max()) == 0.0


def test_export_config_round_trip_and_state_dict(tmp_path, images):
    from timm.models._hub import save_config_for_hf

    m = ea_zoo.create_model("vit_ea6", attention={"default": "ea6", "layers": {2: "sa"}}, **VIT_TINY).eval()
    path = tmp_path / "config.json"
    save_config_for_hf(m, str(path))
    cfg = json.loads(path.read_text())
    assert cfg["model_args"]["attention"] == {"default": "ea6", "layers": {"2": "sa"}}
    rebuilt = timm.create_model(cfg["architecture"], **cfg["model_args"]).eval()
    assert kinds(rebuilt) == kinds(m)
    rebuilt.load_state_dict(m.state_dict(), strict=True)
    assert torch.equal(rebuilt(images), m(images))
    # a softmax-attention checkpoint loads: only backend-specific extras may be missing
    sa = timm.create_model("vit_tiny_patch16_224_sa", **VIT_TINY)
    res = m.load_state_dict(sa.state_dict(), strict=False)
    assert res.unexpected_keys == [] and res.missing_keys == []


def test_pickle_deepcopy_features_and_meta(images):
    m = timm.create_model("vit_ea6", attention="ea2+sa@1", **VIT_TINY).eval()
    ref = m(images)
    assert torch.equal(pickle.loads(pickle.dumps(m))(images), ref)
    assert torch.equal(copy.deepcopy(m)(images), ref)
    fm = timm.create_model("vit_ea6", attention="ea2+sa@1", features_only=True, out_indices=(1, 3), **VIT_TINY)
    assert [t.shape for t in fm(images)] == [(2, 32, 4, 4)] * 2
    with torch.device("meta"):
        big = timm.create_model("vit_ea6", attention="ea6+sa@3,7,11")
    assert [i for i, b in enumerate(big.blocks) if b.attn.attention_name == "sa"] == [3, 7, 11]


def test_host_config_rebuilds_any_backend_in_the_same_slot():
    a = ea_zoo.create_attention("ea6", dim=16, num_heads=2, qkv_bias=True, scale_norm=True, attn_drop=0.1)
    b = ea_zoo.get_attention_cls("la")(**a.host_config())
    assert b.qkv.bias is not None and isinstance(b.norm, torch.nn.LayerNorm) and b.attn_drop.p == 0.1
    assert ea_zoo.create_attention("sa", dim=16, num_heads=2).host_config()["norm_layer"] is None
