"""Text batches for the models built on a frozen causal language model (shared by eP-ALM and MultiModal-GPT).

These models write their own prompt around a question or a caption and tokenise it with the language model's
tokenizer, so their batches carry the text itself: no ids made with another tokenizer, nothing to decode back.
:class:`TextBatchProcessor` (their ``processor_class``) gives, per task:

- ``vqa``: :class:`TextVQACollator` — ``images``, ``questions`` (strings), ``answers`` and ``weights`` (per question,
  its distinct answers and their weights; training batches only), ``question_id``, ``all_answers``;
- ``captioning`` training: :class:`TextCaptionCollator` — ``images``, ``captions`` (one string per image),
  ``image_ids``; evaluation batches are the task's own (images and references);
- any other task: the task's collator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from zoo.data.collate import _drop_none, _stack_images
from zoo.processing import Processor

__all__ = ["TextBatchProcessor", "TextCaptionCollator", "TextVQACollator", "batch_text_answers"]


def batch_text_answers(batch: Mapping[str, Any], what: str) -> tuple[list[str], list[list[str]], list[list[float]]]:
    """``(questions, answers, weights)`` of a text VQA batch: per question its answers (a string counts as one
    answer of weight 1) and their weights (1 each when the batch has none). A batch without the text (ids only, or
    no answers) raises a ValueError naming ``what``."""
    questions, answers = batch.get("questions"), batch.get("answers")
    if questions is None or answers is None or any(a is None or len(a) == 0 for a in answers):
        raise ValueError(f"{what} needs a text batch with 'questions' and non-empty 'answers' per question "
                         "(zoo.modules.lm.processing.TextVQACollator; the model's processor gives it)")
    per_q = [[a] if isinstance(a, str) else [str(x) for x in a] for a in answers]
    weights = batch.get("weights")
    per_w = [[1.0] * len(a) for a in per_q] if weights is None else [[float(x) for x in w] for w in weights]
    if len(per_q) != len(questions) or [len(w) for w in per_w] != [len(a) for a in per_q]:
        raise ValueError(f"{what}: {len(questions)} questions, answers for {len(per_q)}, weights that do not match "
                         "the answers")
    return [str(q) for q in questions], per_q, per_w


class TextVQACollator:
    """VQA items → a text batch (see the module docstring); ``answers=False`` (evaluation) leaves the training
    answers out, and so does an item without answers (evaluation without ground truth)."""

    def __init__(self, answers: bool = True):
        self.answers = answers

    def __call__(self, items: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
        items, skipped = _drop_none(items)
        batch: dict[str, Any] = {
            "images": _stack_images(items), "questions": [x["question"] for x in items],
            "question_id": [x["question_id"] for x in items], "all_answers": [list(x["all_answers"]) for x in items],
            "num_skipped": skipped,
        }
        if self.answers and all(x["answers"] for x in items):
            batch["answers"] = [list(x["answers"]) for x in items]
            batch["weights"] = [[float(w) for w in x["weights"]] for x in items]
        return batch


class TextCaptionCollator:
    """Captioning training items → ``images``, ``captions`` (one string per image), ``image_ids``."""

    def __call__(self, items: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
        items, skipped = _drop_none(items)
        return {"images": _stack_images(items), "captions": [x["caption"] for x in items],
                "image_ids": torch.tensor([int(x["image_id"]) for x in items], dtype=torch.long),
                "num_skipped": skipped}


class TextBatchProcessor(Processor):
    """The processor of the language-model families: text batches for VQA and captioning training."""

    def collator(self, datamodule: Any, split: str) -> Callable:
        if datamodule.task == "vqa":
            return TextVQACollator(answers=split == "train")
        if datamodule.task == "captioning" and split == "train":
            return TextCaptionCollator()
        return super().collator(datamodule, split)
