"""Image–text matching head (ITM): a 2-way MLP on the fused CLS state."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.heads.common import mlp_head
from zoo.registry import HEADS

__all__ = ["MatchingHead"]


@HEADS.register("itm")
class MatchingHead(nn.Module):
    """``Linear(d, 2d) → LayerNorm → GELU → Linear(2d, 2)``; class 1 = the text matches the image."""

    def __init__(self, width: int, hidden: int | None = None, eps: float = 1e-5):
        super().__init__()
        self.width = width
        self.mlp = mlp_head(width, 2, hidden, eps)

    def forward(self, fused_cls: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        logits = self.mlp(fused_cls)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels.long())
        return out

    def predict(self, fused_cls: Tensor) -> Tensor:
        """Match probability per pair."""
        return torch.softmax(self.mlp(fused_cls), -1)[:, 1]
