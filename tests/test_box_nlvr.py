"""The ``bbox`` and ``nlvr`` heads: official layouts and counts, and the box loss against a scalar reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import load_reference, reference_shapes

from zoo.factory import build_part
from zoo.heads.box import BoxHead, box_losses
from zoo.heads.nlvr import NLVRHead
from zoo.spec import ConfigError


# ---------------------------------------------------------------------------------------------------------------------
# independent scalar reference for the box loss (plain Python floats, written from the GIoU definition)
# ---------------------------------------------------------------------------------------------------------------------
def _corners(b):
    cx, cy, w, h = b
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def _giou(a, b):
    ax0, ay0, ax1, ay1 = _corners(a)
    bx0, by0, bx1, by1 = _corners(b)
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def _reference_losses(pred, target, is_image=None):
    n = len(pred)
    keep = [1.0] * n if is_image is None else [1.0 - float(x) for x in is_image]
    l1 = sum(k * sum(abs(p - t) for p, t in zip(pb, tb)) for k, pb, tb in zip(keep, pred, target))
    gi = sum(k * (1.0 - _giou(pb, tb)) for k, pb, tb in zip(keep, pred, target))
    count = sum(keep)
    return l1 / count, gi / count


def _random_boxes(n, gen):
    c = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 0.35 + 0.05
    return torch.cat([c, wh], 1)


# ---------------------------------------------------------------------------------------------------------------------
# bbox head
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,width", [("base", 768), ("large", 1024)])
def test_bbox_head_matches_official_layout(size, width):
    ref_name = f"x2vlm_{size}_pretrain"
    with torch.device("meta"):
        head = BoxHead(width)
    ours = {k.replace("mlp.", "", 1): tuple(v.shape) for k, v in head.state_dict().items()}
    assert ours == reference_shapes(ref_name, "bbox_head.")
    assert sum(p.numel() for p in head.parameters()) == load_reference(ref_name)["params_by_prefix"]["bbox_head"]
    if size == "base":
        assert sum(p.numel() for p in head.parameters()) == 1_190_404
    assert head.mlp[1].eps == 1e-5  # nn.LayerNorm's default, which the official build_mlp uses


def test_bbox_head_registered_and_validated():
    head = build_part({"type": "bbox", "width": 16}, "head")
    assert isinstance(head, BoxHead) and head.width == 16
    with pytest.raises(ConfigError):
        BoxHead(0)


def test_bbox_forward_is_sigmoid_of_mlp_and_predict_formats():
    torch.manual_seed(0)
    head = BoxHead(16).eval()
    x = torch.randn(5, 16) * 3
    out = head(x)
    # independent forward from the weights
    m = head.mlp
    h = F.gelu(F.layer_norm(x @ m[0].weight.T + m[0].bias, (32,), m[1].weight, m[1].bias, 1e-5))
    expected = torch.sigmoid(h @ m[3].weight.T + m[3].bias)
    torch.testing.assert_close(out, expected)
    assert out.shape == (5, 4) and bool((out > 0).all() and (out < 1).all())
    cx, cy, w, hh = head.predict(x).unbind(-1)
    x0, _, _, y1 = head.predict(x, fmt="xyxy").unbind(-1)
    torch.testing.assert_close(x0, cx - w / 2)
    torch.testing.assert_close(y1, cy + hh / 2)
    with pytest.raises(ValueError):
        head.predict(x, fmt="yxyx")


def test_box_loss_hand_case():
    # pred covers the central quarter of the target: IoU = 0.25, hull = union = target -> GIoU 0.25
    pred = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    target = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    l1, giou = box_losses(pred, target)
    assert l1.item() == pytest.approx(1.0)  # |0.5 - 1| + |0.5 - 1|
    assert giou.item() == pytest.approx(0.75)
    # disjoint boxes: IoU 0, GIoU negative -> loss above 1
    l1, giou = box_losses(torch.tensor([[0.2, 0.5, 0.2, 0.2]]), torch.tensor([[0.8, 0.5, 0.2, 0.2]]))
    # hull 0.8 x 0.2 = 0.16, union 0.08 -> GIoU = -0.5 -> loss 1.5
    assert giou.item() == pytest.approx(1.5)
    assert l1.item() == pytest.approx(0.6)


@pytest.mark.parametrize("with_is_image", [False, True])
def test_box_loss_matches_scalar_reference(with_is_image):
    gen = torch.Generator().manual_seed(3)
    pred, target = _random_boxes(12, gen), _random_boxes(12, gen)
    is_image = torch.tensor([0, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0]) if with_is_image else None
    l1, giou = box_losses(pred, target, is_image)
    ref_l1, ref_giou = _reference_losses(pred.tolist(), target.tolist(), None if is_image is None else is_image.tolist())
    assert l1.item() == pytest.approx(ref_l1, rel=1e-12)
    assert giou.item() == pytest.approx(ref_giou, rel=1e-12)
    if with_is_image:
        # the whole-image rows contribute nothing: changing their predictions changes neither loss
        moved = pred.clone()
        moved[is_image.bool()] = 0.5
        l1b, giou_b = box_losses(moved, target, is_image)
        assert (l1b.item(), giou_b.item()) == (l1.item(), giou.item())


def test_box_loss_degenerate_fallback_and_all_images():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.4, 0.4, 0.3, 0.1]])
    target = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.4, 0.4, -0.1, 0.1]])  # negative width: x1 < x0
    l1, giou = box_losses(pred, target)
    assert giou.item() == 0.0  # the official early check zeroes GIoU for the whole batch
    assert l1.item() == pytest.approx(0.4 / 2)
    # every row a whole image: 0 rather than the official 0/0 = NaN
    l1, giou = box_losses(pred[:1], target[:1] + 0.1, torch.ones(1, dtype=torch.long))
    assert (l1.item(), giou.item()) == (0.0, 0.0)


def test_bbox_head_loss_backward():
    torch.manual_seed(0)
    head = BoxHead(8)
    x = torch.randn(6, 8)
    target = _random_boxes(6, torch.Generator().manual_seed(1)).float()
    l1, giou = head.loss(head(x), target, torch.tensor([0, 0, 1, 0, 0, 0]))
    (l1 + giou).backward()
    grads = [p.grad for p in head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert head.mlp[3].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------------
# nlvr head
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [768, 1024])
def test_nlvr_head_official_layout(width):
    # official: cls_head = build_mlp(2d, 2) = Linear(2d, 4d), LayerNorm(4d), GELU, Linear(4d, 2)
    with torch.device("meta"):
        head = NLVRHead(width)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    d2, d4 = 2 * width, 4 * width
    assert shapes == {
        "mlp.0.weight": (d4, d2), "mlp.0.bias": (d4,), "mlp.1.weight": (d4,), "mlp.1.bias": (d4,),
        "mlp.3.weight": (2, d4), "mlp.3.bias": (2,),
    }
    expected = d2 * d4 + d4 + 2 * d4 + d4 * 2 + 2
    assert sum(p.numel() for p in head.parameters()) == expected
    if width == 768:
        assert expected == 4_733_954
    assert head.mlp[1].eps == 1e-5


def test_nlvr_forward_loss_and_predict():
    torch.manual_seed(0)
    head = build_part({"type": "nlvr", "width": 8}, "head").eval()
    assert isinstance(head, NLVRHead)
    a, b = torch.randn(7, 8), torch.randn(7, 8)
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    out = head(a, b, labels)
    m = head.mlp
    x = torch.cat([a, b], 1)
    h = F.gelu(F.layer_norm(x @ m[0].weight.T + m[0].bias, (32,), m[1].weight, m[1].bias, 1e-5))
    logits = h @ m[3].weight.T + m[3].bias
    torch.testing.assert_close(out["logits"], logits)
    # cross-entropy written out
    log_p = logits - logits.logsumexp(1, keepdim=True)
    assert out["loss"].item() == pytest.approx(-log_p[torch.arange(7), labels].mean().item(), rel=1e-6)
    # image order matters (image 0's CLS first, as the official concatenation)
    assert not torch.allclose(head(b, a)["logits"], out["logits"])
    assert torch.equal(head.predict(a, b), logits.argmax(1))
    assert "loss" not in head(a, b)
    with pytest.raises(ValueError, match=r"^cls_a and cls_b must both be \(N, 8\), got \(7, 8\) and \(7, 4\)$"):
        head(a, b[:, :4])
    with pytest.raises(ValueError, match=r"must both be \(N, 8\), got \(7, 1, 8\) and \(7, 1, 8\)$"):
        head(a[:, None], b[:, None])  # one CLS vector per pair, not a sequence
    with pytest.raises(ConfigError):
        NLVRHead(-1)


def test_nlvr_head_learns_a_pair_rule():
    # label = whether the two vectors' first coordinates have the same sign: needs both inputs
    torch.manual_seed(0)
    head = NLVRHead(4)
    a, b = torch.randn(256, 4), torch.randn(256, 4)
    labels = ((a[:, 0] > 0) == (b[:, 0] > 0)).long()
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        head(a, b, labels)["loss"].backward()
        opt.step()
    acc = (head.predict(a, b) == labels).float().mean().item()
    assert acc > 0.95, acc
    assert not math.isnan(acc)
