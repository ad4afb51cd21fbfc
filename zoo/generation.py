"""Beam search over a step function, and X²-VLM's "MLM as generation" captioning step.

:func:`beam_search` is generic: it only needs ``step_fn(input_ids, example_index) -> (N, vocab)`` logits of the next
token for each row of ``input_ids`` (prompt + tokens chosen so far), so any family that predicts one token from a
prefix (X²-VLM's MLM head reading a trailing ``[MASK]``, DaVinci's decoder, a causal LM) can reuse it.

Semantics follow the s2s-ft beam search of the official X²-VLM ``XVLMForMLMCaptioning.beam_search`` (itself from
microsoft/unilm s2s-ft), so that the same logits give the same captions:

- step ``t`` (1-based) scores ``log_softmax(logits)``; forbidden n-gram continuations get ``-10000`` added; while
  ``t <= min_length`` the EOS score is *set* to ``-10000``;
- each beam proposes its top ``min(K, vocab)`` tokens; a beam whose last token is EOS is finished, and its
  continuations get ``-10000`` added (soft, not removed); the ``K`` best cumulative scores survive;
- n-gram blocking: a token that would repeat an ``ngram_size``-gram of the beam's generated tokens is forbidden at the
  next step;
- at the end, for each example, the *last frame* is the first step where every beam ends in EOS (else the final
  step); the candidates are the beams ending in EOS at any step up to it and every beam of the last frame; each score is
  divided by ``((5 + t) / 6) ** length_penalty`` when ``length_penalty > 0``; the best candidate is traced back.

Hand-written rather than reused (transformers' beam search keeps finished hypotheses in a separate pool, with another
length normalisation and stopping rule, which changes X²-VLM's captions). Differences from the
official code, on purpose: the search stops once every beam of every example ends in EOS (the official loop runs on,
but those steps cannot change the result); ``max_length`` is the number of generated tokens (EOS included) — the
official ``generate`` computes ``input_ids.size(0) + max_length``, the *batch size* plus max_length, as the total
length, an upstream slip that only matters for captions that never stop; ``num_beams`` may exceed the vocabulary
(the extra beams start at ``-inf`` and never win; the official code would fail in ``topk``). Prompts are not padded:
all prompts of a batch have the same length (X²-VLM uses one prompt).

Key/value cache. A step function may carry a cache of the earlier positions (:class:`CachedStep`, with a
:class:`zoo.modules.kv_cache.KVCache`): then it runs only the new positions each step, and the search tells it which
rows survive — after choosing the beams of a step, :func:`beam_search` calls ``step_fn.reorder(origin)`` (when the
step has that method), ``origin[i]`` being the row that next step's row ``i`` continues (the first step expands one
row per example to ``num_beams`` rows, later steps gather the chosen beams within each example). A step without
``reorder`` gets the whole prefix every step (the rerun). Both give the same search up to float rounding: the earlier
positions' states were computed under a causal mask, so they equal what a causal rerun of the prefix computes. For
X²-VLM this is also what the official generation does: it keeps every layer's states of the earlier tokens
(``history_states``, s2s-ft) and feeds only the new token and the next ``[MASK]``. :func:`mlm_step_fn` is the rerun,
:func:`cached_mlm_step_fn` the cached step (per layer the keys/values of the fixed tokens; the image tokens' cross-
attention keys/values projected once per example and shared by its beams); :func:`generate_mlm_captions` uses the
cached one unless ``use_cache=False``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zoo.modules.kv_cache import KVCache

__all__ = [
    "PENALTY",
    "BeamSearchOutput",
    "CachedStep",
    "StepFn",
    "beam_search",
    "cached_mlm_step_fn",
    "generate_mlm_captions",
    "mlm_step_fn",
]

#: the additive penalty of the s2s-ft search (forbidden n-grams, early EOS, continuations of finished beams)
PENALTY = -10000.0

#: ``step_fn(input_ids (N, T), example_index (N,)) -> logits (N, vocab)``; ``example_index[i]`` is the example (row of
#: the prompt batch) that row ``i`` extends, so the step can pick that example's image tokens.
StepFn = Callable[[Tensor, Tensor], Tensor]


class CachedStep:
    """A step function that keeps a key/value cache: ``fn(input_ids, example_index)`` reads the rows' earlier
    positions from ``cache`` (``cache.length`` of them) and runs only the rest; :meth:`reorder` is what the searches
    call when beams are chosen (:func:`beam_search`; UniVL's search also passes the examples still decoded)."""

    def __init__(self, fn: StepFn, cache: KVCache):
        self.fn, self.cache = fn, cache

    def __call__(self, input_ids: Tensor, example_index: Tensor) -> Tensor:
        return self.fn(input_ids, example_index)

    def reorder(self, origin: Tensor, examples: Tensor | None = None) -> None:
        """Next call's row ``i`` continues row ``origin[i]`` (see :meth:`zoo.modules.kv_cache.KVCache.reorder`)."""
        self.cache.reorder(origin, examples)


@dataclass
class BeamSearchOutput:
    """``sequences[b]``: the generated token ids of example ``b`` (prompt excluded; ends with EOS when the search
    ended it); ``scores[b]``: its cumulative log-probability, length-normalised when ``length_penalty > 0``."""

    sequences: list[list[int]]
    scores: list[float]


def _dup_ngram_mask(generated: Tensor, n: int, vocab: int) -> Tensor | None:
    """``(N, vocab)`` bool: tokens that, appended to each row, would repeat one of its ``n``-grams (None: none)."""
    rows, t = generated.shape
    if t < n:
        return None
    tail = generated[:, t - (n - 1):]  # the last n-1 tokens
    windows = generated[:, : t - 1].unfold(1, n - 1, 1)  # (N, t-n+1, n-1): windows starting at 0 .. t-n
    match = (windows == tail[:, None, :]).all(-1)  # window i equals the tail -> token i+n-1 would repeat
    if not bool(match.any()):
        return None
    counts = torch.zeros(rows, vocab, device=generated.device)
    counts.scatter_add_(1, generated[:, n - 1:], match.float())
    return counts > 0


@torch.no_grad()
def beam_search(
    step_fn: StepFn,
    prompt_ids: Tensor,
    *,
    eos_token_id: int,
    num_beams: int = 3,
    max_length: int = 50,
    min_length: int = 5,
    length_penalty: float = 0.0,
    forbid_duplicate_ngrams: bool = True,
    ngram_size: int = 3,
) -> BeamSearchOutput:
    """s2s-ft beam search (see the module docstring); ``num_beams=1`` is greedy decoding.

    Args:
        step_fn: next-token logits for each row (:data:`StepFn`); with a ``reorder(origin)`` method (a
            :class:`CachedStep`) it is told, after each step, which row each next row continues.
        prompt_ids: ``(B, P)`` the prompt of each example (X²-VLM: ``[CLS] a picture of``); not part of the output.
        eos_token_id: the token that ends a sequence (X²-VLM: ``[SEP]``).
        num_beams: beams per example (official captioning: 3).
        max_length: at most this many tokens are generated, EOS included (official config: 50).
        min_length: EOS is suppressed for the first ``min_length`` generated tokens (official: 5).
        length_penalty: > 0 divides final scores by ``((5 + length) / 6) ** length_penalty`` (official: 0).
        forbid_duplicate_ngrams, ngram_size: n-gram blocking (official: on, 3).
    """
    if prompt_ids.dim() != 2:
        raise ValueError(f"prompt_ids must be (batch, prompt_length); got {tuple(prompt_ids.shape)}")
    if num_beams < 1 or max_length < 1 or min_length < 0:
        raise ValueError(f"need num_beams >= 1, max_length >= 1, min_length >= 0; got {num_beams}, {max_length}, "
                         f"{min_length}")
    if forbid_duplicate_ngrams and ngram_size < 2:
        raise ValueError(f"ngram_size={ngram_size}: n-gram blocking needs ngram_size >= 2")
    device = prompt_ids.device
    b, k = prompt_ids.shape[0], num_beams
    prompt_len = prompt_ids.shape[1]
    rows = torch.arange(b, device=device)
    beam_rows = rows.repeat_interleave(k)
    tokens = prompt_ids.long()  # (B, P) before the first step, (B*K, P + t) after step t
    beam_scores = torch.full((b, k), -math.inf, device=device)
    beam_scores[:, 0] = 0.0  # the other beams start dead, so the first step expands beam 0 only
    finished = torch.zeros(b, k, dtype=torch.bool, device=device)
    forbid: Tensor | None = None
    frames_ids, frames_ptrs, frames_scores = [], [], []
    reorder = getattr(step_fn, "reorder", None)
    beam_base = (rows * k)[:, None]  # row of beam 0 of each example, from the second step on

    for step in range(1, max_length + 1):
        first = step == 1
        logits = step_fn(tokens, rows if first else beam_rows)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        vocab = log_probs.shape[-1]
        if first:
            log_probs = log_probs[:, None, :].expand(b, k, vocab)
        else:
            log_probs = log_probs.view(b, k, vocab)
        if forbid is not None:
            log_probs = log_probs + forbid.view(b, k, vocab).float() * PENALTY
        if min_length and step <= min_length:
            log_probs = log_probs.clone()
            log_probs[..., eos_token_id] = PENALTY
        per_beam = min(k, vocab)
        top_scores, top_ids = log_probs.topk(per_beam, dim=-1)  # (B, K, per_beam)
        cand = top_scores + (finished.float() * PENALTY + beam_scores)[..., None]
        new_scores, flat = cand.reshape(b, k * per_beam).topk(k, dim=-1)
        ptrs = torch.div(flat, per_beam, rounding_mode="floor")
        ids = top_ids.reshape(b, k * per_beam).gather(1, flat)
        frames_ids.append(ids)
        frames_ptrs.append(ptrs)
        frames_scores.append(new_scores)

        if first:
            history = tokens[:, None, :].expand(b, k, prompt_len)
        else:
            history = tokens.view(b, k, -1).gather(1, ptrs[..., None].expand(b, k, tokens.shape[-1]))
        tokens = torch.cat([history, ids[..., None]], dim=-1).reshape(b * k, -1)
        beam_scores, finished = new_scores, ids == eos_token_id
        if bool((finished | torch.isneginf(new_scores)).all()):
            break  # every beam of every example has ended: later steps cannot change the result
        if reorder is not None and step < max_length:
            reorder(beam_rows if first else (beam_base + ptrs).reshape(-1))
        forbid = _dup_ngram_mask(tokens[:, prompt_len:], ngram_size, vocab) if forbid_duplicate_ngrams else None

    return _select(frames_ids, frames_ptrs, frames_scores, eos_token_id, length_penalty)


def _select(
    frames_ids: list[Tensor], frames_ptrs: list[Tensor], frames_scores: list[Tensor], eos: int, length_penalty: float
) -> BeamSearchOutput:
    ids = torch.stack(frames_ids).cpu()  # (T, B, K)
    ptrs = torch.stack(frames_ptrs).cpu()
    scores = torch.stack(frames_scores).cpu().double()
    t_max, b, k = ids.shape
    ended = (ids == eos) | torch.isneginf(scores)  # dead beams count as ended for the all-ended test
    all_ended = ended.all(-1)  # (T, B)
    sequences, best_scores = [], []
    for ex in range(b):
        stops = torch.nonzero(all_ended[:, ex]).flatten()
        last = int(stops[0]) if len(stops) else t_max - 1
        frame = torch.arange(last + 1)[:, None]
        cand = (ids[: last + 1, ex] == eos) | (frame == last)
        s = scores[: last + 1, ex].clone()
        if length_penalty > 0:
            s = s / ((5.0 + frame.double() + 1) / 6.0) ** length_penalty
        s = s.masked_fill(~cand, -math.inf)
        best = int(s.flatten().argmax())  # first maximum in (frame, beam) order, as the official strict ">" scan
        if math.isinf(s.flatten()[best].item()):
            sequences.append([])
            best_scores.append(-math.inf)
            continue
        f, pos = divmod(best, k)
        seq = [int(ids[f, ex, pos])]
        best_scores.append(float(s[f, pos]))
        for g in range(f, 0, -1):
            pos = int(ptrs[g, ex, pos])
            seq.append(int(ids[g - 1, ex, pos]))
        sequences.append(seq[::-1])
    return BeamSearchOutput(sequences, best_scores)


# ---------------------------------------------------------------------------------------------------------------------
# X²-VLM: MLM as generation
# ---------------------------------------------------------------------------------------------------------------------
def mlm_step_fn(
    text: nn.Module,
    head: nn.Module,
    vision_tokens: Tensor,
    vision_mask: Tensor | None = None,
    *,
    mask_token_id: int = 103,
) -> StepFn:
    """The X²-VLM step: append ``[MASK]`` at the next position, run the whole text stack (``mode="full"``, causal
    self-attention, cross-attention to the example's image tokens), and read the MLM head at the ``[MASK]``.

    Args:
        text: the split text/fusion stack (``split_bert``).
        head: the MLM head (``mlm`` / ``caption``: anything with ``logits(states)``).
        vision_tokens: ``(B, M, encoder_width)`` image tokens of each example; vision_mask: ``(B, M)`` or None.
        mask_token_id: ``[MASK]`` (103 in BERT uncased).
    """
    cache: dict[str, Tensor] = {}

    def step(input_ids: Tensor, example_index: Tensor) -> Tensor:
        if cache.get("index") is not example_index:  # beams share one index tensor from the second step on
            cache.clear()
            cache["index"] = example_index
            cache["tokens"] = vision_tokens[example_index]
            if vision_mask is not None:
                cache["mask"] = vision_mask[example_index]
        masks = torch.full_like(input_ids[:, :1], mask_token_id)
        out = text(
            torch.cat([input_ids, masks], dim=1), None, mode="full", vision_tokens=cache["tokens"],
            vision_mask=cache.get("mask"), causal=True,
        )
        return head.logits(out.tokens[:, -1])

    return step


def cached_mlm_step_fn(
    text: nn.Module,
    head: nn.Module,
    vision_tokens: Tensor,
    vision_mask: Tensor | None = None,
    *,
    mask_token_id: int = 103,
) -> CachedStep:
    """:func:`mlm_step_fn` with a key/value cache, for :func:`beam_search` (rows in the search's order: one per
    example on the first step, then ``num_beams`` per example, example-major). Same arguments; ``text`` is a
    ``split_bert`` stack (``new_cache``, ``default_position_ids``, ``forward(..., cache=)``).

    Each step runs only the positions after the cached ones — the prompt and ``[MASK]`` on the first step, then the
    token chosen at the last ``[MASK]``'s position and a new ``[MASK]`` after it — with the same position ids and the
    same causal mask as the rerun, and keeps the keys/values of every position but the trailing ``[MASK]``. The image
    tokens' cross-attention keys/values are projected on the first step, once per example.
    """
    cache = text.new_cache()

    def step(input_ids: Tensor, example_index: Tensor) -> Tensor:
        start = cache.length
        full = torch.cat([input_ids, torch.full_like(input_ids[:, :1], mask_token_id)], dim=1)
        new = full[:, start:]
        cache.keep = new.shape[1] - 1  # the [MASK]'s position gets the chosen token next step
        out = text(
            new, None, mode="full", vision_tokens=vision_tokens, vision_mask=vision_mask, causal=True,
            position_ids=text.default_position_ids(full)[:, start:], cache=cache,
        )
        return head.logits(out.tokens[:, -1])

    return CachedStep(step, cache)


def generate_mlm_captions(
    text: nn.Module,
    head: nn.Module,
    vision_tokens: Tensor,
    vision_mask: Tensor | None,
    prompt_ids: Sequence[int] | Tensor,
    *,
    mask_token_id: int = 103,
    eos_token_id: int = 102,
    num_beams: int = 3,
    max_length: int = 50,
    min_length: int = 5,
    length_penalty: float = 0.0,
    forbid_duplicate_ngrams: bool = True,
    ngram_size: int = 3,
    use_cache: bool = True,
) -> BeamSearchOutput:
    """Captions for a batch of images: beam search over :func:`cached_mlm_step_fn` (``use_cache=False``: over
    :func:`mlm_step_fn`, which reruns the prefix every step; same captions, slower).

    ``prompt_ids``: ``[CLS] + tokens of 'a picture of '`` (one list for the batch, or ``(B, P)``). The returned
    sequences exclude the prompt and stop before EOS; decode them with the tokenizer.
    """
    b = vision_tokens.shape[0]
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long, device=vision_tokens.device)
    if prompt.dim() == 1:
        prompt = prompt[None].expand(b, -1)
    was_training = text.training, head.training
    text.eval()
    head.eval()
    try:
        make_step = cached_mlm_step_fn if use_cache else mlm_step_fn
        out = beam_search(
            make_step(text, head, vision_tokens, vision_mask, mask_token_id=mask_token_id), prompt,
            eos_token_id=eos_token_id, num_beams=num_beams, max_length=max_length, min_length=min_length,
            length_penalty=length_penalty, forbid_duplicate_ngrams=forbid_duplicate_ngrams, ngram_size=ngram_size,
        )
    finally:
        text.train(was_training[0])
        head.train(was_training[1])
    out.sequences = [seq[: seq.index(eos_token_id)] if eos_token_id in seq else seq for seq in out.sequences]
    return out
