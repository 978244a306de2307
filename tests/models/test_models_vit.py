"""timm behaviour of the ea_zoo ViTs: they are timm's VisionTransformer with a swapped
attention, so the whole timm API must work (tiny sizes: 32x32 images, 8x8 patches)."""
import json

import pytest
import timm
import torch
from timm.models import create_feature_extractor
from timm.models.vision_transformer import VisionTransformer

import ea_zoo
from ea_zoo.models import TORCHSCRIPT_STATUS, VIT_BACKENDS, TorchScriptUnsupportedError, bind_attention
from ea_zoo.models.binding import attention_label
from ea_zoo.models.vit import script_model, torchscript_support

VIT_TINY = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=4)
BACKENDS = [b for b in VIT_BACKENDS if b in ea_zoo.list_attentions()]


def tiny(name="vit_tiny_patch16_224_ea6", **kw):
    return timm.create_model(name, **{**VIT_TINY, "num_classes": 5, **kw})


# ----------------------------------------------------------------------------- construction
def test_create_by_timm_names_and_override(images):
    m = timm.create_model("vit_ea6", num_classes=10, img_size=32, patch_size=4)
    assert isinstance(m, VisionTransformer)
    assert type(m.blocks[0].attn).__name__ == "EASeriesAttention_ea6" and m.blocks[0].attn.order == 6
    assert m(images).shape == (2, 10) and m.patch_embed.num_patches == 64
    # attention override by name and by config dict
    m4 = tiny("vit_ea6", attention="ea4")
    assert m4.blocks[0].attn.order == 4 and m4.attention_spec == "ea4"
    m8 = tiny("vit_ea6", attention={"name": "ea_series", "order": 8, "learn_temperature": True})
    assert m8.blocks[0].attn.order == 8 and isinstance(m8.blocks[0].attn.log_temperature, torch.nn.Parameter)
    assert type(m8.blocks[0].attn).__name__ == "EASeriesAttention_ea8_learn_temperature"
    # vit_aft is AFT-simple; vit_sa is timm's ViT-S layout
    assert tiny("vit_aft").blocks[0].attn.attention_name == "aft_simple"
    with torch.device("meta"):
        assert timm.create_model("vit_sa").embed_dim == 384


def test_bound_classes_are_cached_subclasses():
    a = bind_attention("ea6")
    assert a is bind_attention("ea6") is bind_attention({"name": "ea_series", "order": 6})
    assert issubclass(a, ea_zoo.get_attention_cls("ea_series")) and a.__name__ == "EASeriesAttention_ea6"
    assert bind_attention("ea6", causal=True).__name__ == "EASeriesAttention_ea6_causal"
    assert bind_attention("ea6", causal=True)(16, num_heads=2).causal
    with pytest.raises(ValueError, match="valid options"):
        bind_attention({"name": "ea_series", "ordr": 4})
    with pytest.raises(ValueError, match="set by the model"):
        bind_attention({"name": "sa", "qkv_bias": False})
    with pytest.raises(ValueError, match="unknown attention"):
        tiny(attention="nope")
    with pytest.raises(ValueError, match="not attn_layer"):
        tiny(attn_layer=bind_attention("sa"))


def test_aft_max_len_from_token_count():
    for name in ("vit_tiny_patch16_224_aft_full", "vit_tiny_patch16_224_aft_local"):
        if name.split("224_")[1] not in ea_zoo.list_attentions():
            continue
        m = tiny(name)
        assert m.blocks[0].attn.max_len == 16 + 1  # (32/8)^2 patches + cls token
        m = tiny(name, reg_tokens=2, img_size=40)
        assert m.blocks[0].attn.max_len == 25 + 3
        assert m(torch.randn(1, 3, 40, 40)).shape == (1, 5)
        # explicit max_len in the attention config wins
        assert tiny(name, attention={"name": name.split("224_")[1], "max_len": 64}).blocks[0].attn.max_len == 64


def test_generic_timm_vit_attention_swap(images):
    m = ea_zoo.create_model("vit_small_patch16_224", attention="ea6", **VIT_TINY, num_classes=3)
    assert type(m.blocks[0].attn).__name__ == "EASeriesAttention_ea6" and m.attention_spec == "ea6"
    assert "attn_layer" not in m._model_args and m(images).shape == (2, 3)
    from omegaconf import OmegaConf
    m = ea_zoo.create_model("deit_tiny_patch16_224", attention=OmegaConf.create({"name": "ea_series", "order": 2}),
                            **VIT_TINY)
    assert m.blocks[0].attn.order == 2 and m.attention_spec == {"name": "ea_series", "order": 2}
    if "aft_full" in ea_zoo.list_attentions():
        m = ea_zoo.create_model("vit_small_patch16_224", attention="aft_full", **VIT_TINY)
        assert m.blocks[0].attn.max_len == 17
    with pytest.raises(ValueError, match="attn_layer"):
        ea_zoo.create_model("resnet18", attention="ea6")
    # without attention, plain timm
    assert type(ea_zoo.create_model("vit_small_patch16_224", **VIT_TINY).blocks[0].attn).__name__ == "Attention"


# ----------------------------------------------------------------------------- timm API
def test_forward_features_head_and_reset_classifier(images):
    m = tiny().eval()
    f = m.forward_features(images)
    assert f.shape == (2, 17, 32)
    assert torch.allclose(m.forward_head(f), m(images))
    assert m.forward_head(f, pre_logits=True).shape == (2, 32)
    m.reset_classifier(7)
    assert m(images).shape == (2, 7) and m.get_classifier().out_features == 7
    m.reset_classifier(0, global_pool="avg")
    assert m(images).shape == (2, 32)


def test_grad_checkpointing_same_output_and_grads(images):
    m = tiny(drop_path_rate=0.0)
    y0 = m(images)
    y0.sum().backward()
    g0 = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.set_grad_checkpointing(True)
    assert m.grad_checkpointing
    y1 = m(images)
    y1.sum().backward()
    assert torch.allclose(y0, y1, atol=1e-6)
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(g0, m.parameters()))


def test_forward_intermediates_and_features_only(images):
    m = tiny().eval()
    final, inter = m.forward_intermediates(images, indices=2)
    assert final.shape == (2, 17, 32) and [t.shape for t in inter] == [(2, 32, 4, 4)] * 2
    assert torch.allclose(final, m.forward_features(images), atol=1e-6)
    only = m.forward_intermediates(images, indices=[0], output_fmt="NLC", intermediates_only=True)
    assert only[0].shape == (2, 16, 32)
    fm = timm.create_model("vit_tiny_patch16_224_ea6", features_only=True, out_indices=(0, 1), **VIT_TINY)
    feats = fm(images)
    assert [t.shape for t in feats] == [(2, 32, 4, 4)] * 2
    assert fm.feature_info.channels() == [32, 32]


@pytest.mark.parametrize("backend", BACKENDS)
def test_fx_feature_extraction(backend, images):
    """torch.fx through timm's create_feature_extractor (attention backends are leaf modules)."""
    m = tiny(f"vit_tiny_patch16_224_{backend}").eval()
    fe = create_feature_extractor(m, return_nodes={"blocks.1": "b1", "head": "logits"})
    out = fe(images)
    assert out["b1"].shape == (2, 17, 32)
    assert torch.allclose(out["logits"], m(images), atol=1e-6)


def test_fx_features_only_graph_net(images):
    fm = timm.create_model("vit_tiny_patch16_224_ea6", features_only=True, feature_cls="fx", out_indices=(1,),
                           **VIT_TINY)
    assert fm(images)[0].shape == (2, 17, 32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torchscript_scripts_or_records_reason(backend, images):
    """Either the ViT scripts and matches eager, or script_model raises a clear error that names
    the backend and the statement TorchScript cannot compile, and the reason is recorded."""
    ok, reason = torchscript_support(backend)
    label = attention_label(backend)
    assert label in TORCHSCRIPT_STATUS and TORCHSCRIPT_STATUS[label] == reason
    m = tiny(f"vit_tiny_patch16_224_{backend}").eval()
    if ok:
        assert reason is None
        s = script_model(m)
        assert torch.allclose(s(images), m(images), atol=1e-6)
    else:
        assert reason and len(reason) > 10
        with pytest.raises(TorchScriptUnsupportedError) as e:
            script_model(m)
        assert backend in str(e.value) and reason in str(e.value) and "torch.compile" in str(e.value)


def test_torch_compile_matches_eager(images):
    """torch.compile of the ViT: dynamo + AOT autograd with the 'aot_eager' backend (inductor's
    C++ compilation takes ~40 s on 2 CPU cores, too slow for the suite)."""
    torch._dynamo.reset()
    m = tiny("vit_tiny_patch16_224_ea6")
    c = torch.compile(m, backend="aot_eager")
    y = c(images)
    y.sum().backward()
    g = m.blocks[0].attn.qkv.weight.grad.clone()
    m.zero_grad()
    y_ref = m(images)
    y_ref.sum().backward()
    assert torch.allclose(y, y_ref, atol=1e-5) and torch.allclose(g, m.blocks[0].attn.qkv.weight.grad, atol=1e-5)


# ----------------------------------------------------------------------------- weights
def test_state_dict_round_trip(tmp_path, images):
    m = tiny("vit_tiny_patch16_224_ea6", attention={"name": "ea_series", "order": 6, "learn_temperature": True})
    path = tmp_path / "m.pth"
    torch.save(m.state_dict(), path)
    m2 = tiny("vit_tiny_patch16_224_ea6", attention={"name": "ea_series", "order": 6, "learn_temperature": True})
    m2.load_state_dict(torch.load(path, weights_only=True))
    m.eval(), m2.eval()
    assert torch.equal(m(images), m2(images))


def test_timm_softmax_vit_checkpoint_loads_into_ea_vit():
    """timm's own ViT (softmax Attention) and the EA ViT share every parameter name."""
    ref = timm.create_model("vit_tiny_patch16_224", **VIT_TINY, num_classes=5)
    m = tiny("vit_tiny_patch16_224_ea6")
    m.load_state_dict(ref.state_dict(), strict=True)
    assert torch.equal(m.blocks[1].attn.qkv.weight, ref.blocks[1].attn.qkv.weight)


@pytest.mark.skipif("sa" not in ea_zoo.list_attentions(), reason="sa backend not registered")
@pytest.mark.parametrize("backend", BACKENDS)
def test_sa_state_dict_loads_into_every_backend(backend):
    sa = tiny("vit_tiny_patch16_224_sa")
    sd = sa.state_dict()
    m = tiny(f"vit_tiny_patch16_224_{backend}")
    res = m.load_state_dict(sd, strict=False)
    assert res.unexpected_keys == []
    own = set(m.state_dict())
    assert set(res.missing_keys) == own - set(sd)
    # only the backend's own extra parameters may be missing, never the shared projections
    shared = ("qkv.weight", "qkv.bias", "proj.weight", "proj.bias")
    assert all(".attn." in k and not k.endswith(shared) for k in res.missing_keys)
    assert torch.equal(m.blocks[0].attn.qkv.weight, sa.blocks[0].attn.qkv.weight)
    assert torch.equal(m.blocks[0].attn.proj.bias, sa.blocks[0].attn.proj.bias)


@pytest.mark.skipif("sa" not in ea_zoo.list_attentions(), reason="sa backend not registered")
def test_sa_state_dict_into_ea_with_learned_temperature_reports_only_temperatures():
    sd = tiny("vit_tiny_patch16_224_sa").state_dict()
    m = tiny("vit_tiny_patch16_224_ea6", attention={"name": "ea_series", "order": 6, "learn_temperature": True})
    res = m.load_state_dict(sd, strict=False)
    assert res.missing_keys == ["blocks.0.attn.log_temperature", "blocks.1.attn.log_temperature"]
    assert res.unexpected_keys == []
    with pytest.raises(RuntimeError, match="log_temperature"):
        m.load_state_dict(sd, strict=True)


def test_pretrained_without_weights_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"no pretrained weights.*pretrained_cfg_overlay=dict\(file="):
        timm.create_model("vit_ea6", pretrained=True)
    assert timm.create_model("vit_ea6", pretrained=False, **VIT_TINY) is not None
    assert not timm.models.is_model_pretrained("vit_ea6")
    cfg = timm.create_model("vit_ea6", **VIT_TINY).pretrained_cfg
    assert cfg["architecture"] == "vit_ea6" and cfg["num_classes"] == 1000 and cfg["first_conv"] == "patch_embed.proj"


def test_local_checkpoint_via_pretrained_cfg_overlay_and_checkpoint_path(tmp_path, images):
    src = timm.create_model("vit_tiny_patch16_224_ea6", **VIT_TINY).eval()  # 1000 classes like the cfg
    path = str(tmp_path / "vit_ea6.pth")
    torch.save(src.state_dict(), path)
    a = timm.create_model("vit_tiny_patch16_224_ea6", pretrained=True, pretrained_cfg_overlay=dict(file=path),
                          **VIT_TINY).eval()
    b = timm.create_model("vit_tiny_patch16_224_ea6", checkpoint_path=path, **VIT_TINY).eval()
    ref = src(images)
    assert torch.equal(a(images), ref) and torch.equal(b(images), ref)
    # a new head: timm drops the classifier of the file and keeps the rest
    c = timm.create_model("vit_tiny_patch16_224_ea6", pretrained=True, pretrained_cfg_overlay=dict(file=path),
                          **VIT_TINY, num_classes=3)
    assert torch.equal(c.blocks[1].attn.qkv.weight, src.blocks[1].attn.qkv.weight) and c(images).shape == (2, 3)


def test_export_config_records_attention_and_rebuilds(tmp_path):
    from timm.models._hub import save_config_for_hf

    spec = {"name": "ea_series", "order": 4}
    m = timm.create_model("vit_ea6", attention=spec, **VIT_TINY, num_classes=7)
    path = tmp_path / "config.json"
    save_config_for_hf(m, str(path))
    cfg = json.loads(path.read_text())
    assert cfg["architecture"] == "vit_ea6" and cfg["model_args"]["attention"] == spec
    rebuilt = timm.create_model(cfg["architecture"], **cfg["model_args"])
    assert rebuilt.blocks[0].attn.order == 4 and rebuilt.num_classes == 7
    assert rebuilt.state_dict().keys() == m.state_dict().keys()
    # the default backend is recorded too
    m = timm.create_model("vit_ea6", **VIT_TINY)
    save_config_for_hf(m, str(path))
    assert json.loads(path.read_text())["model_args"]["attention"] == "ea6"


def test_pickle_and_deepcopy_of_bound_backends(images):
    """Bound attention classes pickle by (backend, options): torch.save(model), deepcopy and
    ddp_spawn work, and unpickling in a fresh process (empty class cache) rebuilds the class."""
    import copy
    import io
    import pickle

    m = tiny("vit_tiny_patch16_224_ea6", attention={"name": "ea_series", "order": 4}).eval()
    ref = m(images)
    data = pickle.dumps(m)
    # pickled by (backend class, options), never by the dynamic class's name, so a fresh
    # process (no bound class cached yet) rebuilds it
    assert b"EASeriesAttention_ea4" not in data and b"_restore_bound" in data
    m2 = pickle.loads(data)
    assert type(m2.blocks[0].attn).__name__ == "EASeriesAttention_ea4" and torch.equal(m2(images), ref)
    assert torch.equal(copy.deepcopy(m)(images), ref)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(images), ref)
