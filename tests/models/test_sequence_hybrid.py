"""Per-layer (hybrid) attention in the sequence model: EA-6 with softmax attention at chosen
layers, in the label, list and mapping forms. Parallel forward == step by step == prefill in
pieces (float64), each layer decodes with its own kind of state, the config round-trips, and
bad per-layer specs name the bad value and the depth."""
import json

import pytest
import torch

import ea_zoo
from ea_zoo.models import SequenceTransformer
from ea_zoo.registry import parse_attention
from ea_zoo.testing import check_model_decoding

TINY = dict(depth=3, embed_dim=16, num_heads=2, dropout=0.0)
FORMS = {
    "label": "ea6+sa@1",
    "list": ["ea6", "sa", "ea6"],
    "mapping": {"default": "ea6", "layers": {1: "sa"}},
}


def _hybrid_lm(attention, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    m = SequenceTransformer(attention, task="lm", vocab_size=13, causal=True, **{**TINY, **kw})
    return m.to(dtype).eval()


def _kinds(model):
    return [b.attn.attention_name for b in model.blocks]


@pytest.mark.parametrize("form", FORMS, ids=list(FORMS))
def test_hybrid_layers_are_the_specs_layers(form):
    m = _hybrid_lm(FORMS[form])
    assert _kinds(m) == ["ea_series", "sa", "ea_series"]
    assert m.blocks[0].attn.order == 6 and all(b.attn.causal for b in m.blocks)
    assert m.config["attention"] == parse_attention(FORMS[form]).to_config() == m.attention_spec


@pytest.mark.parametrize("norm_first", [False, True], ids=["post_ln", "pre_ln"])
@pytest.mark.parametrize("form", FORMS, ids=list(FORMS))
def test_hybrid_parallel_equals_step_equals_prefill_in_pieces(form, norm_first):
    m = _hybrid_lm(FORMS[form], norm_first=norm_first)
    ids = torch.randint(0, 13, (2, 10))
    check_model_decoding(m, ids, 3, 8)
    # and greedy decoding with the mixed state equals the parallel re-run
    prompt = ids[:, :3]
    assert torch.equal(m.generate(prompt, 4), m.generate(prompt, 4, use_cache=False))


def test_hybrid_state_is_each_layers_own_kind():
    m = _hybrid_lm("ea6+sa@1")
    state = m.init_state(2)
    for blk, st in zip(m.blocks, state["layers"]):
        assert sorted(st) == sorted(blk.attn.init_state(2))
    sizes = []
    for t in range(5):
        _, state = m.step(torch.tensor([t, t]), state)
        sizes.append([sum(v.numel() for v in st.values() if torch.is_tensor(v)) for st in state["layers"]])
    assert len({s[0] for s in sizes}) == 1 and len({s[2] for s in sizes}) == 1  # EA-6: fixed size
    assert [s[1] for s in sizes] == sorted({s[1] for s in sizes})  # SA: a growing KV cache


def test_hybrid_state_numel_is_the_sum_over_layers():
    m = _hybrid_lm("ea6+sa@1")
    ea6 = ea_zoo.create_attention("ea6", 16, 2, causal=True)
    sa = ea_zoo.create_attention("sa", 16, 2, causal=True)
    for L in (1, 10, 1000):
        assert m.state_numel(L) == 2 * ea6.state_numel(L) + sa.state_numel(L)
        assert m.state_numel(L) == sum(b.attn.state_numel(L) for b in m.blocks)
    assert m.state_numel(1000) > m.state_numel(10)  # the SA layer's cache grows


def test_hybrid_max_decode_len_is_the_min_over_layers():
    # aft_local without max_len takes the model's; with its own max_len keeps it
    m = _hybrid_lm({"default": "ea6", "layers": {0: "aft_local"}}, max_len=32)
    assert m.blocks[0].attn.max_len == 32 and m.max_decode_len() == 32
    m = _hybrid_lm({"default": "ea6", "layers": {2: {"name": "aft_local", "max_len": 20}}}, max_len=32,
                   pos_embed="learned")
    assert m.blocks[2].attn.max_len == 20 and m.max_decode_len() == 20
    assert _hybrid_lm("ea6+sa@1").max_decode_len() is None
    with pytest.raises(ValueError, match="exceeds max_len=20"):
        m.generate(torch.zeros(1, 4, dtype=torch.long), 17)


@pytest.mark.parametrize("form", FORMS, ids=list(FORMS))
def test_hybrid_config_round_trips(form):
    m = ea_zoo.create_model("lm", attention=FORMS[form], vocab_size=13, **TINY)
    assert m.config["attention"] == parse_attention(FORMS[form]).to_config()
    for attention in (m.config["attention"], json.loads(json.dumps(m.config["attention"]))):
        m2 = ea_zoo.create_model("lm", attention=attention, vocab_size=13, **TINY)
        assert _kinds(m2) == _kinds(m)
        assert {k: v.shape for k, v in m2.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}
        assert m2.config == m.config
    # a named variant takes a per-layer override too
    assert _kinds(ea_zoo.create_model("lm_ea6", attention=FORMS[form], vocab_size=13, **TINY)) == _kinds(m)


@pytest.mark.parametrize("attention, match", [
    ("ea6+sa@3", r"layer index 3 is out of range for a model of depth 3"),
    ({"default": "ea6", "layers": {5: "sa"}}, r"layer index 5 is out of range for a model of depth 3"),
    ("ea6+sa@1,1", r"attention layer 1 is given twice"),
    (["ea6", "sa"], r"lists 2 specs but the model has depth 3"),
    (["ea6", "sa", "ea6", "sa"], r"lists 4 specs but the model has depth 3"),
    ({"default": "ea6", "layers": {1: "nope"}}, r"unknown attention 'nope'"),
    ({"default": "ea6", "layers": {1: {"name": "sa", "causal": False}}},
     r"causal=False \(layer 1: 'sa_causalFalse'\) but the model has causal=True; set causal on the model only"),
])
def test_bad_per_layer_specs_name_the_value_and_depth(attention, match):
    with pytest.raises(ValueError, match=match):
        SequenceTransformer(attention, task="lm", vocab_size=13, causal=True, **TINY)
    with pytest.raises(ValueError, match=match):
        ea_zoo.create_model("lm", attention=attention, vocab_size=13, **TINY)


def test_hybrid_encoder_classifier():
    """Non-causal hybrids work too (parallel form; pooling heads)."""
    m = SequenceTransformer("ea6+sa@0", task="classify", in_chans=3, num_classes=4, **TINY).eval()
    assert _kinds(m) == ["sa", "ea_series", "ea_series"] and not any(b.attn.causal for b in m.blocks)
    assert m(torch.randn(2, 5, 3)).shape == (2, 4)
