"""omegaconf configs: configs/attention/*.yaml and configs/model/*.yaml, load_config overrides
(model and experiment configs, per-layer attention), build_model, and YAML -> model == the
Python call."""
import pytest
import timm
import torch
from omegaconf import DictConfig, OmegaConf

import ea_zoo
from ea_zoo.models import SEQUENCE_FAMILIES, VIT_BACKENDS
from ea_zoo.models.factory import config_dir, load_config
from ea_zoo.models.vit import VIT_SIZES

ATTN_DIR = config_dir() / "attention"
MODEL_DIR = config_dir() / "model"
SPEC_NAMES = ["sa", "la", "la_identity", "aft_full", "aft_simple", "aft_local", "hedgehog", "taylor", "ea",
              "ea_series", "ea2", "ea4", "ea6", "ea8"]
TINY_VIT = ["model.img_size=32", "model.patch_size=8", "model.depth=2", "model.embed_dim=32", "model.num_heads=4"]
TINY_SEQ = ["model.depth=2", "model.embed_dim=32", "model.num_heads=4"]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_one_attention_yaml_per_backend_and_alias():
    files = {p.stem for p in ATTN_DIR.glob("*.yaml")}
    assert set(SPEC_NAMES) <= files
    assert set(ea_zoo.list_attentions()) <= files, "every registered backend/alias needs configs/attention/<name>.yaml"


@pytest.mark.parametrize("path", sorted(ATTN_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_attention_yaml_builds_the_same_backend_as_its_name(path):
    cfg = OmegaConf.load(path)
    if path.stem not in ea_zoo.list_attentions():
        pytest.skip(f"backend {path.stem!r} is not registered")
    from ea_zoo.registry import parse_attention

    a = ea_zoo.create_attention(parse_attention(cfg).with_length(8), dim=16, num_heads=2)
    spec = parse_attention(path.stem)
    assert type(a) is spec.cls
    for k, v in spec.all_options.items():  # alias options are in the file
        assert cfg[k] == v
    assert "causal" not in cfg  # causal belongs to the model


def test_model_yaml_defaults_live_in_one_place():
    """The family defaults live in SEQUENCE_FAMILIES, the ViT architectures in VIT_SIZES (= timm's
    own): the model YAMLs repeat none of them."""
    for fam, defaults in SEQUENCE_FAMILIES.items():
        cfg = OmegaConf.to_container(OmegaConf.load(MODEL_DIR / f"{fam}.yaml"))
        assert cfg["model"].pop("name") == fam
        assert not {k for k, v in cfg["model"].items() if defaults.get(k, object()) == v}, fam
    for size, args in VIT_SIZES.items():
        cfg = OmegaConf.to_container(OmegaConf.load(MODEL_DIR / f"vit_{size}.yaml"))
        assert cfg["model"] == {"name": f"vit_{size}_patch16_224"}
        with torch.device("meta"):
            ref = timm.create_model(f"vit_{size}_patch16_224")
        assert dict(patch_size=ref.patch_embed.patch_size[0], embed_dim=ref.embed_dim, depth=len(ref.blocks),
                    num_heads=ref.blocks[0].attn.num_heads) == args


@pytest.mark.parametrize("name", ["vit_tiny", "vit_small", "vit_base", "tsc", "tsf", "lm", "bert_base"])
def test_each_model_yaml_builds_real_size_on_meta(name):
    with torch.device("meta"):
        m = ea_zoo.build_model(name)
        ref = ea_zoo.create_model(f"{name}_patch16_224_ea6" if name.startswith("vit") else f"{name}_ea6")
    assert n_params(m) == n_params(ref)


@pytest.mark.parametrize("name, python", [
    ("vit_tiny", lambda: timm.create_model("vit_tiny_patch16_224_ea4", img_size=32, patch_size=8, depth=2,
                                           embed_dim=32, num_heads=4)),
    ("tsc", lambda: ea_zoo.create_model("tsc_ea4", depth=2, embed_dim=32, num_heads=4)),
    ("tsf", lambda: ea_zoo.create_model("tsf_ea4", depth=2, embed_dim=32, num_heads=4)),
    ("lm", lambda: ea_zoo.create_model("lm_ea4", depth=2, embed_dim=32, num_heads=4)),
    ("bert_base", lambda: ea_zoo.create_model("bert_base_ea4", depth=2, embed_dim=32, num_heads=4)),
])
def test_yaml_to_model_equals_python_call(name, python, tmp_path):
    overrides = (TINY_VIT if name.startswith("vit") else TINY_SEQ) + ["attention=ea4"]
    cfg = load_config(name, overrides)
    assert isinstance(cfg, DictConfig) and cfg.attention.order == 4
    # through a YAML file on disk too
    path = tmp_path / "cfg.yaml"
    OmegaConf.save(cfg, path)
    for m in (ea_zoo.build_model(cfg), ea_zoo.build_model(str(path))):
        ref = python()
        assert n_params(m) == n_params(ref)
        assert m.state_dict().keys() == ref.state_dict().keys()
        assert m.blocks[0].attn.order == 4


def test_overrides():
    cfg = load_config("tsc", ["attention=ea6", "attention.order=4", "model.depth=6", "model.num_classes=3"])
    assert cfg.attention.name == "ea_series" and cfg.attention.order == 4
    assert cfg.model.depth == 6 and cfg.model.num_classes == 3
    m = ea_zoo.build_model(cfg)
    assert len(m.blocks) == 6 and m.blocks[0].attn.order == 4 and m.num_classes == 3
    # inline mapping, switching backend keeps only valid options
    cfg = load_config("tsc", ["attention={name: ea_series, order: 2}"])
    assert OmegaConf.to_container(cfg.attention) == {"name": "ea_series", "order": 2}
    cfg = load_config("tsc", ["attention.name=sa"])
    assert OmegaConf.to_container(cfg.attention) == {"name": "sa"}
    # another model config's section
    cfg = load_config("tsc", ["model=tsf", "model.pred_len=3"])
    assert cfg.model.name == "tsf" and cfg.model.pred_len == 3
    # build_model(cfg, overrides) and a dict config (flat form too)
    assert len(ea_zoo.build_model("lm", ["model.depth=1", "model.embed_dim=16"]).blocks) == 1
    m = ea_zoo.build_model({"model": {"name": "tsf", "depth": 1, "embed_dim": 16, "num_heads": 2},
                            "attention": {"name": "ea_series", "order": 2}})
    assert m.blocks[0].attn.order == 2 and m.blocks[0].attn.causal
    m = ea_zoo.build_model({"name": "tsf_sa", "depth": 1, "embed_dim": 16, "num_heads": 2})
    assert m.blocks[0].attn.attention_name == "sa"
    # the ViT section takes timm VisionTransformer arguments
    assert load_config("vit_small", ["model.drop_path_rate=0.1", "model.qk_norm=true"]).model.qk_norm is True


def test_model_config_attribute_round_trip():
    m = ea_zoo.create_model("tsf_ea2", depth=1, embed_dim=16, num_heads=2, pred_len=5)
    m2 = ea_zoo.build_model(m.config)
    assert n_params(m2) == n_params(m) and m2.pred_len == 5 and m2.blocks[0].attn.order == 2


@pytest.mark.parametrize("overrides, match", [
    (["model.depht=6"], r"unknown key 'model.depht' for model 'tsc'; allowed keys: model.name, model.task"),
    (["modle.depth=6"], r"unknown key 'modle.depth'; allowed top-level keys: attention, model"),
    (["attention=nope"], r"unknown attention 'nope'; valid names: .*ea6"),
    (["attention.ordr=4"], r"override 'attention.ordr=4': unknown option\(s\) \['ordr'\] for attention 'ea_series'; "
                           r"valid options: order, allow_odd"),
    (["attention.qkv_bias=false"], r"\['qkv_bias'\] are set by the model"),
    (["attention.order.x=1"], r"attention options are flat"),
    (["attention.layers.x=sa"], r"layer index 'x' must be a non-negative int"),
    (["attention=ea6+sa@1", "attention.order=4"], r"per-layer .*attention.default.<option>="),
    (["attention=[ea6,sa]", "attention.default=sa"], r"per-layer list"),
    (["attention=[ea6,sa]", "attention.layers.2=sa"], r"index 2 is out of range for the per-layer list of 2"),
    (["attention=[ea6,sa]", "model.depth=3"], r"lists 2 specs but the model has depth 3"),
    (["attention=ea6+sa@5", "model.depth=3"], r"index 5 is out of range for a model of depth 3"),
    (["attention.order=3"], r"order=3 is odd"),
    (["model.pool=max"], r"pool='max' is not valid; allowed values: 'mean', 'cls', 'last'"),
    (["model.task=segment"], r"task='segment' is not valid; allowed values"),
    (["model.name=nope"], r"unknown key|not a known model"),
    (["depth"], r"must look like key=value"),
    (["model=nope"], r"unknown model config 'nope'"),
])
def test_invalid_keys_and_values_name_the_key(overrides, match):
    with pytest.raises(ValueError, match=match):
        ea_zoo.build_model("tsc", overrides)


def test_invalid_vit_key_and_unknown_config():
    with pytest.raises(ValueError, match=r"unknown key 'model.dept' for model 'vit_small_patch16_224'; allowed keys: .*model.depth"):
        load_config("vit_small", ["model.dept=3"])
    with pytest.raises(ValueError, match=r"unknown model config 'vit_huge': not a file, and not one of bert_base"):
        load_config("vit_huge")
    with pytest.raises(ValueError, match="model' section"):
        ea_zoo.build_model({"attention": "ea6"})


def test_create_model_with_dictconfig_attention():
    cfg = OmegaConf.create({"attention": {"name": "ea_series", "order": 6}})
    m = ea_zoo.create_model("vit_small_patch16_224", attention=cfg.attention, img_size=32, patch_size=8, depth=1,
                            embed_dim=32, num_heads=4)
    assert m.blocks[0].attn.order == 6 and m.attention_spec == {"name": "ea_series", "order": 6}
    m = ea_zoo.create_model("lm_sa", attention=cfg.attention, depth=1, embed_dim=16, num_heads=2)
    assert m.blocks[0].attn.order == 6


def test_every_backend_through_config_override():
    for b in VIT_BACKENDS:
        if b not in ea_zoo.list_attentions():
            continue
        m = ea_zoo.build_model("lm", [f"attention={b}", "model.depth=1", "model.embed_dim=16", "model.num_heads=2",
                                      "model.vocab_size=7", "model.max_len=8"])
        assert m(torch.randint(0, 7, (1, 4))).shape == (1, 4, 7)


# ----------------------------------------------------------------------------- option checks
def test_option_the_backend_does_not_declare_is_an_error():
    """EA-series inherited full EA's max_block_elements, and the override was accepted."""
    with pytest.raises(ValueError, match=r"'attention.max_block_elements=5': unknown option\(s\) "
                                         r"\['max_block_elements'\] for attention 'ea_series'; valid options: order"):
        load_config("tsc", ["attention=ea6", "attention.max_block_elements=5"])
    assert load_config("tsc", ["attention=ea", "attention.max_block_elements=5"]).attention.max_block_elements == 5


def test_booleans_must_be_booleans():
    """causal='false' (a string) used to build a causal module."""
    with pytest.raises(ValueError, match=r"option causal='false' must be bool"):
        load_config("tsc", ["attention.causal='false'"])
    with pytest.raises(ValueError, match=r"option learn_temperature=1 must be bool"):
        ea_zoo.build_model("tsc", ["attention.learn_temperature=1"])
    assert load_config("tsc", ["attention.causal=false"]).attention.causal is False


# ----------------------------------------------------------------------------- per-layer attention
def test_per_layer_attention_through_overrides_and_yaml(tmp_path):
    tiny = TINY_SEQ + ["model.depth=3"]
    kinds = lambda m: [b.attn.attention_name for b in m.blocks]  # noqa: E731
    assert kinds(ea_zoo.build_model("lm", tiny + ["attention=ea6+sa@1"])) == ["ea_series", "sa", "ea_series"]
    cfg = load_config("lm", tiny + ["attention.layers.2=sa", "attention.layers.2.causal=true"])
    assert OmegaConf.to_container(cfg.attention.layers) == {2: {"name": "sa", "causal": True}}
    cfg = load_config(cfg, ["attention.default=la", "attention.layers.0=ea2"])
    assert kinds(ea_zoo.build_model(cfg)) == ["ea_series", "la", "sa"]
    assert ea_zoo.build_model(cfg).blocks[0].attn.order == 2
    # back to one backend when no layer differs
    assert OmegaConf.to_container(load_config("lm", ["attention=ea6+sa@1", "attention.layers={}"]).attention) \
        == OmegaConf.to_container(load_config("lm", ["attention=ea6"]).attention)
    # a YAML file with the mapping form, and the list form
    path = tmp_path / "hybrid.yaml"
    path.write_text("model: {name: tsc, depth: 2, embed_dim: 16, num_heads: 2}\n"
                    "attention: {default: ea2, layers: {1: sa}}\n")
    assert kinds(ea_zoo.build_model(str(path))) == ["ea_series", "sa"]
    assert kinds(ea_zoo.build_model(str(path), ["attention=[sa,la]"])) == ["sa", "la"]
    vit = ea_zoo.build_model("vit_tiny", TINY_VIT + ["attention=ea6+sa@1"])
    assert [b.attn.attention_name for b in vit.blocks] == ["ea_series", "sa"]


# ----------------------------------------------------------------------------- experiment configs
def test_load_config_takes_a_whole_experiment_config():
    """The experiment loader hands its whole dict to load_config: every section survives,
    attention / model overrides are validated, other sections' keys pass through."""
    exp = {"name": "table3_jap", "task": "classification", "seed": 0, "attention": "ea6",
           "model": {"name": "tsc", "embed_dim": 64, "depth": 2, "num_heads": 4},
           "data": {"name": "jap", "batch_size": 32}, "optim": {"lr": 1e-3}, "trainer": {"max_epochs": 100},
           "checkpoint": {"monitor": "val/loss"}, "defaults": ["data/jap"]}
    cfg = load_config(exp, ["attention=ea6", "attention.order=4", "model.depth=1", "trainer.max_epochs=3",
                            "trainer.new_key=1", "seed=2"])
    assert cfg.attention.name == "ea_series" and cfg.attention.order == 4 and cfg.model.depth == 1
    assert cfg.trainer.max_epochs == 3 and cfg.trainer.new_key == 1 and cfg.seed == 2
    assert cfg.optim.lr == 1e-3 and cfg.name == "table3_jap" and cfg.defaults == ["data/jap"]
    assert load_config(exp, ["data.batch_size=8"]).data.batch_size == 8
    with pytest.raises(ValueError, match=r"unknown key 'nosuch.x'; allowed top-level keys: attention, checkpoint"):
        load_config(exp, ["nosuch.x=1"])
    with pytest.raises(ValueError, match=r"max_block_elements"):
        load_config(exp, ["attention.max_block_elements=5"])


def test_cli_train_print_config_applies_attention_overrides(capsys):
    """`ea-zoo train --config table3_jap attention=ea6 attention.order=4` built attention
    {'order': 4} and failed with "needs a 'name' key"."""
    from ea_zoo.cli import main

    assert main(["train", "--config", "table3_jap", "attention=ea6", "attention.order=4", "--print-config"]) in (0, None)
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed.attention.name == "ea_series" and printed.attention.order == 4


def test_config_dir_is_read_at_call_time(tmp_path, monkeypatch):
    (tmp_path / "attention").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "attention" / "ea6.yaml").write_text("name: ea_series\norder: 4\n")
    (tmp_path / "model" / "mine.yaml").write_text("model: {name: tsc, depth: 1}\nattention: ea6\n")
    monkeypatch.setenv("EA_ZOO_CONFIG_DIR", str(tmp_path))
    cfg = load_config("mine")
    assert cfg.model.depth == 1 and OmegaConf.to_container(cfg.attention) == {"name": "ea_series", "order": 4}
    with pytest.raises(ValueError, match=r"unknown model config 'tsc': not a file, and not one of mine"):
        load_config("tsc")
    monkeypatch.delenv("EA_ZOO_CONFIG_DIR")
    assert load_config("tsc").attention.order == 6
