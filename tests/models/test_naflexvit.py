"""timm's NaFlexViT with patch padding runs with every ea_zoo backend: the padding mask timm
builds from ``patch_valid`` (additive, ``finfo.min``; symmetric (B, 1, L, L) by default, key-only
(B, 1, 1, L) with ``use_key_only_attn_mask``) reaches the backends, and padded patches do not
influence the valid tokens."""
import pytest
import timm
import torch

import ea_zoo
from ea_zoo import create_attention, list_attentions

DIM, HEADS, P, GRID = 32, 2, 4, 3  # 3 x 3 patches of 4 x 4 + 1 register token: L = 10
N = GRID * GRID


def naflexvit(**kw):
    torch.manual_seed(0)
    return timm.create_model(
        "naflexvit_base_patch16_gap", pretrained=False, embed_dim=DIM, depth=2, num_heads=HEADS,
        patch_size=P, num_classes=5, pos_embed_grid_size=(GRID, GRID), reg_tokens=1, **kw,
    )


def with_backend(model, name):
    """Every block's ``attn`` replaced by the ea_zoo backend ``name`` (timm's qkv_bias=True)."""
    L = N + model.num_prefix_tokens
    for blk in model.blocks:
        kw = {"max_len": L} if name in ("aft_full", "aft_local") else {}
        blk.attn = create_attention(name, dim=DIM, num_heads=HEADS, qkv_bias=True, **kw)
    return model.double().eval()


def inputs(B=2):
    g = torch.Generator().manual_seed(1)
    patches = torch.randn(B, N, P * P * 3, generator=g, dtype=torch.float64)
    yy, xx = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    coord = torch.stack([yy.flatten(), xx.flatten()], -1).expand(B, N, 2)
    valid = torch.ones(B, N, dtype=torch.bool)
    valid[1, -4:] = False  # the second image has 5 real patches, 4 padding
    return patches, coord, valid


def features(model, patches, coord, valid):
    return model.forward_features(patches=patches, patch_coord=coord, patch_valid=valid)["patches"]


@pytest.mark.parametrize("key_only", [False, True])
@pytest.mark.parametrize("name", list_attentions())
def test_padded_patches_do_not_influence_valid_tokens(name, key_only):
    model = with_backend(naflexvit(use_key_only_attn_mask=key_only), name)
    seen = []
    model.blocks[0].attn.register_forward_pre_hook(
        lambda mod, args, kw: seen.append(kw["attn_mask"]), with_kwargs=True)
    patches, coord, valid = inputs()
    npt = model.num_prefix_tokens
    tok_valid = torch.cat([torch.ones(2, npt, dtype=torch.bool), valid], 1)
    with torch.no_grad():
        f = features(model, patches, coord, valid)
        logits = model(dict(patches=patches, patch_coord=coord, patch_valid=valid))
        mask = seen[0]
        L = N + npt
        assert mask.shape == ((2, 1, 1, L) if key_only else (2, 1, L, L)) and mask.is_floating_point()
        # other values at the padded patches: valid tokens and the (masked-pooled) logits unchanged
        p2 = patches.clone()
        p2[~valid] = torch.randn_like(p2[~valid]) * 100
        torch.testing.assert_close(features(model, p2, coord, valid)[tok_valid], f[tok_valid], rtol=1e-9, atol=1e-9)
        logits2 = model(dict(patches=p2, patch_coord=coord, patch_valid=valid))
        torch.testing.assert_close(logits2, logits, rtol=1e-9, atol=1e-9)
        # NaN at the padded patches never reaches a valid token
        p3 = patches.clone()
        p3[~valid] = float("nan")
        f3 = features(model, p3, coord, valid)
        torch.testing.assert_close(f3[tok_valid], f[tok_valid], rtol=1e-9, atol=1e-9)


def test_backend_as_timm_attn_layer():
    """The timm way: the backend class handed to NaFlexViT as ``attn_layer``."""
    cls = ea_zoo.get_attention_cls("ea6")
    model = naflexvit(attn_layer=cls).double().eval()
    assert all(isinstance(blk.attn, cls) for blk in model.blocks)
    patches, coord, valid = inputs()
    with torch.no_grad():
        y = model(dict(patches=patches, patch_coord=coord, patch_valid=valid))
        p2 = patches.clone()
        p2[~valid] = 50.0
        y2 = model(dict(patches=p2, patch_coord=coord, patch_valid=valid))
    assert y.shape == (2, 5) and torch.isfinite(y).all()
    torch.testing.assert_close(y2, y, rtol=1e-9, atol=1e-9)
