"""Accuracy of classification tasks (visual entailment, NLVR), as the official X²-VLM / CCLM / DaVinci evaluation
loops report it: the share of examples whose argmax class equals the label, in percent, over the whole split."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["accuracy_by_class"]


def accuracy_by_class(predictions: Tensor, labels: Tensor, class_names: Sequence[str]) -> dict[str, float]:
    """``acc``: 100 × the share of ``predictions == labels``; ``acc_{name}``: the same over the examples whose label is
    class ``name`` (its recall; left out for a class with no example), so a model that answers one class everywhere
    shows it. ``predictions`` and ``labels`` are 1-D class indices into ``class_names``."""
    predictions, labels = torch.as_tensor(predictions).reshape(-1), torch.as_tensor(labels).reshape(-1)
    if predictions.shape != labels.shape:
        raise ValueError(f"{predictions.numel()} predictions for {labels.numel()} labels")
    if labels.numel() == 0:
        return {}
    if int(labels.min()) < 0 or int(labels.max()) >= len(class_names):
        raise ValueError(f"labels must be class indices in [0, {len(class_names)}), got {labels.unique().tolist()}")
    correct = (predictions == labels).double()
    out = {"acc": 100.0 * float(correct.mean())}
    for index, name in enumerate(class_names):
        chosen = labels == index
        if chosen.any():
            out[f"acc_{name}"] = 100.0 * float(correct[chosen].mean())
    return out
