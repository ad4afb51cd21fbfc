"""UniVL on the framework's tasks: what ``images`` become (clip features and their mask, frames through the frozen
frame encoder), and each task method checked against a computation written out here — retrieval scores (FT-Joint,
FT-Align), the caption loss and beam search, the video QA classifier — plus which tasks each variant supports."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.models.univl import UniVLPixelGrid
from zoo.models.univl.model import beam_search
from zoo.spec import ConfigError
from zoo.tasks import supported_tasks
from zoo.train.optim import param_groups


def _model(task: str | None, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return zoo.create_model("univl-tiny", task=task, **overrides).eval()


def _frames(n: int, t: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, t, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _texts(lengths: list[int], seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style ids ``[CLS] w.. [SEP]`` of the given total lengths, padded with 0 to the longest."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(1000, 3000, (n,), generator=g)
        ids[row, 0], ids[row, n - 1] = 101, 102
        mask[row, :n] = 1
    return ids, mask


def _pad_to(ids: torch.Tensor, mask: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts padded by hand to ``n`` tokens (the official --max_words padding)."""
    extra = n - ids.shape[1]
    return F.pad(ids, (0, extra)), F.pad(mask, (0, extra))


# ---------------------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------------------
def test_clip_features_give_the_mask_of_their_nonzero_rows():
    """Zero-padded features (the official loaders' padding) → the mask written by hand from each video's length.
    Catches a mask taken from the row sum (a real row of +x / -x sums to zero), from one column, or inverted."""
    model = _model("retrieval")
    lengths = [4, 2, 5, 1]
    g = torch.Generator().manual_seed(0)
    features = torch.zeros(4, 5, 32)
    for b, n in enumerate(lengths):
        features[b, :n] = torch.randn(n, 32, generator=g)
    features[0, 1] = 0.0
    features[0, 1, 3], features[0, 1, 7] = 0.5, -0.5  # a real row whose values sum to zero
    features[1, 0, 0] = 0.0  # a real row whose first value is zero
    got, mask = model.video_inputs(features)
    expected = torch.tensor([[1 if j < n else 0 for j in range(5)] for n in lengths])
    assert got is features and torch.equal(mask, expected)


def test_frames_are_the_frame_encoders_pooled_output_per_frame():
    """Frames ``(B, T, 3, H, W)`` → each frame's pooled output, computed here one frame at a time, at ``[b, t]``;
    the mask is all ones. Catches frames and videos mixed up in the reshape, or tokens taken instead of pooled."""
    model = _model("retrieval")
    frames = _frames(2, t=3)
    features, mask = model.video_inputs(frames)
    with torch.no_grad():
        for b in range(2):
            for t in range(3):
                one = model.frame_encoder(frames[b, t][None]).pooled[0]
                torch.testing.assert_close(features[b, t], one, rtol=1e-5, atol=1e-6)
    assert features.shape == (2, 3, 32) and torch.equal(mask, torch.ones(2, 3, dtype=torch.long))


def test_the_frame_encoder_runs_without_gradient_even_if_made_trainable():
    """The frame encoder runs under ``no_grad``: a parameter set trainable by hand still gets no graph through it (the
    features have no ``grad_fn``). Catches the frozen tower run with autograd on (its activations kept for nothing)."""
    model = _model("retrieval").train()
    model.frame_encoder.requires_grad_(True)
    features, _ = model.video_inputs(_frames(1))
    assert features.grad_fn is None and not features.requires_grad


def test_the_frame_encoder_is_frozen_in_eval_mode_and_outside_the_optimiser():
    """A training step leaves every frame-encoder parameter without gradient (and trains the rest), the frame encoder
    stays in evaluation mode when the model is put in training mode, and the optimiser's groups hold exactly the
    other parameters. Catches a frame encoder run with grad, left trainable, or switched to training mode."""
    model = _model("retrieval_align").train()
    assert not any(m.training for m in model.frame_encoder.modules())
    assert model.text.training and model.vision.training
    ids, mask = _texts([6, 4, 7])
    out = model.retrieval_losses({"images": _frames(3), "input_ids": ids, "attention_mask": mask,
                                  "image_ids": torch.arange(3)})
    out["loss"].backward()
    frozen = dict(model.frame_encoder.named_parameters())
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen.values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.vision.parameters())
    in_groups = {id(p) for g in param_groups(model, lr=1e-4) for p in g["params"]}
    trainable = {id(p) for n, p in model.named_parameters() if not n.startswith("frame_encoder.")}
    assert in_groups == trainable and not in_groups & {id(p) for p in frozen.values()}


def test_a_frame_encoder_of_another_width_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError) as info:
        zoo.create_model("univl-tiny", task="retrieval", device="meta", **{"vision.feature_dim": 48})
    assert info.value.path == "model.vision.feature_dim" and "width=32" in str(info.value)


def test_what_univl_does_not_read_is_refused():
    """Images (B, 3, H, W), and frames given to a model without a frame encoder, are errors that say what it reads."""
    with pytest.raises(ValueError, match=r"clip features \(B, T, D\) or frames"):
        _model("retrieval").video_inputs(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="has no frame_encoder"):
        _model(None).video_inputs(_frames(1))


def test_the_pixel_grid_is_each_cells_mean_colour_channel_major():
    """One white 4 x 4 block in cell (row 1, column 2) of a 16 x 16 grid over a 64 px frame, red channel only: the
    pooled vector is 1 at index ``0·256 + 1·16 + 2`` and 0 elsewhere; a block over half a cell gives 0.5. Catches a
    spatial-major flatten or a max pool."""
    encoder = UniVLPixelGrid(grid=16, image_size=64)
    image = torch.zeros(1, 3, 64, 64)
    image[0, 0, 4:8, 8:12] = 1.0
    image[0, 2, 60:64, 0:2] = 1.0  # blue, half of cell (15, 0)
    pooled = encoder(image).pooled[0]
    expected = torch.zeros(768)
    expected[0 * 256 + 1 * 16 + 2] = 1.0
    expected[2 * 256 + 15 * 16 + 0] = 0.5
    assert encoder.width == 768 and torch.equal(pooled, expected)


# ---------------------------------------------------------------------------------------------------------------------
# retrieval
# ---------------------------------------------------------------------------------------------------------------------
def test_ft_joint_scores_equal_the_float64_mean_pooled_cosine_over_the_set():
    """5 videos × 7 texts scored 2 at a time equal the similarity recomputed here: each video and text encoded alone,
    the mean of the frame states, the mean of the token states without CLS and padding, in float64, L2-normalised.
    Catches CLS counted, padding pooled, a transposed pair of matrices, or chunks mixed up."""
    model = _model("retrieval")
    frames = _frames(5)
    ids, mask = _texts([5, 9, 3, 7, 6, 4, 8])
    with torch.no_grad():
        i2t, t2i = model.retrieval_scores(frames, ids, mask, batch_size=2)
        videos = []
        for v in range(5):
            features, vmask = model.video_inputs(frames[v:v + 1])
            states = model.encode_video(features, vmask).tokens[0].double()
            videos.append(F.normalize(states.mean(0), dim=0))
        texts = []
        for t in range(7):
            n = int(mask[t].sum())
            states = model.encode_text(ids[t:t + 1, :n], mask[t:t + 1, :n]).tokens[0].double()
            texts.append(F.normalize(states[1:n].mean(0), dim=0))
    expected = torch.stack(texts) @ torch.stack(videos).t()
    assert t2i.shape == (7, 5) and i2t.shape == (5, 7)
    torch.testing.assert_close(t2i.double(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(i2t, t2i.t())


def test_ft_align_scores_equal_align_pair_scores_pair_by_pair():
    """Every (text, video) pair of the evaluation matrix equals ``align_pair_scores`` of that pair alone, its text
    padded by hand to ``max_words`` (the official padding); the training matrix of a batch equals the evaluation
    matrix of the same videos and texts. Catches a pair fused with the wrong partner, a k-limited re-ranking, and
    training and evaluation that place the frames at different cross-encoder positions."""
    model = _model("retrieval_align")
    frames = _frames(3)
    ids, mask = _texts([5, 9, 4])
    with torch.no_grad():
        i2t, t2i = model.retrieval_scores(frames, ids, mask, k=1, batch_size=4)
        pids, pmask = _pad_to(ids, mask, model.max_words)
        features, vmask = model.video_inputs(frames)
        video = model.encode_video(features, vmask)
        text = model.encode_text(pids, pmask).tokens
        for t in range(3):
            for v in range(3):
                pair = model.align_pair_scores(text[t:t + 1], pmask[t:t + 1], video.tokens[v:v + 1],
                                               video.mask[v:v + 1])
                torch.testing.assert_close(t2i[t, v], pair[0], rtol=1e-5, atol=1e-6)
        trained = model.retrieval_losses({"images": frames, "input_ids": ids, "attention_mask": mask,
                                          "image_ids": torch.arange(3)})["sim"]
    torch.testing.assert_close(trained, t2i, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(i2t, t2i.t())


def test_a_texts_score_does_not_depend_on_the_longest_text_of_its_batch():
    """With texts padded to ``max_words``, a text scored beside a short text or beside a long one gets the same
    FT-Align scores (without the padding the frames would move along the cross encoder's positions)."""
    model = _model("retrieval_align")
    frames = _frames(2)
    ids, mask = _texts([5, 20])
    with torch.no_grad():
        _, alone = model.retrieval_scores(frames, ids[:1, :5], mask[:1, :5])
        _, beside = model.retrieval_scores(frames, ids, mask)
    torch.testing.assert_close(alone[0], beside[0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# captioning
# ---------------------------------------------------------------------------------------------------------------------
def test_caption_loss_is_the_decoder_nll_of_the_shifted_caption_by_hand():
    """The loss equals the mean over real caption tokens of ``-log softmax(logits[b, j])[ids[b, j + 1]]`` written out
    in float64, where the logits are ``decoder_logits`` with the text encoder reading ``[CLS] [SEP]`` (padded by hand
    to ``max_words``) and the decoder ``[CLS] caption``. Catches an unshifted target, padding counted as a target, and
    the caption leaking into the text encoder's input."""
    model = _model("captioning")
    frames = _frames(3)
    ids, mask = _texts([7, 4, 9])
    with torch.no_grad():
        out = model.caption_loss({"images": frames, "input_ids": ids, "attention_mask": mask})
        empty, empty_mask = _pad_to(torch.tensor([[101, 102]] * 3), torch.ones(3, 2, dtype=torch.long),
                                    model.max_words)
        text = model.encode_text(empty, empty_mask).tokens
        features, vmask = model.video_inputs(frames)
        video = model.encode_video(features, vmask)
        logits = model.decoder_logits(text, empty_mask, video.tokens, video.mask, ids[:, :-1], mask[:, 1:])
    torch.testing.assert_close(out["logits"], logits)
    terms = []
    for b in range(3):
        n = int(mask[b].sum())
        for j in range(n - 1):  # predict tokens 1 .. n-1 (the last one is [SEP]) from the prefix 0 .. j
            terms.append(-torch.log_softmax(logits[b, j].double(), -1)[ids[b, j + 1]])
    assert len(terms) == 6 + 3 + 8
    assert math.isclose(float(out["loss"]), float(torch.stack(terms).mean()), rel_tol=1e-5)


def test_one_beam_is_greedy_argmax_decoding_by_hand():
    """``num_beams=1`` gives, per video, the tokens of a greedy loop written here: the decoder over the cross encoder
    of ``[CLS] [SEP]`` and the video, argmax of the last position, stop at ``[SEP]`` (cut) or after max_length."""
    model = _model("captioning")
    frames = _frames(3)
    sep = 102
    # make [SEP] the argmax somewhere in the loop for some videos: the output bias raised for it (tied table kept)
    with torch.no_grad():
        model.decoder.classifier.cls.predictions.bias[sep] += 1.5
        got = model.generate_caption_ids(frames, num_beams=1, max_length=6)
        empty, empty_mask = _pad_to(torch.tensor([[101, 102]] * 3), torch.ones(3, 2, dtype=torch.long),
                                    model.max_words)
        features, vmask = model.video_inputs(frames)
        video = model.encode_video(features, vmask)
        fused = model.cross(model.encode_text(empty, empty_mask).tokens, empty_mask, video.tokens, video.mask)
        expected = []
        for b in range(3):
            seq = [101]
            for _ in range(6):
                prefix = torch.tensor([seq])
                logits = model.decoder(prefix, torch.ones_like(prefix), fused.tokens[b:b + 1], fused.mask[b:b + 1])
                token = int(logits[0, -1].argmax())
                if token == sep:
                    break
                seq.append(token)
            expected.append(seq[1:])
    assert got == expected
    assert any(len(s) == 6 for s in expected) and any(0 < len(s) < 6 for s in expected)  # both endings exercised


def _markov_step(table: dict[int, list[float]]):
    """A step function whose next-token log probabilities depend on the last token only."""
    def step(prefix: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.tensor([table[int(p[-1])] for p in prefix]))
    return step


def test_beam_search_sums_log_probabilities_and_stops_when_the_best_beam_ends():
    """Tokens 0 = [CLS], 1 = [SEP], 2 = a, 3 = b. From [CLS]: a 0.6, b 0.4; after a: [SEP] 0.3, a 0.4, b 0.3; after b:
    [SEP] 0.9. Greedy takes "a a ...", two beams find "b [SEP]" (0.4 · 0.9 = 0.36 > 0.6 · 0.4 = 0.24): by the sum of
    log probabilities with no length penalty the best beam ends at step 2 and the search stops there (a shorter
    hypothesis is not favoured either: "a a [SEP]" 0.072 loses to it)."""
    table = {0: [1e-9, 1e-9, 0.6, 0.4], 2: [1e-9, 0.3, 0.4, 0.3], 3: [0.05, 0.9, 0.025, 0.025],
             1: [0.25, 0.25, 0.25, 0.25]}
    calls = []

    def step(prefix, rows):
        calls.append(prefix.shape[1])
        return _markov_step(table)(prefix, rows)

    assert beam_search(step, 1, num_beams=2, max_length=10, bos=0, eos=1) == [[3]]
    assert calls == [1, 2]  # stopped once the best beam ended with [SEP]
    assert beam_search(_markov_step(table), 1, num_beams=1, max_length=4, bos=0, eos=1) == [[2, 2, 2, 2]]
    # min_length (not official): [SEP] refused before 2 tokens: the beams "a a" 0.24 and "a b" 0.18, then
    # "a b [SEP]" 0.162 beats "a a a" 0.096 and "a a [SEP]" 0.072
    assert beam_search(_markov_step(table), 1, num_beams=2, max_length=10, bos=0, eos=1, min_length=2) == [[2, 3]]


def test_a_lower_beam_that_ends_does_not_stop_the_search():
    """Official ``Beam.advance``: an instance is done when its BEST hypothesis ends with [SEP]. After a: a 0.5, b 0.4,
    [SEP] 0.1; after b: [SEP] 0.625. Step 2 keeps "a a" 0.30 and "b [SEP]" 0.25: the search goes on (stopping on any
    ended beam would return "a a") and after 3 tokens returns "a a a" 0.15."""
    table = {0: [1e-9, 1e-9, 0.6, 0.4], 2: [1e-9, 0.1, 0.5, 0.4], 3: [1e-9, 0.625, 0.2, 0.175],
             1: [0.25, 0.25, 0.25, 0.25]}
    assert beam_search(_markov_step(table), 1, num_beams=2, max_length=3, bos=0, eos=1) == [[2, 2, 2]]
    # batched: instances stop on their own (this one after 2 tokens) and keep their hypotheses
    two = {**table, 0: [1e-9, 1e-9, 0.6, 0.4]}

    def step(prefix, rows):
        out = _markov_step(two)(prefix, rows)
        out[rows == 1, 1] = torch.where(prefix[rows == 1, -1] == 3, 0.0, out[rows == 1, 1])  # b → [SEP] surely
        out[(rows == 1) & (prefix[:, -1] == 0), 3] = 0.0  # instance 1 starts with b surely
        return out

    assert beam_search(step, 2, num_beams=2, max_length=3, bos=0, eos=1) == [[2, 2, 2], [3]]


# ---------------------------------------------------------------------------------------------------------------------
# video QA
# ---------------------------------------------------------------------------------------------------------------------
def test_vqa_loss_is_the_classifier_loss_on_the_pooled_cross_state():
    """Soft targets: the binary cross-entropy of the head's MLP on the cross encoder's pooled state (BERT pooler over
    [question ; video], question padded by hand to max_words), summed over answers and averaged over questions, in
    float64; class indices: the cross-entropy. ``vqa_predict`` answers the argmax class by name. Catches the CLS
    state read instead of the pooler, a mean over answers, a question not fused with its own video."""
    model = _model("vqa")
    frames = _frames(3)
    ids, mask = _texts([5, 8, 6])
    g = torch.Generator().manual_seed(3)
    targets = (torch.randint(0, 4, (3, 35), generator=g) * 0.3).clamp(max=1.0)
    with torch.no_grad():
        out = model.vqa_loss({"images": frames, "question_ids": ids, "question_mask": mask, "targets": targets})
        hard = model.vqa_loss({"images": frames, "question_ids": ids, "question_mask": mask,
                               "targets": torch.tensor([3, 0, 34])})
        pids, pmask = _pad_to(ids, mask, model.max_words)
        features, vmask = model.video_inputs(frames)
        video = model.encode_video(features, vmask)
        cross = model.fusion(model.encode_text(pids, pmask).tokens, pmask, video.tokens, video.mask)
        pooled = torch.tanh(model.fusion.pooler.dense(cross.tokens[:, 0]))
        logits = model.vqa.mlp(pooled).double()
        pred = model.vqa_predict(frames, ids, mask, answers=[f"answer {i}" for i in range(35)])
    x, y = logits, targets.double()
    bce = -(y * torch.log(torch.sigmoid(x)) + (1 - y) * torch.log(1 - torch.sigmoid(x))).sum() / 3
    assert math.isclose(float(out["loss"]), float(bce), rel_tol=1e-5)
    ce = -torch.log_softmax(x, -1)[torch.arange(3), torch.tensor([3, 0, 34])].mean()
    assert math.isclose(float(hard["loss"]), float(ce), rel_tol=1e-5)
    best = logits.argmax(-1)
    assert torch.equal(pred["index"], best) and pred["answer"] == [f"answer {i}" for i in best.tolist()]


# ---------------------------------------------------------------------------------------------------------------------
# what each variant supports
# ---------------------------------------------------------------------------------------------------------------------
SUPPORTED = {None: ["retrieval"], "retrieval": ["retrieval"], "retrieval_align": ["retrieval"],
             "captioning": ["captioning", "retrieval"], "vqa": ["retrieval", "vqa"],
             "pretrain": ["captioning", "retrieval"]}


@pytest.mark.parametrize("name", ["univl-tiny", "univl-base"])
@pytest.mark.parametrize("variant", list(SUPPORTED), ids=[v or "base" for v in SUPPORTED])
def test_each_variant_supports_exactly_the_tasks_its_parts_serve(name, variant):
    """Retrieval is every variant's (FT-Joint; FT-Align with a cross encoder); captioning needs the cross encoder and
    the decoder; video QA the cross encoder and the classifier. The framework's pre-training task is not UniVL's
    (its objectives need the stage II masking: :meth:`UniVL.pretrain_loss`)."""
    model = zoo.create_model(name, task=variant, device="meta")
    assert supported_tasks(model) == SUPPORTED[variant]
    assert model.task_heads == {"retrieval": (), "captioning": ("fusion", "decoder"), "vqa": ("fusion", "vqa")}


def test_a_data_tokenizer_sizes_the_word_table_and_every_part_tied_to_it():
    """``text.tokenizer: data`` sets the BERT config's vocabulary rows and pad id, and the rows of the decoder (and the
    MLM head) whose tables are tied to that word table (a decoder left at 30,522 rows would not tie: a ConfigError at
    build), only where the variant builds them."""
    from zoo.factory import resolve_config
    from zoo.models.univl import UniVL

    facts = {"rows": 384, "pad": 1, "bos": 0, "eos": 2}
    captioning = UniVL.tokenizer_settings(resolve_config("univl-tiny", "captioning")["model"], facts)
    assert captioning == {"text.config.vocab_size": 384, "text.config.pad_token_id": 1, "decoder.vocab_size": 384}
    assert UniVL.tokenizer_settings(resolve_config("univl-tiny", "vqa")["model"], facts) == {
        "text.config.vocab_size": 384, "text.config.pad_token_id": 1}
    assert UniVL.tokenizer_settings(resolve_config("univl-tiny", "pretrain")["model"], facts)["mlm.vocab_size"] == 384
    model = zoo.create_model("univl-tiny", task="captioning", device="meta",
                             **{"text.config.vocab_size": 384, "decoder.vocab_size": 384})
    assert model.decoder.embeddings.word_embeddings.weight is model.text.get_input_embeddings().weight


def test_mmzoo_train_reads_official_features_end_to_end(tmp_path):
    """The feature path through ``mmzoo train``'s own function: shapes-video records, a features pickle in the official
    layout ``{video_id: (T, D)}`` and univl-tiny without a frame encoder (no image preprocessing to ask for, no image
    side; random rows per clip). The run trains, evaluates every test clip against every caption and exports. Catches the data module asking a feature model for
    its image preprocessing (the error this path raised) or decoding the videos instead of reading the rows."""
    import json
    import pickle

    import numpy as np

    from zoo.data.shapes_video import generate_shapes_video
    from zoo.train.run import load_task_config, train

    root = generate_shapes_video(tmp_path / "clips", num_train=12, num_val=6, num_test=6)
    rng = np.random.default_rng(0)
    feats = {}
    for split in ("train", "val", "test"):
        for rec in json.loads((root / f"video_retrieval_{split}.json").read_text()):
            stem = rec["video"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
            rows = feats.setdefault(stem, rng.normal(size=(5, 32)).astype("float32"))
            if "video_id" in rec:
                feats[str(rec["video_id"])] = rows
    with open(tmp_path / "feats.pickle", "wb") as fh:
        pickle.dump(feats, fh)
    for path in root.glob("videos/*/*.mp4"):
        path.unlink()  # the features replace the videos: nothing may decode them
    cfg = load_task_config("retrieval-univl-video-shapes", [
        f"data.root={root}", f"data.video_features={tmp_path / 'feats.pickle'}", "data.max_frames=8",
        "data.batch_size=8", "data.eval_batch_size=8", "trainer.max_epochs=1", f"train.output_dir={tmp_path / 'runs'}",
        "trainer.enable_progress_bar=false"])
    cfg["model"]["overrides"] = {"frame_encoder": None, "text.tokenizer": "data"}
    results = train(cfg)
    assert set(results["test"]) >= {"img_r1", "img_r10", "img_mdr", "img_mnr", "txt_r1", "r_mean"}
    assert results["test"]["img_r10"] == 100.0  # 6 test clips: every caption's clip within the top 10
    export = tmp_path / "runs" / "retrieval-univl-video-shapes" / "export"
    assert json.loads((export / "config.json").read_text())["model"].get("frame_encoder") is None


def test_a_transcript_is_the_text_encoders_input_cls_tokens_sep():
    """With ``transcripts`` the caption loss and beam search read ``[CLS] tokens [SEP]`` of each transcript (tokens cut
    to ``max_words - 1`` with the [CLS], the official YouCookII caption loader) instead of ``[CLS] [SEP]``, padded to
    ``max_words``; an empty transcript is the empty text. Checked against the loss computed from inputs built here
    from the tokenizer's ids, and a wrong count of transcripts is refused. Catches transcripts ignored, a missing
    [SEP], or the cut at the wrong length."""
    model = _model("captioning")
    tok = model.tokenizer()
    frames = _frames(2)
    ids, mask = _texts([5, 6])
    long = " ".join(["cut the onion and fry it"] * 10)
    transcripts = ["add salt to the pan", long]
    with torch.no_grad():
        got = model.caption_loss({"images": frames, "input_ids": ids, "attention_mask": mask,
                                  "transcripts": transcripts})
        plain = model.caption_loss({"images": frames, "input_ids": ids, "attention_mask": mask})
        rows = [[101] + tok.encode(transcripts[0], add_special_tokens=False) + [102],
                ([101] + tok.encode(long, add_special_tokens=False))[: model.max_words - 1] + [102]]
        assert len(rows[1]) == model.max_words and len(rows[0]) < 10
        text = torch.zeros(2, model.max_words, dtype=torch.long)
        text_mask = torch.zeros_like(text)
        for b, row in enumerate(rows):
            text[b, : len(row)], text_mask[b, : len(row)] = torch.tensor(row), 1
        features, vmask = model.video_inputs(frames)
        video = model.encode_video(features, vmask)
        logits = model.decoder_logits(model.encode_text(text, text_mask).tokens, text_mask, video.tokens, video.mask,
                                      ids[:, :-1], mask[:, 1:])
        torch.testing.assert_close(got["logits"], logits)
        assert (got["logits"] - plain["logits"]).abs().max() > 1e-3
        empty = model.caption_loss({"images": frames, "input_ids": ids, "attention_mask": mask,
                                    "transcripts": ["", ""]})
        torch.testing.assert_close(empty["logits"], plain["logits"])
        assert model.generate_caption_ids(frames, num_beams=2, max_length=5, transcripts=["", ""]) == \
            model.generate_caption_ids(frames, num_beams=2, max_length=5)
    with pytest.raises(ValueError, match="1 transcripts for 2 videos"):
        model.generate_caption_ids(frames, transcripts=["one"])


def test_the_captioning_task_passes_transcripts_to_a_model_that_reads_them():
    """Evaluation batches with ``transcripts``: the captioning task hands them to UniVL's ``generate_captions`` (the
    captions equal a direct call with them, and differ from the call without, on weights where the text input
    matters) and warns once for a model that reads none (X²-VLM), whose captions it writes from the images."""
    from types import SimpleNamespace

    from zoo.tasks.captioning import CaptioningTask, reads_transcripts

    model = _model("captioning")
    frames = _frames(2)
    task = CaptioningTask()
    module = SimpleNamespace(model=model, evaluation={"num_beams": 1, "max_length": 6})
    batch = {"images": frames, "image_id": [0, 1], "captions": [["a"], ["b"]],
             "transcripts": ["add salt to the pan", "fry the onion"]}
    with torch.no_grad():
        model.fusion.apply(lambda m: m.weight.data.mul_(3.0) if isinstance(m, torch.nn.Linear) else None)
        got = task.predict_batch(module, batch)["prediction"]
        direct = model.generate_captions(frames, num_beams=1, max_length=6, transcripts=batch["transcripts"])
        without = model.generate_captions(frames, num_beams=1, max_length=6)
    assert got == direct and got != without
    image_model = zoo.create_model("x2vlm-tiny", task="captioning").eval()
    assert reads_transcripts(model) and not reads_transcripts(image_model)
    images = {**batch, "images": torch.randn(2, 3, 64, 64)}
    with pytest.warns(UserWarning, match="transcripts, which X2VLM does not read"):
        task.predict_batch(SimpleNamespace(model=image_model, evaluation={"num_beams": 1, "max_length": 4}), images)
