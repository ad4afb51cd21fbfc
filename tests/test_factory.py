"""create_model / list_models / model_info / from_pretrained and the mmzoo command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import demo_inputs

import zoo
from zoo.hub import WeightsError, atomic_write, load_weights
from zoo.models.base import count_parameters
from zoo.registry import UnknownNameError
from zoo.spec import ConfigError


def test_list_and_unknown_name():
    assert "demo-tiny" in zoo.list_models()
    assert zoo.list_models("demo*") == ["demo-tiny"]
    assert zoo.list_models("nothing*") == []
    with pytest.raises(UnknownNameError, match="did you mean 'demo-tiny'"):
        zoo.create_model("demo-tiny2")


def test_create_and_run(demo):
    """Shapes, and the heads' outputs recomputed in float64 from the model's own states: catches ITM ``predict``
    reading class 0 (``softmax(...)[:, 0]``) or a missing L2 normalisation in ITC, which a range check let through."""
    import math

    images, ids = demo_inputs()
    with torch.no_grad():
        out = demo(images, ids)
    assert out.vision.tokens.shape == (2, 17, 64)
    assert out.fused.tokens.shape == (2, 6, 64)
    assert out.similarity.shape == (2, 2)
    assert out.answer_logits.shape == (2, 8)

    def linear(x, layer):
        return x @ layer.weight.double().t() + layer.bias.double()

    def unit(x):
        return x / x.pow(2).sum(-1, keepdim=True).sqrt()

    with torch.no_grad():
        # ITC: cosine of the L2-normalised projections of the pooled states
        sim = unit(linear(out.vision.pooled.double(), demo.itc.vision_proj)) @ unit(
            linear(out.text.pooled.double(), demo.itc.text_proj)).t()
        torch.testing.assert_close(out.similarity.double(), sim, rtol=1e-5, atol=1e-6)
        # ITM: Linear → LayerNorm → GELU (erf) → Linear on the fused CLS; match = class 1, softmax written out
        mlp = demo.itm.mlp
        h = linear(out.fused.tokens[:, 0].double(), mlp[0])
        h = (h - h.mean(-1, keepdim=True)) / (h.var(-1, unbiased=False, keepdim=True) + mlp[1].eps).sqrt()
        h = h * mlp[1].weight.double() + mlp[1].bias.double()
        logits = linear(0.5 * h * (1 + torch.erf(h / math.sqrt(2))), mlp[3])
        match = logits[:, 1].exp() / logits.exp().sum(-1)
        torch.testing.assert_close(out.match_prob.double(), match, rtol=1e-5, atol=1e-6)
        # the answer classifier is the VQA head's own logits on the fused CLS
        torch.testing.assert_close(out.answer_logits, demo.vqa(out.fused.tokens[:, 0])["logits"])
    assert demo.zoo_config["name"] == "demo-tiny" and "tasks" not in demo.zoo_config


def test_task_variant_and_overrides():
    m = zoo.create_model("demo-tiny", task="retrieval", device="meta")
    assert m.vqa is None and m.itc is not None
    with pytest.raises(ConfigError, match="has no task 'captioning'; tasks: retrieval"):
        zoo.create_model("demo-tiny", task="captioning")
    m = zoo.create_model("demo-tiny", device="meta", **{"vision.depth": 1})
    assert len(m.vision.blocks) == 1
    m = zoo.create_model("demo-tiny", device="meta", overrides=["model.vision.depth=3"])
    assert len(m.vision.blocks) == 3
    # spelt from the model tree instead of the file: refused (it used to add an unread top-level key)
    with pytest.raises(ConfigError, match=r"vision: unknown top-level key 'vision' \(a key of the model tree: "
                                          r"'model.vision'\)"):
        zoo.create_model("demo-tiny", device="meta", overrides=["vision.depth=3"])
    with pytest.raises(ConfigError, match="model.vision.depth: expected int"):
        zoo.create_model("demo-tiny", device="meta", **{"vision.depth": "deep"})
    with pytest.raises(ConfigError, match="width mismatch: model.fusion expects encoder_width=64"):
        zoo.create_model("demo-tiny", device="meta", **{"vision.embed_dim": 128})


def test_attention_backend_from_config():
    m = zoo.create_model("demo-tiny", device="meta", attention="math")
    backends = {getattr(mod, "attn_backend", "absent") for mod in m.modules() if hasattr(mod, "attn_backend")}
    assert backends == {"math"}
    with pytest.raises(ConfigError, match="attention: expected one of"):
        zoo.create_model("demo-tiny", device="meta", attention="fast")


def test_model_info_counts_match_a_real_build(demo):
    info = zoo.model_info("demo-tiny")
    assert info["params"] == count_parameters(demo)
    assert info["parts"]["vision"]["params"] == count_parameters(demo.vision)
    assert info["parts"]["vision"]["type"] == "beit_v2"
    assert info["tasks"] == ["retrieval"] and info["default_resolution"] == 64


def test_save_and_from_pretrained_roundtrip(demo, tmp_path):
    images, ids = demo_inputs()
    demo.save_pretrained(tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == \
        ["README.md", "config.json", "model.safetensors", "preprocessor.json", "tokenizer"]
    assert json.loads((tmp_path / "export" / "preprocessor.json").read_text())["image_size"] == 64
    cfg = json.loads((tmp_path / "export" / "config.json").read_text())
    assert cfg["model"]["type"] == "fusion_encoder"
    loaded = zoo.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        a, b = demo(images, ids), loaded(images, ids)
    assert torch.equal(a.fused.tokens, b.fused.tokens) and torch.equal(a.similarity, b.similarity)
    # pretrained= on create_model takes the same folder
    again = zoo.create_model("demo-tiny", pretrained=tmp_path / "export").eval()
    with torch.no_grad():
        assert torch.equal(again(images, ids).answer_logits, a.answer_logits)


def test_trainable_only_export_restores_the_model(tmp_path):
    torch.manual_seed(0)
    base = zoo.create_model("demo-tiny")
    base.save_pretrained(tmp_path / "base")  # stands for the pretrained weights the frozen parts come from
    model = zoo.create_model("demo-tiny", pretrained=tmp_path / "base").eval()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(("itm.", "vqa.")))
    with torch.no_grad():  # "training" changed only the trainable tensors
        for p in model.itm.parameters():
            p.add_(0.5)
    model.save_pretrained(tmp_path / "adapter", trainable_only=True)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "adapter" / "model.safetensors"))
    assert set(saved) == {n for n, p in model.named_parameters() if p.requires_grad}
    loaded = zoo.from_pretrained(tmp_path / "adapter").eval()
    images, ids = demo_inputs()
    with torch.no_grad():
        a, b = model(images, ids), loaded(images, ids)
    assert torch.equal(a.match_prob, b.match_prob) and torch.equal(a.fused.tokens, b.fused.tokens)
    # the tokenizer travels with the export: the rebuilt model tokenizes without the original folder
    assert loaded.text.get_tokenizer()("a red circle")["input_ids"] == model.text.get_tokenizer()("a red circle")["input_ids"]


def test_weights_errors_name_file_and_keys(demo, tmp_path):
    state = demo.state_dict()
    bad = dict(state)
    bad["itm.mlp.0.weight"] = torch.zeros(3, 3)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"bad.pth: 1 tensor\(s\) have the wrong shape \(shape mismatch\): itm.mlp.0.weight: file \(3, 3\) vs model \(128, 64\)"):
        load_weights(demo, tmp_path / "bad.pth")
    partial = {k: v for k, v in state.items() if not k.startswith("vqa.")}
    partial["extra.weight"] = torch.zeros(1)
    torch.save({"model": partial}, tmp_path / "partial.pth")
    with pytest.raises(WeightsError) as info:
        load_weights(demo, tmp_path / "partial.pth")
    assert "missing 6 key(s): vqa.mlp" in str(info.value) and "unexpected 1 key(s): extra.weight" in str(info.value)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="junk.safetensors: not a readable safetensors file"):
        load_weights(demo, tmp_path / "junk.safetensors")
    with pytest.raises(WeightsError, match="no such weights file"):
        load_weights(demo, tmp_path / "missing.pth")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as fh:
            fh.write("half-written")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "zoo.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_list_info_and_errors():
    res = _cli("list")
    assert res.returncode == 0 and "demo-tiny" in res.stdout and "fusion_encoder" in res.stdout
    res = _cli("info", "demo-tiny")
    info = zoo.model_info("demo-tiny")
    assert res.returncode == 0 and f"{info['params']:,}" in res.stdout and "beit_v2" in res.stdout
    res = _cli("info", "demo-tinyy")
    assert res.returncode == 2 and "did you mean 'demo-tiny'" in res.stderr and "Traceback" not in res.stderr
    res = _cli("list", "--parts")
    assert res.returncode == 0 and "beit_v2" in res.stdout and "cross_attention" in res.stdout


def test_demo_prints_what_it_computed():
    res = _cli("demo")
    assert res.returncode == 0, res.stderr[-2000:]
    for field in ("model       demo-tiny", "question    'what colour is the circle?'", "ITC", "ITM", "answers"):
        assert field in res.stdout


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_registered_model_and_task_builds_on_meta(name):
    """Every model file and every task variant it declares validates and builds (on the meta device: no memory), and
    what its config tree says it can be trained on (:func:`zoo.tasks.config_problem`, the check made before building)
    is what the built model says (``supported_tasks()``)."""
    from zoo.catalog import load_model_config
    from zoo.factory import resolve_config
    from zoo.tasks import config_problem, get_task, list_tasks

    tasks = [None, *sorted((load_model_config(name).get("tasks") or {}))]
    for task in tasks:
        model = zoo.create_model(name, task=task, device="meta")
        assert count_parameters(model) > 0
        assert model.zoo_config["name"] == name and model.zoo_config.get("task") == task
        tree = resolve_config(name, task)["model"]
        from_config = [t for t in list_tasks() if config_problem(tree, get_task(t)) is None]
        assert model.supported_tasks() == from_config, (name, task)


def test_a_model_without_task_variants_builds_for_the_tasks_it_serves():
    """eP-ALM's file has no ``tasks`` section: its one model serves VQA and captioning, so ``task="vqa"`` builds it
    (the same parameters as without a task) and records the task; a task it cannot train on is a ConfigError naming
    what it can. ``mmzoo info`` reports the resolution of the variant asked for (x2vlm-base's VQA runs at 768)."""
    import zoo
    from zoo.models.base import count_parameters

    base = zoo.create_model("epalm-tiny", device="meta")
    vqa = zoo.create_model("epalm-tiny", task="vqa", device="meta")
    assert count_parameters(vqa) == count_parameters(base) and vqa.zoo_config["task"] == "vqa"
    with pytest.raises(ConfigError, match="does not train on 'nlvr'; it trains on captioning, vqa") as info:
        zoo.create_model("epalm-tiny", task="nlvr", device="meta")
    assert info.value.path == "task"
    assert zoo.model_info("x2vlm-base", task="vqa")["default_resolution"] == 768
    assert zoo.model_info("x2vlm-base")["default_resolution"] == 224
