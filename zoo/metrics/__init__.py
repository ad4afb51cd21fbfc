"""Evaluation metrics: VQA accuracy, COCO captioning scores, image-text retrieval recall.

Importing :mod:`zoo.metrics` is cheap: the functions below are loaded from their submodules on first access, so the
pure-Python VQA and captioning metrics never pull in torch (only the retrieval functions need it).

    >>> from zoo.metrics import vqa_accuracy, caption_scores
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "normalize_answer": "zoo.metrics.vqa",
    "vqa_accuracy": "zoo.metrics.vqa",
    "vqa_score": "zoo.metrics.vqa",
    "tokenize_caption": "zoo.metrics.caption",
    "bleu": "zoo.metrics.caption",
    "cider_d": "zoo.metrics.caption",
    "rouge_l": "zoo.metrics.caption",
    "caption_scores": "zoo.metrics.caption",
    "retrieval_recall": "zoo.metrics.retrieval",
    "retrieval_ranks": "zoo.metrics.retrieval",
    "rerank_scores": "zoo.metrics.retrieval",
}

__all__ = [
    "bleu",
    "caption_scores",
    "cider_d",
    "normalize_answer",
    "rerank_scores",
    "retrieval_ranks",
    "retrieval_recall",
    "rouge_l",
    "tokenize_caption",
    "vqa_accuracy",
    "vqa_score",
]

if TYPE_CHECKING:  # pragma: no cover
    from zoo.metrics.caption import bleu, caption_scores, cider_d, rouge_l, tokenize_caption
    from zoo.metrics.retrieval import rerank_scores, retrieval_ranks, retrieval_recall
    from zoo.metrics.vqa import normalize_answer, vqa_accuracy, vqa_score


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'zoo.metrics' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
