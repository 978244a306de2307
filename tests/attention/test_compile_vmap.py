"""No host sync, no data-dependent Python branch in any backend's forward: every backend runs
under ``torch.compile(fullgraph=True, backend="aot_eager")`` (forward and backward) and
``torch.func.vmap`` (forward, and per-example gradients), causal and non-causal, with and
without a key-padding mask, and on empty inputs; plus a compiled timm ViT and sequence models.

Dynamo's tracing costs seconds per backend on a 2-core machine, so the compile tests run one
name per backend class (aliases such as ea4 / ea6 are ea2's code with another option) and
put several forms into one compiled function."""
import warnings

import pytest
import torch

import ea_zoo
from ea_zoo import create_attention, list_attentions

NAMES = list_attentions()
D, H, B, L = 16, 2, 2, 12


def _one_per_class(names):
    seen = {}
    for n in names:
        seen.setdefault(ea_zoo.get_attention_cls(n), n)
    return list(seen.values())


CLASSES = _one_per_class(NAMES)
# SDPA has no batching rule on CPU: vmap loops over it, correctly, with a warning
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make(name, causal=False):
    kw = {"max_len": 32} if name in ("aft_full", "aft_local") else {}
    torch.manual_seed(0)
    return create_attention(name, dim=D, num_heads=H, causal=causal, **kw)


def padding():
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 8:] = False
    mask[1, :2] = False
    return mask


def additive(keep, fill=float("-inf")):
    return torch.zeros(keep.shape).masked_fill(~keep, fill)


def timm_masks(mask):
    """timm's additive forms (finfo.min): key-only (B, 1, 1, L) and NaFlexViT's symmetric (B, 1, L, L)."""
    sym = (mask[:, :, None] & mask[:, None, :])[:, None]
    fmin = torch.finfo(torch.float32).min
    return additive(mask[:, None, None, :], fmin), additive(sym, fmin)


def compiled(fn):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="aot_eager")


def check_compiled(fn, m, x, *args, grad=True):
    x1 = x.clone().requires_grad_(grad)
    ref = fn(m, x1, *args)
    x2 = x.clone().requires_grad_(grad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = compiled(fn)(m, x2, *args)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)
    if grad:
        ref.sum().backward()
        y.sum().backward()
        torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-4, atol=1e-4)


def masked_forms(m, x, mask):
    """Non-causal and causal with a bool key-padding mask."""
    return torch.stack([m(x, attn_mask=mask, is_causal=False), m(x, attn_mask=mask, is_causal=True)])


@pytest.mark.parametrize("name", CLASSES)
def test_compile_fullgraph(name):
    """Forward and backward, masked, non-causal and causal (the causal EA-series scan synced
    with the host and broke the graph). Unmasked forms: the model tests below; float masks:
    :func:`test_compile_float_mask_forms`."""
    check_compiled(masked_forms, make(name), torch.randn(B, L, D), padding())


def float_forms(m, x, fm, key_only, sym):
    return torch.stack([m(x, attn_mask=fm), m(x, attn_mask=key_only, is_causal=True), m(x, attn_mask=sym)])


@pytest.mark.parametrize("name", ["sa", "ea2"])
def test_compile_float_mask_forms(name):
    """Additive float masks, (B, L) and timm's (B, 1, 1, L) / (B, 1, L, L), compile: their value
    checks are eager-only, their conversion is shared code."""
    mask = padding()
    check_compiled(float_forms, make(name), torch.randn(B, L, D), additive(mask), *timm_masks(mask), grad=False)


def test_compile_softmax_integer_mask():
    """'sa' with an integer 0/1 mask (its value check was a host sync in the graph)."""
    check_compiled(lambda m, x, im: m(x, attn_mask=im), make("sa"), torch.randn(B, L, D), padding().long())


def test_compile_softmax_general_masks():
    """'sa' with a float bias (B, L) and a general (L, L) mask, in one graph."""
    def forms(m, x, fm, tril):
        return torch.stack([m(x, attn_mask=fm), m(x, attn_mask=tril)])

    check_compiled(forms, make("sa"), torch.randn(B, L, D), torch.randn(B, L),
                   torch.ones(L, L, dtype=torch.bool).tril(), grad=False)


def all_forms(m, x, mask):
    """Non-causal and causal, without and with a bool key-padding mask."""
    return torch.stack([m(x), m(x, attn_mask=mask), m(x, is_causal=True), m(x, attn_mask=mask, is_causal=True)])


@pytest.mark.parametrize("name", NAMES)
def test_vmap(name):
    """vmap over a batch of inputs (and of masks) equals the loop; vmap(grad) gives the
    per-example input gradients."""
    m = make(name)
    V = 3
    xs = torch.randn(V, B, L, D)
    mask = padding()
    ys = torch.func.vmap(lambda x: all_forms(m, x, mask))(xs)
    for i in range(V):
        torch.testing.assert_close(ys[i], all_forms(m, xs[i], mask), rtol=1e-5, atol=1e-6)
    masks = torch.stack([mask, mask.flip(-1), torch.ones_like(mask)])
    ym = torch.func.vmap(lambda x, km: m(x, attn_mask=km, is_causal=True))(xs, masks)
    for i in range(V):
        torch.testing.assert_close(ym[i], m(xs[i], attn_mask=masks[i], is_causal=True), rtol=1e-5, atol=1e-6)
    for causal in (False, True):
        g = torch.func.vmap(torch.func.grad(lambda x: m(x, attn_mask=mask, is_causal=causal).square().sum()))(xs)
        for i in (0, V - 1):
            xi = xs[i].clone().requires_grad_()
            m(xi, attn_mask=mask, is_causal=causal).square().sum().backward()
            torch.testing.assert_close(g[i], xi.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_vmap_float_masks(name):
    """vmap with additive float masks: (B, L), timm's (B, 1, 1, L) and (B, 1, L, L), and a
    batch of float masks."""
    m = make(name)
    xs = torch.randn(3, B, L, D)
    mask = padding()
    forms = (additive(mask), *timm_masks(mask))
    for causal in (False, True):
        for fm in forms:
            y = torch.func.vmap(lambda x: m(x, attn_mask=fm, is_causal=causal))(xs)
            torch.testing.assert_close(y[1], m(xs[1], attn_mask=fm, is_causal=causal), rtol=1e-5, atol=1e-6)
    fms = additive(torch.stack([mask, mask.flip(-1), torch.ones_like(mask)]))
    y = torch.func.vmap(lambda x, fm: m(x, attn_mask=fm))(xs, fms)
    torch.testing.assert_close(y[1], m(xs[1], attn_mask=fms[1]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CLASSES)
def test_empty_input_under_compile_and_vmap(name):
    m = make(name, causal=True)
    x = torch.randn(B, 0, D)
    y = compiled(m)(x, attn_mask=torch.ones(B, 0, dtype=torch.bool))
    assert y.shape == (B, 0, D)
    assert torch.func.vmap(m)(torch.randn(3, B, 0, D)).shape == (3, B, 0, D)


def _compile_check(model, *args, **kwargs):
    model.eval()
    ref = model(*args, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = compiled(model)(*args, **kwargs)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    out.float().square().mean().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_compiled_timm_vit():
    import timm

    model = timm.create_model("vit_ea6", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                              num_classes=10)
    _compile_check(model, torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("arch", ["tsc_ea6", "lm_ea6"])
def test_compiled_sequence_models(arch):
    """Forward and backward of unmasked (lm, causal) and masked (tsc) sequence models."""
    if arch == "tsc_ea6":
        model = ea_zoo.create_model(arch, in_chans=3, num_classes=5, embed_dim=32, depth=1, num_heads=2)
        _compile_check(model, torch.randn(2, L, 3), padding_mask=padding())
    else:
        model = ea_zoo.create_model(arch, embed_dim=32, depth=1, num_heads=2)
        _compile_check(model, torch.randint(0, 256, (2, L)))


def test_compiled_learned_positions_model():
    """Learned position embeddings check position values in eager only (no host sync)."""
    m = ea_zoo.create_model("lm_ea6", pos_embed="learned", max_len=16, depth=1, embed_dim=16,
                            num_heads=2, vocab_size=11).eval()
    x = torch.randint(0, 11, (2, 8))
    c = torch.compile(m, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(c(x), m(x))
    with pytest.raises(ValueError, match="positions must lie in"):
        m(torch.randint(0, 11, (1, 20)))
