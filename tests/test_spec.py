"""Typed configs: YAML inheritance, overrides, validation errors that name path and file, width checks."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
from torch import nn

import zoo
from zoo.spec import ConfigError, Part, apply_overrides, build, check_width, load_config, parse_override, validate


@zoo.register_vision_encoder("_spec_enc", override=True)
class _Enc(nn.Module):
    def __init__(self, width: int, depth: int = 2, act: Literal["gelu", "relu"] = "gelu", scale: float = 1.0,
                 sizes: list[int] | None = None):
        super().__init__()
        self.width = width
        self.proj = nn.Linear(3, width)


@zoo.register_fusion("_spec_fuse", override=True)
class _Fuse(nn.Module):
    def __init__(self, width: int, encoder_width: int):
        super().__init__()
        self.width, self.encoder_width = width, encoder_width


@zoo.register_model("_spec_model", override=True)
class _Model(nn.Module):
    def __init__(self, vision: Part["vision_encoder"], fusion: Part["fusion"], heads: list[Part["head"]] | None = None):
        super().__init__()
        check_width(fusion, "encoder_width", fusion.encoder_width, vision, vision.width)
        self.vision, self.fusion = vision, fusion
        self.heads = nn.ModuleList(heads or [])


def tree(**vision):
    return {"type": "_spec_model", "vision": {"type": "_spec_enc", "width": 8, **vision},
            "fusion": {"type": "_spec_fuse", "width": 8, "encoder_width": 8}}


def test_build_tree_children_first():
    m = build(tree(depth=3, act="relu", scale=2, sizes=[1, 2]), "model")
    assert isinstance(m.vision, _Enc) and m.vision.width == 8
    assert m.vision._zoo_path == "model.vision"


def test_heads_list_of_parts():
    t = tree()
    t["heads"] = [{"type": "itm", "width": 8}, {"type": "classifier", "width": 8, "num_classes": 3}]
    m = build(t, "model")
    assert [type(h).__name__ for h in m.heads] == ["MatchingHead", "ClassifierHead"]


@pytest.mark.parametrize(
    "change, path, expect",
    [
        (dict(depth="two"), "model.vision.depth", "expected int, got str 'two'"),
        (dict(depth=True), "model.vision.depth", "expected int, got bool"),
        (dict(act="swish"), "model.vision.act", "expected one of 'gelu', 'relu'"),
        (dict(scale="x"), "model.vision.scale", "expected float"),
        (dict(sizes=[1, "a"]), "model.vision.sizes[1]", "expected int"),
        (dict(dept=3), "model.vision.dept", "unknown key 'dept'"),
        (dict(type="_spec_encc"), "model.vision.type", "did you mean '_spec_enc'"),
    ],
)
def test_validation_errors_name_the_path(change, path, expect):
    with pytest.raises(ConfigError) as info:
        validate(tree(**change), "model", "model", "my.yaml")
    assert info.value.path == path
    assert expect in info.value.message
    assert str(info.value).startswith(f"my.yaml: {path}: ")


def test_missing_required_and_missing_type():
    t = tree()
    del t["vision"]["width"]
    with pytest.raises(ConfigError, match=r"model.vision: missing required argument\(s\) width"):
        validate(t, "model")
    t = tree()
    del t["fusion"]["type"]
    with pytest.raises(ConfigError, match="model.fusion: missing 'type'"):
        validate(t, "model")


def test_unknown_key_suggests_and_lists():
    with pytest.raises(ConfigError) as info:
        validate(tree(dept=3), "model")
    assert "did you mean 'depth'?" in str(info.value)
    assert "Accepted keys: act, depth, scale, sizes, width" in str(info.value)


def test_width_mismatch_names_both_parts(tmp_path):
    t = tree(width=16)
    with pytest.raises(ConfigError) as info:
        build(t, "model", file=tmp_path / "m.yaml")
    msg = str(info.value)
    assert "model.fusion expects encoder_width=8" in msg and "model.vision produces width=16" in msg
    assert str(tmp_path / "m.yaml") in msg


def test_yaml_inheritance_and_replace(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "model:\n  type: _spec_model\n  vision: {type: _spec_enc, width: 8, depth: 4}\n"
        "  fusion: {type: _spec_fuse, width: 8, encoder_width: 8}\n"
    )
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nmodel:\n  vision: {depth: 1}\n")
    (tmp_path / "repl.yaml").write_text("_base_: base.yaml\nmodel:\n  vision: {_replace_: true, type: _spec_enc, width: 8}\n")
    child = load_config(tmp_path / "child.yaml")
    assert child["model"]["vision"] == {"type": "_spec_enc", "width": 8, "depth": 1}
    repl = load_config(tmp_path / "repl.yaml")
    assert repl["model"]["vision"] == {"type": "_spec_enc", "width": 8}
    (tmp_path / "loop.yaml").write_text("_base_: loop.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_overrides():
    assert parse_override("model.vision.depth=3") == (["model", "vision", "depth"], 3)
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a=hello") == (["a"], "hello")
    cfg = {"model": {"vision": {"depth": 2, "act": "gelu"}}}
    out = apply_overrides(cfg, ["model.vision.depth=5", "model.new.key=true"])
    assert out["model"]["vision"] == {"depth": 5, "act": "gelu"} and out["model"]["new"] == {"key": True}
    assert cfg["model"]["vision"]["depth"] == 2  # the input is not modified
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        parse_override("model.vision.depth")
    with pytest.raises(ConfigError, match="is a int, not a mapping"):
        apply_overrides(cfg, ["model.vision.depth.x=1"])


def test_module_passed_instead_of_config():
    enc = _Enc(width=8)
    m = build({"type": "_spec_model", "vision": enc, "fusion": {"type": "_spec_fuse", "width": 8, "encoder_width": 8}},
              "model")
    assert m.vision is enc
    with pytest.raises(ConfigError, match="expected a vision_encoder config"):
        validate({"type": "_spec_model", "vision": 3, "fusion": {"type": "_spec_fuse", "width": 8, "encoder_width": 8}},
                 "model")
    assert torch.is_tensor(m.vision.proj.weight)


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    """`2e-3` in a file or an override is the float Python reads (PyYAML's YAML 1.1 rules would give a string);
    words that merely look numeric stay strings."""
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 2e-3, eps: 1.0e-8, betas: [0.9, 0.98]}\nname: e5\n")
    cfg = load_config(path, ["optim.vision_lr=1E+1", "optim.note=1e", "train.seed=7"])
    assert cfg["optim"] == {"lr": float("2e-3"), "eps": float("1.0e-8"), "betas": [0.9, 0.98],
                            "vision_lr": float("1E+1"), "note": "1e"}
    assert cfg["name"] == "e5" and cfg["train"]["seed"] == 7 and isinstance(cfg["optim"]["lr"], float)


def test_a_command_line_value_replaces_what_it_names():
    """Command-line overrides: a mapping replaces the mapping (``'model.overrides={}'`` empties it; a merge kept the
    config's entries), ``~key`` removes a key (and leaves a config without it alone), ``null`` is the value null, and
    a dotted key written in the config is the key its nested spelling names (a nested twin beside the dotted entry
    was the bug: the model then saw both). The programmatic mapping form still merges."""
    from zoo.spec import apply_overrides

    cfg = {"model": {"name": "m", "overrides": {"vision.combine": "avg", "vision.num_frames": 4,
                                                "text.tokenizer": "data"}},
           "data": {"aug": {"crop": 1, "flip": True}}}
    assert apply_overrides(cfg, ["model.overrides={}"])["model"]["overrides"] == {}
    assert apply_overrides(cfg, ["data.aug={crop: 2}"])["data"]["aug"] == {"crop": 2}
    assert apply_overrides(cfg, ["~model.overrides.text.tokenizer"])["model"]["overrides"] == \
        {"vision.combine": "avg", "vision.num_frames": 4}
    assert apply_overrides(cfg, ["model.overrides.vision.combine=concat"])["model"]["overrides"] == \
        {"vision.combine": "concat", "vision.num_frames": 4, "text.tokenizer": "data"}
    assert apply_overrides(cfg, ["model.overrides.vision={combine: concat}"])["model"]["overrides"] == \
        {"text.tokenizer": "data", "vision": {"combine": "concat"}}
    assert apply_overrides(cfg, ["data.aug.flip=null", "model.overrides.itm=null"]) == \
        {"model": {"name": "m", "overrides": {**cfg["model"]["overrides"], "itm": None}},
         "data": {"aug": {"crop": 1, "flip": None}}}
    assert apply_overrides(cfg, ["~data.nothing.here", "~data.aug.rotate"]) == cfg
    assert apply_overrides(cfg, {"data.aug": {"crop": 2}})["data"]["aug"] == {"crop": 2, "flip": True}
    with pytest.raises(ConfigError, match="a removal is ~key.sub, without a value"):
        apply_overrides(cfg, ["~data.aug=1"])
    with pytest.raises(ConfigError, match=r"cannot set data.aug.crop.x: data.aug.crop is a int"):
        apply_overrides(cfg, ["data.aug.crop.x=1"])
