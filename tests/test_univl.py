"""UniVL: official parameter counts and layouts (meta device), the converter, and the forward passes on the tiny model
(similarity, frame mask, cross encoder token types, decoder ties and loss)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import load_reference

import zoo
from zoo.hub import WeightsError
from zoo.models.base import count_parameters
from zoo.models.univl import convert_official_state_dict, describe_official_checkpoint

STAGE1, STAGE2 = "univl_pretrain_stage1", "univl_pretrain_stage2"
# (variant, official parameter count): stage I and stage II pre-training are the reference files' totals; FT-Align and
# captioning are sums of official module sizes (test_the_fine_tuning_counts_are_sums_of_official_modules)
OFFICIAL_COUNTS = [(None, 153_784_064), ("retrieval", 153_784_064), ("retrieval_align", 169_340_673),
                   ("captioning", 198_320_187), ("pretrain", 199_535_989)]
# our top-level part → the official top-level prefixes whose parameters it holds
PART_PREFIXES = {"text": ("bert",), "vision": ("visual", "normalize_video"), "fusion": ("cross", "similarity_dense"),
                 "decoder": ("decoder",), "mlm": ("cls",), "mfm": ("cls_visual",)}


def _meta_official(name: str) -> dict[str, torch.Tensor]:
    """The official state dict of a reference layout, as meta tensors (names and shapes only)."""
    return {k: torch.empty(s, device="meta") for k, s in load_reference(name)["state_dict"]}


def _own_counts(model) -> dict[str, int]:
    """Parameters per top-level part, a tied tensor counted under its first name (as the reference files count)."""
    counts: dict[str, int] = {}
    for name, p in model.named_parameters():
        top = name.split(".", 1)[0]
        counts[top] = counts.get(top, 0) + p.numel()
    return counts


# ---------------------------------------------------------------------------------------------------------------------
# official sizes and layouts
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task, official", OFFICIAL_COUNTS, ids=[t or "stage1" for t, _ in OFFICIAL_COUNTS])
def test_official_parameter_counts(task, official):
    """Each variant of univl-base has the official model's parameter count (guards a wrong layer count or width, a
    missing pooler / score layer, and an untied decoder or head, which would add the 23.4M-entry word table)."""
    model = zoo.create_model("univl-base", task=task, device="meta")
    assert count_parameters(model) == official


@pytest.mark.parametrize("task, ref", [(None, STAGE1), ("pretrain", STAGE2)])
def test_parameter_counts_per_part_equal_the_official_modules(task, ref):
    """Part by part, the stage I / II models hold what the official modules hold (``params_by_prefix``), so a count
    that only sums right (a layer moved from one encoder to another) fails."""
    model = zoo.create_model("univl-base", task=task, device="meta")
    by_prefix = load_reference(ref)["params_by_prefix"]
    expected = {part: sum(by_prefix[p] for p in prefixes) for part, prefixes in PART_PREFIXES.items()
                if any(p in by_prefix for p in prefixes)}
    assert _own_counts(model) == expected


def test_the_fine_tuning_counts_are_sums_of_official_modules():
    """FT-Align and captioning have no reference file: their counts are the stage I model plus the official modules
    the flags build (``modeling.py:UniVL.__init__``: ``--train_sim_after_cross`` builds cross + similarity_dense,
    ``--stage_two`` without ``--do_pretrain`` adds the decoder but not cls / cls_visual); the stage II file gives each
    module's size. Guards the two hard-coded numbers above against a slip."""
    stage1 = load_reference(STAGE1)["total_params"]
    by_prefix = load_reference(STAGE2)["params_by_prefix"]
    align = stage1 + by_prefix["cross"] + by_prefix["similarity_dense"]
    caption = align + by_prefix["decoder"]
    assert (align, caption) == (169_340_673, 198_320_187)
    assert caption + by_prefix["cls"] + by_prefix["cls_visual"] == load_reference(STAGE2)["total_params"]


@pytest.mark.parametrize("task, ref", [(None, STAGE1), ("pretrain", STAGE2)])
def test_converter_maps_every_official_key_onto_our_layout(task, ref):
    """Every official key maps onto a key of ours with the same shape, none is dropped, and every key of ours is
    filled (a rule that sends a key nowhere, or two keys onto one, fails)."""
    official = _meta_official(ref)
    converted, dropped = convert_official_state_dict(official)
    assert dropped == []
    model = zoo.create_model("univl-base", task=task, device="meta")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == ours


# written out by hand from the official module names (module_decoder.py DecoderLayer: slf_attn, enc_attn; ...), so
# that rules swapping two same-shaped blocks fail
OFFICIAL_TO_OURS = {
    "bert.encoder.layer.11.attention.self.key.weight": "text.model.encoder.layer.11.attention.self.key.weight",
    "normalize_video.visual_norm2d.weight": "vision.norm.weight",
    "visual.embeddings.word_embeddings.weight": "vision.embeddings.proj.weight",
    "visual.encoder.layer.5.output.dense.weight": "vision.encoder.layer.5.output.dense.weight",
    "visual.pooler.dense.weight": "vision.pooler.dense.weight",
    "cross.embeddings.token_type_embeddings.weight": "fusion.embeddings.token_type_embeddings.weight",
    "cross.pooler.dense.weight": "fusion.pooler.dense.weight",
    "similarity_dense.weight": "fusion.similarity_dense.weight",
    "decoder.decoder.layer.2.slf_attn.att.query.weight": "decoder.stack.layer.2.attention.self.query.weight",
    "decoder.decoder.layer.2.slf_attn.output.dense.weight": "decoder.stack.layer.2.attention.output.dense.weight",
    "decoder.decoder.layer.2.enc_attn.att.value.weight": "decoder.stack.layer.2.crossattention.self.value.weight",
    "decoder.decoder.layer.2.enc_attn.output.LayerNorm.bias":
        "decoder.stack.layer.2.crossattention.output.LayerNorm.bias",
    "decoder.decoder.layer.2.output.dense.weight": "decoder.stack.layer.2.output.dense.weight",
    "decoder.embeddings.LayerNorm.weight": "decoder.embeddings.LayerNorm.weight",
    "decoder.classifier.cls.predictions.transform.dense.weight":
        "decoder.classifier.cls.predictions.transform.dense.weight",
    "cls.predictions.transform.LayerNorm.weight": "mlm.cls.predictions.transform.LayerNorm.weight",
    "cls.predictions.bias": "mlm.cls.predictions.bias",
    "cls_visual.predictions.weight": "mfm.weight",
    "cls_visual.predictions.transform.dense.weight": "mfm.transform.dense.weight",
}


def test_converter_puts_each_official_tensor_on_the_right_key():
    """The tensor of an official key arrives under the key written out by hand for it (same-shaped blocks such as
    the decoder's self- and cross-attention cannot be told apart by shape); an LM head's official output bias also
    fills our head's tied ``decoder.bias``."""
    official = {k: torch.full((1,), float(i)) for i, k in enumerate(k for k, _ in load_reference(STAGE2)["state_dict"])}
    converted, _ = convert_official_state_dict(official)
    for theirs, mine in OFFICIAL_TO_OURS.items():
        assert converted[mine] is official[theirs], (theirs, mine)
    assert converted["mlm.cls.predictions.decoder.bias"] is official["cls.predictions.bias"]
    assert converted["decoder.classifier.cls.predictions.decoder.bias"] is \
        official["decoder.classifier.cls.predictions.bias"]


def test_converter_rejects_unknown_keys_and_tells_the_variant():
    """An official key without a rule is an error naming it (never silently dropped); the variant is told from the
    parts a checkpoint holds."""
    official = _meta_official(STAGE1)
    official["some_new_head.weight"] = torch.empty(2, device="meta")
    with pytest.raises(WeightsError, match=r"1 official UniVL key\(s\) have no mapping.*some_new_head.weight"):
        convert_official_state_dict(official)
    assert describe_official_checkpoint(_meta_official(STAGE1))["task"] is None
    stage2 = _meta_official(STAGE2)
    assert describe_official_checkpoint(stage2) == {"model": "univl-base", "task": "pretrain", "feature_dim": 1024}
    caption = {k: v for k, v in stage2.items() if not k.startswith("cls")}
    assert describe_official_checkpoint(caption)["task"] == "captioning"
    align = {k: v for k, v in caption.items() if not k.startswith("decoder.")}
    assert describe_official_checkpoint(align)["task"] == "retrieval_align"


def test_convert_official_checkpoint_end_to_end(tmp_path):
    """An official-layout file (the stage II key list, filled from a tiny model's tensors) converts into an export
    that loads strictly and computes what the model it came from computes."""
    from zoo.models.univl import convert_official_checkpoint

    torch.manual_seed(0)
    model = zoo.create_model("univl-tiny", task="pretrain").eval()
    state = model.state_dict()
    # the official names of the tiny model's tensors: the stage II key list, cut to the tiny model's layers
    names = {k: k for k, _ in load_reference(STAGE2)["state_dict"]}
    mapping, _ = convert_official_state_dict(names)  # our key → official key (the values are the official names)
    official = {theirs: state[mine].clone() for mine, theirs in mapping.items() if mine in state}
    assert {mine for mine, _ in mapping.items() if mine in state} == set(state)
    torch.save(official, tmp_path / "pytorch_model.bin")
    info = convert_official_checkpoint(str(tmp_path / "pytorch_model.bin"), str(tmp_path / "out"), model="univl-tiny")
    assert info["task"] == "pretrain" and info["dropped"] == []
    again = zoo.from_pretrained(tmp_path / "out").eval()
    batch = _batch()
    with torch.no_grad():
        a = model(batch["input_ids"], batch["attention_mask"], batch["video"], batch["video_mask"])
        b = again(batch["input_ids"], batch["attention_mask"], batch["video"], batch["video_mask"])
    assert torch.equal(a["similarity"], b["similarity"]) and torch.equal(a["align_scores"], b["align_scores"])


# ---------------------------------------------------------------------------------------------------------------------
# tiny model: forward passes
# ---------------------------------------------------------------------------------------------------------------------
def _batch(n_text: int = 3, n_video: int = 3, length: int = 7, frames: int = 5, seed: int = 0) -> dict:
    """Token ids with CLS, text 1 padded after 4 tokens, video 0 padded after 3 frames, a caption padded in row 2."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 3000, (n_text, length), generator=g)
    ids[:, 0] = 101
    mask = torch.ones(n_text, length, dtype=torch.long)
    mask[1, 4:] = 0
    video = torch.randn(n_video, frames, 32, generator=g)
    video_mask = torch.ones(n_video, frames, dtype=torch.long)
    video_mask[0, 3:] = 0
    caption = torch.randint(1000, 3000, (n_text, 6), generator=g)
    caption_mask = torch.ones(n_text, 6, dtype=torch.long)
    caption_mask[2, 4:] = 0
    labels = torch.randint(1000, 3000, (n_text, 6), generator=g).masked_fill(caption_mask == 0, -1)
    return {"input_ids": ids, "attention_mask": mask, "video": video, "video_mask": video_mask,
            "input_caption_ids": caption, "decoder_mask": caption_mask, "output_caption_ids": labels}


@pytest.fixture(scope="module")
def pretrain_model():
    torch.manual_seed(0)
    return zoo.create_model("univl-tiny", task="pretrain").eval()


def _reference_similarity(text, text_mask, video, video_mask, normalize):
    """The official mean pooling written out per example in float64: text tokens 1.. under the mask (CLS out),
    frames under the frame mask."""
    rows = []
    for i in range(text.shape[0]):
        keep = [j for j in range(1, text.shape[1]) if text_mask[i, j]]
        t = text[i, keep].double().mean(0)
        cols = []
        for k in range(video.shape[0]):
            frames = [j for j in range(video.shape[1]) if video_mask[k, j]]
            v = video[k, frames].double().mean(0)
            cols.append(float(F.normalize(t, dim=0) @ F.normalize(v, dim=0)) if normalize else float(t @ v))
        rows.append(cols)
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("task, normalize", [(None, False), ("retrieval", True)])
def test_joint_similarity_equals_the_mean_pooling_formula(task, normalize):
    """The FT-Joint matrix (3 texts × 2 videos, so a transposed matrix fails) equals the official mean pooling
    recomputed in float64: CLS excluded, padded tokens and frames excluded, L2-normalised only in the fine-tuning
    variant (guards counting CLS, ignoring a mask, normalising in pre-training or not in fine-tuning)."""
    torch.manual_seed(0)
    model = zoo.create_model("univl-tiny", task=task).eval()
    batch = _batch(n_text=3, n_video=2)
    with torch.no_grad():
        text = model.encode_text(batch["input_ids"], batch["attention_mask"]).tokens
        frames = model.encode_video(batch["video"], batch["video_mask"]).tokens
        sim = model.joint_similarity(text, batch["attention_mask"], frames, batch["video_mask"])
    expected = _reference_similarity(text, batch["attention_mask"], frames, batch["video_mask"], normalize)
    assert sim.shape == (3, 2)
    torch.testing.assert_close(sim.double(), expected, rtol=1e-5, atol=1e-6)


def test_padded_frames_change_no_output(pretrain_model):
    """Features of padded frames (video 0, frames 3-4) replaced by large noise leave the real frames' states, the
    FT-Joint and FT-Align scores and the decoder's logits unchanged (guards a frame mask that the video encoder, the
    pooling, the cross encoder or the decoder's cross-attention ignores); changing a real frame does change them."""
    model, batch = pretrain_model, _batch()
    noisy = batch["video"].clone()
    noisy[0, 3:] = 50 * torch.randn(2, 32)
    real = batch["video"].clone()
    real[0, 1] += torch.randn(32)  # not a constant shift, which the feature LayerNorm removes

    def outputs(video):
        with torch.no_grad():
            out = model(batch["input_ids"], batch["attention_mask"], video, batch["video_mask"])
            logits = model.decoder_loss({**batch, "video": video})["logits"]
        return out["video"].tokens[0, :3], out["similarity"], out["align_scores"], logits

    base = outputs(batch["video"])
    for a, b in zip(base, outputs(noisy)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert all(not torch.allclose(a, b, atol=1e-5) for a, b in zip(base, outputs(real)))


def test_decoder_and_heads_are_tied_to_the_encoders(pretrain_model, tmp_path):
    """The decoder's word and position tables and its output matrix, and the MLM head's output matrix, are the text
    encoder's tensors; the MFM head's output matrix is the video projection's (one Parameter each, also after an
    export round trip)."""
    for model in (pretrain_model, _round_trip(pretrain_model, tmp_path)):
        words = model.text.get_input_embeddings().weight
        assert model.decoder.embeddings.word_embeddings.weight is words
        assert model.decoder.classifier.cls.predictions.decoder.weight is words
        assert model.decoder.embeddings.position_embeddings.weight is model.text.model.embeddings.position_embeddings.weight
        assert model.mlm.cls.predictions.decoder.weight is words
        assert model.mfm.weight is model.vision.embeddings.proj.weight


def _round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "export")
    return zoo.from_pretrained(tmp_path / "export").eval()


def test_cross_encoder_token_types_tell_text_from_video(pretrain_model):
    """Inside the cross encoder, text positions get token type 0 and frames type 1 on top of positions counted over
    the concatenation: its embedding output equals that sum recomputed by hand (guards all-zero or swapped types and
    positions restarting at the video), and swapping the two type rows changes the pooled state."""
    model, batch = pretrain_model, _batch()
    fusion = model.fusion
    with torch.no_grad():
        text = model.encode_text(batch["input_ids"], batch["attention_mask"]).tokens
        frames = model.encode_video(batch["video"], batch["video_mask"]).tokens
        seen = {}
        hook = fusion.embeddings.register_forward_hook(lambda m, i, o: seen.update(out=o))
        pooled = fusion(text, batch["attention_mask"], frames, batch["video_mask"]).pooled
        hook.remove()
        emb = fusion.embeddings
        length, n_frames = text.shape[1], frames.shape[1]
        types = emb.token_type_embeddings.weight
        x = torch.cat([text + types[0], frames + types[1]], dim=1) + emb.position_embeddings.weight[:length + n_frames]
        expected = F.layer_norm(x.double(), (x.shape[-1],), emb.LayerNorm.weight.double(), emb.LayerNorm.bias.double(),
                                eps=emb.LayerNorm.eps)
        torch.testing.assert_close(seen["out"].double(), expected, rtol=1e-5, atol=1e-5)
        original = types.clone()
        types.copy_(original.flip(0))
        swapped = fusion(text, batch["attention_mask"], frames, batch["video_mask"]).pooled
        types.copy_(original)
    assert not torch.allclose(pooled, swapped, atol=1e-4)


def test_align_scores_fuse_each_text_with_each_video(pretrain_model):
    """FT-Align's (texts × videos) matrix holds at [i, j] the score of text i fused with video j alone (3 texts × 2
    videos: an index mix-up transposes or repeats pairs)."""
    model, batch = pretrain_model, _batch(n_text=3, n_video=2)
    with torch.no_grad():
        text = model.encode_text(batch["input_ids"], batch["attention_mask"]).tokens
        frames = model.encode_video(batch["video"], batch["video_mask"]).tokens
        scores = model.align_scores(text, batch["attention_mask"], frames, batch["video_mask"], batch_size=4)
        for i in range(3):
            for j in range(2):
                one = model.align_pair_scores(text[i:i + 1], batch["attention_mask"][i:i + 1], frames[j:j + 1],
                                              batch["video_mask"][j:j + 1])
                torch.testing.assert_close(scores[i, j], one[0], rtol=1e-5, atol=1e-6)
    assert scores.shape == (3, 2)


def test_decoder_loss_is_causal_teacher_forced_cross_entropy(pretrain_model):
    """The decoder loss is the mean cross-entropy of the logits at the labelled positions (label -1 ignored, as the
    official ``CrossEntropyLoss(ignore_index=-1)``), and a caption token changes no logit before it (causal
    self-attention) while it does change its own position's."""
    model, batch = pretrain_model, _batch()
    with torch.no_grad():
        out = model.decoder_loss(batch)
        changed = batch["input_caption_ids"].clone()
        changed[:, 3] += 1
        later = model.decoder_loss({**batch, "input_caption_ids": changed})["logits"]
    logits, labels = out["logits"].double(), batch["output_caption_ids"]
    picked = [-(logits[b, t].log_softmax(-1)[labels[b, t]]) for b in range(labels.shape[0])
              for t in range(labels.shape[1]) if labels[b, t] != -1]
    torch.testing.assert_close(out["loss"].double(), torch.stack(picked).mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(later[:, :3], out["logits"][:, :3], rtol=0, atol=1e-5)
    assert not torch.allclose(later[:, 3], out["logits"][:, 3], atol=1e-5)


def test_mfm_loss_is_the_nce_over_real_frames(pretrain_model):
    """The masked frame loss equals the official NCE recomputed in float64: each masked real frame's prediction
    against every real frame of the batch (padded frames excluded), ``-log softmax`` of its own (guards scoring
    against padded frames, or averaging over unmasked frames)."""
    model, batch = pretrain_model, _batch()
    labels = torch.full(batch["video_mask"].shape, -1)
    labels[0, 1], labels[2, 4] = 1, 1
    with torch.no_grad():
        target = model.vision.normalize(batch["video"])
        states = torch.randn(*batch["video_mask"].shape, 64)
        loss = model.mfm_loss(states, target, batch["video_mask"], labels)
        pred = model.mfm(states).double().reshape(-1, 32)
    flat_target, real = target.double().reshape(-1, 32), batch["video_mask"].reshape(-1).bool()
    terms = []
    for row in (labels.reshape(-1) != -1).nonzero().flatten().tolist():
        logits = pred[row] @ flat_target[real].t()
        own = int(real[:row].sum())  # the row's index among the real frames
        terms.append(-logits.log_softmax(-1)[own])
    torch.testing.assert_close(loss.double(), torch.stack(terms).mean(), rtol=1e-5, atol=1e-6)
