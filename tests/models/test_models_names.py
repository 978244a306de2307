"""Every registered model name builds with its real config (meta device, parameter count) and
runs forward + backward at a tiny size on CPU."""
import functools

import pytest
import timm
import torch
from timm.models.vision_transformer import Attention

import ea_zoo
from ea_zoo.models import SEQUENCE_FAMILIES, SEQUENCE_MODELS, SHORT_NAMES, VIT_BACKENDS, VIT_MODEL_NAMES
from ea_zoo.models.factory import SEQUENCE_FAMILIES as FAMILIES

VIT_TINY = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=4)
SEQ_TINY = dict(depth=2, embed_dim=32, num_heads=4)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


ALL_NAMES = ea_zoo.list_models()


def _backend_of(name):
    """Default backend of a registered name (None for a bare family name)."""
    if name in SHORT_NAMES:
        return SHORT_NAMES[name][1]
    for b in sorted(VIT_BACKENDS, key=len, reverse=True):
        if name.endswith("_" + b):
            return b
    return None


def _family_of(name):
    for f in SEQUENCE_FAMILIES:
        if name == f or name.startswith(f + "_"):
            return f
    return None


def _need_backend(name):
    b = _backend_of(name)
    if b is not None and b not in ea_zoo.list_attentions():
        pytest.skip(f"attention backend {b!r} is not registered")
    return b


def test_name_lists():
    """Every registered attention name and alias has its ViT and sequence names (from the
    registry, so VIT_BACKENDS is read at each use)."""
    assert tuple(VIT_BACKENDS) == tuple(ea_zoo.list_attentions()) == ea_zoo.models.vit_backends()
    assert VIT_BACKENDS == tuple(ea_zoo.list_attentions()) and "ea6" in VIT_BACKENDS and len(VIT_BACKENDS) >= 14
    assert {"sa", "la", "la_identity", "aft_full", "aft_simple", "aft_local", "hedgehog", "taylor", "ea",
            "ea_series", "ea2", "ea4", "ea6", "ea8"} <= set(VIT_BACKENDS)
    expected_vit = {f"vit_{s}_patch16_224_{b}" for s in ("tiny", "small", "base") for b in VIT_BACKENDS}
    expected_vit |= {"vit_sa", "vit_la", "vit_aft", "vit_hedgehog", "vit_taylor", "vit_ea", "vit_ea2", "vit_ea6"}
    assert set(VIT_MODEL_NAMES) == expected_vit and "vit_ea6" in VIT_MODEL_NAMES
    # registered with timm, found by timm's own listing
    assert expected_vit <= set(timm.list_models("vit_*"))
    assert {n for n in expected_vit if "ea" in n.split("patch16_224")[-1] or n.startswith("vit_ea")} \
        <= set(timm.list_models("vit_*ea*"))
    assert set(timm.list_models(module="vit")) == expected_vit
    for f in FAMILIES:
        assert f in SEQUENCE_MODELS and all(f"{f}_{b}" in SEQUENCE_MODELS for b in VIT_BACKENDS)
    assert set(ea_zoo.list_models()) == set(SEQUENCE_MODELS) | expected_vit
    assert ea_zoo.list_models("tsc_ea*") == ["tsc_ea", "tsc_ea2", "tsc_ea4", "tsc_ea6", "tsc_ea8", "tsc_ea_series"]
    assert "vit_small_patch16_224" in ea_zoo.list_models("vit_small_patch16_224*", include_timm=True)


def test_model_cards_describe_the_backend_from_the_backend():
    """The timm pretrained cfg's description comes from the backend class (description +
    paper_equation), not from a table in the model module."""
    from ea_zoo.models import attention_description

    cfg = timm.models.get_pretrained_cfg("vit_tiny_patch16_224_ea2")
    cls = ea_zoo.get_attention_cls("ea2")
    assert cls.description in cfg.description and "order=2" in cfg.description
    assert cls.paper_equation in cfg.description
    assert attention_description("ea6+sa@1").endswith("at layers 1")
    for name in ea_zoo.list_attentions(include_aliases=False):
        assert ea_zoo.get_attention_cls(name).description, name  # every backend describes itself


def _tiny_input(name, model):
    fam = _family_of(name)
    if fam is None:
        return (torch.randn(2, 3, 32, 32),)
    if model.vocab_size is not None:
        return (torch.randint(0, model.vocab_size, (2, 8)),)
    return (torch.randn(2, 8, model.in_chans),)


def _tiny_kwargs(name):
    fam = _family_of(name)
    if fam is None:
        return dict(VIT_TINY, num_classes=5)
    kw = dict(SEQ_TINY)
    if fam == "bert_base":
        kw.update(vocab_size=50, max_len=16)
    if fam == "lm":
        kw.update(vocab_size=50)
    return kw


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_name_forward_backward(name):
    _need_backend(name)
    attention = "ea6" if name in FAMILIES else None
    model = ea_zoo.create_model(name, attention=attention, **_tiny_kwargs(name))
    x = _tiny_input(name, model)
    y = model(*x)
    assert torch.isfinite(y).all()
    y.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    # the name's default backend is the one in the model
    b = _backend_of(name)
    if b is not None:
        attn = model.blocks[0].attn
        assert attn.attention_name == ea_zoo.get_attention_cls(b).attention_name


@functools.lru_cache(maxsize=None)
def _timm_param_count(name):
    with torch.device("meta"):
        return n_params(timm.create_model(name))


def _attn_extra_params(attn_cls, dim, heads):
    """Parameters one backend layer has beyond timm's softmax Attention (qkv_bias=True)."""
    with torch.device("meta"):
        return n_params(attn_cls(dim, num_heads=heads, qkv_bias=True)) - n_params(
            Attention(dim, num_heads=heads, qkv_bias=True))


@pytest.mark.parametrize("name", [n for n in ALL_NAMES if n in VIT_MODEL_NAMES])
def test_vit_real_config_param_count(name):
    """Real 224 config on the meta device: timm's ViT parameter count plus the backend's own."""
    _need_backend(name)
    base = "vit_small_patch16_224" if name in SHORT_NAMES else name.split("_patch16_224")[0] + "_patch16_224"
    with torch.device("meta"):
        model = timm.create_model(name)
    assert model.patch_embed.num_patches == 196 and model.pretrained_cfg["input_size"] == (3, 224, 224)
    attn_cls = type(model.blocks[0].attn)
    extra = _attn_extra_params(attn_cls, model.embed_dim, model.blocks[0].attn.num_heads)
    assert n_params(model) == _timm_param_count(base) + len(model.blocks) * extra
    if attn_cls.length_option is not None:  # filled with the token count
        assert attn_cls.bound_options[attn_cls.length_option] == 197  # 14 x 14 patches + cls token


@pytest.mark.parametrize("name", [n for n in ALL_NAMES if n in SEQUENCE_MODELS])
def test_sequence_real_config_meta(name):
    _need_backend(name)
    fam = _family_of(name)
    with torch.device("meta"):
        model = ea_zoo.create_model(name, attention="ea6" if name == fam else None)
    d = FAMILIES[fam]
    assert (model.depth, model.embed_dim, model.num_heads, model.causal, model.norm_first) == (
        d["depth"], d["embed_dim"], d["num_heads"], d["causal"], d["norm_first"])
    if name == "bert_base_sa":
        # 12 x (attention 4D^2+4D, FFN 8D^2+5D, 2 LN 4D) + token/position embeddings + embedding LN
        D, V = 768, 30522
        assert n_params(model) == V * D + 512 * D + 2 * D + 12 * (12 * D * D + 13 * D) == 108_890_112
        assert model.blocks[0].mlp.fc1.out_features == 3072


def test_family_name_needs_attention():
    with pytest.raises(ValueError, match="needs an attention backend"):
        ea_zoo.create_model("tsc")
    assert ea_zoo.create_model("tsc", attention="sa", **SEQ_TINY).blocks[0].attn.attention_name == "sa"


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        ea_zoo.create_model("nope")
