"""NLVR2 head (X²-VLM ``XVLMForNLVR``): is the sentence true of the pair of images?

The official model (models/model_classification.py in zengyan-97/X2-VLM, "follow VLMo") fuses the sentence with each
image separately through the same fusion layers, concatenates the two fused CLS vectors (image 0 first) and classifies
with ``build_mlp(2d, 2)``: ``Linear(2d, 4d) → LayerNorm(4d) → GELU → Linear(4d, 2)``, cross-entropy on labels
0 = False, 1 = True. There are no other task parameters (no image-type embeddings): the fusion stack is shared
unchanged between the two passes. Keys ``mlp.0/1/3`` ↔ official ``cls_head.0/1/3``; 4,733,954 parameters at d = 768.

Reused: :func:`zoo.heads.common.mlp_head`. Nothing here is hand-written beyond the concatenation; the two fusion passes
are the model's job (it owns the fusion stack).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.heads.common import mlp_head
from zoo.registry import HEADS

__all__ = ["NLVRHead"]


@HEADS.register("nlvr")
class NLVRHead(nn.Module):
    """2-way MLP on ``cat(fused_cls_image0, fused_cls_image1)``; ``width`` is the width of one fused CLS vector.

    ``hidden`` defaults to ``4 * width`` (twice the concatenated width, as the official ``build_mlp``); ``eps`` to the
    ``nn.LayerNorm`` default 1e-5 that the official uses.
    """

    def __init__(self, width: int, hidden: int | None = None, eps: float = 1e-5):
        super().__init__()
        if width <= 0:
            from zoo.spec import ConfigError

            raise ConfigError(f"width must be positive, got {width}")
        self.width = width
        self.mlp = mlp_head(2 * width, 2, hidden, eps)

    def _logits(self, cls_a: Tensor, cls_b: Tensor) -> Tensor:
        if cls_a.dim() != 2 or cls_a.shape != cls_b.shape or cls_a.shape[-1] != self.width:
            raise ValueError(
                f"cls_a and cls_b must both be (N, {self.width}), got {tuple(cls_a.shape)} and {tuple(cls_b.shape)}"
            )
        return self.mlp(torch.cat((cls_a, cls_b), dim=-1))

    def forward(self, cls_a: Tensor, cls_b: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        """Fused CLS of (sentence, image 0) and of (sentence, image 1) → ``logits`` (N, 2) and, with labels, ``loss``."""
        logits = self._logits(cls_a, cls_b)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels.long())
        return out

    @torch.no_grad()
    def predict(self, cls_a: Tensor, cls_b: Tensor) -> Tensor:
        """Class index per example (1 = the sentence is true), what accuracy consumes."""
        return self._logits(cls_a, cls_b).argmax(-1)
