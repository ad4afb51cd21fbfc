"""Decoding with a key/value cache (:mod:`zoo.modules.kv_cache`) gives what rerunning the whole prefix gives: X²-VLM
captioning (:func:`zoo.generation.cached_mlm_step_fn`), DaVinci (captions, open-ended answers, image codes) and UniVL's
caption decoder, on the tiny models; and a cache that follows the wrong beams is caught by comparing every step's
logits with a rerun of the same prefixes."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

import zoo
from zoo.generation import CachedStep, beam_search, cached_mlm_step_fn, mlm_step_fn
from zoo.models.univl.model import beam_search as univl_beam_search
from zoo.modules.kv_cache import KVCache
from zoo.modules.text.split_bert import SplitBert

CLS, SEP, MASK = 101, 102, 103
PROMPT = [CLS, 1037, 3861, 1997]  # [CLS] a picture of


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny shapes: one thread is fastest, and keeps the file fast on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _assert_same_search(cached, rerun) -> None:
    assert cached.sequences == rerun.sequences
    for a, b in zip(cached.scores, rerun.scores):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5), (cached.scores, rerun.scores)


class Checked:
    """A cached step that also runs the rerun step on every call's prefixes and records the largest logit difference;
    ``corrupt`` (a test of the test) changes the origins the search passes to ``reorder``."""

    def __init__(self, cached: CachedStep, rerun, corrupt=None):
        self.cached, self.rerun, self.corrupt = cached, rerun, corrupt
        self.diffs: list[float] = []
        self.reorders: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def __call__(self, ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        got = self.cached(ids, rows)
        self.diffs.append(float((got.float() - self.rerun(ids, rows).float()).abs().max()))
        return got

    def reorder(self, origin: torch.Tensor, examples: torch.Tensor | None = None) -> None:
        self.reorders.append((origin.clone(), None if examples is None else examples.clone()))
        self.cached.reorder(origin if self.corrupt is None else self.corrupt(origin), examples)


def _beam_zero_for_all(k: int):
    """Every row of an example continues the row beam 0 came from: stays within the example, wrong once beams differ."""
    return lambda origin: origin.view(-1, k)[:, :1].expand(-1, k).reshape(-1)


def _permuted(reorders) -> bool:
    """After the first expansion, some row continued another row than its own (beams really reordered)."""
    return any(not torch.equal(o, torch.arange(o.numel())) for o, _ in reorders[1:])


@contextlib.contextmanager
def _bias(param: torch.Tensor, index: int, value: float):
    """Raise one output bias entry inside the block (the end token, so that some beams end early)."""
    old = float(param[index].detach())
    with torch.no_grad():
        param[index] += value
    try:
        yield
    finally:
        with torch.no_grad():
            param[index] = old


# ---------------------------------------------------------------------------------------------------------------------
# the cache itself
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("embeddings", ["bert", "xlm-roberta"])
def test_split_bert_in_chunks_with_a_cache_equals_one_causal_pass(embeddings):
    """Positions fed 3 + 1 + 2 at a time (and a trailing extra position not kept) give the states of one causal pass
    over the whole sequence, with the image keys/values projected once per example and shared by 2 rows each.
    Catches position ids restarting at 0, a cache that keeps the dropped position, and rows reading another
    example's image."""
    torch.manual_seed(0)
    text = SplitBert(num_layers=3, fusion_start=1, hidden_size=32, num_heads=4, intermediate_size=64, vocab_size=50,
                     max_position_embeddings=40, encoder_width=16, embeddings=embeddings, hidden_dropout=0.0,
                     attention_dropout=0.0).eval()
    ids = torch.randint(3, 50, (4, 6))
    vision = torch.randn(2, 5, 16)
    vision_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    rows = torch.tensor([0, 0, 1, 1])
    with torch.no_grad():
        full = text(ids, None, mode="full", vision_tokens=vision[rows], vision_mask=vision_mask[rows],
                    causal=True).tokens
        cache = text.new_cache()
        cache.group = 2
        parts = []
        for a, b in ((0, 3), (3, 4), (4, 6)):
            cache.keep = None
            parts.append(text(ids[:, a:b], None, mode="full", vision_tokens=vision, vision_mask=vision_mask,
                              causal=True, cache=cache).tokens)
            # a trailing position that is run, seen by nobody later, and not kept
            if b < 6:
                cache.keep = 0
                junk = text(torch.full_like(ids[:, :1], 7), None, mode="full", vision_tokens=vision,
                            vision_mask=vision_mask, causal=True, cache=cache).tokens
                assert junk.shape == (4, 1, 32) and cache.length == b
    assert cache.length == 6
    assert (torch.cat(parts, 1) - full).abs().max().item() < 1e-5


def test_reorder_gathers_rows_and_refuses_to_cross_examples():
    cache = KVCache(1)
    k = torch.arange(2.0)[:, None, None, None].expand(2, 1, 3, 1).clone()
    cache.extend(0, k, -k)
    cache.reorder(torch.tensor([0, 0, 0, 1, 1, 1]))  # one row per example → 3 beams each
    assert cache.group == 3 and cache.self_kv[0][0][:, 0, 0, 0].tolist() == [0, 0, 0, 1, 1, 1]
    cache.reorder(torch.tensor([2, 0, 0, 5, 5, 3]))
    assert cache.self_kv[0][0].shape == (6, 1, 3, 1)
    with pytest.raises(ValueError, match="another example"):
        cache.reorder(torch.tensor([0, 1, 2, 0, 4, 5]))  # row 3 (example 1) would continue row 0 (example 0)
    cache.reorder(torch.tensor([3, 4, 5]), torch.tensor([1]))  # example 0 ended: only example 1's rows stay
    assert cache.group == 3 and cache.rows == 3
    with pytest.raises(ValueError, match="rows"):
        cache.extend(0, torch.zeros(4, 1, 1, 1), torch.zeros(4, 1, 1, 1))


# ---------------------------------------------------------------------------------------------------------------------
# X²-VLM captioning
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def x2vlm():
    torch.manual_seed(0)
    model = zoo.create_model("x2vlm-tiny", task="captioning").eval()
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        image = model.encode_image(images)
    return model, image.tokens, image.mask


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize(("eos_bias", "min_length", "ngram_size"), [(0.0, 10, 3), (2.0, 2, 2)])
def test_x2vlm_cached_captions_equal_the_rerun(x2vlm, num_beams, eos_bias, min_length, ngram_size):
    """Greedy and 3 beams, 3 images, n-gram blocking on: the same token ids and scores with and without the cache —
    10 tokens each (min_length = max_length), or with the end token raised so that beams end at different steps."""
    model, tokens, mask = x2vlm
    with _bias(model.caption.cls.predictions.bias, SEP, eos_bias), torch.no_grad():
        runs = [model.caption.generate(model.text, tokens, mask, PROMPT, num_beams=num_beams, max_length=10,
                                       min_length=min_length, ngram_size=ngram_size, use_cache=use_cache)
                for use_cache in (True, False)]
    _assert_same_search(*runs)
    if eos_bias:
        assert len({len(s) for s in runs[0].sequences}) > 1  # captions of different lengths: beams ended early
    else:
        assert all(len(s) == 10 for s in runs[0].sequences)


def test_x2vlm_every_cached_step_equals_the_rerun_and_a_wrong_reorder_is_caught(x2vlm):
    """Each step's logits of the cached step equal the rerun's on the same prefixes (beams really reordered); the
    same check fails when the cache follows beam 0 instead of each beam's origin."""
    model, tokens, mask = x2vlm
    prompt = torch.tensor(PROMPT).expand(3, -1)

    def search(corrupt=None):
        step = Checked(cached_mlm_step_fn(model.text, model.caption, tokens, mask, mask_token_id=MASK),
                       mlm_step_fn(model.text, model.caption, tokens, mask, mask_token_id=MASK), corrupt)
        out = beam_search(step, prompt, eos_token_id=SEP, num_beams=3, max_length=8, min_length=8, ngram_size=3)
        return step, out

    with torch.no_grad():
        good, _ = search()
        bad, _ = search(_beam_zero_for_all(3))
    assert len(good.diffs) == 8 and max(good.diffs) < 1e-4, good.diffs
    assert _permuted(good.reorders)
    assert max(bad.diffs) > 1e-3, bad.diffs


# ---------------------------------------------------------------------------------------------------------------------
# DaVinci
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def davinci():
    torch.manual_seed(0)
    model = zoo.create_model("davinci-tiny", task="captioning").eval()
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    return model, images


@pytest.mark.parametrize("num_beams", [1, 3])
def test_davinci_cached_captions_equal_the_rerun(davinci, num_beams):
    """The model's caption search (no n-gram blocking, as the official) and the same decoder step under the s2s-ft
    search with n-gram blocking on, end token raised: same ids and scores with and without the cache."""
    model, images = davinci
    with _bias(model.text_decoder.cls.predictions.bias, SEP, 1.8), torch.no_grad():
        plain = [model.caption_beam_search(images, num_beams=num_beams, max_length=14, min_length=6,
                                           use_cache=use_cache) for use_cache in (True, False)]
        ctx, ctx_mask = model._empty_context(images.shape[0], images.device)
        states, smask = model.encode(images, ctx, ctx_mask)
        prompt = torch.tensor(PROMPT).expand(3, -1)
        blocked = [beam_search(model._step_fn(states, smask, text_only=True, use_cache=use_cache), prompt,
                               eos_token_id=SEP, num_beams=num_beams, max_length=10, min_length=2, ngram_size=2)
                   for use_cache in (True, False)]
    _assert_same_search(*plain)
    _assert_same_search(*blocked)
    assert any(len(s) < 10 for s in blocked[0].sequences)


def test_davinci_every_cached_step_equals_the_rerun_and_a_wrong_reorder_is_caught(davinci):
    model, images = davinci
    with torch.no_grad():
        ctx, ctx_mask = model._empty_context(images.shape[0], images.device)
        states, smask = model.encode(images, ctx, ctx_mask)
        prompt = torch.tensor(PROMPT).expand(3, -1)
        steps = []
        for corrupt in (None, _beam_zero_for_all(3)):
            step = Checked(model._step_fn(states, smask, text_only=True, use_cache=True),
                           model._step_fn(states, smask, text_only=True, use_cache=False), corrupt)
            beam_search(step, prompt, eos_token_id=SEP, num_beams=3, max_length=8, min_length=8, ngram_size=3)
            steps.append(step)
    assert max(steps[0].diffs) < 1e-4 and _permuted(steps[0].reorders), steps[0].diffs
    assert max(steps[1].diffs) > 1e-3, steps[1].diffs


def test_davinci_cached_answers_and_image_codes_equal_the_rerun(davinci):
    """Open-ended answers (2 beams) and sampled image codes (same generator seed): equal with and without the cache."""
    model, images = davinci
    from zoo.models.davinci import official_tokenize

    ids, mask = official_tokenize(model.tokenizer(), ["what is left of the circle", "how many squares"])
    with torch.no_grad():
        answers = [model.vqa_generate(images[:2], ids, mask, max_length=6, num_beams=2, use_cache=use_cache)
                   for use_cache in (True, False)]
        codes = [model.generate_codes(ids, mask, (3, 4), top_k=50, top_p=0.9, use_cache=use_cache,
                                      generator=torch.Generator().manual_seed(3)) for use_cache in (True, False)]
    assert answers[0] == answers[1]
    assert torch.equal(codes[0], codes[1])


# ---------------------------------------------------------------------------------------------------------------------
# UniVL
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def univl():
    torch.manual_seed(0)
    model = zoo.create_model("univl-tiny", task="captioning").eval()
    frames = torch.randn(3, 3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return model, frames


@pytest.mark.parametrize("num_beams", [1, 3])
def test_univl_cached_captions_equal_the_rerun(univl, num_beams):
    """UniVL's own search (summed log probabilities, an instance stops when its best beam ends): the same ids with
    and without the cache, with ``[SEP]`` raised so that videos stop at different steps (the cache then drops their
    rows and their encoder keys/values)."""
    model, frames = univl
    with _bias(model.decoder.classifier.cls.predictions.bias, SEP, 1.0), torch.no_grad():
        runs = [model.generate_caption_ids(frames, num_beams=num_beams, max_length=10, min_length=1,
                                           use_cache=use_cache) for use_cache in (True, False)]
    assert runs[0] == runs[1]
    assert len({len(r) for r in runs[0]}) > 1


def test_univl_every_cached_step_equals_the_rerun_and_a_wrong_reorder_is_caught(univl):
    model, frames = univl
    with _bias(model.decoder.classifier.cls.predictions.bias, SEP, 1.0), torch.no_grad():
        context = model.caption_context(frames)
        steps = []
        for corrupt in (None, _beam_zero_for_all(3)):
            step = Checked(model.caption_step(context, use_cache=True), model.caption_step(context, use_cache=False),
                           corrupt)
            univl_beam_search(step, 3, 3, 10, CLS, SEP, min_length=1)
            steps.append(step)
    good, bad = steps
    assert max(good.diffs) < 1e-4, good.diffs
    assert any(ex.numel() < 3 for _, ex in good.reorders)  # some videos stopped early: their rows were dropped
    assert max(bad.diffs) > 1e-3, bad.diffs
