"""Image–text matching head (ITM): a 2-way MLP on the fused CLS state."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.heads.common import mlp_head
from zoo.registry import HEADS

__all__ = ["MatchingHead", "sample_hard_negatives"]


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


@torch.no_grad()
def sample_hard_negatives(
    image_feat: Tensor, text_feat: Tensor, temp: Tensor | float, image_ids: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """One hard negative image per text and one hard negative text per image, as the official ITM sampling.

    Weights are ``softmax(similarity / temp) + 1e-5`` with the positives (same index, or same ``image_ids``) set to 0;
    one index per row is drawn with ``torch.multinomial``. Returns (image index for each text, text index for each
    image).
    """
    sim_i2t = image_feat @ text_feat.t() / temp
    w_i2t = F.softmax(sim_i2t.float(), dim=1) + 1e-5
    w_t2i = F.softmax(sim_i2t.t().float(), dim=1) + 1e-5
    if image_ids is None:
        positive = torch.eye(w_i2t.shape[0], dtype=torch.bool, device=w_i2t.device)
    else:
        ids = image_ids.view(-1, 1)
        positive = ids == ids.t()
    w_i2t = w_i2t.masked_fill(positive, 0)
    w_t2i = w_t2i.masked_fill(positive, 0)
    if (w_i2t.sum(1) == 0).any():
        raise ValueError("ITM hard negatives need at least two different images in the batch")
    image_neg = torch.multinomial(w_t2i, 1, generator=generator).squeeze(1)
    text_neg = torch.multinomial(w_i2t, 1, generator=generator).squeeze(1)
    return image_neg, text_neg
