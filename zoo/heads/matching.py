"""Image–text matching head (ITM): a 2-way MLP on the fused CLS state."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.heads.common import mlp_head
from zoo.registry import HEADS

__all__ = ["MatchingHead", "hard_negative_matching_loss", "sample_hard_negatives"]


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


def hard_negative_matching_loss(itm: MatchingHead, fuse, context, text_tokens: Tensor, attention_mask: Tensor,
                                context_feat: Tensor, text_feat: Tensor, temp: Tensor | float,
                                ids: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """The official ITM loss with in-batch hard negatives (X²-VLM / CCLM ``get_matching_loss``): one hard negative
    context per text and one text per context (:func:`sample_hard_negatives` on ``context_feat`` / ``text_feat``),
    then ``fuse(texts, text_mask, contexts, context_mask)`` of the positives, (negative context, text) and (context,
    negative text), labels 1, 0, 0. ``context`` is an encoder output (image tokens and their mask, or a first
    sentence's text states); ``fuse`` the model's fusion call, returning an output whose token 0 ``itm`` reads."""
    ctx_neg, text_neg = sample_hard_negatives(context_feat, text_feat, temp, ids, generator)
    bs = context.tokens.shape[0]
    ctx_mask = context.mask if context.mask is not None else torch.ones(
        context.tokens.shape[:2], dtype=torch.long, device=context.tokens.device)
    texts = torch.cat([text_tokens, text_tokens, text_tokens[text_neg]])
    masks = torch.cat([attention_mask, attention_mask, attention_mask[text_neg]])
    ctx = torch.cat([context.tokens, context.tokens[ctx_neg], context.tokens])
    ctx_masks = torch.cat([ctx_mask, ctx_mask[ctx_neg], ctx_mask])
    cls = fuse(texts, masks, ctx, ctx_masks).tokens[:, 0]
    labels = torch.cat([torch.ones(bs), torch.zeros(2 * bs)]).long().to(cls.device)
    return itm(cls, labels)["loss"]
