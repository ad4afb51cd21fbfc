"""Image–text contrastive head (ITC): projections to a shared space, learnable temperature, symmetric InfoNCE.

Features are gathered from all processes under ``torch.distributed`` (gradients flow back to the local slice), so the
loss under DDP equals the single-process loss on the full batch. Repeated images inside a batch (the same ``image_ids``)
get soft targets spread over all their positives, as in X²-VLM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.registry import HEADS

__all__ = ["ContrastiveHead", "gather_with_grad", "itc_loss"]


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        import torch.distributed as dist  # noqa: PLC0415

        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
        ctx.local = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(ctx.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        import torch.distributed as dist  # noqa: PLC0415

        grad = grad.contiguous()
        dist.all_reduce(grad)  # every process computed the loss over the full gathered batch
        return grad[ctx.rank * ctx.local : (ctx.rank + 1) * ctx.local]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every process along dim 0 (identity when not distributed); differentiable."""
    import torch.distributed as dist  # noqa: PLC0415

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def itc_loss(image_feat: Tensor, text_feat: Tensor, temp: Tensor | float, image_ids: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE between L2-normalised features; soft targets for repeated ``image_ids``."""
    sim_i2t = image_feat @ text_feat.t() / temp
    sim_t2i = sim_i2t.t()
    if image_ids is None:
        target = torch.arange(sim_i2t.shape[0], device=sim_i2t.device)
        return (F.cross_entropy(sim_i2t, target) + F.cross_entropy(sim_t2i, target)) / 2
    ids = image_ids.view(-1, 1)
    pos = (ids == ids.t()).float()
    targets = pos / pos.sum(1, keepdim=True)
    loss_i2t = -(F.log_softmax(sim_i2t, 1) * targets).sum(1).mean()
    loss_t2i = -(F.log_softmax(sim_t2i, 1) * targets).sum(1).mean()
    return (loss_i2t + loss_t2i) / 2


@HEADS.register("itc")
class ContrastiveHead(nn.Module):
    """``vision_proj`` / ``text_proj`` Linear → ``embed_dim``, ``temp`` clamped to [min_temp, max_temp]."""

    def __init__(
        self,
        vision_width: int,
        text_width: int,
        embed_dim: int = 256,
        temp: float = 0.07,
        min_temp: float = 0.001,
        max_temp: float = 0.5,
    ):
        super().__init__()
        self.vision_width, self.text_width, self.embed_dim = vision_width, text_width, embed_dim
        self.vision_proj = nn.Linear(vision_width, embed_dim)
        self.text_proj = nn.Linear(text_width, embed_dim)
        self.temp = nn.Parameter(torch.tensor(float(temp)))
        self.min_temp, self.max_temp = min_temp, max_temp

    def temperature(self) -> Tensor:
        return self.temp.clamp(self.min_temp, self.max_temp)

    def embed_image(self, pooled: Tensor) -> Tensor:
        return F.normalize(self.vision_proj(pooled), dim=-1)

    def embed_text(self, pooled: Tensor) -> Tensor:
        return F.normalize(self.text_proj(pooled), dim=-1)

    def similarity(self, image_feat: Tensor, text_feat: Tensor) -> Tensor:
        """(N_images, N_texts) cosine similarities (not divided by the temperature)."""
        return image_feat @ text_feat.t()

    def forward(self, image_pooled: Tensor, text_pooled: Tensor, image_ids: Tensor | None = None) -> dict[str, Tensor]:
        image_feat, text_feat = self.embed_image(image_pooled), self.embed_text(text_pooled)
        all_image = gather_with_grad(image_feat)
        all_text = gather_with_grad(text_feat)
        all_ids = gather_with_grad(image_ids) if image_ids is not None else None
        loss = itc_loss(all_image, all_text, self.temperature(), all_ids)
        return {"loss": loss, "image_feat": image_feat, "text_feat": text_feat}

    def predict(self, image_pooled: Tensor, text_pooled: Tensor) -> Tensor:
        """Similarity matrix (images × texts), what recall@K consumes."""
        return self.similarity(self.embed_image(image_pooled), self.embed_text(text_pooled))
