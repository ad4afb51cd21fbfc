"""Classification over a fixed label set (VQA answer vocabulary, video QA, NLVR-style decisions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.heads.common import mlp_head
from zoo.registry import HEADS

__all__ = ["ClassifierHead"]


@HEADS.register("classifier")
class ClassifierHead(nn.Module):
    """An MLP on a pooled feature over ``num_classes``; soft targets (VQA answer scores) or class indices."""

    def __init__(self, width: int, num_classes: int, hidden: int | None = None, labels: list[str] | None = None):
        super().__init__()
        if labels is not None and len(labels) != num_classes:
            from zoo.spec import ConfigError  # noqa: PLC0415

            raise ConfigError(f"labels has {len(labels)} entries but num_classes is {num_classes}")
        self.width, self.num_classes, self.labels = width, num_classes, labels
        self.mlp = mlp_head(width, num_classes, hidden)

    def forward(self, pooled: Tensor, targets: Tensor | None = None) -> dict[str, Tensor]:
        logits = self.mlp(pooled)
        out = {"logits": logits}
        if targets is not None:
            if targets.dim() == 2 and targets.shape[1] != self.num_classes:
                raise ValueError(f"classifier: targets have {targets.shape[1]} classes (answers) but the head has "
                                 f"num_classes={self.num_classes}")
            if targets.dtype.is_floating_point and targets.shape == logits.shape:
                # soft scores in [0, 1] per answer (VQA): binary cross-entropy summed over answers, as is standard
                out["loss"] = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.shape[0]
            else:
                out["loss"] = F.cross_entropy(logits, targets.long())
        return out

    def predict(self, pooled: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
        """Top-k (probabilities, class indices)."""
        probs = torch.softmax(self.mlp(pooled), -1)
        return probs.topk(min(k, self.num_classes), -1)
