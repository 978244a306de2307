"""AttentionSpec / HybridSpec: one normaliser, typed options, per-layer forms, bad input."""
import json

import pytest
import torch
from omegaconf import OmegaConf

import ea_zoo
from ea_zoo.registry import (
    AttentionSpec,
    HybridSpec,
    attention_options,
    create_attention,
    get_attention_cls,
    host_arguments,
    layer_specs,
    parse_attention,
)


@pytest.mark.parametrize("form", [
    "ea6", {"name": "ea6"}, '{"name": "ea6"}', OmegaConf.create({"name": "ea6"}),
])
def test_every_form_parses_to_one_spec(form):
    s = parse_attention(form)
    assert s == AttentionSpec("ea6") and s.label == "ea6" and s.to_config() == "ea6"
    assert s.all_options == {"order": 6} and s.cls is get_attention_cls("ea_series")
    assert parse_attention(s) is s and hash(s) == hash(AttentionSpec.parse("ea6"))


def test_options_round_trip_through_json():
    s = parse_attention({"name": "ea_series", "order": 4, "temperature": 2.0})
    assert s.label == "ea_series_order4_temperature2p0"
    assert parse_attention(json.loads(s.to_json())) == s
    assert s.replace(order=8).all_options["order"] == 8
    # switching the backend keeps only the options the new one declares
    assert s.replace(name="ea").to_config() == {"name": "ea", "temperature": 2.0}


def test_unused_option_is_an_error_naming_the_valid_ones():
    # EA-series inherited full EA's max_block_elements and swallowed it
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['max_block_elements'\] for attention 'ea6'; valid options: order"):
        create_attention("ea6", dim=8, num_heads=2, max_block_elements=7)
    with pytest.raises(ValueError, match="max_block_elements"):
        parse_attention({"name": "ea6", "max_block_elements": 5})
    assert "max_block_elements" in attention_options(get_attention_cls("ea"))


@pytest.mark.parametrize("name,key,value", [
    ("ea6", "causal", "false"), ("sa", "causal", 1), ("ea6", "order", "4"), ("ea6", "order", 4.0),
    ("ea", "temperature", True), ("la", "feature_map", 3),
])
def test_wrongly_typed_option_is_an_error(name, key, value):
    # causal="false" used to build a causal module
    with pytest.raises(ValueError, match=rf"option {key}={value!r} must be"):
        create_attention(name, dim=8, num_heads=2, **{key: value})


def test_int_is_a_float_and_host_args_are_not_options():
    assert create_attention("ea", dim=8, num_heads=2, temperature=2).log_temperature.exp()[0] == pytest.approx(2.0)
    assert "qkv_bias" in host_arguments() and "causal" not in host_arguments()
    with pytest.raises(ValueError, match="set by the model"):
        parse_attention({"name": "ea6", "qkv_bias": True})
    m = create_attention("ea6", dim=8, num_heads=2, qkv_bias=True, causal=True)
    assert m.qkv.bias is not None and m.causal is True


def test_unknown_name_and_bad_types():
    with pytest.raises(ValueError, match="unknown attention 'nosuch'; valid names: .*ea6"):
        parse_attention("nosuch")
    with pytest.raises(ValueError, match="needs a 'name' key"):
        parse_attention({"order": 4})
    with pytest.raises(TypeError, match="name"):
        parse_attention(42)
    with pytest.raises(ValueError, match="does not parse"):
        parse_attention("{bad json")


def test_with_length_fills_only_the_declared_length_option():
    assert parse_attention("aft_full").with_length(10).to_config() == {"name": "aft_full", "max_len": 10}
    assert parse_attention({"name": "aft_local", "max_len": 7}).with_length(10).all_options["max_len"] == 7
    assert parse_attention("ea6").with_length(10) == parse_attention("ea6")
    m = parse_attention("aft_full").with_length(12).build(8, 2)
    assert m.max_len == 12


@pytest.mark.parametrize("form", [
    "ea6+sa@1,3", {"default": "ea6", "layers": {1: "sa", "3": "sa"}},
    OmegaConf.create({"default": "ea6", "layers": {"1": "sa", "3": "sa"}}),
])
def test_hybrid_forms(form):
    h = parse_attention(form)
    assert isinstance(h, HybridSpec) and h.label == "ea6+sa@1,3"
    assert [s.label for s in h.per_layer(4)] == ["ea6", "sa", "ea6", "sa"]
    assert parse_attention(h.to_config()) == h and parse_attention(h.label) == h
    assert [s.label for s in layer_specs("ea2", 3)] == ["ea2"] * 3


def test_hybrid_list_form_fixes_the_depth():
    h = parse_attention(["ea6", "sa", "ea6", {"name": "la"}])
    assert h.label == "ea6+sa@1+la@3" and h.to_config() == ["ea6", "sa", "ea6", "la"]
    assert [s.label for s in h.per_layer(4)] == ["ea6", "sa", "ea6", "la"]
    with pytest.raises(ValueError, match="lists 4 specs but the model has depth 6"):
        h.per_layer(6)


@pytest.mark.parametrize("form,match", [
    ({"default": "ea6", "layers": {"3": "sa", 3: "la"}}, "layer 3 is given twice"),
    ({"default": "ea6", "layers": {-1: "sa"}}, "index -1 must be a non-negative int"),
    ({"default": "ea6", "layers": {"x": "sa"}}, "index 'x' must be a non-negative int"),
    ({"default": "ea6", "layer": {1: "sa"}}, "takes keys 'default'"),
    ("ea6+sa", "must be '<backend>@<indices>'"),
    ("ea6+nosuch@1", "unknown attention 'nosuch'"),
    ([], "list is empty"),
])
def test_bad_hybrids(form, match):
    with pytest.raises(ValueError, match=match):
        parse_attention(form)


def test_hybrid_index_out_of_range_names_the_depth():
    with pytest.raises(ValueError, match=r"index 7 is out of range for a model of depth 4 \(valid indices 0..3\)"):
        layer_specs("ea6+sa@7", 4)
    with pytest.raises(ValueError, match="builds one layer"):
        create_attention("ea6+sa@1", dim=8)


def test_bound_class_binds_options_and_host_args_win():
    cls = parse_attention("ea4").bind(causal=True)
    m = cls(16, num_heads=4, qkv_bias=True)
    assert m.order == 4 and m.causal and m.qkv.bias is not None
    assert cls is parse_attention({"name": "ea_series", "order": 4}).bind(causal=True)
    assert m(torch.randn(1, 5, 16)).shape == (1, 5, 16)


def test_every_backend_builds_from_its_spec():
    for name in ea_zoo.list_attentions():
        m = parse_attention(name).with_length(8).build(8, 2, causal=True)
        assert m(torch.randn(1, 4, 8)).shape == (1, 4, 8)
