"""eP-ALM: official sizes on the meta device, only connectors + prompt train, reduction to the LM when the connectors
are zero (checked against transformers' own layers), VQA / captioning training and generation, video input, and the
trainable-only export."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zoo
from conftest import fit_steps, shapes_subset
from zoo.data.collate import encode_answer_list, tokenize_texts
from zoo.models.base import count_parameters
from zoo.models.epalm import EPALM, convert_official_state_dict
from zoo.modules.lm.processing import TextVQACollator
from zoo.spec import ConfigError


def _tiny(**overrides) -> EPALM:
    torch.manual_seed(0)
    return zoo.create_model("epalm-tiny", **overrides)


def _images(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _vqa_batch(model: EPALM) -> dict:
    """A real training batch of the model's own processor (text: questions, answers, weights), one answer each."""
    items = [
        {"image": _images(1, 1)[0], "question": "what color is the square", "question_id": 1,
         "all_answers": ["red"], "answers": ["red"], "weights": [1.0]},
        {"image": _images(1, 2)[0], "question": "how many circles are there", "question_id": 2,
         "all_answers": ["two"], "answers": ["two"], "weights": [1.0]},
    ]
    return TextVQACollator()(items)


def _unique_count(module: nn.Module, trainable: bool = False) -> int:
    return count_parameters(module, trainable_only=trainable)


# ---------------------------------------------------------------------------------------------------------------------
# official sizes
# ---------------------------------------------------------------------------------------------------------------------
def _vit_b16_formula(d: int = 768, depth: int = 12, patch: int = 16, img: int = 224, mlp: int = 4) -> int:
    tokens = (img // patch) ** 2 + 1
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * mlp * d + mlp * d) + (mlp * d * d + d)
    return (3 * patch * patch * d + d) + d + tokens * d + depth * block + 2 * d  # patch, cls, pos, blocks, norm


def _opt_formula(d=2560, f=10240, v=50272, n=32, positions=2048) -> int:
    layer = 4 * (d * d + d) + 4 * d + (d * f + f) + (f * d + d)
    return v * d + (positions + 2) * d + n * layer + 2 * d


def test_official_size_on_meta():
    model = zoo.create_model("epalm-opt2.7b-vitb16", device="meta")
    vit, opt = _vit_b16_formula(), _opt_formula()
    assert vit == 85_798_656 and opt == 2_651_596_800
    connectors = 6 * (768 * 2560 + 2560)
    prompt = 10 * 2560 + 2 * (2560 * 2560 + 2560)  # Embedding(10, 2560) + Linear + Linear (reparameterisation)
    assert connectors == 11_811_840 and prompt == 13_137_920
    assert _unique_count(model.vision) == vit
    assert _unique_count(model.lm) == opt
    assert _unique_count(model.connector) == connectors
    assert _unique_count(model.prompt_module) == prompt
    total, trainable = _unique_count(model), _unique_count(model, trainable=True)
    assert total == vit + opt + connectors + prompt == 2_762_345_216
    assert trainable == connectors + prompt == 24_949_760
    assert trainable / total < 0.01  # 0.90 %
    names = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"connector", "prompt_module"}
    # the paper's setting: one prompt token without reparameterisation -> 0.43 %
    paper = zoo.create_model("epalm-opt2.7b-vitb16", device="meta", prompt_len=1, prompt_reparam=False)
    assert _unique_count(paper, trainable=True) == connectors + 2560
    assert _unique_count(paper, trainable=True) / _unique_count(paper) < 0.005
    assert (model.start_layer, model.end_layer, model.num_vision_layers) == (19, 31, 6)
    assert model.lm.num_layers == 32  # the schedule (a token per 2 layers over 19-30) is tested in test_causal_lm


def test_config_errors():
    with pytest.raises(ConfigError, match="end_layer"):
        _tiny(end_layer=9)
    with pytest.raises(ConfigError, match="num_vision_layers"):
        _tiny(num_vision_layers=7)


def test_official_checkpoint_names_map_onto_trainables():
    """Official checkpoints hold connector.{i}.{weight,bias} and prompt_module.prefix_embedding.{0,1,3}.*."""
    model = _tiny(prompt_len=3)
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    official = {f"connector.{i}.{w}": trainable[f"connector.{i}.proj.{w}"] for i in range(2) for w in ("weight", "bias")}
    official.update({f"prompt_module.prefix_embedding.{k}": trainable[f"prompt_module.prefix_embedding.{k}"]
                     for k in ("0.weight", "1.weight", "1.bias", "3.weight", "3.bias")})
    converted = convert_official_state_dict(official)
    assert set(converted) == set(trainable)
    assert all(converted[k] is trainable[k] for k in trainable)
    # checkpoints saved from DistributedDataParallel carry a "module." prefix on every key
    wrapped = convert_official_state_dict({f"module.{k}": v for k, v in official.items()})
    assert set(wrapped) == set(trainable) and all(wrapped[k] is trainable[k] for k in trainable)
    from zoo.hub import WeightsError

    with pytest.raises(WeightsError, match="model_text"):
        convert_official_state_dict({"model_text.lm_head.weight": torch.zeros(1)})


# ---------------------------------------------------------------------------------------------------------------------
# reduction to the LM
# ---------------------------------------------------------------------------------------------------------------------
def _plain_opt(model: EPALM) -> nn.Module:
    """A separate transformers OPT (eager attention, no hooks) with the LM's weights."""
    from transformers import OPTConfig, OPTForCausalLM

    cfg = OPTConfig(**{k: v for k, v in model.lm.config.to_dict().items() if k in OPTConfig().to_dict()})
    ref = OPTForCausalLM._from_config(cfg, attn_implementation="eager").eval()
    ref.load_state_dict(model.lm.model.state_dict())
    return ref


def test_zero_connectors_reduce_to_lm_with_prompt():
    """Connectors zeroed: the visual tokens are zeros. The expectation is written out on transformers' OPT layers:
    [prompt; word embeddings] + positions (the prompt takes positions 0..P-1), a zero token prepended before layer
    `start`, position 0 reset to zeros until `end`, dropped after the last layer. Without images the model is the LM
    called with inputs_embeds = [prompt; word embeddings]."""
    model = _tiny(prompt_len=2).eval()
    with torch.no_grad():
        for conn in model.connector:
            conn.proj.weight.zero_()
            conn.proj.bias.zero_()
    batch = _vqa_batch(model)
    ids, mask, _ = model.encode_texts(["what is it?</a>", "where?</a>"], ["a cat", "on the left side"])
    ref = _plain_opt(model)
    dec = ref.model.decoder
    b, n = ids.shape
    p = 2
    prompt = model.prompt(b)
    full_mask = torch.cat([torch.ones(b, p, dtype=mask.dtype), mask], 1)
    with torch.no_grad():
        expected_plain = ref(inputs_embeds=torch.cat([prompt, dec.embed_tokens(ids)], 1),
                             attention_mask=full_mask).logits[:, p:]
        pos = (torch.cumsum(full_mask, 1) * full_mask - 1).long()
        h = torch.cat([prompt, dec.embed_tokens(ids)], 1) + dec.embed_positions(full_mask, 0, position_ids=pos)
        low = torch.finfo(h.dtype).min
        lead = 0
        for i, layer in enumerate(dec.layers):
            if i == model.start_layer:
                h, lead = torch.cat([torch.zeros(b, 1, h.shape[-1]), h], 1), 1
            elif model.start_layer < i < model.end_layer:
                h = torch.cat([torch.zeros(b, 1, h.shape[-1]), h[:, 1:]], 1)
            length = h.shape[1]
            keys = torch.cat([torch.ones(b, lead), full_mask.float()], 1).bool()
            keep = torch.ones(length, length).tril().bool()[None, None] & keys[:, None, None, :]
            h = layer(h, attention_mask=torch.zeros(b, 1, length, length).masked_fill(~keep, low))
        expected = ref.lm_head(dec.final_layer_norm(h[:, lead:]))[:, p:]
        out_img = model(batch["images"], ids, mask).logits
        out_plain = model(None, ids, mask).logits
    keep = mask.bool()
    torch.testing.assert_close(out_img[keep], expected[keep], atol=1e-5, rtol=0)
    torch.testing.assert_close(out_plain[keep], expected_plain[keep], atol=1e-5, rtol=0)
    assert (out_img[keep] - out_plain[keep]).abs().max() > 1e-4  # the zero token is still attended to


# ---------------------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------------------
def test_training_step_changes_only_trainables():
    model = _tiny(prompt_len=2)
    model.train()
    batch = _vqa_batch(model)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    loss = model.vqa_loss(batch)["loss"]
    loss.backward()
    opt.step()
    after = model.state_dict()
    train_names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n.split(".")[0] for n in train_names} == {"connector", "prompt_module"}
    for key, old in before.items():
        changed = not torch.equal(old, after[key])
        assert changed == (key in train_names), key
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(model.get_parameter(n).grad is None for n in frozen)


def test_vqa_loss_decreases_and_labels_only_answers():
    model = _tiny()
    model.train()
    batch = _vqa_batch(model)
    # the labels cover the answer and eos only: "</a>" and the question are -100
    ids, mask, labels = model.encode_texts(["what color is the square?</a>"], ["red"])
    tok = model.text.get_tokenizer()
    labelled = labels[labels != -100].tolist()
    assert labelled == tok("red", add_special_tokens=False)["input_ids"] + [model.lm.eos_token_id]
    assert ids[0, 0] == model.lm.bos_token_id and tok.convert_tokens_to_ids("</a>") in ids[0].tolist()
    losses = fit_steps(lambda: model.vqa_loss(batch)["loss"], [p for p in model.parameters() if p.requires_grad],
                       steps=10, lr=1e-2)
    assert losses[-1] < 0.8 * losses[0], losses


def test_vqa_predict_and_captions_return_strings():
    model = _tiny().eval()
    batch = _vqa_batch(model)
    out = model.vqa_predict(batch["images"], questions=batch["questions"])
    assert len(out["answer"]) == 2 and all(isinstance(a, str) for a in out["answer"])
    assert all("</a>" not in a and "[SEP]" not in a for a in out["answer"])
    assert ((out["prob"] > 0) & (out["prob"] <= 1)).all()
    # questions given as ids of the model's own tokenizer are decoded to the same text; a generative-VQA call's
    # answer list is passed and ignored
    q_ids, q_mask = tokenize_texts(model.text.get_tokenizer(), batch["questions"])
    a_ids, a_mask = encode_answer_list(model.text.get_tokenizer(), ["red", "two"])
    again = model.vqa_predict(batch["images"], q_ids, q_mask, a_ids, a_mask, k=2, answers=["red", "two"])
    assert again["answer"] == out["answer"]
    with pytest.raises(ValueError, match="needs the questions"):
        model.vqa_predict(batch["images"])
    caps = model.generate_captions(batch["images"], num_beams=2, max_length=5)
    assert len(caps) == 2 and all(isinstance(c, str) for c in caps)
    loss = model.caption_loss({"images": batch["images"], "captions": [["a red square"], "two circles"]})["loss"]
    assert loss.requires_grad and torch.isfinite(loss)


def test_answer_text_splits_on_answer_token():
    model = _tiny()
    tok = model.text.get_tokenizer()
    ids = tok("yes </a> no", add_special_tokens=False)["input_ids"] + [model.lm.eos_token_id, 5, 6]
    assert model._answer_text(ids) == "yes"


def test_video_frames_mean_and_concat():
    """Frames go through the ViT one by one; each block's CLS is averaged over frames (or kept per frame)."""
    model = _tiny().eval()
    frames = torch.randn(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        mean_tokens = model.visual_tokens(frames)
        per_frame = [model.visual_tokens(frames[:, f]) for f in range(3)]
        model.video_pool = "concat"
        concat = model.visual_tokens(frames)
    for j in range(model.num_vision_layers):
        # a linear connector commutes with the mean over frames
        expected = torch.stack([per_frame[f][j][:, 0] for f in range(3)], 1).mean(1, keepdim=True)
        torch.testing.assert_close(mean_tokens[j], expected, atol=1e-5, rtol=0)
        assert concat[j].shape == (2, 3, model.lm.width)
        torch.testing.assert_close(concat[j][:, 1], per_frame[1][j][:, 0], atol=1e-5, rtol=0)
    out = model.vqa_predict(frames, *tokenize_texts(model.text.get_tokenizer(), ["what moves", "where"]))
    assert len(out["answer"]) == 2


def test_cls_hook_equals_final_norm_of_block_outputs():
    """The collected tokens are norm(block output)[:, 0] of the last N blocks, computed here with timm's
    forward_intermediates."""
    model = _tiny().eval()
    with torch.no_grad():
        for conn in model.connector:  # identity read-out (vision and LM widths are both 64)
            conn.proj.weight.copy_(torch.eye(64))
            conn.proj.bias.zero_()
        images = _images()
        tokens = model.visual_tokens(images)
        vit = model.vision.model
        _, inter = vit.forward_intermediates(images, indices=2, norm=False, output_fmt="NLC",
                                             return_prefix_tokens=True)
        ref = [vit.norm(prefix[:, 0]) for _, prefix in inter]
    for t, r in zip(tokens, ref):
        torch.testing.assert_close(t[:, 0], r, atol=1e-5, rtol=0)


# The learning job (through train()): epalm-tiny answering colour questions about the scenes of a single shape ("what
# colour is the circle?": the one coloured thing in the picture), open-ended (greedy generation). The image reaches
# the LM only as eP-ALM does it, the frozen ViT's CLS tokens through the linear connectors. eP-ALM freezes a pretrained
# LM; there is none here (the shapes recipe pre-trains one first, BENCHMARKS.md), so the LM trains with the connectors
# and prompt (`lm.freeze: false`) on the data's word-level tokenizer. 25 epochs of 171 questions at batch 16 (250
# steps, lr 5e-3): the loss sits at the answer prior (~2.0) for 90-180 steps before the image is used, so shorter runs
# are a matter of luck (15 epochs: seed 1 learned, seeds 0 and 2 did not). Measured test VQA accuracy over 39
# questions (the run is deterministic: the same numbers twice): seed 0 76.67 with the images, 23.59 with
# `data.blank_images=true`; seeds 1 and 2 with the images 74.10 and 76.67. The margin is about half the gap.
LEARN_MARGIN = 25.0


@pytest.fixture(scope="module")
def colour_runs(tmp_path_factory):
    from zoo.train.run import train

    root = shapes_subset(tmp_path_factory.mktemp("epalm") / "shapes", "vqa", "colour",
                         lambda r, counts: r["question"].startswith("what colour") and counts[r["image"]] == 1,
                         num_train_images=600, num_val_images=4, num_test_images=150, image_size=48, num_videos=0)
    out = tmp_path_factory.mktemp("epalm-runs")
    runs = {}
    for name in ("images", "blank"):
        runs[name] = train({
            "task": "vqa",
            "model": {"name": "epalm-tiny", "overrides": {
                "lm.freeze": False, "lm.tokenizer": "data", "lm.config.vocab_size": 512, "lm.config.pad_token_id": 1,
                "lm.config.bos_token_id": 0, "lm.config.eos_token_id": 2}},
            "data": {"root": str(root), "train": "vqa_train_colour.json", "test": "vqa_test_colour.json",
                     "batch_size": 16, "eval_batch_size": 64, "randaugment": False, "crop_scale": [1.0, 1.0],
                     "max_tokens": 20, "cache_images": True, "blank_images": name == "blank"},
            "optim": {"lr": 5.0e-3, "warmup": 0.05},
            "trainer": {"max_epochs": 25, "enable_progress_bar": False, "gradient_clip_val": 1.0},
            "train": {"output_dir": str(out), "name": name, "export": False},
            "evaluation": {"num_beams": 1},
        })
    return runs


def test_vqa_through_train_learns_from_the_images(colour_runs):
    images, blank = colour_runs["images"]["test"]["vqa_acc"], colour_runs["blank"]["test"]["vqa_acc"]
    assert images >= blank + LEARN_MARGIN, (images, blank)


# ---------------------------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------------------------
def test_trainable_only_export_roundtrip(tmp_path):
    """Frozen parts load from their own local weights (an OPT folder written by transformers, a timm checkpoint);
    the export holds only connectors + prompt, and loading it onto a freshly built model restores outputs exactly."""
    from safetensors.torch import save_file

    base = _tiny()
    lm_dir, vit_file = tmp_path / "opt", tmp_path / "vit.safetensors"
    base.lm.model.save_pretrained(str(lm_dir))
    save_file({k: v.contiguous() for k, v in base.vision.model.state_dict().items()}, str(vit_file))
    parts = {"lm.pretrained": str(lm_dir), "vision.pretrained": str(vit_file)}
    torch.manual_seed(1)
    model = zoo.create_model("epalm-tiny", **parts).eval()
    with torch.no_grad():  # trained-looking values, not the initialisation
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    export = model.save_pretrained(tmp_path / "export", trainable_only=True)
    from safetensors.torch import load_file

    saved = load_file(str(export / "model.safetensors"))
    assert set(saved) == {n for n, p in model.named_parameters() if p.requires_grad}
    torch.manual_seed(2)
    fresh = zoo.create_model("epalm-tiny", **parts).eval()
    batch = _vqa_batch(model)
    ids, mask, _ = model.encode_texts(["what is it?</a>"] * 2, ["a cat", "a dog"])
    with torch.no_grad():
        want = model(batch["images"], ids, mask).logits
        assert not torch.equal(fresh(batch["images"], ids, mask).logits, want)
        torch.manual_seed(3)
        loaded = zoo.from_pretrained(export).eval()
        got = loaded(batch["images"], ids, mask).logits
    assert torch.equal(got, want)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_mmzoo_predict_on_an_export(tmp_path):
    """`mmzoo predict` generates with the language model: no answer list, no caption head needed; the answer equals
    vqa_predict's on the same (evaluation-transformed) image."""
    from PIL import Image

    from zoo.data.transforms import build_image_transform
    from zoo.predict import predict

    model = _tiny().eval()
    model.save_pretrained(tmp_path / "export")
    image = tmp_path / "img.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(image)
    out = predict(tmp_path / "export", str(image), question="what colour is the square?")
    pixels = build_image_transform(32, train=False)(Image.open(image).convert("RGB")).unsqueeze(0)
    tok = model.text.get_tokenizer()
    q = tok(["what colour is the square"], return_tensors="pt")
    with torch.no_grad():
        direct = model.vqa_predict(pixels, q["input_ids"], q["attention_mask"],
                                   questions=["what colour is the square"])
    assert out["answer"] == direct["answer"][0] and out["prob"] == pytest.approx(float(direct["prob"][0]), rel=1e-4)
    assert isinstance(predict(tmp_path / "export", str(image), caption=True)["caption"], str)
