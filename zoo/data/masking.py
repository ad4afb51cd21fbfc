"""Masked-language-model inputs for X²-VLM pre-training: whole-word, span ("skipgram") masking with 80/10/10.

The rules are those of the official ``TextMaskingGenerator`` and ``ImageTextJsonDataset.preprocess``
(dataset/pretrain_dataset.py in zengyan-97/X2-VLM; pre-training configs: ``mask_prob`` 0.5, ``max_masks`` 12,
``mask_whole_word`` True, ``skipgram_prb`` 0.2, ``skipgram_size`` 3):

- The text is ``[CLS] tokens [SEP]`` without padding. The number to mask is
  ``n = min(max_masks, max(1, round(len(text) * mask_prob)))`` — the length counts [CLS] and [SEP]; Python's
  ``round`` (half to even). With ``num_source_tokens`` (a prompt after [CLS], captioning), those are excluded from
  both the count and the candidates.
- Candidates are every position after [CLS] (and the prompt), **the closing [SEP] included**: the official code lets
  it be masked. ``protect_special=True`` keeps every special token (tokenizer's ``all_special_ids``) out instead.
- Candidates are visited in random order. Each start grows, with probability ``skipgram_prb``, to a span of
  ``randint(2, skipgram_size)`` tokens, otherwise to one token; with ``mask_whole_word`` the span is then widened to
  whole words (a word is a head piece and the ``##`` pieces after it). Positions are added left to right until one
  is not a candidate. Visiting stops once at least ``n`` positions are chosen; if more than ``n`` were chosen, a
  random ``n`` of them are kept (so the last words added may end up partly masked, as in the official code).
- Each chosen position becomes [MASK] with probability 0.8, otherwise a uniformly random vocabulary id (any id,
  special ones included) with probability 0.5, otherwise keeps its token.
- ``masked_pos`` is padded with 0 and ``masked_ids`` with -100 (the official pre-training value; the loss ignores it)
  up to ``max_masks``. ``masked_weight`` (1 real, 0 padding) is added for heads that pad ``masked_ids`` with a real
  id instead (the official captioning data pads with the [CLS] id and weights; set ``pad_masked_id``).

Randomness: the same sequence of ``random.Random`` calls as the official generator, so a ``random.Random`` in the
same state gives the official output. ``rng`` may be a ``random.Random``, an int seed, a ``torch.Generator`` (one seed
is drawn from it per call) or ``None`` (the global ``random`` module, as the official data loader).

Everything here is hand-written: the official generator works on token strings one example at a time and is tied to
its data set class; this one works on ids (the ``##`` test is precomputed per vocabulary id), pads, and batches.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["WholeWordMasker"]


def select_spans(
    cand: list[int],
    n_pred: int,
    rng: Any,
    *,
    length: int,
    allowed: Callable[[int], bool],
    is_subword: Callable[[int], bool] | None = None,
    skipgram_prb: float = 0.2,
    skipgram_size: int = 3,
) -> set[int]:
    """The official ``TextMaskingGenerator`` span selection, shared by pre-training MLM and caption masking.

    ``cand`` (shuffled in place with ``rng``) is visited in order; each unchosen position starts a span of 1 token, or
    with probability ``skipgram_prb`` of 2..``skipgram_size`` tokens, widened to whole words when ``is_subword`` is
    given (left to the word's head piece, right over its ``##`` pieces); a span's tokens are added until one is not
    ``allowed`` (or beyond the last candidate). Stops once ``n_pred`` positions are chosen; may overshoot (callers
    cut the set to ``n_pred`` with their own rule).
    """
    rng.shuffle(cand)
    last = max(cand)
    chosen: set[int] = set()
    for pos in cand:
        if len(chosen) >= n_pred:
            break
        if pos in chosen:
            continue
        if skipgram_prb > 0 and skipgram_size >= 2 and rng.random() < skipgram_prb:
            lo, hi = pos, pos + rng.randint(2, skipgram_size)
        else:
            lo, hi = pos, pos + 1
        if is_subword is not None:
            while lo >= 0 and is_subword(lo):
                lo -= 1
            while hi < length and is_subword(hi):
                hi += 1
        for p in range(lo, hi):
            if 0 < p <= last and allowed(p):
                chosen.add(p)
            else:
                break
    return chosen


class WholeWordMasker:
    """Official X²-VLM MLM masking on token ids (see the module docstring).

    Args:
        vocab_size: random replacements are drawn from ``0 .. vocab_size - 1``.
        mask_token_id, cls_token_id: the [MASK] and [CLS] ids.
        subword_ids: ids of continuation pieces (WordPiece tokens starting with ``##``).
        pad_token_id: ids equal to it at the end of a row without ``attention_mask`` are padding.
        special_ids: ids never masked when ``protect_special`` is set.
    """

    def __init__(
        self,
        vocab_size: int,
        mask_token_id: int,
        cls_token_id: int,
        subword_ids: Sequence[int] = (),
        pad_token_id: int | None = None,
        special_ids: Sequence[int] = (),
        mask_prob: float = 0.5,
        max_masks: int = 12,
        skipgram_prb: float = 0.2,
        skipgram_size: int = 3,
        mask_whole_word: bool = True,
        protect_special: bool = False,
        pad_masked_id: int = -100,
    ):
        if not 0.0 <= mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
        if max_masks < 1:
            raise ValueError(f"max_masks must be at least 1, got {max_masks}")
        if not 0.0 <= skipgram_prb <= 1.0:
            raise ValueError(f"skipgram_prb must be in [0, 1], got {skipgram_prb}")
        self.vocab_size = int(vocab_size)
        self.mask_token_id, self.cls_token_id, self.pad_token_id = mask_token_id, cls_token_id, pad_token_id
        self.subword_ids = frozenset(int(i) for i in subword_ids)
        self.special_ids = frozenset(int(i) for i in special_ids)
        self.mask_prob, self.max_masks = float(mask_prob), int(max_masks)
        self.skipgram_prb, self.skipgram_size = float(skipgram_prb), int(skipgram_size)
        self.mask_whole_word, self.protect_special = bool(mask_whole_word), bool(protect_special)
        self.pad_masked_id = int(pad_masked_id)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **kwargs: Any) -> WholeWordMasker:
        """From a Hugging Face tokenizer: vocabulary size, special ids and the ``##`` pieces of its vocabulary.

        As the official code, the whole-word rule only knows WordPiece ``##`` pieces; for other tokenizers it masks
        single tokens (the official switches ``mask_whole_word`` off for them).
        """
        vocab = tokenizer.get_vocab()
        return cls(
            vocab_size=len(vocab),
            mask_token_id=tokenizer.mask_token_id,
            cls_token_id=tokenizer.cls_token_id,
            subword_ids=[i for t, i in vocab.items() if t.startswith("##")],
            pad_token_id=tokenizer.pad_token_id,
            special_ids=list(tokenizer.all_special_ids),
            **kwargs,
        )

    # -- one unpadded sequence -----------------------------------------------------------------------------------
    def num_to_mask(self, length: int, num_source_tokens: int = 0) -> int:
        """``min(max_masks, max(1, round((length - num_source_tokens) * mask_prob)))``."""
        return min(self.max_masks, max(1, round((length - num_source_tokens) * self.mask_prob)))

    def _select(self, ids: Sequence[int], rng: Any, num_source_tokens: int) -> tuple[list[int], int]:
        """Spans of whole words until at least ``n`` positions are chosen: (positions in the set's order, as the
        official ``list(set)``, and ``n``). May hold more than ``n``; :meth:`_choose` cuts to ``n``."""
        n = len(ids)
        start = num_source_tokens + 1 if ids[0] == self.cls_token_id else num_source_tokens
        blocked = set(range(start))
        if self.protect_special:
            blocked.update(p for p in range(start, n) if ids[p] in self.special_ids)
        cand = [p for p in range(start, n) if p not in blocked]
        if not cand:
            return [], 0
        n_pred = self.num_to_mask(n, num_source_tokens)
        subword = (lambda p: ids[p] in self.subword_ids) if self.mask_whole_word else None
        chosen = select_spans(cand, n_pred, rng, length=n, allowed=lambda p: p not in blocked, is_subword=subword,
                              skipgram_prb=self.skipgram_prb, skipgram_size=self.skipgram_size)
        return list(chosen), n_pred

    def _choose(self, ids: Sequence[int], rng: Any, num_source_tokens: int) -> list[int]:
        """Positions to predict, before the 80/10/10 replacement: a random ``n`` of the selection if it overshot."""
        masked, n_pred = self._select(ids, rng, num_source_tokens)
        if len(masked) > n_pred:
            rng.shuffle(masked)
            masked = masked[:n_pred]
        return masked

    def mask_sequence(
        self, ids: Sequence[int], rng: Any = None, num_source_tokens: int = 0
    ) -> tuple[list[int], list[int], list[int]]:
        """One unpadded ``[CLS] … [SEP]`` id list → ``(ids_masked, masked_pos, masked_ids)``, unpadded."""
        rng = _python_rng(rng)
        ids = [int(i) for i in ids]
        if not ids:
            return [], [], []
        masked_pos = self._choose(ids, rng, num_source_tokens)
        out = list(ids)
        for p in masked_pos:
            if rng.random() < 0.8:
                out[p] = self.mask_token_id
            elif rng.random() < 0.5:
                out[p] = rng.randint(0, self.vocab_size - 1)
        return out, masked_pos, [ids[p] for p in masked_pos]

    # -- padded rows and batches ---------------------------------------------------------------------------------
    def __call__(
        self,
        input_ids: Tensor | Sequence[int] | Sequence[Sequence[int]],
        attention_mask: Tensor | None = None,
        rng: Any = None,
        num_source_tokens: int = 0,
    ) -> dict[str, Tensor]:
        """Mask a row (L,) or a batch (B, L) of right-padded token ids; padding (``attention_mask`` 0, or trailing
        ``pad_token_id`` without a mask) is left as it is and never chosen.

        Returns ``input_ids_masked`` (shape of the input), ``masked_pos``, ``masked_ids``, ``masked_weight``
        (each (max_masks,) or (B, max_masks), long).
        """
        ids = torch.as_tensor(input_ids, dtype=torch.long)
        single = ids.dim() == 1
        if single:
            ids = ids[None]
        if ids.dim() != 2:
            raise ValueError(f"input_ids must be (L,) or (B, L), got {tuple(ids.shape)}")
        if attention_mask is not None:
            mask = torch.as_tensor(attention_mask).reshape(ids.shape).bool()
            lengths = mask.sum(1).tolist()
        elif self.pad_token_id is not None:
            not_pad = ids != self.pad_token_id
            positions = torch.arange(1, ids.shape[1] + 1)
            lengths = (not_pad * positions).amax(1).tolist()  # up to the last non-pad token
        else:
            lengths = [ids.shape[1]] * ids.shape[0]
        rng = _python_rng(rng)
        out = ids.clone()
        pos = torch.zeros(ids.shape[0], self.max_masks, dtype=torch.long)
        tgt = torch.full((ids.shape[0], self.max_masks), self.pad_masked_id, dtype=torch.long)
        weight = torch.zeros(ids.shape[0], self.max_masks, dtype=torch.long)
        for b, n in enumerate(lengths):
            masked, p, t = self.mask_sequence(ids[b, :n].tolist(), rng, num_source_tokens)
            if n:
                out[b, :n] = torch.tensor(masked, dtype=torch.long)
            k = len(p)
            pos[b, :k] = torch.tensor(p, dtype=torch.long)
            tgt[b, :k] = torch.tensor(t, dtype=torch.long)
            weight[b, :k] = 1
        result = {"input_ids_masked": out, "masked_pos": pos, "masked_ids": tgt, "masked_weight": weight}
        return {k: v[0] for k, v in result.items()} if single else result


def _python_rng(rng: Any) -> Any:
    """A ``random.Random``-like object: as given, seeded from an int or a ``torch.Generator``, or the global module."""
    if rng is None or rng is random:
        return random
    if isinstance(rng, random.Random):
        return rng
    if isinstance(rng, torch.Generator):
        return random.Random(int(torch.randint(0, 2**62, (1,), generator=rng)))
    if isinstance(rng, int):
        return random.Random(rng)
    raise TypeError(f"rng must be a random.Random, an int, a torch.Generator or None, got {type(rng).__name__}")
