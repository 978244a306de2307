"""Sequence Transformer (Feng 2025 section 4.1): tasks, inputs, positions, padding, and
recurrent decoding == parallel causal forward for every steppable backend."""
import pytest
import torch

import ea_zoo
from ea_zoo import StepNotSupportedError
from ea_zoo.models import SequenceTransformer, SinusoidalTimeEmbedding
from ea_zoo.registry import get_attention_cls
from ea_zoo.testing import check_model_decoding

SEQ_TINY = dict(depth=2, embed_dim=16, num_heads=2, dropout=0.0)
STEPPABLE = [n for n in ea_zoo.list_attentions() if get_attention_cls(n).supports_step]


def _opts(backend):
    """AFT-full/local size their position biases by max_len: keep it small."""
    return dict(max_len=16) if "max_len" in ea_zoo.registry.attention_options(get_attention_cls(backend)) else {}


# ----------------------------------------------------------------------------- tasks / shapes
def test_task_outputs():
    x = torch.randn(3, 9, 4)
    enc = SequenceTransformer("ea6", task="encode", in_chans=4, **SEQ_TINY)
    assert enc(x).shape == (3, 9, 16)
    clf = SequenceTransformer("ea6", task="classify", in_chans=4, num_classes=5, **SEQ_TINY)
    assert clf(x).shape == (3, 5)
    fc = SequenceTransformer("ea6", task="forecast", in_chans=4, pred_len=6, out_chans=2, causal=True, **SEQ_TINY)
    assert fc(x).shape == (3, 6, 2) and fc.pool == "last"
    lm = SequenceTransformer("ea6", task="lm", vocab_size=11, causal=True, tie_weights=True, **SEQ_TINY)
    assert lm(torch.randint(0, 11, (3, 9))).shape == (3, 9, 11) and lm.head.weight is lm.embed.weight
    cls = SequenceTransformer("ea6", task="classify", in_chans=4, num_classes=5, pool="cls", **SEQ_TINY)
    assert cls.forward_features(x).shape == (3, 10, 16) and cls(x).shape == (3, 5)
    clf.reset_classifier(2)
    assert clf(x).shape == (3, 2)


def test_post_ln_and_pre_ln_structure():
    x = torch.randn(2, 5, 3)
    post = SequenceTransformer("sa", in_chans=3, **SEQ_TINY)
    pre = SequenceTransformer("sa", in_chans=3, norm_first=True, **SEQ_TINY)
    assert isinstance(post.norm, torch.nn.Identity) and isinstance(pre.norm, torch.nn.LayerNorm)
    # post-LN: every block output is layer-normalised (zero mean, unit variance per token)
    h = post(x)
    assert torch.allclose(h.mean(-1), torch.zeros(2, 5), atol=1e-5)
    blk = post.blocks[0]
    z = torch.randn(2, 5, 16)
    ref = blk.norm2(blk.norm1(z + blk.attn(z)) + blk.mlp(blk.norm1(z + blk.attn(z))))
    assert torch.allclose(blk(z), ref, atol=1e-6)
    blk = pre.blocks[0]
    a = z + blk.attn(blk.norm1(z))
    assert torch.allclose(blk(z), a + blk.mlp(blk.norm2(a)), atol=1e-6)


def test_padding_is_ignored_by_pooling_and_attention():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 3)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 4:] = False
    for pool, causal in (("mean", False), ("cls", False), ("last", True), ("mean", True)):
        m = SequenceTransformer("ea6", task="classify", in_chans=3, num_classes=4, pool=pool, causal=causal,
                                **SEQ_TINY).eval()
        y = m(x, padding_mask=mask)
        x2 = x.clone()
        x2[0, 4:] = 100.0  # garbage in the padding
        assert torch.allclose(m(x2, padding_mask=mask), y, atol=1e-5), pool
        # the padded sequence gives what its unpadded prefix gives
        assert torch.allclose(m(x[:1, :4])[0], y[0], atol=1e-5), pool


def test_timestamps_sinusoidal_and_learned():
    pe = SinusoidalTimeEmbedding(8)
    t = torch.tensor([[0.0, 1.0, 2.5]])
    e = pe(t)
    assert e.shape == (1, 3, 8)
    assert torch.allclose(e[0, 2, 0], torch.sin(torch.tensor(2.5))) and torch.allclose(e[0, 2, 1], torch.cos(torch.tensor(2.5)))
    m = SequenceTransformer("ea6", in_chans=2, **SEQ_TINY).eval()
    x = torch.randn(2, 5, 2)
    default = m(x)
    assert torch.allclose(m(x, timestamps=torch.arange(5.0)), default, atol=1e-6)
    irregular = torch.tensor([[0.0, 0.3, 1.7, 2.0, 9.5]] * 2)
    assert not torch.allclose(m(x, timestamps=irregular), default)
    with pytest.raises(ValueError, match="timestamps must have shape"):
        m(x, timestamps=torch.zeros(2, 4))
    lrn = SequenceTransformer("ea6", in_chans=2, pos_embed="learned", max_len=8, **SEQ_TINY)
    assert lrn(x).shape == (2, 5, 16) and lrn.pos_embed.weight.shape == (8, 16)
    with pytest.raises(ValueError, match="integer positions"):
        lrn(x, timestamps=irregular)
    with pytest.raises(ValueError, match="max_len=8"):
        lrn(torch.randn(1, 9, 2))


@pytest.mark.parametrize("kwargs, match", [
    (dict(task="translate", in_chans=2), "task='translate' is not valid; allowed values: 'encode'"),
    (dict(in_chans=2, vocab_size=5), "exactly one of in_chans"),
    (dict(in_chans=2, pos_embed="rope"), "allowed values: 'sinusoidal', 'learned', 'none'"),
    (dict(task="classify", in_chans=2, num_classes=3, pool="max"), "allowed values: 'mean', 'cls', 'last'"),
    (dict(task="classify", in_chans=2, num_classes=3, pool="cls", causal=True), "pool='cls' needs an encoder"),
    (dict(task="lm", vocab_size=5), "causal=True"),
    (dict(in_chans=2, num_classes=3), "num_classes is only used by task='classify'"),
    (dict(task="forecast", vocab_size=5, pred_len=2), "continuous input"),
    (dict(in_chans=2, depth=0), "depth must be an int >= 1"),
    (dict(in_chans=2, num_heads=3), "must divide embed_dim"),
])
def test_invalid_arguments_name_the_key(kwargs, match):
    args = {**dict(embed_dim=16, num_heads=2), **kwargs}
    with pytest.raises(ValueError, match=match):
        SequenceTransformer("ea6", **args)


def test_attention_config_and_causal_conflict():
    m = ea_zoo.create_model("tsc_ea6", attention={"name": "ea_series", "order": 2}, **SEQ_TINY)
    assert all(b.attn.order == 2 and not b.attn.causal for b in m.blocks)
    assert all(b.attn.causal for b in ea_zoo.create_model("tsf_sa", **SEQ_TINY).blocks)
    with pytest.raises(ValueError, match="set causal on the model"):
        ea_zoo.create_model("tsc_ea6", attention={"name": "ea6", "causal": True})


# ----------------------------------------------------------------------------- recurrent form
def _lm(backend, norm_first, dtype=torch.float64):
    torch.manual_seed(0)
    m = SequenceTransformer(backend, task="lm", vocab_size=13, causal=True, norm_first=norm_first,
                            **SEQ_TINY, **_opts(backend))
    return m.to(dtype).eval()


@pytest.mark.parametrize("norm_first", [False, True], ids=["post_ln", "pre_ln"])
@pytest.mark.parametrize("backend", STEPPABLE)
def test_step_equals_parallel_causal_forward(backend, norm_first):
    m = _lm(backend, norm_first)
    ids = torch.randint(0, 13, (2, 9))
    with torch.no_grad():
        full = m(ids)
        state = m.init_state(2)
        steps = []
        for t in range(ids.shape[1]):
            y, state = m.step(ids[:, t], state)
            steps.append(y)
    assert state["t"] == 9
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", STEPPABLE)
def test_generate_cached_equals_uncached(backend):
    m = _lm(backend, norm_first=False)
    prompt = torch.randint(0, 13, (2, 3))
    out = m.generate(prompt, max_new_tokens=5)
    assert out.shape == (2, 8) and torch.equal(out[:, :3], prompt)
    assert torch.equal(out, m.generate(prompt, max_new_tokens=5, use_cache=False))


@pytest.mark.parametrize("backend", STEPPABLE)
def test_prefill_in_pieces_then_step_equals_forward(backend):
    m = _lm(backend, norm_first=True)
    check_model_decoding(m, torch.randint(0, 13, (2, 11)), 4, 9)


def test_generate_refuses_past_a_backends_max_len_before_decoding(monkeypatch):
    m = ea_zoo.create_model("lm_aft_local", depth=1, embed_dim=16, num_heads=2, max_len=32).eval()
    calls = []
    monkeypatch.setattr(m, "step", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(m, "prefill", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match="exceeds max_len=32"):
        m.generate(torch.zeros(1, 4, dtype=torch.long), 40)
    assert calls == []


@pytest.mark.parametrize("norm_first", [False, True], ids=["post_ln", "pre_ln"])
def test_causal_ea6_prefix_unaffected_by_later_tokens_at_trained_scale(norm_first):
    """The issue's model-level check: q/k/v weights x10 and keys centred at 20 (a trained
    layer's scale): a forward on 64 tokens and on the first 16 agree exactly on positions
    0-15, and step agrees with forward (before the fix: 1e-2 off, 3% of the output)."""
    torch.manual_seed(0)
    m = SequenceTransformer("ea6", task="lm", vocab_size=60, causal=True, embed_dim=32, depth=2, num_heads=4,
                            norm_first=norm_first).eval()
    with torch.no_grad():
        for blk in m.blocks:
            blk.attn.qkv.weight.mul_(10)
            blk.attn.qkv.bias[32:64] = 20.0
        x = torch.randint(0, 60, (2, 64))
        a, b = m(x), m(x[:, :16])
        assert (a[:, :16] - b).abs().max().item() == 0.0
        state = m.init_state(2)
        steps = []
        for t in range(64):
            y, state = m.step(x[:, t], state)
            steps.append(y)
        assert (torch.stack(steps, 1) - a).abs().max().item() <= 1e-5 * a.abs().max().item()


def test_recurrent_state_is_constant_size_for_recurrent_backends():
    recurrent = [n for n in STEPPABLE if get_attention_cls(n).recurrent]
    assert "ea6" in recurrent and "sa" not in recurrent
    for backend in ("ea6", "sa"):
        m = _lm(backend, norm_first=False)
        state = m.init_state(1)
        sizes = []
        for t in range(6):
            _, state = m.step(torch.tensor([t]), state)
            sizes.append(sum(v.numel() for s in state["layers"] for v in s.values() if torch.is_tensor(v)))
        if backend == "ea6":
            assert len(set(sizes)) == 1
            assert m.state_numel(10) == m.state_numel(1000)
        else:
            assert sizes == sorted(sizes) and sizes[-1] > sizes[0]


def test_forecaster_and_causal_classifier_step_match_forward_on_prefix():
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    ts = torch.tensor([0.0, 0.5, 1.1, 2.0, 2.2, 3.0], dtype=torch.float64)
    for kw in (dict(task="forecast", pred_len=4), dict(task="classify", num_classes=3, pool="mean")):
        m = SequenceTransformer("ea6", in_chans=3, causal=True, **SEQ_TINY, **kw).double().eval()
        state = m.init_state(2)
        with torch.no_grad():
            for t in range(6):
                y, state = m.step(x[:, t], state, timestamp=float(ts[t]))  # a Python number works too
                ref = m(x[:, : t + 1], timestamps=ts[: t + 1])
                torch.testing.assert_close(y, ref, rtol=1e-9, atol=1e-10)


def test_step_errors():
    enc = SequenceTransformer("ea6", in_chans=2, **SEQ_TINY)
    with pytest.raises(ValueError, match="causal model"):
        enc.init_state(1)
    m = _lm("ea6", norm_first=False)
    with pytest.raises(ValueError, match="generate needs task='lm'"):
        ea_zoo.create_model("tsf_ea6", **SEQ_TINY).generate(torch.zeros(1, 2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="prompt must be token ids"):
        m.generate(torch.randn(1, 3), 2)


def test_backend_without_step_raises_its_error(monkeypatch):
    m = _lm("ea6", norm_first=False)
    monkeypatch.setattr(type(m.blocks[0].attn), "supports_step", False)
    with pytest.raises(StepNotSupportedError, match="no recurrent/decoding form"):
        m.generate(torch.zeros(1, 2, dtype=torch.long), 3)
    # the parallel path still works
    assert m.generate(torch.zeros(1, 2, dtype=torch.long), 3, use_cache=False).shape == (1, 5)


# ----------------------------------------------------------------------------- layout, families
def test_state_dict_keys_keep_the_flat_layout():
    """Backbone + head modules, but the checkpoint keys of the model before the split."""
    m = SequenceTransformer("ea6", task="classify", in_chans=3, num_classes=4, pool="cls", depth=1, embed_dim=16,
                            num_heads=2, embed_norm=True, norm_first=True)
    assert list(m.state_dict()) == [
        "cls_token", "embed.weight", "embed.bias", "embed_norm.weight", "embed_norm.bias",
        "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias", "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias",
        "blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc1.bias",
        "blocks.0.mlp.fc2.weight", "blocks.0.mlp.fc2.bias", "blocks.0.norm2.weight", "blocks.0.norm2.bias",
        "norm.weight", "norm.bias", "head.weight", "head.bias"]
    lm = SequenceTransformer("ea6", task="lm", vocab_size=7, causal=True, pos_embed="learned", max_len=8, depth=1,
                             embed_dim=16, num_heads=2)
    assert {"embed.weight", "pos_embed.weight", "head.weight"} <= set(lm.state_dict()) and "head.bias" not in lm.state_dict()
    m2 = SequenceTransformer("ea6", task="classify", in_chans=3, num_classes=4, pool="cls", depth=1, embed_dim=16,
                             num_heads=2, embed_norm=True, norm_first=True)
    m2.load_state_dict(m.state_dict())  # strict


def test_model_records_its_config():
    m = SequenceTransformer({"name": "ea_series", "order": 4}, task="forecast", in_chans=2, pred_len=3, causal=True,
                            **SEQ_TINY)
    assert m.config["attention"] == {"name": "ea_series", "order": 4} == m.attention_spec
    assert m.config["model"]["pred_len"] == 3 and "name" not in m.config["model"]
    rebuilt = SequenceTransformer(attention=m.config["attention"], **m.config["model"])
    assert rebuilt.state_dict().keys() == m.state_dict().keys()
    f = ea_zoo.create_model("tsf_ea2", **SEQ_TINY)
    assert f.model_name == "tsf_ea2" and f.config["model"]["name"] == "tsf" and f.config["attention"] == "ea2"


def test_family_yaml_holds_only_the_name_and_defaults_come_from_the_family_dict():
    from omegaconf import OmegaConf
    from ea_zoo.models.factory import config_dir
    from ea_zoo.models.sequence_families import SEQUENCE_FAMILIES

    for fam, defaults in SEQUENCE_FAMILIES.items():
        cfg = OmegaConf.to_container(OmegaConf.load(config_dir() / "model" / f"{fam}.yaml"))
        assert cfg == {"model": {"name": fam}, "attention": "ea6"}, fam
        with torch.device("meta"):
            m = ea_zoo.build_model(fam)
        assert m.config["model"] == {"name": fam, **defaults}
    assert ea_zoo.models.SEQUENCE_FAMILIES is ea_zoo.models.factory.SEQUENCE_FAMILIES is SEQUENCE_FAMILIES
    # switching the input kind drops the other default
    m = ea_zoo.build_model("bert_base", ["model.in_chans=3", "model.depth=1", "model.embed_dim=16",
                                         "model.num_heads=2", "model.max_len=8"])
    assert m.in_chans == 3 and m.vocab_size is None


def test_every_registered_backend_has_its_sequence_names():
    """Names come from a registration hook; tests/test_new_backend.py registers a backend later
    (in a subprocess) and finds its names."""
    from ea_zoo.models import sequence_families as fams

    assert all(f"{f}_{b}" in fams.SEQUENCE_MODELS for f in fams.SEQUENCE_FAMILIES for b in ea_zoo.list_attentions())


def test_entrypoints_are_explicit_functions():
    from ea_zoo.models import sequence_families as fams

    for fam in fams.SEQUENCE_FAMILIES:
        assert fams.SEQUENCE_MODELS[fam] is getattr(fams, fam)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['depht'\] for model 'tsc'; allowed keys: task"):
        ea_zoo.create_model("tsc_ea6", depht=3)
