"""Task heads standalone: forward on a whole sequence, step token by token (== forward on the
prefix), prefill in pieces; pooling; the model's task -> head table and its argument checks."""
import pytest
import torch

from ea_zoo.models import SequenceTransformer
from ea_zoo.models.heads import (HEADS, TASKS, ClassifierHead, EncoderHead, ForecastHead, LMHead, SequenceHead,
                                 SequencePool, resolve_head)

D = 8


@pytest.fixture
def h():
    torch.manual_seed(0)
    return torch.randn(2, 6, D, dtype=torch.float64)


def _heads():
    torch.manual_seed(0)
    return {
        "encode": EncoderHead(D),
        "lm": LMHead(D, 11),
        "classify_mean": ClassifierHead(D, 5, pool="mean"),
        "classify_last": ClassifierHead(D, 5, pool="last"),
        "forecast_last": ForecastHead(D, pred_len=4, out_chans=3, pool="last"),
        "forecast_mean": ForecastHead(D, pred_len=4, out_chans=3, pool="mean"),
    }


def _prefix_out(name, head, h, t):
    """What step t should give: the whole-sequence output at t for per-token heads, the output
    on the prefix h[:, :t+1] for pooled ones."""
    if name in ("encode", "lm"):
        return head(h)[:, t]
    return head(h[:, : t + 1])


def test_task_table():
    assert TASKS == ("encode", "classify", "forecast", "lm")
    assert all(issubclass(HEADS[t], SequenceHead) and HEADS[t].task == t for t in TASKS)


@pytest.mark.parametrize("name", list(_heads()))
def test_head_forward_step_prefill(name, h):
    head = _heads()[name].double().eval()
    out = head(h)
    shapes = {"encode": (2, 6, D), "lm": (2, 6, 11), "classify_mean": (2, 5), "classify_last": (2, 5),
              "forecast_last": (2, 4, 3), "forecast_mean": (2, 4, 3)}
    assert out.shape == shapes[name]
    state = head.init_state(2)
    for t in range(h.shape[1]):
        y, state = head.step(h[:, t], state)
        torch.testing.assert_close(y, _prefix_out(name, head, h, t), rtol=1e-12, atol=1e-12)
    # prefill in pieces, then step: the same outputs
    a, st = head.prefill(h[:, :2], head.init_state(2))
    b, st = head.prefill(h[:, 2:5], st)
    c, st = head.step(h[:, 5], st)
    if name in ("encode", "lm"):
        torch.testing.assert_close(torch.cat([a, b, c[:, None]], 1), out, rtol=1e-12, atol=1e-12)
    else:
        torch.testing.assert_close(b, head(h[:, :5]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(c, out, rtol=1e-12, atol=1e-12)
    # no state: the head starts one
    y, _ = head.step(h[:, 0])
    torch.testing.assert_close(y, _prefix_out(name, head, h, 0), rtol=1e-12, atol=1e-12)


def test_pooling_is_padding_aware(h):
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 3:] = False
    for pool in ("mean", "last"):
        p = SequencePool(pool)
        y = p(h, mask)
        torch.testing.assert_close(y[0], p(h[:1, :3])[0])
        torch.testing.assert_close(y[1], p(h[1:])[0])
    cls = SequencePool("cls")
    assert cls.num_prefix_tokens == 1 and torch.equal(cls(h), h[:, 0])
    with pytest.raises(ValueError, match="pool='cls' has no step form"):
        ClassifierHead(D, 3, pool="cls").init_state(2)
    with pytest.raises(ValueError, match="pool='max' is not valid; allowed values: 'mean', 'cls', 'last'"):
        SequencePool("max")


def test_head_parameters_keep_the_flat_names():
    assert set(LMHead(D, 11).state_dict()) == {"weight"}
    assert set(ClassifierHead(D, 5).state_dict()) == {"weight", "bias"}
    assert set(ForecastHead(D, 2, 3).state_dict()) == {"weight", "bias"}
    assert set(EncoderHead(D).state_dict()) == set()


def test_reset_classifier_keeps_pooling():
    head = ClassifierHead(D, 5, pool="last", drop=0.2)
    head.reset_classifier(2)
    assert head.num_classes == 2 and head.weight.shape == (2, D) and head.pool == "last"
    assert head(torch.randn(3, 4, D)).shape == (3, 2)


@pytest.mark.parametrize("task, kwargs, match", [
    ("lm", dict(num_classes=3), "num_classes is only used by task='classify', not task='lm'"),
    ("encode", dict(pool="mean"), "pool is only used by task='classify' or 'forecast', not task='encode'"),
    ("classify", dict(tie_weights=True, num_classes=2), "tie_weights is only used by task='lm'"),
    ("classify", dict(), "num_classes must be an int >= 1, got None"),
    ("forecast", dict(pred_len=0), "pred_len must be an int >= 1, got 0"),
    ("segment", dict(), "task='segment' is not valid; allowed values: 'encode', 'classify', 'forecast', 'lm'"),
])
def test_resolve_head_errors(task, kwargs, match):
    with pytest.raises(ValueError, match=match):
        resolve_head(task, in_chans=3, vocab_size=None, causal=False, dropout=0.0, **kwargs)


def test_resolve_head_defaults():
    cls, args = resolve_head("forecast", in_chans=3, vocab_size=None, causal=True, dropout=0.1, pred_len=2)
    assert cls is ForecastHead and args == {"pred_len": 2, "out_chans": 3, "pool": "last", "drop": 0.1}
    cls, args = resolve_head("classify", in_chans=3, vocab_size=None, causal=False, dropout=0.0, num_classes=4)
    assert cls is ClassifierHead and args["pool"] == "mean"
    assert ClassifierHead.prefix_tokens(**{**args, "pool": "cls"}) == 1 and ClassifierHead.prefix_tokens(**args) == 0


def test_model_is_backbone_plus_head():
    kw = dict(depth=1, embed_dim=D, num_heads=2, dropout=0.0)
    for task, extra, head_cls in (("encode", dict(in_chans=3), EncoderHead),
                                  ("classify", dict(in_chans=3, num_classes=4), ClassifierHead),
                                  ("forecast", dict(in_chans=3, pred_len=2, causal=True), ForecastHead),
                                  ("lm", dict(vocab_size=7, causal=True), LMHead)):
        m = SequenceTransformer("ea6", task=task, **extra, **kw).eval()
        assert type(m.head) is head_cls and m.task == task
        x = torch.randint(0, 7, (2, 5)) if task == "lm" else torch.randn(2, 5, 3)
        torch.testing.assert_close(m(x), m.head(m.forward_features(x)))
