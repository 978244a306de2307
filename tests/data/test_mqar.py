"""MQAR generator (ea_zoo.data.mqar): determinism per seed, label layout, parameter checks."""
import numpy as np
import pytest
import torch

from ea_zoo.data.mqar import IGNORE_INDEX, check_mqar_params, mqar_mixture, multiquery_ar


def test_same_seed_same_data_other_seed_other_data():
    a = multiquery_ar(vocab_size=128, seq_len=32, num_pairs=4, num_examples=50, seed=3)
    b = multiquery_ar(vocab_size=128, seq_len=32, num_pairs=4, num_examples=50, seed=3)
    c = multiquery_ar(vocab_size=128, seq_len=32, num_pairs=4, num_examples=50, seed=4)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, c.inputs)
    assert a.inputs.dtype == a.labels.dtype == torch.int64 and a.inputs.shape == a.labels.shape == (50, 32)


@pytest.mark.parametrize("V,L,P", [(128, 32, 4), (128, 32, 8), (65, 64, 16), (300, 256, 3)])
def test_label_layout(V, L, P):
    d = multiquery_ar(vocab_size=V, seq_len=L, num_pairs=P, num_examples=40, seed=0)
    half = V // 2
    assert int(d.inputs.min()) >= 0 and int(d.inputs.max()) < V
    for x, y in zip(d.inputs.tolist(), d.labels.tolist()):
        keys, values = x[0:2 * P:2], x[1:2 * P:2]
        assert len(set(keys)) == P and len(set(values)) == P
        assert all(1 <= k < half for k in keys) and all(half <= v < V for v in values)
        kv = dict(zip(keys, values))
        labelled = [i for i, t in enumerate(y) if t != IGNORE_INDEX]
        # every query is labelled with its value, nothing else is labelled
        assert len(labelled) == P
        assert all(i >= 2 * P and (i - 2 * P) % 2 == 0 for i in labelled)
        assert sorted(x[i] for i in labelled) == sorted(keys)  # each key queried exactly once
        assert all(y[i] == kv[x[i]] for i in labelled)
        assert all(t == IGNORE_INDEX for t in y[:2 * P])


def test_query_gaps_follow_a_decreasing_power_law():
    P, L = 2, 64
    d = multiquery_ar(vocab_size=128, seq_len=L, num_pairs=P, alpha=0.5, num_examples=4000, seed=1)
    pos = (d.labels != IGNORE_INDEX).nonzero()[:, 1]
    gaps = ((pos - 2 * P) // 2).numpy()
    counts = np.bincount(gaps, minlength=(L - 2 * P) // 2)
    assert counts[0] > counts[1] > counts[4] > counts[-1]


def test_mixture_pairs_and_determinism():
    m = mqar_mixture(vocab_size=64, seq_len=32, num_pairs=[2, 4, 8], num_examples=30, seed=5)
    assert len(m) == 30 and sorted(m.num_pairs.bincount().nonzero().flatten().tolist()) == [2, 4, 8]
    assert torch.equal((m.labels != IGNORE_INDEX).sum(1), m.num_pairs)
    m2 = mqar_mixture(vocab_size=64, seq_len=32, num_pairs=[2, 4, 8], num_examples=30, seed=5)
    assert torch.equal(m.inputs, m2.inputs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(vocab_size=64, seq_len=64, num_pairs=4), "vocab_size must be greater than seq_len"),
    (dict(vocab_size=128, seq_len=33, num_pairs=4), "seq_len must be even"),
    (dict(vocab_size=128, seq_len=32, num_pairs=9), r"4 \* num_pairs must be <= seq_len"),
    (dict(vocab_size=128, seq_len=32, num_pairs=0), "num_pairs must be an int >= 1"),
    (dict(vocab_size=128, seq_len=32, num_pairs=4, alpha=0.0), "alpha"),
    (dict(vocab_size=128, seq_len=32, num_pairs=4, num_examples=0), "num_examples"),
    (dict(vocab_size=128.0, seq_len=32, num_pairs=4), "vocab_size must be an int"),
])
def test_bad_parameters_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        multiquery_ar(**kwargs)
    with pytest.raises(ValueError, match=match):
        check_mqar_params(**kwargs)
