"""MultiModal-GPT: official sizes on the meta device (formulas), identity at zero gates (against a plain transformers
LLaMA), the <image> masking of the cross-attention (against the official algorithm written out in float64), LoRA-only
training, cached vs uncached generation, the instruction template and label masking, data mixing, both exports, chat,
and a tiny VQA fine-tune through the standard training path."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from conftest import task_config

import zoo
from zoo.models.mmgpt.instruction import (IMAGE_TOKEN, PREAMBLE, InstructionCollator, MixedInstructionDataset, chat_prompt,
                                  encode_instruction, instruction_prompt)
from zoo.models.base import count_parameters
from zoo.models.mmgpt import MultiModalGPT, convert_official_state_dict
from zoo.models.mmgpt.flamingo import MaskedCrossAttention
from zoo.spec import ConfigError


def _tiny(**overrides) -> MultiModalGPT:
    torch.manual_seed(0)
    return zoo.create_model("mmgpt-tiny", **overrides).eval()


def _images(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _open_gates(model: MultiModalGPT, value: float = 0.7) -> None:
    with torch.no_grad():
        for block in model.lm.inserted.values():
            block.attn_gate.fill_(value)
            block.ff_gate.fill_(-value)


def _perturb_lora(model: MultiModalGPT, seed: int = 5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)


def _text(model: MultiModalGPT):
    return model.encode([[("what color is the square", "red")], [("how many circles", "two of them")]])


# ---------------------------------------------------------------------------------------------------------------------
# official sizes
# ---------------------------------------------------------------------------------------------------------------------
def _llama_formula(d=4096, f=11008, n=32, v=32000) -> int:
    layer = 4 * d * d + 3 * d * f + 2 * d  # q/k/v/o, gate/up/down, two RMSNorms (no biases)
    return v * d + n * layer + d + v * d  # embeddings, layers, final norm, untied lm_head


def _clip_vit_l14_visual(d=1024, depth=24, patch=14, img=224, out=768) -> int:
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    return 3 * patch * patch * d + d + ((img // patch) ** 2 + 1) * d + 2 * d + depth * block + 2 * d + d * out


def _ff(d: int, mult: int = 4) -> int:
    return 2 * d + 2 * d * mult * d


def _perceiver(d=1024, depth=6, heads=8, dh=64, latents=64) -> int:
    inner = heads * dh
    attn = 4 * d + d * inner + d * 2 * inner + inner * d
    return latents * d + depth * (attn + _ff(d)) + 2 * d


def _xattn(d=4096, dv=1024, heads=8, dh=64) -> int:
    inner = heads * dh
    return 2 * d + d * inner + dv * 2 * inner + inner * d + 1 + _ff(d) + 1


def _lora(r=16, d=4096, dv=1024, n=32, blocks=8, inner=512) -> int:
    lm = n * 4 * r * (d + d)
    xattn = blocks * r * ((d + inner) + (dv + 2 * inner) + (inner + d) + (d + 4 * d) + (4 * d + d))
    return lm + xattn


def test_official_size_on_meta():
    model = zoo.create_model("mmgpt-llama7b-vitl14", device="meta")
    assert _llama_formula() == 6_738_415_616  # LLaMA-7B
    llama = _llama_formula(v=32003)  # resized for <|endofchunk|>, <image>, <PAD>
    vit, perc, xattn, lora = _clip_vit_l14_visual(), _perceiver(), 8 * _xattn(), _lora()
    assert (llama, vit, perc, xattn, lora) == (6_738_440_192, 303_966_208, 63_019_008, 1_115_815_952, 23_461_888)
    assert count_parameters(model.vision) == vit
    assert count_parameters(model.perceiver) == perc
    lora_in = lambda m: sum(p.numel() for n, p in m.named_parameters() if "lora_" in n)  # noqa: E731
    assert count_parameters(model.lm.model) - lora_in(model.lm.model) == llama
    assert count_parameters(model.lm.inserted) - lora_in(model.lm.inserted) == xattn
    assert count_parameters(model) == llama + vit + perc + xattn + lora == 8_244_703_248
    assert count_parameters(model, trainable_only=True) == lora  # official: LoRA only (unfrozen = [])
    assert model.xattn_layers == [3, 7, 11, 15, 19, 23, 27, 31]
    assert model.lm.vocab_size == 32003
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "to_q", "to_kv", "to_out", "1", "3"}
    assert not any(n.startswith("perceiver.") for n in trainable)


def test_tokens_and_config_errors():
    model = _tiny()
    tok = model.tokenizer
    assert tok.convert_tokens_to_ids("<|endofchunk|>") == 30522 and model.media_token_id == 30523
    assert model.lm.vocab_size == 30524 == model.lm.get_input_embeddings().num_embeddings
    assert not model.lm.get_input_embeddings().weight.requires_grad  # official: resized rows frozen too
    with pytest.raises(ConfigError, match="cross_attn_every_n_layers"):
        zoo.create_model("mmgpt-tiny", cross_attn_every_n_layers=9)


# ---------------------------------------------------------------------------------------------------------------------
# behaviour
# ---------------------------------------------------------------------------------------------------------------------
def test_zero_gates_equal_plain_llama():
    """Gates at 0 and LoRA B at 0 (before training): logits equal a plain transformers LLaMA with the base weights."""
    from transformers import LlamaForCausalLM

    model = _tiny()
    ids, mask, _ = _text(model)
    base = {k.replace(".base_layer", ""): v for k, v in model.lm.model.state_dict().items() if "lora_" not in k}
    ref = LlamaForCausalLM(model.lm.model.config).eval()
    ref.load_state_dict(base)
    with torch.no_grad():
        got = model(_images(), ids, mask).logits
        want = ref(input_ids=ids, attention_mask=mask).logits
        assert torch.allclose(got, want, atol=1e-5)
        _open_gates(model)
        assert not torch.allclose(model(_images(), ids, mask).logits, want, atol=1e-3)  # the blocks do act


def _official_masked_xattn(mod: MaskedCrossAttention, x, media, media_locations, attend_previous):
    """The official MaskedCrossAttention.forward written out in float64 (einsum, -finfo.max fill, zeroed rows)."""
    b, t_img, n = media.shape[:3]
    h = mod.heads
    x = torch.nn.functional.layer_norm(x, x.shape[-1:], mod.norm.weight.double(), mod.norm.bias.double())
    q = x @ mod.to_q.weight.double().T
    kv = media.reshape(b, t_img * n, -1) @ mod.to_kv.weight.double().T
    k, v = kv.chunk(2, -1)
    split = lambda t: t.view(b, t.shape[1], h, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(q) * (q.shape[-1] // h) ** -0.5, split(k), split(v)
    sim = torch.einsum("bhid,bhjd->bhij", q, k)
    text_time = media_locations.long().cumsum(-1)
    if not attend_previous:
        text_time[~media_locations] += 1
        text_time[text_time > media_locations.sum(1, keepdim=True)] = 0
    media_time = torch.arange(t_img) + 1
    keep = text_time[:, None, :, None] == media_time.repeat_interleave(n)[None, None, None, :]
    sim = sim.masked_fill(~keep, -torch.finfo(sim.dtype).max)
    attn = (sim - sim.amax(-1, keepdim=True)).softmax(-1)
    attn = attn.masked_fill((text_time == 0)[:, None, :, None], 0.0)
    out = torch.einsum("bhij,bhjd->bhid", attn, v).transpose(1, 2).reshape(b, x.shape[1], -1)
    return out @ mod.to_out.weight.double().T, text_time


@pytest.mark.parametrize("attend_previous", [True, False])
def test_media_masking_matches_official_float64(attend_previous):
    torch.manual_seed(0)
    mod = MaskedCrossAttention(dim=32, dim_visual=24, dim_head=8, heads=2).double()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    media = torch.randn(2, 2, 3, 24, dtype=torch.float64)  # 2 images × 3 latents
    loc = torch.zeros(2, 9, dtype=torch.bool)
    loc[0, [2, 6]] = True  # two images
    loc[1, [0]] = True  # one image at the start (its second media item is never referenced)
    got = mod(x, media, loc, attend_previous=attend_previous)
    want, text_time = _official_masked_xattn(mod, x, media, loc, attend_previous)
    assert torch.allclose(got, want, atol=1e-10)
    zero = text_time == 0
    assert torch.equal(got[zero], torch.zeros_like(got[zero]))
    if attend_previous:  # tokens 0-1 precede any image: nothing; 2-5 see image 1; 6-8 image 2
        assert text_time[0].tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2]
        # a token's output depends only on its own image's latents
        media2 = media.clone()
        media2[0, 1] += 1.0
        moved = mod(x, media2, loc, attend_previous=True)
        assert torch.equal(moved[0, :6], got[0, :6]) and not torch.allclose(moved[0, 6:], got[0, 6:])


def test_only_lora_trains_and_one_step_changes_nothing_else():
    model = _tiny()
    _open_gates(model)  # so that the cross-attention LoRA gets gradients too
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    ids, mask, labels = _text(model)
    model(_images(), ids, mask, labels).loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in trainable), name
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in trainable if ".lora_B." in n)
    opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= trainable
    assert {n for n in trainable if ".lora_B." in n} <= changed


def test_generation_with_and_without_cache():
    model = _tiny()
    _open_gates(model)
    _perturb_lora(model)
    ids, mask = model._prompt_ids([instruction_prompt("what is it"), instruction_prompt("how many shapes are there")])
    for beams in (1, 2):
        a = model.generate(_images(), ids, mask, max_new_tokens=6, num_beams=beams, do_sample=False, use_cache=True)
        b = model.generate(_images(), ids, mask, max_new_tokens=6, num_beams=beams, do_sample=False, use_cache=False)
        assert torch.equal(a, b)
    assert not (a == model.media_token_id).any()
    # the greedy tokens are the argmax of the forward logits (no cache) step by step
    seq, m = ids[:1, :int(mask[0].sum())], None
    for t in range(3):
        logits = model(_images(1), seq).logits[:, -1]
        logits[:, model.media_token_id] = -float("inf")
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], 1)
    first = model.generate(_images(1), ids[:1, :int(mask[0].sum())], max_new_tokens=3, num_beams=1)
    assert torch.equal(first[0], seq[0, -3:])


# ---------------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------------
def test_template_and_label_masking():
    model = _tiny()
    tok = model.tokenizer
    assert instruction_prompt("q?") == PREAMBLE + "### Image:\n<image>\n\n### Instruction:\nq?\n\n### Response:\n"
    assert instruction_prompt("q?", image=False) == PREAMBLE + "### Instruction:\nq?\n\n### Response:\n"
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    ids, labels = encode_instruction(tok, [("what color", "dark red")], bos_id=101, eos_id=102)
    head = [101] + enc(instruction_prompt("what color"))
    assert ids == head + enc("dark red") + [102]
    assert labels == [-100] * len(head) + enc("dark red") + [102]
    assert model.media_token_id in ids and labels[ids.index(model.media_token_id)] == -100
    # dialogue: every turn has its own bos/eos, every answer labelled, every prompt masked
    ids2, labels2 = encode_instruction(tok, [("q one", "a one"), ("q two", "a two")], bos_id=101, eos_id=102)
    labelled = [t for t, lab in zip(ids2, labels2) if lab != -100]
    assert labelled == enc("a one") + [102] + enc("a two") + [102]
    assert ids2.count(101) == 2 and ids2.count(model.media_token_id) == 1
    # collator: padding and the first token unlabelled; language-only rows have no <image>
    col = InstructionCollator(tok, pad_id=0, bos_id=101, eos_id=102)
    batch = col([{"turns": [("what color", "dark red")], "image": _images(1)[0]}, {"turns": [("q", "a")],
                                                                                    "image": _images(1)[0]}])
    assert batch["images"].shape == (2, 3, 32, 32)
    pad = batch["attention_mask"] == 0
    assert pad.any() and (batch["labels"][pad] == -100).all()
    keep = batch["labels"] != -100
    assert torch.equal(batch["input_ids"][keep], torch.tensor(enc("dark red") + [102] + enc("a") + [102]))
    lang = col([{"turns": [("tell a joke", "no")]}])
    assert "images" not in lang and not (lang["input_ids"] == model.media_token_id).any()
    # chat prompt (official app.py, whole history)
    p = chat_prompt([("hi", "hello"), ("and?", None)])
    assert p == (PREAMBLE.rstrip("\n") + "\n\n### Image:\n<image>\n\n### Instruction:\nhi\n\n### Response:\nhello"
                 "\n\n### Instruction:\nand?\n\n### Response:\n")
    assert IMAGE_TOKEN in p


def test_mixing_ratio():
    visual, language = [("v", i) for i in range(7)], [("l", i) for i in range(5)]
    ds = MixedInstructionDataset(visual, language, language_ratio=0.3, length=4000, seed=1)
    n_lang = sum(ds[i][0] == "l" for i in range(len(ds)))
    sigma = math.sqrt(4000 * 0.3 * 0.7)
    assert abs(n_lang - 1200) < 4 * sigma
    assert all((ds[i][0] == "l") == (ds.source(i) == "language") for i in range(len(ds)))
    again = MixedInstructionDataset(visual, language, language_ratio=0.3, length=4000, seed=1)
    assert [again[i] for i in range(50)] == [ds[i] for i in range(50)]
    # each source is walked through completely before repeating
    first_v = [ds[i][1] for i in range(len(ds)) if ds.source(i) == "visual"][:7]
    assert sorted(first_v) == list(range(7))
    assert all(ds[i][0] == "v" for i in range(100)) is False
    only_visual = MixedInstructionDataset(visual, language, language_ratio=0.0, length=100)
    assert all(only_visual[i][0] == "v" for i in range(100))
    with pytest.raises(ValueError):
        MixedInstructionDataset(visual, language, language_ratio=1.5)


# ---------------------------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------------------------
def test_merged_export_equals_unmerged(tmp_path):
    model = _tiny()
    _open_gates(model)
    _perturb_lora(model)
    ids, mask, _ = _text(model)
    out = model.export_merged(tmp_path / "merged")
    loaded = zoo.from_pretrained(out).eval()
    assert not any("lora_" in k for k in loaded.state_dict())
    assert count_parameters(loaded, trainable_only=True) == 0
    with torch.no_grad():
        want = model(_images(), ids, mask).logits
        got = loaded(_images(), ids, mask).logits
    assert torch.allclose(got, want, atol=1e-5)


def test_lora_only_export_roundtrip(tmp_path):
    """Frozen parts come from local files (a LLaMA folder written by transformers, a timm file, an OpenFlamingo-style
    file of the perceiver and the blocks); the export holds only LoRA and restores the outputs exactly."""
    from safetensors.torch import load_file, save_file

    base = _tiny(lora_r=0)
    lm_dir, vit_file, fl_file = tmp_path / "llama", tmp_path / "vit.safetensors", tmp_path / "flamingo.safetensors"
    base.lm.model.save_pretrained(str(lm_dir))
    save_file({k: v.contiguous() for k, v in base.vision.model.state_dict().items()}, str(vit_file))
    with torch.no_grad():
        for block in base.lm.inserted.values():
            block.attn_gate.fill_(0.5)
            block.ff_gate.fill_(0.5)
    fl = {k: v.contiguous() for k, v in base.state_dict().items() if k.startswith(("perceiver.", "lm.inserted."))}
    save_file(fl, str(fl_file))
    parts = {"lm.pretrained": str(lm_dir), "lm.config.vocab_size": 30524,  # the folder holds the resized LM
             "vision.pretrained": str(vit_file), "flamingo_pretrained": str(fl_file)}
    torch.manual_seed(1)
    model = zoo.create_model("mmgpt-tiny", **parts).eval()
    _perturb_lora(model)
    export = model.save_pretrained(tmp_path / "export", trainable_only=True)
    saved = load_file(str(export / "model.safetensors"))
    assert set(saved) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in k for k in saved)
    ids, mask, _ = _text(model)
    torch.manual_seed(3)
    loaded = zoo.from_pretrained(export).eval()
    with torch.no_grad():
        assert torch.equal(loaded(_images(), ids, mask).logits, model(_images(), ids, mask).logits)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_official_key_conversion():
    t = torch.zeros(1)
    keys = {
        "module.perceiver.layers.0.0.to_q.weight": "perceiver.layers.0.0.to_q.weight",
        "lang_encoder.gated_cross_attn_layers.3.attn_gate": "lm.inserted.3.attn_gate",
        "lang_encoder.model.layers.7.gated_cross_attn_layer.ff.1.weight": "lm.inserted.7.ff.1.weight",
        "lang_encoder.model.layers.2.decoder_layer.self_attn.q_proj.weight": "lm.model.model.layers.2.self_attn.q_proj.weight",
        "lang_encoder.model.embed_tokens.weight": "lm.model.model.embed_tokens.weight",
        "lang_encoder.lm_head.weight": "lm.model.lm_head.weight",
        "lang_encoder.base_model.model.model.layers.0.decoder_layer.self_attn.q_proj.lora_A.weight":
            "lm.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
        "lang_encoder.base_model.model.gated_cross_attn_layers.3.attn.to_kv.lora_B.weight":
            "lm.inserted.3.attn.to_kv.lora_B.default.weight",
        "vision_encoder.visual.conv1.weight": "vision.visual.conv1.weight",
    }
    out = convert_official_state_dict({**{k: t for k in keys}, "vision_encoder.token_embedding.weight": t})
    assert set(out) == set(keys.values())
    model = zoo.create_model("mmgpt-llama7b-vitl14", device="meta")
    own = {k.replace(".base_layer", "") for k in model.state_dict()}  # base tensors load before LoRA wraps them
    assert all(v in own for v in keys.values()), [v for v in keys.values() if v not in own]


# ---------------------------------------------------------------------------------------------------------------------
# chat and training
# ---------------------------------------------------------------------------------------------------------------------
def test_chat_two_turns(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from zoo.cli import main

    img = tmp_path / "img.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(img)
    seen = []
    original = MultiModalGPT.chat

    def spy(self, image, history, question, **kw):
        seen.append((list(history), question, None if image is None else tuple(image.shape)))
        return original(self, image, history, question, **kw)

    monkeypatch.setattr(MultiModalGPT, "chat", spy)
    monkeypatch.setattr("sys.stdin", io.StringIO("what color is it?\nand its shape?\n"))
    assert main(["chat", "mmgpt-tiny", "--image", str(img), "--prefix", "> "]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("> ")]
    assert len(lines) == 2
    assert seen[0] == ([], "what color is it?", (3, 32, 32))
    assert seen[1][0] == [("what color is it?", lines[0][2:])] and seen[1][1] == "and its shape?"


def test_vqa_training_path_on_shapes(tmp_path):
    """mmgpt-tiny through train() on the colour questions about single-shape scenes, with the shapes recipe's settings
    in one stage (the data's word-level tokenizer; the LM, the perceiver and the gated cross-attention trained, as
    there is no pretrained LM or OpenFlamingo here).

    No win over blank images is asserted: it is out of this test's budget. The cross-attention gates start at 0, so
    the image changes nothing until they open, and the loss sits at the answer prior (~0.97) for 190 steps or more
    (measured on 600 scenes at lr 5e-3, batch 16: 30 epochs, 330 steps, reached 66.15 test accuracy, while 22 epochs,
    242 steps, stayed at 18.46, one colour for every question, on seeds 0 and 1; each run took about 35 s here, and
    the blank-image ablation would double that). What holds after these 30 steps, exactly or by a wide margin: the
    loss falls from its first value to under a third of it (measured 6.19 to 1.14); every test answer is a colour (the
    LM learned the answer's form: measured 24 of 24, all "yellow", scoring 12.08); the gates have opened and the image
    changes the model's loss; and the test score is the VQA accuracy of the model's own answers, generated one
    question at a time through `mmzoo predict`."""
    import csv

    from conftest import predicted_answers, shapes_subset

    from zoo.data.shapes import COLOURS
    from zoo.train.run import load_task_config, model_from_checkpoint, train

    shapes = shapes_subset(tmp_path / "shapes", "vqa", "colour",
                           lambda r, counts: r["question"].startswith("what colour") and counts[r["image"]] == 1,
                           num_train_images=300, num_val_images=4, num_test_images=100, image_size=48, num_videos=0)
    cfg = load_task_config(task_config("vqa-mmgpt-shapes"))
    cfg["model"]["overrides"] = {"lm.tokenizer": "data", "lm.config.vocab_size": 512, "vocab_size": 512,
                                 "lm.config.pad_token_id": 1, "lm.config.bos_token_id": 0, "lm.config.eos_token_id": 2,
                                 "unfrozen": ["lm.model", "perceiver", "lm.inserted"]}
    cfg["data"].update(root=str(shapes), train=["vqa_train_colour.json"], val=None, test="vqa_test_colour.json",
                       batch_size=16, eval_batch_size=64)
    cfg["optim"]["lr"] = 5.0e-3
    cfg["trainer"].update(max_epochs=6, enable_progress_bar=False, log_every_n_steps=1)
    cfg["train"].update(output_dir=str(tmp_path / "runs"), name="mmgpt-vqa", export=False)
    results = train(cfg)
    run = tmp_path / "runs" / "mmgpt-vqa"
    with open(run / "logs" / "metrics.csv", encoding="utf-8") as fh:
        losses = [float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")]
    assert len(losses) == 30 and losses[-1] < losses[0] / 3, losses
    model = model_from_checkpoint(run).eval()
    gates = [p for n, p in model.named_parameters() if n.endswith("_gate")]
    assert gates and all(float(g.abs()) > 0 for g in gates)
    records = json.loads((shapes / "vqa_test_colour.json").read_text())
    predicted, expected = predicted_answers(run, shapes, records, model)
    assert len(records) == 24 and set(predicted) <= set(COLOURS), predicted
    assert results["test"]["vqa_acc"] == pytest.approx(expected, abs=1e-9)
    # the image reaches the LM: the loss of the same question and answer differs with a blank image
    from PIL import Image

    from zoo.data.transforms import build_image_transform
    from zoo.models.base import input_resolution

    with Image.open(shapes / records[0]["image"]) as img:
        image = build_image_transform(input_resolution(model), train=False)(img.convert("RGB")).unsqueeze(0)
    ids, mask, labels = model.encode([[(records[0]["question"], records[0]["answer"][0])]])
    with torch.no_grad():
        with_image = model(image, ids, mask, labels).loss
        blank = model(torch.zeros_like(image), ids, mask, labels).loss
    assert not torch.equal(with_image, blank)


def test_language_only_instruction_batches_join_training(tmp_path):
    """data.language: Alpaca and Dolly records are read alike; each visual batch comes with a language-only batch in
    the no-image template (### Input: when given), and the step's loss is vqa_loss + language_weight × the language
    loss (recomputed here); the run logs both."""
    import json

    from zoo.data.datasets import DataError
    from zoo.data.shapes import generate_shapes
    from zoo.models.mmgpt.instruction import read_instructions
    from zoo.train.run import load_task_config, train

    alpaca = [{"instruction": f"name a colour number {i}", "input": "", "output": "red"} for i in range(5)]
    dolly = [{"instruction": "translate to german", "context": "the red circle", "response": "der rote Kreis"}] * 5
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca))
    (tmp_path / "dolly.json").write_text(json.dumps(dolly))
    recs = read_instructions([str(tmp_path / "alpaca.json"), str(tmp_path / "dolly.json")])
    assert recs[0] == {"instruction": "name a colour number 0", "input": "", "output": "red"}
    assert recs[5] == {"instruction": "translate to german", "input": "the red circle", "output": "der rote Kreis"}
    (tmp_path / "bad.json").write_text(json.dumps([{"instruction": "x"}]))
    with pytest.raises(DataError, match="bad.json"):
        read_instructions(str(tmp_path / "bad.json"))

    model = _tiny()
    batch = model.encode_language([recs[0], recs[5]])
    tok = model.tokenizer
    text = tok.decode(batch["input_ids"][1][batch["attention_mask"][1].bool()], skip_special_tokens=False)
    flat = text.replace(" ", "")  # the WordPiece test tokenizer lowercases and splits punctuation
    assert "###input:theredcircle###response:derrotekreis" in flat and "###image:" not in flat
    assert IMAGE_TOKEN not in text
    labelled = batch["labels"][1][batch["labels"][1] != -100].tolist()
    assert labelled == tok("der rote Kreis", add_special_tokens=False)["input_ids"] + [model.lm.eos_token_id]
    assert "###input:" not in tok.decode(batch["input_ids"][0], skip_special_tokens=True).replace(" ", "")

    shapes = generate_shapes(tmp_path / "shapes", num_train_images=8, num_val_images=4, num_test_images=4,
                             image_size=48, num_videos=0)
    cfg = load_task_config(task_config("vqa-shapes"))
    cfg["model"] = {"name": "mmgpt-tiny", "task": None, "pretrained": None, "overrides": {}}
    cfg["data"].update(root=str(shapes), batch_size=8, eval_batch_size=8, language=[str(tmp_path / "dolly.json")],
                       language_batch_size=4, language_weight=0.25)
    cfg["optim"].update(new_params=[])
    cfg["trainer"].update(max_epochs=1, enable_progress_bar=False, limit_train_batches=2, limit_val_batches=1,
                          limit_test_batches=1, log_every_n_steps=1)
    cfg["train"].update(output_dir=str(tmp_path / "runs"), name="mixed", export=False)
    train(cfg)
    header = (tmp_path / "runs" / "mixed" / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert "train/language_loss" in header and "train/loss" in header


def test_language_side_batch_adds_weighted_loss(tmp_path):
    import json

    from zoo.data.shapes import generate_shapes
    from zoo.train.data import TaskDataModule
    from zoo.train.module import TaskModule

    (tmp_path / "alpaca.json").write_text(json.dumps(
        [{"instruction": f"count to {i}", "input": "", "output": " ".join(["one"] * (i + 1))} for i in range(6)]))
    shapes = generate_shapes(tmp_path / "shapes", num_train_images=8, num_val_images=4, num_test_images=4,
                             image_size=48, num_videos=0)
    model = _tiny()
    dm = TaskDataModule("vqa", {"root": str(shapes), "train": "vqa_train.json", "batch_size": 4, "randaugment": False,
                                "language": str(tmp_path / "alpaca.json"), "language_batch_size": 3,
                                "language_weight": 0.5}, model.tokenizer, image_size=32)
    dm.configure_for_model(model)
    batch, *_ = next(iter(dm.train_dataloader()))
    assert set(batch) == {"task", "language"} and batch["language"]["input_ids"].shape[0] == 3
    module = TaskModule(model, "vqa")
    module.trainer = type("T", (), {"datamodule": dm})()
    module.log = lambda *a, **k: None
    loss = module.training_step(batch, 0)
    expected = model.vqa_loss(batch["task"])["loss"] + 0.5 * model.language_losses(batch["language"])["loss"]
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ConfigError, match="data.language"):
        bad = TaskDataModule("vqa", {"root": str(shapes), "train": "vqa_train.json", "batch_size": 4,
                                     "language": str(tmp_path / "alpaca.json")}, model.tokenizer, image_size=32)
        bad.configure_for_model(zoo.create_model("epalm-tiny"))
