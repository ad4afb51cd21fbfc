"""CCLM's side stream: parallel sentences (``data.parallel``: JSON lists of ``{text, text_2}``, a sentence and its
translation) batched for :meth:`zoo.models.cclm.CCLM.parallel_text_losses` (TTC between the two sentences and MLM
of the first, the official ``train_parallel`` batches of zengyan-97/CCLM ``Pretrain.py``; the official pre-training
alternates image and parallel batches, here each step takes one of each: :mod:`zoo.data.side`)."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from zoo.data.collate import _drop_none, tokenize_texts
from zoo.data.masking import WholeWordMasker
from zoo.data.side import SideStream, Skipped, read_side_records, side_record_problem
from zoo.registry import SIDE_STREAMS

__all__ = ["ParallelSentences", "ParallelTextCollator", "read_parallel"]


def read_parallel(files: str | Sequence[str], skipped: Skipped | None = None) -> list[dict[str, str]]:
    """Parallel-sentence records ``{text, text_2, ...}`` of JSON list files (the shapes ``parallel_{train,val}.json``),
    for :class:`ParallelTextCollator`; a record without two strings (or with text that is not valid Unicode) is an
    error naming the file and record, or, given a ``skipped`` list, left out and appended to it."""
    expected = "expected an object with strings 'text' and 'text_2' (a sentence and its translation)"
    return [dict(rec) for _, _, rec in read_side_records(
        files, lambda r: side_record_problem(r, ("text", "text_2"), expected), skipped)]


class ParallelTextCollator:
    """Parallel-sentence items ``{text, text_2}`` → ``input_ids, attention_mask`` (sentence 1), ``input_ids_2,
    attention_mask_2`` (its translation), the MLM inputs of sentence 1 (``input_ids_masked, masked_pos, masked_ids,
    masked_weight``; :class:`zoo.data.masking.WholeWordMasker` from the tokenizer: its ``mask_token_id``, special
    tokens never chosen, single pieces as the official code for non-WordPiece tokenizers) and ``num_skipped``; no
    images (:meth:`zoo.models.cclm.CCLM.parallel_text_losses`). Masking draws from a ``random.Random`` seeded from
    torch's generator, as the captioning collator."""

    def __init__(self, tokenizer: Any, max_tokens: int | None = 40, mask_prob: float = 0.5, max_masks: int = 12,
                 skipgram_prb: float = 0.2, skipgram_size: int = 3, mlm: bool = True):
        if mlm and getattr(tokenizer, "mask_token_id", None) is None:
            raise ValueError("ParallelTextCollator: the tokenizer has no mask token; MLM of sentence 1 needs one "
                             "(or pass mlm=False)")
        self.tokenizer, self.max_tokens = tokenizer, max_tokens
        self.masker = WholeWordMasker.from_tokenizer(
            tokenizer, mask_prob=mask_prob, max_masks=max_masks, skipgram_prb=skipgram_prb,
            skipgram_size=skipgram_size, protect_special=True) if mlm else None

    def __call__(self, items: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
        items, skipped = _drop_none(items)
        ids, mask = tokenize_texts(self.tokenizer, [x["text"] for x in items], self.max_tokens)
        ids_2, mask_2 = tokenize_texts(self.tokenizer, [x["text_2"] for x in items], self.max_tokens)
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "input_ids_2": ids_2,
                                 "attention_mask_2": mask_2, "num_skipped": skipped}
        if self.masker is not None:
            rng = random.Random(int(torch.randint(2**62, ())))
            batch.update(self.masker(ids, mask, rng=rng))
        return batch


@SIDE_STREAMS.register("parallel")
class ParallelSentences(SideStream):
    """``data.parallel``: parallel sentences for models with a cross-lingual text objective."""

    loss_method = "parallel_text_losses"
    what = "parallel sentences (models with a cross-lingual text objective)"

    @staticmethod
    def read(files: str | Sequence[str], skipped: Skipped | None = None) -> list[dict[str, Any]]:
        return read_parallel(files, skipped)

    @staticmethod
    def collator(model: Any, tokenizer: Any, cfg: Mapping[str, Any]) -> Callable[[list], Any]:
        """MLM of the first sentence where the tokenizer has a mask token (a causal LM's may not)."""
        mlm = getattr(tokenizer, "mask_token_id", None) is not None
        return ParallelTextCollator(tokenizer, cfg["max_tokens"], mlm=mlm)
