"""UniVL's training objectives and stages against the official code (microsoft/UniVL @8db88f3; the values and their
file:line are in tests/reference/official_defaults.json under ``univl_*``): the similarity losses against float64
formulas written out here, the stage II masking against the official data loader re-implemented here on token strings
(same ``random.Random`` draws), the stage I / II loss sums term by term, and the optimiser groups of ``coef_lr``.

Every test names in its docstring the one-line bug it catches.
"""

from __future__ import annotations

import inspect
import math
import random
from collections import OrderedDict

import pytest
import torch
from conftest import load_reference
from conftest import official_default as official

import zoo
from zoo.models.univl import UniVL, convert_official_state_dict
from zoo.models.univl.losses import cross_en, max_margin_ranking, mil_nce
from zoo.models.univl.masking import mask_frames, mask_tokens, stage_two_masking
from zoo.train.optim import param_groups, part_of


# ---------------------------------------------------------------------------------------------------------------------
# float64 references, written out (no call into zoo)
# ---------------------------------------------------------------------------------------------------------------------
def _lse(xs) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def ref_cross_en(sim) -> float:
    """until_module.py:186-191: mean over rows of -log softmax(row)[diagonal]."""
    s = sim.double().tolist()
    return sum(_lse(row) - row[i] for i, row in enumerate(s)) / len(s)


def ref_mil_nce(sim, n_pair: int) -> float:
    """until_module.py:201-221, per video b: its middle clip i = b·n_pair + n_pair // 2; candidates = column i (every
    text against video i) and row i outside i's own video; positives = column i within i's own video; loss =
    logsumexp(candidates) - logsumexp(positives), averaged over the videos."""
    s = sim.double().tolist()
    n = len(s)
    total = 0.0
    for b in range(n // n_pair):
        i = b * n_pair + n_pair // 2
        own = range(b * n_pair, (b + 1) * n_pair)
        candidates = [s[j][i] for j in range(n)] + [s[i][k] for k in range(n) if k not in own]
        total += _lse(candidates) - _lse([s[j][i] for j in own])
    return total / (n // n_pair)


def ref_max_margin(sim, margin: float, n_pair: int, hard_negative_rate: float, negative_weighting: bool) -> float:
    """until_module.py:238-251 with the official weight matrix built as it does: alpha = easy / ((B - 1)(1 - easy)),
    kron((1 - alpha)·I + alpha, ones(n_pair, n_pair)) · B(1 - easy); then the mean of both hinge terms over every entry
    (diagonal included)."""
    s = sim.double().tolist()
    n = len(s)
    batch = n // n_pair
    weight = torch.ones(n, n, dtype=torch.float64)
    if negative_weighting and n_pair > 1 and batch > 1:
        easy = 1.0 - hard_negative_rate
        alpha = easy / ((batch - 1) * (1 - easy))
        block = (1 - alpha) * torch.eye(batch, dtype=torch.float64) + alpha
        weight = torch.kron(block, torch.ones(n_pair, n_pair, dtype=torch.float64)) * (batch * (1 - easy))
    total = 0.0
    for i in range(n):
        for j in range(n):
            hinge = max(0.0, margin + s[i][j] - s[i][i]) + max(0.0, margin + s[i][j] - s[j][j])
            total += hinge * float(weight[i, j])
    return total / (n * n)


def ref_ce(logits, labels) -> float:
    """Mean over labels != -1 of logsumexp(logits) - logits[label], in float64."""
    logits = logits.double().reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1).tolist()
    lse = logits.logsumexp(-1)
    terms = [float(lse[r] - logits[r, y]) for r, y in enumerate(labels) if y != -1]
    return sum(terms) / len(terms)


def ref_mfm_nce(pred, target, video_mask, labels) -> float:
    """modeling.py:278-297: each masked real frame's prediction against every real frame of the batch (float64),
    -log softmax of its own; averaged over the masked frames."""
    pred = pred.double().reshape(-1, pred.shape[-1])
    target = target.double().reshape(-1, target.shape[-1])
    real = video_mask.reshape(-1).bool()
    terms = []
    for row in (labels.reshape(-1) != -1).nonzero().flatten().tolist():
        assert real[row]
        logits = (pred[row] @ target[real].t()).tolist()
        own = int(real[:row].sum())
        terms.append(_lse(logits) - logits[own])
    return sum(terms) / len(terms)


def _close(got, want: float, tol: float = 1e-5) -> None:
    assert math.isclose(float(got), want, rel_tol=tol, abs_tol=tol), (float(got), want)


def _sim(n: int, seed: int) -> torch.Tensor:
    return 2 * torch.randn(n, n, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------------
# official defaults
# ---------------------------------------------------------------------------------------------------------------------
def _defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}


def test_defaults_are_the_official_script_values():
    """Catches the max-margin loss defaulting to its class's own ``margin=1.0`` (until_module.py:225) instead of the
    scripts' 0.1, a hard-negative rate other than 0.5, and masking rates other than 0.15 (CMLM, CMFM and the
    video-modality enhancement)."""
    mm, cmlm, cmfm, enhance = (official(k) for k in ("univl_max_margin", "univl_cmlm", "univl_cmfm",
                                                     "univl_enhance_vmodal"))
    want = {"margin": mm["margin"], "hard_negative_rate": mm["hard_negative_rate"],
            "negative_weighting": bool(mm["negative_weighting"]), "n_pair": mm["n_pair"]}
    assert _defaults(max_margin_ranking) == want
    for method in (UniVL.similarity_loss, UniVL.pretrain_loss):
        got = _defaults(method)
        assert {k: got[k] for k in ("margin", "hard_negative_rate", "negative_weighting")} == \
            {k: want[k] for k in ("margin", "hard_negative_rate", "negative_weighting")}
    assert _defaults(UniVL.retrieval_loss)["margin"] == mm["margin"]
    assert _defaults(mask_tokens)["mask_prob"] == cmlm["mask_prob"]
    assert _defaults(mask_frames)["mask_prob"] == cmfm["mask_prob"]
    staged = _defaults(stage_two_masking)
    assert (staged["mask_prob"], staged["enhance_prob"], staged["enhance_vmodal"]) == \
        (cmlm["mask_prob"], enhance["prob"], False)
    assert official("univl_ignore_index")["mlm"] == official("univl_ignore_index")["decoder"] == -1


# ---------------------------------------------------------------------------------------------------------------------
# similarity losses
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("videos, n_pair", [(4, 1), (3, 3), (2, 2), (3, 4)])
def test_mil_nce_equals_the_official_formula(videos, n_pair):
    """Catches MIL-NCE averaging every clip instead of each video's middle clip (``b·n_pair + n_pair // 2``), not
    removing the own video's clips from the text→video half (they would count as negatives), or taking only the
    diagonal as positive: equal to the float64 formula for 1, 2, 3 and 4 clips per video."""
    sim = _sim(videos * n_pair, seed=videos * 10 + n_pair)
    _close(mil_nce(sim, n_pair), ref_mil_nce(sim, n_pair))
    if n_pair > 1:  # the data tell the anchor clip and the positive block apart
        assert not math.isclose(float(mil_nce(sim, 1)), ref_mil_nce(sim, n_pair), rel_tol=1e-3)
        shifted = sim.roll(1, dims=0).roll(1, dims=1)  # a different clip in the middle of each video
        assert not math.isclose(float(mil_nce(shifted, n_pair)), float(mil_nce(sim, n_pair)), rel_tol=1e-3)


def test_mil_nce_rejects_a_batch_that_is_not_whole_videos():
    with pytest.raises(ValueError, match="not a whole number of videos"):
        mil_nce(torch.zeros(5, 5), n_pair=2)
    with pytest.raises(ValueError, match="square"):
        cross_en(torch.zeros(2, 3))


@pytest.mark.parametrize("videos, n_pair, weighting, rate", [(3, 2, True, 0.5), (4, 3, True, 0.7), (3, 2, False, 0.5),
                                                              (5, 1, True, 0.5), (1, 3, True, 0.5)])
def test_max_margin_with_hard_negatives_equals_the_official_formula(videos, n_pair, weighting, rate):
    """Catches the hard-negative weights swapped (``batch · rate`` between videos instead of within one), a
    single hinge direction, or the diagonal left out of the mean: equal to the float64 formula with the official
    kron-built weight matrix (margin 0.1), with and without weighting, for one video and for one clip per video."""
    sim = _sim(videos * n_pair, seed=videos + n_pair)
    _close(max_margin_ranking(sim, 0.1, n_pair, rate, weighting), ref_max_margin(sim, 0.1, n_pair, rate, weighting))


def test_hard_negatives_carry_their_rate_of_each_row():
    """The weights (read back from the loss of one-hot similarities) put ``rate`` of a row's weight on the clips of
    its own video and average 1 — catches a weight matrix normalised per row instead of overall."""
    videos, n_pair, rate = 4, 2, 0.5
    n = videos * n_pair
    # all similarities 0 but one entry 1: that entry's hinge grows by 1 in each direction it is not a diagonal of
    base = float(max_margin_ranking(torch.zeros(n, n), 0.1, n_pair, rate))
    _close(base, 2 * 0.1)  # mean weight 1: every entry contributes 2·margin
    own = torch.zeros(n, n)
    own[0, 1] = 1.0  # clips 0 and 1 are the same video
    other = torch.zeros(n, n)
    other[0, 2] = 1.0
    w_own = (float(max_margin_ranking(own, 0.1, n_pair, rate)) - base) * n * n / 2
    w_other = (float(max_margin_ranking(other, 0.1, n_pair, rate)) - base) * n * n / 2
    _close(w_own, videos * rate)
    _close(w_other, videos * (1 - rate) / (videos - 1))
    _close(n_pair * w_own / (n_pair * w_own + (n - n_pair) * w_other), rate)


def test_cross_en_is_the_row_softmax_of_the_diagonal():
    """Catches CrossEn taken over columns (video→text) or averaged over both directions: on a non-symmetric matrix
    it equals the float64 row formula only."""
    sim = _sim(4, seed=3)
    _close(cross_en(sim), ref_cross_en(sim))
    assert not math.isclose(ref_cross_en(sim.t()), ref_cross_en(sim), rel_tol=1e-3)


# ---------------------------------------------------------------------------------------------------------------------
# stage II masking against the official data loader (dataloader_howto100m.py), re-implemented on token strings
# ---------------------------------------------------------------------------------------------------------------------
VOCAB = OrderedDict((t, i) for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] +
                                                 [f"w{i}" for i in range(45)]))
CLS, SEP, MASK = VOCAB["[CLS]"], VOCAB["[SEP]"], VOCAB["[MASK]"]


def _official_mask_tokens(words, rng):
    """dataloader_howto100m.py:103-125 on token strings, with the draws of Python's random."""
    labels, masked = [], list(words)
    for idx, token in enumerate(masked):
        if idx == 0 or idx == len(masked) - 1:
            labels.append(-1)
            continue
        prob = rng.random()
        if prob < 0.15:
            prob /= 0.15
            if prob < 0.8:
                masked[idx] = "[MASK]"
            elif prob < 0.9:
                masked[idx] = rng.choice(list(VOCAB.items()))[0]
            labels.append(VOCAB.get(token, VOCAB["[UNK]"]))
        else:
            labels.append(-1)
    return masked, labels


def _official_example(texts, captions, frame_lengths, max_frames, rng, enhance):
    """One example of ``Youtube_DataLoader.__getitem__`` (stage II): the enhancement draw (:355-358), then per clip
    the text (emptied when enhanced, :166-167) and the decoder input masked (:197-200), then per clip the frames of
    the real length (:313-329)."""
    enhanced = enhance and rng.random() < 0.15
    clips = []
    for words, caption in zip(texts, captions):
        words = ["[CLS]"] + ([] if enhanced else list(words)) + ["[SEP]"]
        masked, labels = _official_mask_tokens(words, rng)
        masked_caption, _ = _official_mask_tokens(["[CLS]"] + list(caption), rng)
        clips.append((words, masked, labels, masked_caption))
    frames = [[j if j < length and rng.random() < 0.15 else -1 for j in range(max_frames)]
              for length in frame_lengths]
    return enhanced, clips, frames


def _pad(tokens, length, pad):
    ids = [VOCAB[t] if isinstance(t, str) else t for t in tokens]
    return ids + [pad] * (length - len(ids))


def _strings_batch(seed, examples=3, n_pair=2, length=9, caption_length=8, max_frames=6):
    """Random transcripts, captions (words only) and frame counts, and the padded id batch of them."""
    r = random.Random(1000 + seed)
    words = [w for w in VOCAB if w.startswith("w")]
    texts = [[[r.choice(words) for _ in range(r.randint(1, length - 2))] for _ in range(n_pair)]
             for _ in range(examples)]
    captions = [[[r.choice(words) for _ in range(r.randint(1, caption_length - 1))] for _ in range(n_pair)]
                for _ in range(examples)]
    frames = [[r.randint(1, max_frames) for _ in range(n_pair)] for _ in range(examples)]
    ids = torch.tensor([[_pad(["[CLS]"] + t + ["[SEP]"], length, 0) for t in ex] for ex in texts])
    cap = torch.tensor([[_pad(["[CLS]"] + c, caption_length, 0) for c in ex] for ex in captions])
    vmask = torch.tensor([[[1] * n + [0] * (max_frames - n) for n in ex] for ex in frames])
    g = torch.Generator().manual_seed(seed)
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long(), "input_caption_ids": cap,
             "decoder_mask": (cap != 0).long(), "video": torch.randn(examples, n_pair, max_frames, 4, generator=g) *
             vmask[..., None], "video_mask": vmask}
    return texts, captions, frames, batch


def test_stage_two_masking_draws_equal_the_official_loader():
    """Catches any change to the order or range of the random draws (the frames drawn before the text, the decoder
    input left unmasked, a random token from ``randint(5, V - 1)``, 0.9 written 0.95, the enhancement drawn per clip
    instead of per example): under a ``random.Random`` in the same state, every output equals the official loader's,
    example after example, with the video-modality enhancement on, and both generators end in the same state."""
    enhanced = randomised = 0
    for seed in range(30):
        texts, captions, frames, batch = _strings_batch(seed)
        ours, theirs = random.Random(seed), random.Random(seed)
        out = stage_two_masking(batch, ours, vocab_size=len(VOCAB), mask_token_id=MASK, enhance_vmodal=True)
        for b in range(len(texts)):
            was_enhanced, clips, labels = _official_example(texts[b], captions[b], frames[b], 6, theirs, True)
            enhanced += was_enhanced
            for c, (words, masked, token_labels, masked_caption) in enumerate(clips):
                assert out["input_ids"][b, c].tolist() == _pad(words, 9, 0)
                assert out["attention_mask"][b, c].tolist() == [1] * len(words) + [0] * (9 - len(words))
                assert out["masked_input_ids"][b, c].tolist() == _pad(masked, 9, 0)
                assert out["token_labels"][b, c].tolist() == _pad(token_labels, 9, -1)
                assert out["input_caption_ids"][b, c].tolist() == _pad(masked_caption, 8, 0)
                randomised += sum(m not in ("[MASK]", w) for m, w in zip(masked + masked_caption,
                                                                          words + ["[CLS]"] + captions[b][c]))
            assert out["video_labels_index"][b].tolist() == labels
        assert ours.random() == theirs.random()
    assert enhanced > 3 and randomised > 3  # both branches were compared
    # a torch.Generator seeds one random.Random per call: the same seed gives the same masks
    _, _, _, batch = _strings_batch(0)
    a, b = (stage_two_masking(batch, torch.Generator().manual_seed(7), vocab_size=len(VOCAB), mask_token_id=MASK)
            for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cmlm_proportions_and_ignored_labels():
    """Catches the 80/10/10 split drawn from a fresh ``random()`` instead of ``p / 0.15`` (the official reuses the
    selection draw), and labels set at unpicked tokens, at [CLS] / [SEP] or at padding: over 20,000 tokens under
    seed 0, the picked share is 0.15 and the [MASK] / random / kept shares 0.8 / 0.1 / 0.1 (within 4 standard
    errors; a random token equal to the original counts as random: the shares are read from the draws replayed),
    every picked token's label is its own id, every other label -1 (padding included)."""
    rng, replay = random.Random(0), random.Random(0)
    counts = {"mask": 0, "random": 0, "keep": 0, "unpicked": 0}
    for _ in range(1000):
        length = 22
        row = [CLS] + [5 + (i * 7) % 45 for i in range(length - 2)] + [SEP]
        masked, labels = mask_tokens(row, rng, vocab_size=len(VOCAB), mask_token_id=MASK)
        assert labels[0] == labels[-1] == -1 and masked[0] == CLS and masked[-1] == SEP
        for pos in range(1, length - 1):
            p = replay.random()
            if p >= 0.15:
                counts["unpicked"] += 1
                assert labels[pos] == -1 and masked[pos] == row[pos]
                continue
            assert labels[pos] == row[pos]
            p /= 0.15
            if p < 0.8:
                counts["mask"] += 1
                assert masked[pos] == MASK
            elif p < 0.9:
                counts["random"] += 1
                assert masked[pos] == replay.choice(range(len(VOCAB)))
            else:
                counts["keep"] += 1
                assert masked[pos] == row[pos]
    picked = counts["mask"] + counts["random"] + counts["keep"]
    total = picked + counts["unpicked"]
    for share, want, n in ((picked / total, 0.15, total), (counts["mask"] / picked, 0.8, picked),
                           (counts["random"] / picked, 0.1, picked), (counts["keep"] / picked, 0.1, picked)):
        assert abs(share - want) < 4 * math.sqrt(want * (1 - want) / n), counts
    # padded rows: labels -1 beyond the real tokens
    ids = torch.tensor([[CLS, 7, 8, 9, SEP, 0, 0], [CLS, 7, SEP, 0, 0, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long(), "input_caption_ids": ids.clone(),
             "decoder_mask": (ids != 0).long(), "video": torch.zeros(2, 3, 4), "video_mask": torch.ones(2, 3)}
    for seed in range(50):
        out = stage_two_masking(batch, random.Random(seed), vocab_size=len(VOCAB), mask_token_id=MASK)
        assert (out["token_labels"][ids == 0] == -1).all() and (out["masked_input_ids"][ids == 0] == 0).all()
        assert (out["token_labels"][:, 0] == -1).all() and out["token_labels"][0, 4] == -1


def test_cmfm_masks_real_frames_only():
    """Catches frames drawn over the padded length (``j < max_frames`` instead of ``j < length``): no padded frame is
    ever labelled or changed, a labelled frame is zeros and carries its own index, every other frame is unchanged,
    and the share of masked real frames is 0.15 within 4 standard errors under fixed seeds."""
    masked_real = real_total = 0
    for seed in range(60):
        _, _, _, batch = _strings_batch(seed, examples=4, max_frames=10)
        out = stage_two_masking(batch, random.Random(seed), vocab_size=len(VOCAB), mask_token_id=MASK)
        labels, vmask = out["video_labels_index"], batch["video_mask"].bool()
        hit = labels != -1
        assert not (hit & ~vmask).any()
        index = torch.arange(labels.shape[-1]).expand_as(labels)
        assert torch.equal(labels[hit], index[hit])
        assert (out["masked_video"][hit] == 0).all()
        assert torch.equal(out["masked_video"][~hit], batch["video"][~hit])
        masked_real += int(hit.sum())
        real_total += int(vmask.sum())
    assert abs(masked_real / real_total - 0.15) < 4 * math.sqrt(0.15 * 0.85 / real_total)


# ---------------------------------------------------------------------------------------------------------------------
# the tiny model: stage I / II sums, MFM at the masked positions, the caption loss, retrieval fine-tuning
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pretrain_model():
    torch.manual_seed(0)
    return zoo.create_model("univl-tiny", task="pretrain").eval()


def _model_batch(seed=0, examples=2, n_pair=2, length=7, frames=5, caption_length=6):
    """A (B, n_pair, ...) batch of ids 1000-2999 with [CLS] 101 / [SEP] 102; example 0's last text and example 1's
    first video and last caption padded, output captions padded with 0 as the official loader does."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 3000, (examples, n_pair, length), generator=g)
    ids[..., 0], ids[..., -1] = 101, 102
    ids[0, -1, 4], ids[0, -1, 5:] = 102, 0
    video = torch.randn(examples, n_pair, frames, 32, generator=g)
    vmask = torch.ones(examples, n_pair, frames, dtype=torch.long)
    vmask[1, 0, 3:] = 0
    video = video * vmask[..., None]
    cap_in = torch.randint(1000, 3000, (examples, n_pair, caption_length), generator=g)
    cap_in[..., 0] = 101
    dmask = torch.ones_like(cap_in)
    dmask[1, -1, 4:] = 0
    cap_in = cap_in * dmask
    cap_out = torch.randint(1000, 3000, cap_in.shape, generator=g) * dmask  # padded with 0 ([PAD]), a target
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "video": video, "video_mask": vmask,
            "input_caption_ids": cap_in, "decoder_mask": dmask, "output_caption_ids": cap_out}


def test_stage_one_loss_is_mil_nce_of_the_mean_pooled_similarity():
    """Catches stage I taking the max-margin loss (the pre-training model's similarity is not normalised: official
    ``use_mil``, MIL-NCE) or losing ``n_pair`` when the batch comes as (B, n_pair, L): the loss equals the float64
    MIL-NCE of the model's mean-pooled similarity over 3 videos × 2 clips, and it is the only term."""
    torch.manual_seed(0)
    model = zoo.create_model("univl-tiny").eval()
    batch = _model_batch(examples=3, n_pair=2)
    flat = {k: v.flatten(0, 1) for k, v in batch.items()}
    with torch.no_grad():
        out = model.pretrain_loss(batch)
        text = model.encode_text(flat["input_ids"], flat["attention_mask"]).tokens
        frames = model.encode_video(flat["video"], flat["video_mask"]).tokens
        sim = model.joint_similarity(text, flat["attention_mask"], frames, flat["video_mask"])
    assert set(out) == {"loss", "joint"}
    _close(out["loss"], ref_mil_nce(sim, 2))
    assert not math.isclose(float(out["loss"]), ref_mil_nce(sim, 1), rel_tol=1e-3)


def test_stage_two_loss_sums_the_five_official_terms(pretrain_model):
    """Catches a stage II term computed on the wrong inputs or left out: MLM and MFM on the cross encoder of the
    masked text and video (MFM against the unmasked normalised features), MIL-NCE on the unmasked mean-pooled
    similarity, the decoder over the masked pair (padding targets 0 included), CrossEn of the masked FT-Align matrix
    — each equal to its float64 formula — and ``loss`` their plain sum (weights 1, modeling.py:213-267)."""
    model = pretrain_model
    batch = stage_two_masking(_model_batch(), random.Random(3), vocab_size=30522, mask_token_id=103)
    assert (batch["token_labels"] != -1).sum() >= 2 and (batch["video_labels_index"] != -1).sum() >= 2
    flat = {k: v.flatten(0, 1) for k, v in batch.items()}
    mask, vmask, n_tokens = flat["attention_mask"], flat["video_mask"], flat["attention_mask"].shape[1]
    with torch.no_grad():
        out = model.pretrain_loss(batch)
        text = model.encode_text(flat["input_ids"], mask).tokens
        frames = model.encode_video(flat["video"], vmask).tokens
        mtext = model.encode_text(flat["masked_input_ids"], mask).tokens
        mframes = model.encode_video(flat["masked_video"], vmask).tokens
        fused = model.cross(mtext, mask, mframes, vmask).tokens
        want = {
            "mlm": ref_ce(model.mlm.logits(fused[:, :n_tokens]), flat["token_labels"]),
            "mfm": ref_mfm_nce(model.mfm(fused[:, n_tokens:]), model.vision.normalize(flat["video"]), vmask,
                               flat["video_labels_index"]),
            "joint": ref_mil_nce(model.joint_similarity(text, mask, frames, vmask), 2),
            "decoder": ref_ce(model.decoder_logits(mtext, mask, mframes, vmask, flat["input_caption_ids"],
                                                   flat["decoder_mask"]), flat["output_caption_ids"]),
            "align": ref_cross_en(model.align_scores(mtext, mask, mframes, vmask)),
        }
        unmasked_align = ref_cross_en(model.align_scores(text, mask, frames, vmask))
    assert set(out) == {"loss", *want}
    for name, value in want.items():
        _close(out[name], value)
    _close(out["loss"], sum(want.values()))
    assert not math.isclose(unmasked_align, want["align"], rel_tol=1e-4)  # the inputs tell masked from unmasked


def test_mfm_nce_reads_only_the_masked_positions(pretrain_model):
    """Catches the MFM loss averaged over every real frame instead of the masked ones: it equals the float64 NCE over
    the frames CMFM masked, does not move when the states of unmasked frames change, does when a masked frame's
    state changes, and is 0 (not NaN) when nothing is masked."""
    model = pretrain_model
    batch = stage_two_masking(_model_batch(), random.Random(1), vocab_size=30522, mask_token_id=103)
    vmask = batch["video_mask"].flatten(0, 1)
    labels = batch["video_labels_index"].flatten(0, 1)
    assert (labels != -1).any() and ((labels == -1) & vmask.bool()).any()
    g = torch.Generator().manual_seed(0)
    states = torch.randn(*vmask.shape, 64, generator=g)
    target = model.vision.normalize(batch["video"].flatten(0, 1))
    with torch.no_grad():
        loss = model.mfm_loss(states, target, vmask, labels)
        _close(loss, ref_mfm_nce(model.mfm(states), target, vmask, labels))
        moved = states.clone()
        moved[(labels == -1)] += 5 * torch.randn(int((labels == -1).sum()), 64, generator=g)
        _close(model.mfm_loss(moved, target, vmask, labels), float(loss))
        moved = states.clone()
        moved[labels != -1] += 5
        assert not math.isclose(float(model.mfm_loss(moved, target, vmask, labels)), float(loss), rel_tol=1e-4)
        assert float(model.mfm_loss(states, target, vmask, torch.full_like(labels, -1))) == 0.0


def test_caption_loss_ignores_minus_one_and_trains_the_zero_padding(pretrain_model):
    """Catches ``ignore_index`` set to 0 (the official loaders pad targets with 0 and the official loss, ignoring only
    -1, trains those positions) or to -100 (a -1 label would then be out of range): the decoder loss equals the
    float64 mean cross-entropy over every position whose label is not -1, padding zeros included."""
    batch = {k: v[:, -1] for k, v in _model_batch().items()}  # the last clip: example 1's caption is padded
    batch["output_caption_ids"][0, 2] = -1
    assert (batch["output_caption_ids"] == 0).any()
    with torch.no_grad():
        out = pretrain_model.decoder_loss(batch)
    _close(out["loss"], ref_ce(out["logits"], batch["output_caption_ids"]))


@pytest.mark.parametrize("task", ["retrieval", "retrieval_align"])
def test_retrieval_fine_tuning_is_the_max_margin_loss(task):
    """Catches fine-tuning with CrossEn or MIL-NCE: the official retrieval script never sets ``stage_two`` and leaves
    ``use_mil`` off, so FT-Joint (mean-pooled, normalised) and FT-Align (cross-encoder scores) both train with the
    max-margin loss, margin 0.1, one clip per example (modeling.py:183, main_task_retrieval.py:50-53)."""
    torch.manual_seed(0)
    model = zoo.create_model("univl-tiny", task=task).eval()
    batch = {k: v[:, 0] for k, v in _model_batch(examples=4, n_pair=1).items()}
    with torch.no_grad():
        out = model.retrieval_loss(batch)
        text = model.encode_text(batch["input_ids"], batch["attention_mask"]).tokens
        frames = model.encode_video(batch["video"], batch["video_mask"]).tokens
        score = model.align_scores if task == "retrieval_align" else model.joint_similarity
        sim = score(text, batch["attention_mask"], frames, batch["video_mask"])
    torch.testing.assert_close(out["sim"], sim)
    _close(out["loss"], ref_max_margin(sim, 0.1, 1, 0.5, True))


# ---------------------------------------------------------------------------------------------------------------------
# optimiser groups: coef_lr on the BERT branch
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task, ref", [(None, "univl_pretrain_stage1"), ("pretrain", "univl_pretrain_stage2")])
def test_coef_lr_scales_exactly_the_official_bert_parameters(task, ref):
    """Catches a parameter of the BERT branch left at the base learning rate or another one scaled — e.g. the word
    table shared with the decoder and the MLM head grouped under ``other``, or the cross encoder counted as text: with
    ``optim.text_lr = lr × coef_lr`` (0.1) every parameter whose official name contains ``"bert."``
    (main_pretrain.py:184-193) gets lr × 0.1 and every other one lr; weight decay follows the official no-decay
    names except on the video feature LayerNorm's weight (decayed officially, exempt here as one-dimensional)."""
    opt = official("univl_optimizer")
    lr = opt["lr"]
    model = zoo.create_model("univl-base", task=task, device="meta")
    ours_to_official, _ = convert_official_state_dict({k: k for k, _ in load_reference(ref)["state_dict"]})
    groups = param_groups(model, lr=lr, weight_decay=opt["weight_decay"], text_lr=lr * opt["coef_lr"])
    seen = 0
    decay_differs = []
    for group in groups:
        for name in group["param_names"]:
            theirs = ours_to_official[name]
            bert = "bert." in theirs
            assert (part_of(model, name) == "text") == bert, name
            assert group["lr"] == pytest.approx(lr * opt["coef_lr"] if bert else lr), name
            decay = not any(nd in theirs for nd in opt["no_decay"])
            if (group["weight_decay"] > 0) != decay:
                decay_differs.append(name)
            seen += 1
    assert seen == len(list(model.named_parameters()))
    assert decay_differs == ["vision.norm.weight"]
