"""Box regression head (X²-VLM ``bbox_head``): one box per (image, region text) pair from the fused CLS state.

The official model (models/xvlm.py in zengyan-97/X2-VLM: ``build_mlp``, ``predict_bbox``, ``get_bbox_loss``) puts
``Linear(d, 2d) → LayerNorm(2d) → GELU → Linear(2d, 4)`` on the fused CLS vector and a sigmoid on the output, read as a
normalised ``(cx, cy, w, h)`` box. The loss is L1 plus GIoU, both returned separately and summed by the caller.

Reused: :func:`zoo.heads.common.mlp_head` (the same layout and key names ``mlp.0/1/3`` ↔ official
``bbox_head.0/1/3``), and ``torchvision.ops.box_convert`` / ``generalized_box_iou`` for the box arithmetic.
Hand-written, because they are X²-VLM's own choices rather than library behaviour: the normalisation of both losses by
the number of region boxes, the ``is_image`` weighting (rows whose "region" is the whole image add nothing to either
loss in pre-training), and the degenerate-box fallback (if any predicted or target box has ``x1 < x0`` or ``y1 < y0``
the GIoU term of the whole batch is zero, as in the official early check).

One deliberate difference: where every row of a batch is a whole image (``is_image`` all 1) the official code divides
0 by 0 and returns NaN; here both losses are 0 (the denominator is clamped at 1, which changes nothing otherwise since
it is a count).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou

from zoo.heads.common import mlp_head
from zoo.registry import HEADS

__all__ = ["BoxHead", "box_losses"]

_FORMATS = ("cxcywh", "xyxy", "xywh")


def box_losses(pred: Tensor, target: Tensor, is_image: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(L1, GIoU)`` losses between normalised ``(cx, cy, w, h)`` boxes of shape (N, 4), X²-VLM style.

    L1 is summed over the four coordinates and both terms are divided by the number of boxes. With ``is_image``
    (N,) of 0/1, rows marked 1 are left out of both sums and of the count.
    """
    if pred.shape != target.shape or pred.shape[-1] != 4 or pred.dim() != 2:
        raise ValueError(f"pred and target must both be (N, 4), got {tuple(pred.shape)} and {tuple(target.shape)}")
    target = target.to(pred.dtype)
    loss_l1 = F.l1_loss(pred, target, reduction="none")  # (N, 4)
    boxes1 = box_convert(pred, "cxcywh", "xyxy")
    boxes2 = box_convert(target, "cxcywh", "xyxy")
    degenerate = (boxes1[:, 2:] < boxes1[:, :2]).any() | (boxes2[:, 2:] < boxes2[:, :2]).any()
    if bool(degenerate):
        loss_giou = pred.new_zeros(pred.shape[0])
    else:
        # each row against its own target: (N, 1, 4) x (N, 1, 4) -> (N, 1, 1), no N x N matrix
        loss_giou = 1 - generalized_box_iou(boxes1[:, None], boxes2[:, None]).view(-1)
    if is_image is None:
        num_boxes = torch.tensor(float(pred.shape[0]), device=pred.device)
    else:
        keep = 1 - is_image.to(device=pred.device, dtype=pred.dtype).view(-1)
        num_boxes = keep.sum()
        loss_l1 = loss_l1 * keep[:, None]
        loss_giou = loss_giou * keep
    num_boxes = num_boxes.clamp(min=1)
    return loss_l1.sum() / num_boxes, loss_giou.sum() / num_boxes


@HEADS.register("bbox")
class BoxHead(nn.Module):
    """``Linear(d, 2d) → LayerNorm → GELU → Linear(2d, 4)`` then sigmoid: a normalised ``(cx, cy, w, h)`` box.

    ``eps`` defaults to 1e-5, the ``nn.LayerNorm`` default that the official ``build_mlp`` uses.
    """

    def __init__(self, width: int, hidden: int | None = None, eps: float = 1e-5):
        super().__init__()
        if width <= 0:
            from zoo.spec import ConfigError

            raise ConfigError(f"width must be positive, got {width}")
        self.width = width
        self.mlp = mlp_head(width, 4, hidden, eps)

    def forward(self, fused_cls: Tensor) -> Tensor:
        """(N, d) fused CLS states → (N, 4) boxes ``(cx, cy, w, h)`` in [0, 1]."""
        return self.mlp(fused_cls).sigmoid()

    def loss(self, pred: Tensor, target: Tensor, is_image: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(L1, GIoU)`` as the official ``get_bbox_loss`` (see :func:`box_losses`); the caller sums them."""
        return box_losses(pred, target, is_image)

    @torch.no_grad()
    def predict(self, fused_cls: Tensor, fmt: str = "cxcywh") -> Tensor:
        """Normalised boxes in ``fmt`` (``cxcywh``, ``xyxy`` or ``xywh``, torchvision's names); multiply by the image
        size for pixels (grounding accuracy is IoU ≥ 0.5 against the reference box)."""
        if fmt not in _FORMATS:
            raise ValueError(f"fmt must be one of {_FORMATS}, got {fmt!r}")
        boxes = self.forward(fused_cls)
        return boxes if fmt == "cxcywh" else box_convert(boxes, "cxcywh", fmt)
