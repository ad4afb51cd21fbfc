"""DaVinci: official parameter count and layout (meta device), the converters (DaVinci and taming VQGAN → diffusers),
the relative position bias against a float64 computation, the causal decoder, the tying, the objectives and the tasks
on the tiny config, and the export round trip."""

from __future__ import annotations

import inspect
import math
import random
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import fit_steps, load_reference, task_config
from conftest import official_default as _official

import zoo
from zoo.hub import WeightsError
from zoo.models.base import count_parameters
from zoo.models.davinci import (
    convert_official_state_dict,
    official_tokenize,
    pretrain_text_inputs,
    relative_position_index,
)
from zoo.models.davinci.vqgan import VQGANTokenizer, convert_taming_state_dict


def _meta_official(name: str) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in load_reference(name)["state_dict"]}


def _tied(model) -> list[torch.Tensor]:
    return [model.text.embeddings.word_embeddings.weight,
            model.text_decoder.decoder.bert.embeddings.word_embeddings.weight,
            model.text_decoder.cls.predictions.decoder.weight]


# ---------------------------------------------------------------------------------------------------------------------
# official sizes (meta device)
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_meta():
    return zoo.create_model("davinci-base", device="meta")


def test_base_parameter_count_equals_official(base_meta):
    ref = load_reference("davinci_pretrain")
    by_prefix = ref["params_by_prefix"]
    assert count_parameters(base_meta) == ref["total_params"] == 153_284_178
    assert count_parameters(base_meta.vision) == by_prefix["visual_encoder"] == 27_799_616
    assert count_parameters(base_meta.vision.trunk) == 27_535_424  # timm resnet101 stem + layer1-3
    assert count_parameters(base_meta.vision_proj) == by_prefix["vision_proj"]
    assert count_parameters(base_meta.text) == by_prefix["encoder"]
    decoder_only = count_parameters(base_meta) - sum(count_parameters(p) for p in
                                                     (base_meta.vision, base_meta.vision_proj, base_meta.text))
    assert decoder_only == by_prefix["text_decoder"]  # the tied word embeddings are counted with the encoder
    per_layer = ref["layer_group_counts"]
    assert count_parameters(base_meta.text.encoder.layer[0]) == per_layer["encoder.encoder.layer"]["per_layer"]["0"]
    dec_layer = base_meta.text_decoder.decoder.bert.encoder.layer[0]
    assert count_parameters(dec_layer) == per_layer["text_decoder.bert.encoder.layer"]["per_layer"]["0"]
    assert base_meta.image_tokenizer is None  # the reference count excludes the VQGAN


def test_official_layout_converts_onto_ours_exactly(base_meta):
    official = _meta_official("davinci_pretrain")
    converted, dropped = convert_official_state_dict(official)
    own = base_meta.state_dict()
    assert set(converted) == set(own), (sorted(set(own) - set(converted))[:5], sorted(set(converted) - set(own))[:5])
    wrong = [k for k, v in converted.items() if tuple(v.shape) != tuple(own[k].shape)]
    assert not wrong
    # only the recomputed relative-index buffers are dropped: 6 encoder self-attention + 6 × 2 decoder attentions
    assert len(dropped) == 18 and all(k.endswith(".relative_index") for k in dropped)
    assert len(converted) + len(dropped) == len(official)
    # with the VQGAN inside (official pre-training checkpoints hold it as d_vae.model.*): its taming keys convert onto
    # the image tokenizer and its training-loss keys are reported as dropped under their official names
    vae = {"d_vae.model." + k: torch.empty(s, device="meta") for k, s in load_reference("davinci_vqgan")["state_dict"]}
    with_vae, dropped_vae = convert_official_state_dict({**official, **vae}, image_tokenizer_levels=5)
    vae_dropped = sorted(set(dropped_vae) - set(dropped))
    assert vae_dropped and all(k.startswith("d_vae.model.loss.") for k in vae_dropped)
    assert len(with_vae) - len(converted) + len(vae_dropped) == len(vae)
    # tying on the official names equals ours
    tied = load_reference("davinci_pretrain")["tied_parameters"][0]
    assert {k for k in tied} == {"encoder.embeddings.word_embeddings.weight",
                                 "text_decoder.bert.embeddings.word_embeddings.weight",
                                 "text_decoder.cls.predictions.decoder.weight"}
    a, b, c = _tied(base_meta)
    assert a is b is c


def test_converter_refuses_unknown_keys_and_maps_task_heads():
    state = {"visual_encoder.pos_embed": torch.zeros(1, 5, 8), "encoder.foo.bar": torch.zeros(1)}
    with pytest.raises(WeightsError, match=r"^1 official DaVinci key\(s\) have no mapping and are not in the dropped "
                                           r"list: encoder\.foo\.bar$"):
        convert_official_state_dict(state)
    nlvr = {"davinci.vision_proj.weight": torch.zeros(4, 8), "cls_head.0.weight": torch.zeros(4, 8),
            "cls_head.2.weight": torch.zeros(2, 4)}
    out, _ = convert_official_state_dict(nlvr)
    assert set(out) == {"vision_proj.weight", "nlvr_head.0.weight", "nlvr_head.2.weight"}


def test_pos_embed_resize_follows_official_bicubic():
    table = torch.randn(1, 1 + 16, 8, dtype=torch.float64)
    out, _ = convert_official_state_dict({"visual_encoder.pos_embed": table}, vision_grid=(6, 6))
    grid = table[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(1, 2)
    assert torch.equal(out["vision.pos_embed"][:, :1], table[:, :1])
    torch.testing.assert_close(out["vision.pos_embed"][:, 1:], expected)


# ---------------------------------------------------------------------------------------------------------------------
# VQGAN (taming layout → diffusers VQModel)
# ---------------------------------------------------------------------------------------------------------------------
def test_vqgan_official_layout_maps_onto_diffusers():
    ref = load_reference("davinci_vqgan")
    with torch.device("meta"):
        tok = VQGANTokenizer()
    assert count_parameters(tok) == ref["total_params"] - sum(v for k, v in ref["params_by_prefix"].items()
                                                              if k == "loss") == 72_141_699
    converted, dropped = convert_taming_state_dict(_meta_official("davinci_vqgan"))
    own = tok.vq.state_dict()
    assert set(converted) == set(own)
    assert all(tuple(converted[k].shape) == tuple(own[k].shape) for k in own)
    assert dropped and all(k.startswith("loss.") for k in dropped)
    with pytest.raises(WeightsError, match=r"^1 official taming VQGAN key\(s\) have no mapping and are not in the "
                                           r"dropped list: encoder\.down\.0\.bogus\.weight$"):
        convert_taming_state_dict({"encoder.down.0.bogus.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match=r"^not a taming VQGAN state dict: no encoder\.down\.N\.\* keys$"):
        convert_taming_state_dict({"decoder.conv_in.weight": torch.zeros(1)})


def test_vqgan_random_official_weights_load_strictly_and_quantise():
    """A random state dict with the official key names and shapes (d_vae.model. prefix, loss.* included) loads
    strictly; codes are the nearest codebook entries of the encoder latents (checked in float64)."""
    g = torch.Generator().manual_seed(0)
    official = {"d_vae.model." + k: torch.randn(s, generator=g) * 0.02 if len(s) > 1 else torch.zeros(s)
                for k, s in load_reference("davinci_vqgan")["state_dict"]}
    official["d_vae.model.quantize.embedding.weight"] = torch.randn(1024, 256, generator=g)
    converted, dropped = convert_taming_state_dict(official)
    tok = VQGANTokenizer()
    zoo.hub.load_weights(tok.vq, converted)  # strict
    q = official["d_vae.model.encoder.mid.attn_1.q.weight"]
    assert torch.equal(tok.vq.encoder.mid_block.attentions[0].to_q.weight, q[:, :, 0, 0])
    up4 = official["d_vae.model.decoder.up.4.block.0.conv1.weight"]
    assert torch.equal(tok.vq.decoder.up_blocks[0].resnets[0].conv1.weight, up4)  # levels run in reverse
    images = torch.rand(2, 3, 64, 64, generator=g)
    codes = tok.encode_codes(images)
    assert codes.shape == (2, 4, 4) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 1024
    latents = tok.vq.encode(images * 2 - 1).latents.double().permute(0, 2, 3, 1).reshape(-1, 256)
    book = tok.vq.quantize.embedding.weight.double()
    assert torch.equal(torch.cdist(latents, book).argmin(1).view(2, 4, 4), codes)


# ---------------------------------------------------------------------------------------------------------------------
# tiny model
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return zoo.create_model("davinci-tiny")


@pytest.fixture(scope="module")
def tok(tiny):
    return tiny.tokenizer()


def _batch(tiny, tok, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    captions = ["a red square above a blue circle", "two green triangles near the left edge"]
    texts = ["the quick brown fox jumps over the lazy dog", "language models predict the next word"]
    batch = pretrain_text_inputs(tok, captions, texts, rng=random.Random(seed))
    batch["images"] = torch.randn(2, 3, 64, 64, generator=g)
    batch["image_codes"] = torch.randint(0, 1024, (2, 4, 4), generator=g)
    batch["prefix_rows"] = 1
    return batch


def test_tiny_forward_backward_all_objectives(tiny, tok):
    tiny.train()
    tiny.zero_grad()
    losses = tiny.pretrain_losses(_batch(tiny, tok))
    assert set(losses) == {"prefix_lm", "image_lm", "text_lm", "loss"}
    assert torch.allclose(losses["loss"], losses["prefix_lm"] + losses["image_lm"] + losses["text_lm"])
    # at initialisation every LM loss is about log(vocabulary) = log(31546)
    for key in ("prefix_lm", "image_lm", "text_lm"):
        assert abs(float(losses[key].detach()) - math.log(31546)) < 1.5
    losses["loss"].backward()
    assert tiny.vision.trunk.conv1.weight.grad is not None
    assert tiny.vision.pos_embed.grad is not None
    assert tiny.text.encoder.layer[0].attention.self.relative_bias_table.grad is not None
    assert tiny.text_decoder.decoder.bert.encoder.layer[0].crossattention.self.query.weight.grad is not None
    dec_table = tiny.text_decoder.decoder.bert.encoder.layer[0].attention.self.relative_bias_table
    assert not dec_table.requires_grad and dec_table.grad is None  # official: held, never read
    tiny.zero_grad()


@pytest.mark.parametrize("objective", ["prefix_lm", "image_lm", "text_lm"])
def test_each_loss_decreases_on_a_fixed_batch(objective):
    torch.manual_seed(1)
    model = zoo.create_model("davinci-tiny").eval()  # eval: no dropout, BatchNorm statistics fixed
    tok = model.tokenizer()
    full = _batch(model, tok, seed=1)
    keys = {"prefix_lm": ["images", "prefix_ids", "prefix_mask", "target_ids", "target_mask"],
            "image_lm": ["images", "caption_ids", "caption_mask", "image_codes", "prefix_rows"],
            "text_lm": ["text_prefix_ids", "text_prefix_mask", "text_target_ids", "text_target_mask"]}[objective]
    batch = {k: full[k] for k in keys}
    values = fit_steps(lambda: model.pretrain_losses(batch)[objective],
                       [p for p in model.parameters() if p.requires_grad], steps=10, lr=2e-3, optimizer=torch.optim.Adam)
    assert values[-1] < 0.75 * values[0] and values[-1] == min(values), values


def test_relative_bias_matches_float64_attention(tiny):
    """One encoder layer over [image ; text] equals a float64 computation where the table entry
    ``table[(Δr + g − 1)(2g − 1) + Δc + g − 1]`` is added to the scores of patch pairs (positions 1..g²) only."""
    model = zoo.create_model("davinci-tiny").eval().double()
    enc = model.text
    g = enc.relative_grid
    layer = enc.encoder.layer[0]
    attn = layer.attention.self
    with torch.no_grad():
        attn.relative_bias_table.normal_(0, 1.0)
    # the lookup against an explicit loop
    idx = relative_position_index(g)
    for qi in range(g * g):
        for ki in range(g * g):
            (qr, qc), (kr, kc) = divmod(qi, g), divmod(ki, g)
            assert int(idx[qi, ki]) == (qr - kr + g - 1) * (2 * g - 1) + (qc - kc + g - 1)
    torch.manual_seed(3)
    n_img, n_txt, d, h = 1 + g * g, 5, enc.width, enc.num_heads
    image = torch.randn(2, n_img, d, dtype=torch.float64)
    ids = torch.randint(1000, 2000, (2, n_txt))
    mask = torch.ones(2, n_txt, dtype=torch.long)
    mask[1, -2:] = 0
    x = torch.cat([image, enc.embeddings(input_ids=ids)], 1)
    keep = torch.cat([torch.ones(2, n_img, dtype=torch.long), mask], 1)
    # float64 reference of the official BertSelfAttention with twoD_relative
    L = x.shape[1]
    def heads(t):
        return t.view(2, L, h, d // h).transpose(1, 2)
    q, k, v = heads(attn.query(x)), heads(attn.key(x)), heads(attn.value(x))
    scores = (q / math.sqrt(d // h)) @ k.transpose(-1, -2)
    table = attn.relative_bias_table
    bias = torch.zeros(h, L, L, dtype=torch.float64)
    for qi in range(g * g):
        for ki in range(g * g):
            (qr, qc), (kr, kc) = divmod(qi, g), divmod(ki, g)
            bias[:, 1 + qi, 1 + ki] = table[(qr - kr + g - 1) * (2 * g - 1) + (qc - kc + g - 1)]
    scores = scores + bias + (1 - keep[:, None, None, :].double()) * -1e30
    ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, L, d)
    a = layer.attention.output.LayerNorm(layer.attention.output.dense(ctx) + x)
    expected = layer.output.LayerNorm(layer.output.dense(F.gelu(layer.intermediate.dense(a))) + a)
    with torch.no_grad():
        got = layer(x, keep, bias=enc._full_bias(0, L, n_img))[0]
    torch.testing.assert_close(got, expected.detach(), rtol=1e-10, atol=1e-10)
    # the full encoder applies it with an image and not without (prefix images / text only)
    with torch.no_grad():
        with_bias = enc(ids, mask, image_tokens=image).tokens
        without = enc(ids, mask, image_tokens=image, relative_bias=False).tokens
    assert (with_bias - without).abs().max() > 1e-3


def test_relative_bias_breaks_patch_permutation_symmetry(tiny):
    """Without the bias (and with no position in the image tokens) the encoder is equivariant to a permutation of the
    patch tokens; with it, outputs depend on where each patch sits on the grid."""
    model = zoo.create_model("davinci-tiny").eval()
    with torch.no_grad():
        for layer in model.text.encoder.layer:
            layer.attention.self.relative_bias_table.normal_(0, 1.0)
    g = model.text.relative_grid
    torch.manual_seed(4)
    image = torch.randn(1, 1 + g * g, model.text.width)
    perm = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(g * g)])
    ids = torch.tensor([[101, 2000, 102]])
    with torch.no_grad():
        plain = model.text(ids, image_tokens=image, relative_bias=False).tokens
        plain_p = model.text(ids, image_tokens=image[:, perm], relative_bias=False).tokens
        biased = model.text(ids, image_tokens=image).tokens
        biased_p = model.text(ids, image_tokens=image[:, perm]).tokens
    torch.testing.assert_close(plain_p[:, : 1 + g * g], plain[:, perm], rtol=1e-5, atol=1e-5)
    assert (biased_p[:, : 1 + g * g] - biased[:, perm]).abs().max() > 1e-2


def test_decoder_is_causal(tiny):
    tiny.eval()
    torch.manual_seed(5)
    states = torch.randn(2, 7, tiny.text.width)
    ids = torch.randint(1000, 3000, (2, 8))
    changed = ids.clone()
    changed[:, 5:] = torch.randint(3000, 4000, (2, 3))
    with torch.no_grad():
        a = tiny.decoder_logits(ids, None, states, None)
        b = tiny.decoder_logits(changed, None, states, None)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert (a[:, 5:] - b[:, 5:]).abs().max() > 1e-4


def test_three_way_tying(tiny):
    a, b, c = _tied(tiny)
    assert a is b is c
    pred = tiny.text_decoder.cls.predictions
    assert pred.decoder.bias is pred.bias
    assert a.shape == (30522 + 1024, tiny.text.width)


def test_vqa_loss_and_ranking_from_the_answer_list(tiny, tok):
    tiny.eval()
    answers = ["red", "blue", "two", "square", "left"]
    q_ids, q_mask = official_tokenize(tok, ["what colour is the square?", "how many circles?"])
    a_ids, a_mask = tiny.text_decoder.encode_answers(answers, tok)
    images = torch.randn(2, 3, 64, 64)
    batch = {"images": images, "question_ids": q_ids, "question_mask": q_mask, "answer_ids": a_ids[[0, 1, 2]],
             "answer_mask": a_mask[[0, 1, 2]], "weights": torch.tensor([0.5, 0.5, 1.0]),
             "answers_per_question": torch.tensor([2, 1])}
    out = tiny.vqa_loss(batch)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    pred = tiny.vqa_predict(images, q_ids, q_mask, a_ids, a_mask, k=3, answers=answers)
    assert all(a in answers for a in pred["answer"]) and len(pred["answer"]) == 2
    assert ((pred["prob"] > 0) & (pred["prob"] <= 1)).all()
    assert all(isinstance(s, str) for s in tiny.vqa_generate(images, q_ids, q_mask, max_length=4))


def test_captioning_loss_from_either_batch_format_and_generation(tiny, tok):
    """caption_loss reads DaVinci's own ``caption_ids`` or recovers them from the standard captioning collator's
    masked inputs: both give the same loss."""
    from zoo.data.collate import CaptionTrainCollator

    tiny.eval()
    images = torch.randn(2, 3, 64, 64)
    captions = ["a red square above a blue circle", "two green triangles"]
    torch.manual_seed(6)
    collated = CaptionTrainCollator(tok, max_tokens=20, max_masks=6)(
        [{"image": images[i], "caption": c, "image_id": i} for i, c in enumerate(captions)])
    ids, mask = official_tokenize(tok, ["a picture of " + c for c in captions])
    with torch.no_grad():
        native = tiny.caption_loss({"images": images, "caption_ids": ids, "caption_mask": mask})["loss"]
        from_collator = tiny.caption_loss(collated)["loss"]
    torch.testing.assert_close(native, from_collator)
    recovered, _ = tiny._caption_targets(collated)
    assert torch.equal(recovered, ids)
    out = tiny.generate_captions(images, num_beams=2, max_length=10)
    assert len(out) == 2 and all(isinstance(s, str) for s in out)


def test_ve_and_nlvr_heads():
    model = zoo.create_model("davinci-tiny", ve_head=True, nlvr_head=True).eval()
    tok = model.tokenizer()
    ids, mask = official_tokenize(tok, ["a dog runs", "there are two cats on the sofa"])
    images = torch.randn(2, 3, 64, 64)
    assert model.ve_logits(images, ids, mask).shape == (2, 3)
    out = model.nlvr_loss({"images_a": images, "images_b": images.flip(0), "input_ids": ids, "attention_mask": mask,
                           "labels": torch.tensor([0, 1])})
    assert out["logits"].shape == (2, 2) and torch.isfinite(out["loss"])
    # the last-token state is the decoder state at [SEP] (attention_mask.sum - 1), not at padding
    last = model._last_token_state(images, ids, mask)
    ctx, cmask = model._empty_context(2, images.device)
    states, smask = model.encode(images, ctx, cmask)
    hidden = model.text_decoder.decode(ids, mask, states, smask)
    torch.testing.assert_close(last[0], hidden[0, int(mask[0].sum()) - 1])


def test_generate_image_shape_and_range(tiny):
    tiny.eval()
    gen = torch.Generator().manual_seed(0)
    images = tiny.generate_image(["a red square", "a blue circle"], top_k=50, top_p=0.9, generator=gen)
    assert images.shape == (2, 3, 64, 64)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    codes = tiny.generate_codes(*official_tokenize(tiny.tokenizer(), ["a red square"]), (4, 4), top_k=5,
                                generator=torch.Generator().manual_seed(1))
    assert codes.shape == (1, 4, 4) and int(codes.min()) >= 0 and int(codes.max()) < 1024


def test_prefix_rows_use_the_first_rows_of_the_position_table(tiny):
    vision = tiny.vision
    rows = 2
    table = vision.position_embedding(rows, vision.grid[1])
    assert torch.equal(table, vision.pos_embed[:, : 1 + rows * vision.grid[1]])
    tokens = vision(torch.randn(1, 3, rows * vision.stride, 64)).tokens
    assert tokens.shape == (1, 1 + rows * vision.grid[1], vision.width)


def test_export_round_trip(tiny, tmp_path):
    tiny.eval()
    tiny.save_pretrained(tmp_path / "export")
    again = zoo.from_pretrained(tmp_path / "export").eval()
    a, b, c = _tied(again)
    assert a is b is c
    batch = _batch(tiny, tiny.tokenizer(), seed=7)
    with torch.no_grad():
        x = tiny.pretrain_losses(batch)
        y = again.pretrain_losses(batch)
        img_x = tiny.image_tokenizer.encode_codes(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)))
        img_y = again.image_tokenizer.encode_codes(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)))
    for key in x:
        assert torch.equal(x[key], y[key]), key
    assert torch.equal(img_x, img_y)


@pytest.mark.parametrize("name, task, metric",
                         [("vqa-shapes", "vqa", "vqa_acc"), ("caption-shapes", "captioning", "CIDEr")])
def test_mmzoo_train_path(tmp_path, name, task, metric):
    """The standard training module fine-tunes and evaluates DaVinci through vqa_loss / vqa_predict and
    caption_loss / generate_captions, and the export answers through ``mmzoo predict``."""
    import json

    from zoo.data.shapes import generate_shapes
    from zoo.predict import predict
    from zoo.train.run import load_task_config, train

    root = generate_shapes(tmp_path / "shapes", num_train_images=8, num_val_images=4, num_test_images=4,
                           image_size=64, num_videos=0)
    cfg = load_task_config(task_config(name))
    cfg["model"] = {"name": "davinci-tiny", "task": task}
    cfg["data"].update(root=str(root), batch_size=8, eval_batch_size=4)
    cfg["trainer"].update(max_epochs=1, enable_progress_bar=False, limit_train_batches=2, limit_val_batches=1,
                          limit_test_batches=1)
    cfg["train"].update(output_dir=str(tmp_path / "runs"), name=name)
    cfg.setdefault("optim", {}).pop("new_params", None)
    cfg.setdefault("evaluation", {})["max_length"] = 8
    results = train(cfg)
    assert metric in results["test"]
    kind = "vqa" if task == "vqa" else "caption"
    record = json.loads((root / f"{kind}_test.json").read_text())[0]
    extra = {"question": record["question"]} if task == "vqa" else {"caption": True}
    out = predict(tmp_path / "runs" / name / "export", str(root / record["image"]), **extra)
    assert isinstance(out["answer" if task == "vqa" else "caption"], str)


def test_convert_official_checkpoint_end_to_end(tmp_path):
    """An official-layout checkpoint (our tiny weights renamed back to the official keys, with the relative-index
    buffers the official state dict carries) converts into an export that reproduces the model's outputs."""
    from zoo.models.davinci import convert_official_checkpoint

    torch.manual_seed(8)
    model = zoo.create_model("davinci-tiny").eval()
    back = [("vision.trunk.", "visual_encoder."), ("vision.", "visual_encoder."), ("text.", "encoder."),
            ("text_decoder.decoder.bert.", "text_decoder.bert."), ("text_decoder.cls.", "text_decoder.cls.")]
    official = {}
    for key, value in model.state_dict().items():
        if key.startswith("image_tokenizer."):
            continue
        for ours, theirs in back:
            if key.startswith(ours):
                official[theirs + key[len(ours):]] = value.clone()
                break
        else:
            official[key] = value.clone()
    index = relative_position_index(4).reshape(-1, 1)
    for i in range(2):
        official[f"encoder.encoder.layer.{i}.attention.self.relative_index"] = index
    torch.save({"model": official}, tmp_path / "official.pth")
    report = convert_official_checkpoint(str(tmp_path / "official.pth"), str(tmp_path / "export"),
                                         model="davinci-tiny")
    assert report["image_size"] == 64 and len(report["dropped"]) == 2
    assert report["model"] == "davinci-tiny" and report["tensors"] == len(official) - 2
    again = zoo.from_pretrained(tmp_path / "export").eval()
    assert again.image_tokenizer is None
    batch = _batch(model, model.tokenizer(), seed=9)
    batch.pop("image_codes")
    with torch.no_grad():
        assert torch.equal(model.pretrain_losses(batch)["loss"], again.pretrain_losses(batch)["loss"])


# our prefix -> the official one (the converter's rules read backwards), first match wins
_TO_OFFICIAL = [("vision.cls_token", "visual_encoder.cls_token"), ("vision.pos_embed", "visual_encoder.pos_embed"),
                ("vision.trunk.", "visual_encoder."), ("vision_proj.", "vision_proj."), ("text.", "encoder."),
                ("text_decoder.decoder.bert.", "text_decoder.bert."), ("text_decoder.cls.", "text_decoder.cls.")]
_FROM_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _to_taming(key: str, value: torch.Tensor, levels: int) -> tuple[str, torch.Tensor]:
    """A diffusers VQModel key → the taming VQGAN's (convert_taming_state_dict read backwards; attention weights
    back to 1×1 convolution kernels)."""
    key = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out.", "norm_out.")
    if m := re.match(r"^(.*)attentions\.(\d+)\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)$", key):
        key = f"{m[1]}attentions.{m[2]}.{_FROM_ATTN[m[3]]}.{m[4]}"
        value = value[:, :, None, None] if value.dim() == 2 else value
    key = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", key)
    key = key.replace("mid_block.attentions.0.", "mid.attn_1.")
    key = re.sub(r"^encoder\.down_blocks\.(\d+)\.", r"encoder.down.\1.", key)
    key = re.sub(r"^decoder\.up_blocks\.(\d+)\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.", key)
    key = re.sub(r"\.(down|up)\.(\d+)\.resnets\.", r".\1.\2.block.", key)
    key = re.sub(r"\.(down|up)\.(\d+)\.attentions\.", r".\1.\2.attn.", key)
    key = re.sub(r"\.(down|up)samplers\.0\.conv\.", r".\1sample.conv.", key)
    return key, value


def test_convert_official_checkpoint_at_another_resolution_with_its_vqgan(tmp_path):
    """`mmzoo convert davinci`: an official-layout pre-training checkpoint at a resolution other than the named
    model's default (davinci-tiny's weights built at 96 px under the official names, its VQGAN under ``d_vae.model.*``
    in the taming layout) is read, its resolution told from the position table, converted, built as the named model at
    that resolution with the image tokenizer and exported; the export holds every tensor of the model it came from."""
    from zoo.models.davinci import convert_official_checkpoint

    torch.manual_seed(5)
    model = zoo.create_model("davinci-tiny", **{"vision.img_size": 96})
    assert model.vision.grid == (6, 6) and model.image_tokenizer is not None
    official = {}
    for key, value in model.state_dict().items():
        if key.startswith("image_tokenizer.vq."):
            name, value = _to_taming(key[len("image_tokenizer.vq."):], value, model.image_tokenizer.levels)
            official["d_vae.model." + name] = value.clone()
            continue
        ours, theirs = next((o, t) for o, t in _TO_OFFICIAL if key.startswith(o))
        official[theirs + key[len(ours):]] = value.clone()
    assert sum(k.startswith("d_vae.model.encoder.down.") for k in official) > 0
    torch.save({"model": official}, tmp_path / "official.pth")
    report = convert_official_checkpoint(str(tmp_path / "official.pth"), str(tmp_path / "export"), model="davinci-tiny")
    assert (report["model"], report["task"], report["image_size"], report["image_tokenizer"]) == \
        ("davinci-tiny", None, 96, True)
    assert report["dropped"] == [] and report["tensors"] == len(official)
    again = zoo.from_pretrained(tmp_path / "export")
    assert again.vision.grid == (6, 6)
    state = again.state_dict()
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_forward_is_the_prefix_lm_pass():
    """model(images, ids, mask): encoder over [image ; text] and decoder logits over the same text — equal to the
    pieces called one by one (what `mmzoo bench model davinci-base` times)."""
    torch.manual_seed(0)
    model = zoo.create_model("davinci-tiny").eval()
    images = torch.randn(2, 3, 64, 64)
    ids = torch.randint(1000, 2000, (2, 7))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        out = model(images, ids, mask)
        states, smask = model.encode(images, ids, mask)
        logits = model.decoder_logits(ids, mask, states, smask)
    assert torch.equal(out["encoder_states"], states) and torch.equal(out["logits"], logits)
    assert out["logits"].shape == (2, 7, model.text_decoder.vocab_size)


# ---------------------------------------------------------------------------------------------------------------------
# image codes ↔ token ids, caption label smoothing, VE class order: against the official values
# (tests/reference/official_defaults.json, each with its file and line in shizhediao/DaVinci)
# ---------------------------------------------------------------------------------------------------------------------


def test_code_token_ids_both_ways(tiny):
    """Catches the text-vocabulary offset dropped from the code ↔ token mapping (``code_token_ids`` returning
    ``codes``, or ``codes_of_token_ids`` not subtracting it): code c is token c + 30522 (official
    davinci_pretrain.py:162), the codes fill the last 1024 rows of the joint vocabulary, and the inverse gives the
    codes back; ``code_input_ids`` puts IMG_BOS (2) before them, row-major."""
    text_vocab, n_codes = _official("davinci_text_vocab_size"), _official("davinci_visual_vocab_size")
    bos = _official("davinci_image_bos")
    codes = torch.arange(n_codes)
    ids = tiny.code_token_ids(codes)
    assert ids.tolist() == [text_vocab + c for c in range(n_codes)]
    assert tiny.text.embeddings.word_embeddings.weight.shape[0] == text_vocab + n_codes == ids.max() + 1
    assert torch.equal(tiny.codes_of_token_ids(ids), codes)
    assert torch.equal(tiny.codes_of_token_ids(torch.tensor([text_vocab, text_vocab + n_codes - 1])),
                       torch.tensor([0, n_codes - 1]))
    grid = torch.tensor([[[5, 0], [1023, 7]]])
    assert tiny.code_input_ids(grid).tolist() == [[bos, text_vocab + 5, text_vocab, text_vocab + 1023, text_vocab + 7]]
    assert tiny.image_bos_token_id == bos


def test_image_modelling_targets_are_the_ids_generation_emits(tiny, tok, monkeypatch):
    """Catches image-modelling targets without the text-vocabulary offset (``code_input_ids`` concatenating ``codes``
    instead of ``code_token_ids(codes)``; the original bug) and any other disagreement between training and sampling:
    the decoder ids ``prefix_image_loss`` trains on for a known code grid are, step by step, exactly the ids
    ``generate_codes`` feeds back when the decoder puts its mass on the training target, and it returns the codes."""
    tiny.eval()
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 1024, (2, 4, 4), generator=g)
    codes[0, 1, 0], codes[1, 3, 3] = 0, 1023  # both ends of the codebook
    images = torch.randn(2, 3, 64, 64, generator=g)
    cap_ids, cap_mask = official_tokenize(tok, ["a red square", "two blue circles"])
    captured = {}
    lm_loss = tiny.lm_loss

    def spy(ids, *args, **kwargs):
        captured["ids"] = ids.clone()
        return lm_loss(ids, *args, **kwargs)

    monkeypatch.setattr(tiny, "lm_loss", spy)
    with torch.no_grad():
        tiny.prefix_image_loss(images, cap_ids, cap_mask, 1, codes[:, 1:])
    targets = captured["ids"]  # [IMG_BOS, the 12 codes of rows 1-3 as token ids]
    assert targets.shape == (2, 13)

    fed = []
    vocab = tiny.text.embeddings.word_embeddings.weight.shape[0]

    def decoder_logits(tokens, mask, states, states_mask):
        t = tokens.shape[1]
        fed.append(tokens.clone())
        logits = torch.zeros(tokens.shape[0], t, vocab)
        logits[torch.arange(tokens.shape[0]), -1, targets[:, t]] = 30.0  # the training target of position t
        return logits

    monkeypatch.setattr(tiny, "decoder_logits", decoder_logits)
    out = tiny.generate_codes(cap_ids, cap_mask, (3, 4), top_k=4000, top_p=0.9, temperature=1.0,
                              generator=torch.Generator().manual_seed(0), use_cache=False)  # the rerun: one call a step
    assert len(fed) == 12
    for t, tokens in enumerate(fed, start=1):
        assert torch.equal(tokens, targets[:, :t])  # generation fed back exactly the training ids
    assert torch.equal(out, codes[:, 1:])


def test_caption_label_smoothing_default_is_official(tiny):
    """Catches ``caption_label_smoothing: float = 0.1`` → ``0`` in DaVinci (and a changed pre-training default): the
    signature defaults, the shipped model and the built tiny model equal the official values (gen_coco.yaml:30
    ``label_smoothing: 0.1``; pre-training configs without it: 0.0, davinci_pretrain.py:52-55)."""
    from zoo.factory import resolve_config
    from zoo.models.davinci import DaVinci

    caption, pretrain = _official("davinci_caption_label_smoothing"), _official("davinci_pretrain_label_smoothing")
    params = inspect.signature(DaVinci).parameters
    assert params["caption_label_smoothing"].default == caption
    assert params["label_smoothing"].default == pretrain
    assert tiny.caption_label_smoothing == caption and tiny.label_smoothing == pretrain
    cfg = resolve_config("davinci-base", task="captioning")["model"]
    assert cfg.get("caption_label_smoothing", caption) == caption
    assert cfg.get("label_smoothing", pretrain) == pretrain


def test_caption_loss_is_label_smoothed_cross_entropy_float64(tiny, tok):
    """Catches caption label smoothing lost or changed (the default 0.1 → 0, or ``caption_loss`` passing the
    pre-training ``label_smoothing``): the loss equals the label-smoothed cross-entropy written out in float64 over the
    joint vocabulary (official CrossEntropyLoss(label_smoothing=0.1), models/bert.py:1275), prompt not scored."""
    eps = _official("davinci_caption_label_smoothing")
    tiny.eval()
    g = torch.Generator().manual_seed(8)
    images = torch.randn(2, 3, 64, 64, generator=g)
    ids, mask = official_tokenize(tok, ["a picture of a red square above a circle", "a picture of two dots"])
    with torch.no_grad():
        loss = tiny.caption_loss({"images": images, "caption_ids": ids, "caption_mask": mask})["loss"]
        ctx = torch.full((2, 1), tok.cls_token_id)
        states, smask = tiny.encode(images, ctx, torch.ones_like(ctx))
        logits = tiny.decoder_logits(ids, mask, states, smask).double()
    prompt = 1 + len(tok("a picture of", add_special_tokens=False)["input_ids"])  # [CLS] a picture of
    total, count = 0.0, 0
    for b in range(2):
        for t in range(prompt, int(mask[b].sum())):  # token t predicted from position t - 1
            row = logits[b, t - 1]
            log_z = float(row.max() + torch.log(torch.exp(row - row.max()).sum()))
            nll = log_z - float(row[ids[b, t]])  # -log p(target)
            uniform = log_z - float(row.mean())  # mean over the vocabulary of -log p_k
            total += (1 - eps) * nll + eps * uniform
            count += 1
    assert count == 10  # 6 + 2 caption words and their [SEP]s
    assert float(loss) == pytest.approx(total / count, rel=2e-6)


def test_ve_class_order_is_official():
    """Catches a reordered ``ve_labels`` in DaVinci (e.g. the CCLM order contradiction, entailment, neutral): the
    classes are in the official SNLI-VE order of DaVinci's ve_dataset.py:14 (contradiction 0, neutral 1,
    entailment 2), which maps the data's label names to the head's classes."""
    from zoo.models.davinci import DaVinci

    order = _official("davinci_ve_labels")
    assert list(DaVinci.ve_labels) == sorted(order, key=order.get)
    model = zoo.create_model("davinci-tiny", ve_head=True, device="meta")
    assert {name: i for i, name in enumerate(model.ve_labels)} == order

