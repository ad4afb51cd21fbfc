"""X²-VLM: official parameter counts and layouts (meta device), the converter, and the objectives on a tiny config."""

from __future__ import annotations

import random
import re

import pytest
import torch

import zoo
from conftest import fit_steps, load_reference
from zoo.hub import WeightsError
from zoo.models.base import count_parameters
from zoo.models.x2vlm import convert_official_state_dict, describe_official_checkpoint, sample_hard_negatives


def _meta_official(name: str) -> dict[str, torch.Tensor]:
    """The official state dict of a reference layout, as meta tensors (names and shapes only)."""
    return {k: torch.empty(s, device="meta") for k, s in load_reference(name)["state_dict"]}


def _split_counts(model) -> dict[str, int]:
    text = model.text
    layers = list(text.encoder.layer)
    counts = {
        "vision": count_parameters(model.vision),
        "text": count_parameters(text.embeddings) + sum(count_parameters(l) for l in layers[: text.fusion_start]),
        "fusion": sum(count_parameters(l) for l in layers[text.fusion_start :]),
    }
    counts["heads"] = count_parameters(model) - sum(counts.values())
    return counts


# (model, task, reference file)
OFFICIAL = [
    ("x2vlm-base", None, "x2vlm_base_pretrain"),
    ("x2vlm-large", None, "x2vlm_large_pretrain"),
    ("x2vlm-base", "retrieval", "x2vlm_base_retrieval"),
    ("x2vlm-large", "retrieval", "x2vlm_large_retrieval"),
    ("x2vlm-base-video", None, "x2vlm_base_video_stage2"),
    ("x2vlm-large-video", None, "x2vlm_large_video_stage2"),
    ("x2vlm-base", "vqa", "x2vlm_base_vqa"),
    ("x2vlm-large", "vqa", "x2vlm_large_vqa"),
]


@pytest.mark.parametrize("name, task, ref", OFFICIAL)
def test_official_parameter_counts_per_part(name, task, ref):
    model = zoo.create_model(name, task=task, device="meta")
    reference = load_reference(ref)
    assert count_parameters(model) == reference["total_params"]
    by_prefix = reference["params_by_prefix"]
    groups = reference["layer_group_counts"]["text_encoder.bert.encoder.layer"] if "text_encoder.bert.encoder.layer" in \
        reference["layer_group_counts"] else None
    counts = _split_counts(model)
    vision_official = by_prefix["vision_encoder"] + by_prefix.get("absolute_frame_pos_embed", 0)
    assert counts["vision"] == vision_official
    if groups is not None:
        assert counts["fusion"] == groups["fusion_layers_12_17"]
    assert counts["vision"] + counts["text"] + counts["fusion"] + counts["heads"] == reference["total_params"]


@pytest.mark.parametrize("name, task, ref", OFFICIAL)
def test_converter_maps_every_official_key_onto_our_layout(name, task, ref):
    official = _meta_official(ref)
    converted, dropped = convert_official_state_dict(official)
    assert dropped == []
    model = zoo.create_model(name, task=task, device="meta")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == ours


def test_describe_official_checkpoint():
    assert describe_official_checkpoint(_meta_official("x2vlm_base_pretrain")) == \
        {"model": "x2vlm-base", "task": None, "image_size": 224}
    assert describe_official_checkpoint(_meta_official("x2vlm_large_retrieval"))["task"] == "retrieval"
    assert describe_official_checkpoint(_meta_official("x2vlm_base_video_stage2")) == \
        {"model": "x2vlm-base-video", "task": None, "image_size": 224, "num_frames": 3}


def test_converter_rejects_unknown_keys():
    official = _meta_official("x2vlm_base_retrieval")
    official["some_new_head.weight"] = torch.empty(2, device="meta")
    with pytest.raises(WeightsError, match="1 official key\\(s\\) have no mapping.*some_new_head.weight"):
        convert_official_state_dict(official)


# ---------------------------------------------------------------------------------------------------------------------
# tiny model: objectives
# ---------------------------------------------------------------------------------------------------------------------
def _batch(b=4, length=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 3000, (b, length), generator=g)
    ids[:, 0] = 101
    mask = torch.ones(b, length, dtype=torch.long)
    mask[1, 6:] = 0
    masked = ids.clone()
    masked[:, 2] = 103
    masked_pos = torch.full((b, 2), 0, dtype=torch.long)
    masked_pos[:, 0] = 2
    masked_ids = torch.full((b, 2), -100, dtype=torch.long)
    masked_ids[:, 0] = ids[:, 2]
    return {
        "images": torch.randn(b, 3, 64, 64, generator=g),
        "input_ids": ids,
        "attention_mask": mask,
        "input_ids_masked": masked,
        "masked_pos": masked_pos,
        "masked_ids": masked_ids,
        "target_bbox": torch.tensor([[0.5, 0.5, 0.2, 0.3]] * b),
        "is_image": torch.tensor([0, 1, 0, 0]),
    }


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return zoo.create_model("x2vlm-tiny")


def test_tiny_pretrain_losses_finite_and_decreasing(tiny):
    batch = _batch()
    opt = torch.optim.AdamW(tiny.parameters(), lr=1e-3)
    history = []
    tiny.train()
    for step in range(8):
        losses = tiny.pretrain_losses(batch, generator=torch.Generator().manual_seed(step))
        assert set(losses) == {"itc", "itm", "mlm", "bbox_l1", "bbox_giou", "loss"}
        assert all(torch.isfinite(v) for v in losses.values())
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    for key in ("itc", "mlm", "bbox_l1", "loss"):
        assert history[-1][key] < history[0][key], (key, [h[key] for h in history])


def test_mlm_decoder_is_tied_to_word_embeddings(tiny):
    assert tiny.mlm.cls.predictions.decoder.weight is tiny.text.embeddings.word_embeddings.weight


def test_hard_negatives_exclude_positives():
    torch.manual_seed(0)
    feat_i = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    feat_t = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    for seed in range(20):
        img_neg, txt_neg = sample_hard_negatives(feat_i, feat_t, 0.07, generator=torch.Generator().manual_seed(seed))
        assert (img_neg != torch.arange(6)).all() and (txt_neg != torch.arange(6)).all()
    ids = torch.tensor([0, 0, 1, 1, 2, 2])  # repeated images: their other captions are not negatives either
    for seed in range(20):
        img_neg, txt_neg = sample_hard_negatives(feat_i, feat_t, 0.07, ids, torch.Generator().manual_seed(seed))
        assert (ids[img_neg] != ids).all() and (ids[txt_neg] != ids).all()


def test_hard_negatives_follow_the_similarity_distribution():
    """Sampling frequencies match softmax(sim / temp) renormalised without the positive (chi-square-like bound)."""
    feat_i = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), dim=-1)
    feat_t = feat_i.clone()
    n = 4000
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(3, 3)
    for _ in range(n):
        _, txt_neg = sample_hard_negatives(feat_i, feat_t, 0.5, generator=g)
        counts[torch.arange(3), txt_neg] += 1
    w = torch.softmax(feat_i @ feat_t.t() / 0.5, 1).double() + 1e-5
    w.fill_diagonal_(0)
    expected = w / w.sum(1, keepdim=True)
    assert torch.allclose(counts.double() / n, expected, atol=0.03)


def test_tiny_retrieval_task_and_itm_scores():
    torch.manual_seed(0)
    model = zoo.create_model("x2vlm-tiny", task="retrieval").eval()
    assert model.mlm is None and model.bbox is None
    batch = _batch()
    with torch.no_grad():
        out = model(batch["images"], batch["input_ids"], batch["attention_mask"])
        scores = model.itm_scores(out["image"].tokens, out["text"].tokens, batch["attention_mask"])
    assert torch.allclose(scores, out["itm_logits"][:, 1], atol=1e-5)
    sim = out["image_feat"] @ out["text_feat"].t()
    assert sim.shape == (4, 4) and sim.abs().max() <= 1 + 1e-5


def test_tiny_video_mode():
    torch.manual_seed(0)
    model = zoo.create_model("x2vlm-tiny", **{"vision": {"_replace_": True, "type": "video", "num_frames": 2,
                                                         "image_encoder": {"type": "beit_v2", "img_size": 64,
                                                                           "embed_dim": 64, "depth": 1,
                                                                           "num_heads": 4}}}).eval()
    frames = torch.randn(2, 2, 3, 64, 64)
    ids = torch.randint(1000, 3000, (2, 6))
    with torch.no_grad():
        out = model(frames, ids)
    assert out["image"].tokens.shape == (2, 17, 64)
    image_model = zoo.create_model("x2vlm-tiny")
    with pytest.raises(ValueError, match="vision part is an image encoder"):
        image_model(frames, ids)


def test_converted_official_weights_give_the_outputs_of_directly_loaded_parts():
    """Random values under the official names and shapes (x2vlm base, pre-training): converting and loading the whole
    model gives the same outputs as loading each official sub-state-dict straight into the part it belongs to."""
    g = torch.Generator().manual_seed(0)
    official = {k: torch.randn(s, generator=g) * 0.02 for k, s in load_reference("x2vlm_base_pretrain")["state_dict"]
                if not k.endswith("relative_position_index") and not k.endswith("position_ids")}
    # buffers keep their defining values (indices), taken from a fresh model
    fresh = zoo.create_model("x2vlm-base")
    for k, v in fresh.vision.state_dict().items():
        if k.endswith("relative_position_index"):
            official[f"vision_encoder.{k}"] = v.clone()
    official["text_encoder.bert.embeddings.position_ids"] = fresh.text.embeddings.position_ids.clone()
    official["temp"] = torch.tensor(0.07)
    # tied tensors are the same tensor in a real checkpoint
    official["text_encoder.cls.predictions.decoder.weight"] = official["text_encoder.bert.embeddings.word_embeddings.weight"]
    official["text_encoder.cls.predictions.decoder.bias"] = official["text_encoder.cls.predictions.bias"]

    converted, dropped = convert_official_state_dict(official)
    assert dropped == []
    model = zoo.create_model("x2vlm-base").eval()
    zoo.hub.load_weights(model, converted)

    direct = fresh.eval()
    def sub(prefix):
        return {k[len(prefix):]: v for k, v in official.items() if k.startswith(prefix)}
    direct.vision.load_state_dict(sub("vision_encoder."))
    direct.text.load_state_dict(sub("text_encoder.bert."))
    direct.mlm.cls.load_state_dict(sub("text_encoder.cls."))
    direct.itc.vision_proj.load_state_dict(sub("vision_proj."))
    direct.itc.text_proj.load_state_dict(sub("text_proj."))
    direct.itc.temp.data.fill_(0.07)
    direct.itm.mlp.load_state_dict(sub("itm_head."))
    direct.bbox.mlp.load_state_dict(sub("bbox_head."))

    images = torch.randn(1, 3, 224, 224, generator=g)
    ids = torch.randint(1000, 3000, (1, 12), generator=g)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        a, b = model(images, ids, mask), direct(images, ids, mask)
        mlm_a = model.mlm(model.text(ids, mask, mode="full", vision_tokens=a["image"].tokens).tokens)["logits"]
        mlm_b = direct.mlm(direct.text(ids, mask, mode="full", vision_tokens=b["image"].tokens).tokens)["logits"]
        box_a, box_b = model.bbox(a["fused"].tokens[:, 0]), direct.bbox(b["fused"].tokens[:, 0])
    for key in ("image_feat", "text_feat", "itm_logits"):
        assert torch.equal(a[key], b[key]), key
    assert torch.equal(a["fused"].tokens, b["fused"].tokens)
    assert torch.equal(mlm_a, mlm_b) and torch.equal(box_a, box_b)


def _vqa_batch(g):
    q = torch.randint(1000, 3000, (2, 6), generator=g)
    q[:, 0] = 101
    answers = torch.tensor([[101, 2417, 102, 0], [101, 2630, 102, 0], [101, 2304, 2630, 102]])
    return {
        "images": torch.randn(2, 3, 64, 64, generator=g),
        "question_ids": q,
        "question_mask": torch.ones_like(q),
        "answer_ids": answers,
        "answer_mask": (answers != 0).long(),
        "weights": torch.tensor([1.0, 0.5, 0.5]),
        "answers_per_question": torch.tensor([1, 2]),
    }


def test_tiny_generative_vqa_trains_and_ranks_the_answer_list():
    torch.manual_seed(0)
    model = zoo.create_model("x2vlm-tiny", task="vqa")
    assert model.itc is None and model.generative_vqa
    batch = _vqa_batch(torch.Generator().manual_seed(0))
    losses = fit_steps(lambda: model.vqa_loss(batch)["loss"], model.parameters(), steps=10, lr=1e-3)
    assert losses[-1] < losses[0]
    model.eval()
    # answer list: the two answers of question 1 and a distractor; after fitting, q0 -> its own answer
    out = model.vqa_predict(batch["images"], batch["question_ids"], batch["question_mask"], batch["answer_ids"],
                            batch["answer_mask"], k=3, answers=["red", "blue", "green blue"])
    assert out["answer"][0] == "red"
    assert out["index"].shape == (2,)


def test_tiny_vqa_classifier_and_nlvr():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = zoo.create_model("x2vlm-tiny", task="vqa_cls")
    batch = _vqa_batch(g)
    batch["targets"] = torch.tensor([3, 5])
    losses = fit_steps(lambda: model.vqa_loss(batch)["loss"], model.parameters(), steps=6, lr=1e-3)
    assert losses[-1] < losses[0]
    pred = model.eval().vqa_predict(batch["images"], batch["question_ids"], batch["question_mask"])
    assert pred["index"].tolist() == [3, 5]

    nlvr = zoo.create_model("x2vlm-tiny", task="nlvr").eval()
    ids = torch.randint(1000, 3000, (2, 7), generator=g)
    a, b = torch.randn(2, 3, 64, 64, generator=g), torch.randn(2, 3, 64, 64, generator=g)
    with torch.no_grad():
        logits = nlvr.nlvr_logits(a, b, ids, torch.ones_like(ids))
        swapped = nlvr.nlvr_logits(b, a, ids, torch.ones_like(ids))
        # equals fusing each image on its own and applying the head to the concatenation
        cls = [nlvr.fuse(nlvr.encode_text(ids, torch.ones_like(ids)).tokens, torch.ones_like(ids),
                         nlvr.encode_image(x).tokens).tokens[:, 0] for x in (a, b)]
        manual = nlvr.nlvr(cls[0], cls[1])["logits"]
    assert logits.shape == (2, 2) and torch.allclose(logits, manual, atol=1e-5)
    assert not torch.allclose(logits, swapped)  # the order of the two images matters


def test_tiny_retrieval_scores_follow_the_two_stage_protocol():
    torch.manual_seed(0)
    model = zoo.create_model("x2vlm-tiny", task="retrieval").eval()
    g = torch.Generator().manual_seed(2)
    images = torch.randn(3, 3, 64, 64, generator=g)
    ids = torch.randint(1000, 3000, (5, 6), generator=g)
    mask = torch.ones_like(ids)
    i2t, t2i = model.retrieval_scores(images, ids, mask, k=2)
    assert i2t.shape == (3, 5) and t2i.shape == (5, 3)
    assert ((i2t != -100).sum(1) == 2).all() and ((t2i != -100).sum(1) == 2).all()
    # a kept entry is the ITM logit of that pair, computed independently
    i, t = (i2t != -100).nonzero()[0].tolist()
    with torch.no_grad():
        direct = model(images[i : i + 1], ids[t : t + 1], mask[t : t + 1])["itm_logits"][0, 1]
    assert torch.allclose(i2t[i, t], direct, atol=1e-5)
    # and the kept candidates are the ITC top-2
    with torch.no_grad():
        out = model(images, ids[:3], mask[:3])
        feats_t = torch.cat([model.itc.embed_text(model.encode_text(ids, mask).tokens[:, 0])])
        sim = out["image_feat"] @ feats_t.t()
    assert set((i2t[0] != -100).nonzero().flatten().tolist()) == set(sim[0].topk(2).indices.tolist())


def test_region_view_and_region_pretraining(tiny):
    """Region–text pairs: token 0 becomes the mean of the region's patches, the attention mask is the region, the box
    head's view is the whole image, and the pre-training losses run on such a batch."""
    g = torch.Generator().manual_seed(3)
    image = tiny.eval().encode_image(torch.randn(2, 3, 64, 64, generator=g))
    region_mask = torch.zeros(3, 17, dtype=torch.long)
    region_mask[:, 0] = 1
    region_mask[0, 1:5] = 1
    region_mask[1, 5:17] = 1
    region_mask[2, 1:17] = 1
    region, full = tiny.region_view(image, torch.tensor([0, 0, 1]), region_mask)
    assert torch.allclose(region.tokens[0, 0], image.tokens[0, 1:5].mean(0), atol=1e-6)
    assert torch.allclose(region.tokens[1, 0], image.tokens[0, 5:17].mean(0), atol=1e-6)
    assert torch.allclose(region.tokens[2, 0], image.tokens[1, 0], atol=1e-5)  # whole image = the usual mean token
    assert torch.equal(full.tokens[2], image.tokens[1]) and full.mask is None
    assert torch.equal(region.mask, region_mask)
    batch = _batch(b=3)
    batch.update(images=batch["images"][:2], image_index=torch.tensor([0, 0, 1]), region_mask=region_mask,
                 image_ids=torch.tensor([0, 0, 1]), is_image=torch.tensor([0, 0, 1]))
    with torch.no_grad():
        losses = tiny.pretrain_losses(batch, generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in losses.values())


def test_tiny_captioning_trains_and_generates():
    from zoo.heads.caption import caption_inputs_from_text, collate_caption_inputs

    torch.manual_seed(0)
    model = zoo.create_model("x2vlm-tiny", task="captioning")
    assert model.mlm is None and model.caption.cls.predictions.decoder.weight is \
        model.text.embeddings.word_embeddings.weight
    tok = model.text.get_tokenizer()
    g = torch.Generator().manual_seed(4)
    images = torch.randn(2, 3, 64, 64, generator=g)
    examples = [caption_inputs_from_text(tok, c, max_tokens=16, max_masks=6, rng=random.Random(i))
                for i, c in enumerate(["a red circle", "two blue squares"])]
    batch = {"images": images, **collate_caption_inputs(examples)}
    losses = fit_steps(lambda: model.caption_loss(batch)["loss"], model.parameters(), steps=8, lr=2e-3)
    assert losses[-1] < losses[0]
    captions = model.eval().generate_captions(images, num_beams=2, max_length=6, min_length=1)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)


def test_describe_official_captioning_checkpoint():
    official = {k: v for k, v in _meta_official("x2vlm_base_pretrain").items()
                if not k.startswith(("itm_head", "bbox_head", "vision_proj", "text_proj", "temp"))}
    assert describe_official_checkpoint(official)["task"] == "captioning"
    converted, _ = convert_official_state_dict(official, lm_head="caption")
    model = zoo.create_model("x2vlm-base", task="captioning", device="meta", **{"vision.img_size": 224})
    assert {k: tuple(v.shape) for k, v in converted.items()} == \
        {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_retrieval_itc_equals_the_official_formula_float64():
    """Catches a missing transpose in the text→image ITC term (``sim_t2i = sim_i2t``), a missing L2 normalisation of
    the image (or text) embeddings, and unnormalised soft targets, at the X²-VLM level: in float64 the ``itc`` loss of
    ``retrieval_losses`` equals the official ``get_contrastive_loss`` (X2-VLM models/xvlm.py:794-825) written out here on
    the model's own CLS states, with repeated image ids."""
    import math

    torch.manual_seed(0)
    model = zoo.create_model("x2vlm-tiny", task="retrieval").double().eval()
    batch = _batch()
    batch["images"] = batch["images"].double()
    batch["image_ids"] = torch.tensor([4, 9, 4, 1])  # the first and third texts describe the same image
    with torch.no_grad():
        losses = model.retrieval_losses(batch, generator=torch.Generator().manual_seed(0))
        image_cls = model.encode_image(batch["images"]).tokens[:, 0]
        text_cls = model.encode_text(batch["input_ids"], batch["attention_mask"]).tokens[:, 0]
        head = model.itc

        def unit_projection(x, layer):
            y = x @ layer.weight.t() + layer.bias
            return y / y.pow(2).sum(-1, keepdim=True).sqrt()

        image_feat, text_feat = unit_projection(image_cls, head.vision_proj), unit_projection(text_cls, head.text_proj)
        temp = min(max(float(head.temp), 0.001), 0.5)
    n = 4
    logits = [[float(image_feat[i] @ text_feat[j]) / temp for j in range(n)] for i in range(n)]
    ids = batch["image_ids"].tolist()

    def soft_ce(rows):  # mean over rows of -sum_j target_ij log softmax(row)_j, target = same-id / row count
        total = 0.0
        for i, row in enumerate(rows):
            m = max(row)
            log_z = m + math.log(sum(math.exp(v - m) for v in row))
            same = [j for j in range(n) if ids[j] == ids[i]]
            total += -sum((row[j] - log_z) / len(same) for j in same)
        return total / n

    i2t = soft_ce(logits)
    t2i = soft_ce([[logits[i][j] for i in range(n)] for j in range(n)])  # the transpose: texts as rows
    assert float(losses["itc"]) == pytest.approx((i2t + t2i) / 2, rel=1e-7)


# our prefix -> the official one (the converter's rules read backwards), first match wins
_TO_OFFICIAL = [("vision.absolute_frame_pos_embed", "absolute_frame_pos_embed"),
                ("vision.image_encoder.", "vision_encoder."), ("vision.", "vision_encoder."),
                ("text.", "text_encoder.bert."), ("mlm.cls.", "text_encoder.cls."),
                ("caption.cls.", "text_encoder.cls."), ("itc.vision_proj.", "vision_proj."),
                ("itc.text_proj.", "text_proj."), ("itc.temp", "temp"), ("itm.mlp.", "itm_head."),
                ("bbox.mlp.", "bbox_head."), ("vqa.decoder.bert.", "text_decoder.bert."),
                ("vqa.cls.", "text_decoder.cls.")]


@pytest.mark.parametrize("name, task, frames", [("x2vlm-tiny", "captioning", None), ("x2vlm-tiny-video", "retrieval", 3)])
def test_convert_official_checkpoint_end_to_end(tmp_path, name, task, frames):
    """`mmzoo convert x2vlm`: an official-layout checkpoint (a tiny model's weights under the official names) is read,
    its task, resolution and frame count told from its keys and shapes, converted, built as the named model and
    exported; the export holds every tensor of the model it came from."""
    from zoo.models.x2vlm import convert_official_checkpoint

    torch.manual_seed(3)
    model = zoo.create_model(name, task=task)
    official = {}
    for key, value in model.state_dict().items():
        ours, theirs = next((o, t) for o, t in _TO_OFFICIAL if key.startswith(o))
        official[theirs + key[len(ours):]] = value.clone()
    torch.save({"model": official}, tmp_path / "official.pth")
    report = convert_official_checkpoint(str(tmp_path / "official.pth"), str(tmp_path / "export"), model=name)
    assert (report["model"], report["task"], report["image_size"], report.get("num_frames")) == (name, task, 64, frames)
    assert report["dropped"] == [] and report["tensors"] == len(official)
    again = zoo.from_pretrained(tmp_path / "export").state_dict()
    assert again.keys() == model.state_dict().keys()
    assert all(torch.equal(again[k], v) for k, v in model.state_dict().items())
    with pytest.raises(WeightsError, match="neither base .* name the registered model"):
        convert_official_checkpoint(str(tmp_path / "official.pth"), str(tmp_path / "unnamed"))
    assert not (tmp_path / "unnamed").exists()
    # a checkpoint that converts but does not fit the named model: the error names the file and that it was converted
    missing = next(k for k in official if k.startswith("text_encoder.bert.encoder."))
    torch.save({"model": {k: v for k, v in official.items() if k != missing}}, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match="^" + re.escape(f"{tmp_path / 'partial.pth'} (converted) does not fit ")):
        convert_official_checkpoint(str(tmp_path / "partial.pth"), str(tmp_path / "partial"), model=name)
    assert not (tmp_path / "partial").exists()
