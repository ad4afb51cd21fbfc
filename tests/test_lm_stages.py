"""The language pre-training stage of the frozen-LM families and part exports: ``language_only`` reads no image,
``ZooModel.export_part`` writes a part in the format its own ``pretrained`` option loads (checked against
transformers' and timm's own loaders), ``zoo.hub.atomic_dir`` replaces a folder only on success, and the data
tokenizer works for a model whose text part is its LM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import task_config

import zoo
from zoo.modules.lm.processing import TextVQACollator
from zoo.hub import atomic_dir


def _images(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _vqa_batch(model, images: torch.Tensor) -> dict:
    items = [{"image": images[i], "question": q, "question_id": i, "all_answers": [a], "answers": [a],
              "weights": [1.0]} for i, (q, a) in enumerate([("what color is the square", "red"),
                                                            ("how many circles are there", "two")])]
    return TextVQACollator()(items)


@pytest.mark.parametrize("name,overrides", [
    ("epalm-tiny", {"language_only": True, "lm": {"freeze": False}}),
    ("mmgpt-tiny", {"language_only": True, "unfrozen": ["lm.model"], "lora_r": 0}),
])
def test_language_only_reads_no_image_and_trains_the_lm(name, overrides):
    torch.manual_seed(0)
    model = zoo.create_model(name, **overrides)
    if name == "mmgpt-tiny":  # open the gates: with images given, the cross-attention would change the logits
        for block in model.lm.inserted.values():
            for p in block.parameters():
                if p.dim() == 1 and p.numel() == 1:
                    p.data.fill_(0.7)
    a, b = _vqa_batch(model, _images(2, 1)), _vqa_batch(model, _images(2, 2))
    torch.manual_seed(3)
    loss_a = model.vqa_loss(a)["loss"]
    torch.manual_seed(3)
    loss_b = model.vqa_loss(b)["loss"]
    assert torch.equal(loss_a, loss_b)  # different pixels, same loss: no image is read
    model.language_only = False
    torch.manual_seed(3)
    assert not torch.allclose(model.vqa_loss(a)["loss"], loss_a)  # the visual path changes it when switched on
    model.language_only = True
    loss_a.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("lm.model.") for n in grads)
    assert not any(n.startswith(("vision.", "connector.", "perceiver.", "lm.inserted.")) for n in grads)


def test_lm_part_export_loads_in_transformers_and_as_pretrained(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = zoo.create_model("epalm-tiny", lm={"freeze": False})
    with torch.no_grad():  # weights that differ from any fresh initialisation
        for p in model.lm.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = model.export_part("lm", tmp_path / "lm")
    assert out == tmp_path / "lm" and (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    ids = torch.tensor([[101, 2054, 3609, 2003, 1996, 2675, 102]])
    ref = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(ref(ids).logits, model.lm.model(ids).logits, rtol=1e-5, atol=1e-5)
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.convert_tokens_to_ids("</a>") == model.lm.get_tokenizer().convert_tokens_to_ids("</a>") == 30522

    torch.manual_seed(1)  # a different seed: every LM tensor must come from the folder
    again = zoo.create_model("epalm-tiny", lm={"pretrained": str(out), "tokenizer": str(out)})
    mine, theirs = model.lm.model.state_dict(), again.lm.model.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert not any(p.requires_grad for p in again.lm.parameters())  # frozen as the eP-ALM config says


def test_lm_export_merges_lora_into_a_copy(tmp_path):
    """MultiModal-GPT's LM carries LoRA layers: the exported transformers folder holds the merged weights (its logits
    equal the LoRA model's LM on the same text) and the model keeps its LoRA layers."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = zoo.create_model("mmgpt-tiny").eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    out = model.export_part("lm", tmp_path / "lm")
    ref = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    ids = torch.tensor([[101, 2054, 3609, 2003, 1996, 2675, 102]])
    with torch.no_grad():
        # gates at 0: the inserted blocks pass the text through, so the model without media is its LoRA-tuned LM
        expected = model(None, ids).logits
        torch.testing.assert_close(ref(ids).logits, expected, rtol=1e-4, atol=1e-4)
    # each merged weight is W + (alpha / r) · B A (LoRA's formula), and differs from W
    from safetensors.torch import load_file

    saved = load_file(str(out / "model.safetensors"))
    own = dict(model.lm.model.named_parameters())
    layer = "model.layers.0.self_attn.q_proj"
    w = own[f"{layer}.base_layer.weight"]
    a, b = own[f"{layer}.lora_A.default.weight"], own[f"{layer}.lora_B.default.weight"]
    scale = 4 / 4  # mmgpt-tiny: lora_alpha 4, r 4
    torch.testing.assert_close(saved[f"{layer}.weight"], w + scale * b @ a)
    assert not torch.allclose(saved[f"{layer}.weight"], w)
    assert any("lora_" in n for n, _ in model.named_parameters())  # the model itself is unchanged


def test_vision_part_export_loads_as_timm_pretrained(tmp_path):
    import timm

    torch.manual_seed(0)
    model = zoo.create_model("epalm-tiny")
    path = model.export_part("vision", tmp_path / "vit")
    assert path.name == "model.safetensors"
    kw = {"patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 4}
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, **kw)
    ref.load_state_dict(__import__("safetensors.torch").torch.load_file(str(path)))  # timm's own layout, strict
    torch.manual_seed(5)
    again = zoo.create_model("epalm-tiny", vision={"pretrained": str(path)})
    x = _images(2)
    with torch.no_grad():
        torch.testing.assert_close(again.vision(x).tokens, model.vision(x).tokens)
        torch.testing.assert_close(ref.forward_features(x), model.vision.model.forward_features(x))


def test_export_part_errors_name_the_part(tmp_path):
    model = zoo.create_model("epalm-tiny")
    with pytest.raises(ValueError, match=r"no part 'visoin'.*vision.*lm"):
        model.export_part("visoin", tmp_path / "x")
    with pytest.raises(ValueError, match="connector.*cannot be exported on its own"):
        model.export_part("connector", tmp_path / "x")


def test_cli_export_part(tmp_path, capsys):
    from zoo.cli import main

    torch.manual_seed(0)
    model = zoo.create_model("epalm-tiny", lm={"freeze": False})
    src = model.save_pretrained(tmp_path / "export")
    assert main(["export", str(src), str(tmp_path / "lm"), "--part", "lm"]) == 0
    assert "model.lm.pretrained" in capsys.readouterr().out
    assert json.loads((tmp_path / "lm" / "config.json").read_text())["model_type"] == "opt"
    assert main(["export", str(src), str(tmp_path / "lm2"), "--part", "lm", "--trainable-only"]) == 2
    assert main(["export", str(src), str(tmp_path / "x"), "--part", "nope"]) == 2
    assert "no part 'nope'" in capsys.readouterr().err


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("interrupted")
    assert (target / "a.txt").read_text() == "one"  # the earlier folder is untouched
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("three")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folders left


def test_data_tokenizer_for_the_lm_part(tmp_path):
    from zoo.train.data import resolve_data_tokenizer

    rows = [{"question_id": i, "question": f"what colour is the {s}?", "answer": [c], "image": "x.png"}
            for i, (s, c) in enumerate([("circle", "red"), ("square", "blue"), ("triangle", "green")])]
    (tmp_path / "vqa.json").write_text(json.dumps(rows))
    model = zoo.create_model("epalm-tiny", lm={"tokenizer": "data", "config": {
        "vocab_size": 64, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}})
    resolve_data_tokenizer(model, {"root": str(tmp_path), "train": ["vqa.json"]}, tmp_path / "run")
    folder = str(tmp_path / "run" / "tokenizer_data")
    assert model.lm.tokenizer == folder and model.zoo_config["model"]["lm"]["tokenizer"] == folder
    tok = model.lm.get_tokenizer()  # </a> added on top of the words: within the 64 rows
    assert len(tok) <= 64 and "</a>" in tok.get_vocab()
    ids = tok("what colour is the triangle?</a>green", add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and tok.decode(ids).endswith("</a> green")


@pytest.mark.parametrize("family", ["epalm", "mmgpt"])
def test_two_stage_configs_train_then_freeze_the_lm(family, tmp_path):
    """The shipped stage configs end to end on tiny data: stage 1 trains the LM language-only, `mmzoo export --part
    lm` writes it, stage 2 loads it and keeps it frozen (every tensor of its export equal to the folder's; that only
    the adapters train is tested tensor by tensor in test_epalm / test_mmgpt)."""
    from safetensors.torch import load_file

    from zoo.cli import main
    from zoo.data.shapes import generate_shapes
    from zoo.train.run import load_task_config, train

    root = generate_shapes(tmp_path / "shapes", seed=0, num_train_images=12, num_val_images=4, num_test_images=4,
                           image_size=48, num_videos=0)
    common = [f"data.root={root}", f"train.output_dir={tmp_path / 'runs'}", "data.batch_size=8",
              "data.cache_images=false", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
              "trainer.limit_test_batches=1", "trainer.check_val_every_n_epoch=1", "trainer.enable_progress_bar=false"]
    stage1 = train(load_task_config(task_config(f"lm-{family}-shapes"), common))
    lm_dir = tmp_path / "lm"
    assert main(["export", stage1["run_dir"], str(lm_dir), "--part", "lm"]) == 0
    stage1_lm = load_file(str(lm_dir / "model.safetensors"))
    stage2 = train(load_task_config(task_config(f"vqa-{family}-shapes"), common + [
        f"model.overrides.lm.pretrained={lm_dir}", f"model.overrides.lm.tokenizer={lm_dir}"]))
    after = load_file(str(Path(stage2["export"]) / "model.safetensors"))

    def name(key: str) -> str:  # peft keeps a LoRA-wrapped layer's own weight as base_layer.*
        plain = f"lm.model.{key}"
        return plain if plain in after else plain.replace(".weight", ".base_layer.weight")

    assert all(name(k) in after for k in stage1_lm)  # every LM tensor (the tied LM head of OPT is stored once)
    assert all(torch.equal(after[name(k)], stage1_lm[k]) for k in stage1_lm)  # loaded, then frozen


def test_export_reattaches_the_lm_tokenizer(tmp_path):
    """An export of a language-model family carries its tokenizer; from_pretrained points `lm.tokenizer` at it, so
    the export works after the tokenizer it was trained with is gone."""
    import shutil

    from zoo.data.multilingual_tokenizer import build_multilingual_tokenizer

    words = ["what colour is the circle?", "red", "blue", "where is the square?", "left", "right"]
    folder = build_multilingual_tokenizer(words * 3, tmp_path / "tok", vocab_size=40, model="words")
    lm = {"tokenizer": str(folder), "config": {"vocab_size": 64, "pad_token_id": 1, "bos_token_id": 0,
                                               "eos_token_id": 2}}
    torch.manual_seed(0)
    model = zoo.create_model("epalm-tiny", lm=lm)
    ids = model.lm.get_tokenizer()("where is the square?</a>left", add_special_tokens=False)["input_ids"]
    export = model.save_pretrained(tmp_path / "export")
    shutil.rmtree(folder)
    again = zoo.from_pretrained(export)
    assert again.lm.tokenizer == str(export / "tokenizer")
    assert again.lm.get_tokenizer()("where is the square?</a>left", add_special_tokens=False)["input_ids"] == ids


def test_data_tokenizer_learns_the_models_template_words(tmp_path):
    """MultiModal-GPT writes an instruction template around the data: a data tokenizer built for it has the
    template's words (one token each) even where the data folder ships its own tokenizer without them."""
    from zoo.models.mmgpt.instruction import encode_instruction
    from zoo.data.shapes import TOKENIZER_DIR, generate_shapes
    from zoo.train.data import resolve_data_tokenizer

    root = generate_shapes(tmp_path / "shapes", seed=0, num_train_images=8, num_val_images=4, num_test_images=4,
                           image_size=48, num_videos=0)
    assert (root / TOKENIZER_DIR / "tokenizer.json").is_file()
    model = zoo.create_model("mmgpt-tiny", lm={"tokenizer": "data", "config": {
        "vocab_size": 512, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}}, vocab_size=512)
    resolve_data_tokenizer(model, {"root": str(root), "train": ["vqa_train.json"]}, tmp_path / "run")
    assert model.lm.tokenizer == str(tmp_path / "run" / "tokenizer_data")
    tok = model.lm.get_tokenizer()
    for template in model.tokenizer_texts():  # one token per word of every template
        assert len(tok(template, add_special_tokens=False)["input_ids"]) == len(template.split())
    ids, _ = encode_instruction(tok, [("how many circles are there?", "two")], bos_id=0, eos_id=2)
    assert len(ids) < 40 and tok.unk_token_id not in ids
