"""Temporal self-supervision ("Time Is MattEr", Yun et al., ICML 2022): flow labels, heads, losses and the config.

Reference facts are from github.com/alinlab/temporal-selfsupervision at commit 42097b4:
``research_platform/datasets/ssv2/ssv2_webm.py:251-260`` (flow labels), ``research_platform/models/timesformer/
vit.py:217-224, 328-341`` (heads) and ``train.py:156-182`` (losses). Each test says which one-line bug it catches.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from zoo.modules.temporal import (
    LOSS_NAMES,
    NUM_FLOW_CLASSES,
    TemporalHeads,
    TemporalSSLConfig,
    flow_direction_labels,
    temporal_losses,
)
from zoo.spec import ConfigError

# ---------------------------------------------------------------------------------------------------------------------
# flow labels
# ---------------------------------------------------------------------------------------------------------------------
# (dx, dy) per frame in pixels, x to the right and y *down* (image rows), each in the middle of a 45-degree sector,
# and the class of ssv2_webm.py:257-260: angle = cartToPolar(dx, dy) in degrees, class = clip(angle // 45, 0, 7) + 1
DIRECTIONS = [
    ((2, 1), 1),  # 26.6 deg: right, a little down
    ((1, 2), 2),  # 63.4: down, a little right
    ((-1, 2), 3),  # 116.6: down, a little left
    ((-2, 1), 4),  # 153.4: left, a little down
    ((-2, -1), 5),  # 206.6: left, a little up
    ((-1, -2), 6),  # 243.4: up, a little left
    ((1, -2), 7),  # 296.6: up, a little right
    ((2, -1), 8),  # 333.4: right, a little up
]

SIZE, PATCH, SIDE, START = 64, 16, 24, 20  # a 24-pixel square from (20, 20) covers patches 1..2 of a 4x4 grid


def moving_square(dx: int, dy: int, frames: int = 3) -> torch.Tensor:
    """(T, 3, 64, 64) uint8: a white square on black, moved by (dx, dy) pixels per frame."""
    clip = torch.zeros(frames, 3, SIZE, SIZE, dtype=torch.uint8)
    for t in range(frames):
        y, x = START + dy * t, START + dx * t
        clip[t, :, y : y + SIDE, x : x + SIDE] = 255
    return clip


@pytest.mark.parametrize(("shift", "expected"), DIRECTIONS)
def test_flow_labels_follow_motion_direction(shift, expected):
    """The patches under the square get the motion's direction class, the far corners 0 (no motion).

    Catches ``cartToPolar(dy, dx)`` (x / y swapped: (2, 1) would read class 2), a y axis taken as pointing up
    (``-dy``: (2, 1) would read class 8), and a dropped ``+ 1`` (classes 0..7, colliding with "no motion")."""
    dx, dy = shift
    angle = math.degrees(math.atan2(dy, dx)) % 360  # the official formula, written out
    assert min(int(angle // 45), 7) + 1 == expected
    labels = flow_direction_labels(moving_square(dx, dy, frames=2), patch_size=PATCH)
    assert labels.shape == (1, SIZE // PATCH, SIZE // PATCH) and labels.dtype == torch.long
    assert (labels[0, 1:3, 1:3] == expected).all(), labels
    assert labels[0, 0, 0] == labels[0, 0, 3] == labels[0, 3, 0] == labels[0, 3, 3] == 0, labels


def test_static_clip_is_no_motion():
    """A clip that does not move is class 0 everywhere (the min-max-normalised magnitude is 0).

    Catches a magnitude gate ``>= 0`` instead of ``> 0`` after the floor (every patch would be labelled moving)."""
    labels = flow_direction_labels(moving_square(0, 0, frames=4))
    assert labels.shape == (3, 4, 4)
    assert (labels == 0).all()


def test_flow_labels_batch_and_input_forms():
    """A batch ``(B, T, 3, H, W)`` gives ``(B, T-1, H/p, W/p)`` per clip; floats in [0, 1] equal uint8 / 255.

    Catches the batch and time axes swapped in the pair loop (``grey[j, i]``), and a float input taken as 0..255
    (divided by 255 a second time: the image collapses to near-constant grey and the labels change)."""
    right, up = moving_square(2, 1), moving_square(1, -2)
    batch = torch.stack([right, up])
    labels = flow_direction_labels(batch)
    assert labels.shape == (2, 2, 4, 4)
    assert torch.equal(labels[0], flow_direction_labels(right))
    assert torch.equal(labels[1], flow_direction_labels(up))
    assert torch.equal(flow_direction_labels(batch.float() / 255.0), labels)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        flow_direction_labels(batch[..., :60])
    with pytest.raises(ValueError, match="at least 2 frames"):
        flow_direction_labels(batch[:, :1])


# ---------------------------------------------------------------------------------------------------------------------
# heads and losses, recomputed in float64
# ---------------------------------------------------------------------------------------------------------------------
B, T, GRID, D = 2, 4, 2, 8
P = GRID * GRID  # == T on purpose: pooling over the wrong axis keeps the shapes and changes the values


def _heads(seed: int = 0) -> TemporalHeads:
    torch.manual_seed(seed)
    heads = TemporalHeads(D, T)
    for p in heads.parameters():  # away from the zero biases / unit norm of the init, so every parameter matters
        torch.nn.init.normal_(p, std=0.3)
    return heads


def _tokens(seed: int = 1) -> torch.Tensor:
    return torch.randn(B, T, P, D, generator=torch.Generator().manual_seed(seed))


def _smoothed_ce64(logits: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """(1 - eps) * NLL + eps * mean over classes of -log p, averaged over rows (timm LabelSmoothingCrossEntropy)."""
    logp = logits.double().reshape(-1, logits.shape[-1]).log_softmax(-1)
    nll = -logp.gather(1, target.reshape(-1, 1)).squeeze(1)
    return ((1 - eps) * nll + eps * (-logp.mean(-1))).mean()


def _order_logits64(heads: TemporalHeads, tokens: torch.Tensor) -> torch.Tensor:
    w, b = heads.order_head.weight.double(), heads.order_head.bias.double()
    return tokens.double().mean(2) @ w.T + b  # vit.py:341: temp_head(x_t.mean(2)), per-frame mean over patches


def _flow_logits64(heads: TemporalHeads, tokens: torch.Tensor) -> torch.Tensor:
    h = copy.deepcopy(heads).double()
    x = tokens.double()
    earlier, later = x[:, :-1], x[:, 1:]  # vit.py:329-330: x_predict = x_t[:, :-1], x_target = x_t[:, 1:]
    q, k, v = h.flow_q(later), h.flow_k(earlier), h.flow_v(earlier)  # vit.py:332-335
    attn = (q @ k.transpose(-2, -1) * D**-0.5).softmax(-1)  # vit.py:334: scaled by C ** -0.5, C the full width
    y = attn @ v @ h.flow_proj.weight.T + h.flow_proj.bias
    y = torch.nn.functional.layer_norm(y, (D,), h.flow_norm.weight, h.flow_norm.bias, eps=1e-6)
    return y @ h.flow_head.weight.T + h.flow_head.bias


def _flow_targets(seed: int = 2) -> torch.Tensor:
    return torch.randint(0, NUM_FLOW_CLASSES, (B, T - 1, GRID, GRID), generator=torch.Generator().manual_seed(seed))


def test_order_loss_matches_float64():
    """``order`` = label-smoothed CE (ε = 0.2) of the order head on each frame's mean patch token, targets 0..T-1.

    Catches pooling over frames instead of patches (``mean(1)``), targets not in frame order, and the smoothing not
    applied (plain NLL)."""
    heads, tokens = _heads(), _tokens()
    got = temporal_losses(heads, tokens, None, label_smoothing=0.2)
    assert set(got) == {"order"}
    target = torch.arange(T).expand(B, T)
    want = _smoothed_ce64(_order_logits64(heads, tokens), target, 0.2)
    assert got["order"].item() == pytest.approx(want.item(), rel=1e-5)


class _ToyClassifier(torch.nn.Module):
    """Task logits of a clip (B, T, F): a linear map of the flattened frames, so frame order matters."""

    def __init__(self, frames: int = 6, feats: int = 3, classes: int = 5):
        super().__init__()
        self.fc = torch.nn.Linear(frames * feats, classes)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.fc(video.flatten(1))


def test_debias_loss_is_uniform_cross_entropy_of_the_permuted_clip():
    """``debias`` = mean over the batch and the K classes of -log softmax of the task logits of ``video[:, perm]``,
    ``perm`` drawn from the given generator (train.py:174-179), with gradients into the task model.

    Catches the permutation drawn from the global RNG instead of ``generator``, and the sum over classes not divided
    by K (the official ``ones / NUM_CLASSES``)."""
    torch.manual_seed(0)
    model = _ToyClassifier()
    video = torch.randn(3, 6, 3)
    tokens = torch.randn(3, 6, P, D)
    heads = TemporalHeads(D, 6)

    torch.manual_seed(123)  # the global RNG is somewhere else than the generator
    got = temporal_losses(
        heads, tokens, None, generator=torch.Generator().manual_seed(7), classify_shuffled=lambda p: model(video[:, p])
    )["debias"]

    perm = torch.randperm(6, generator=torch.Generator().manual_seed(7))
    assert not torch.equal(perm, torch.arange(6))
    logits = video[:, perm].double().flatten(1) @ model.fc.weight.double().T + model.fc.bias.double()
    want = -(logits.log_softmax(-1).sum(-1) / logits.shape[-1]).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    other = -(video.double().flatten(1) @ model.fc.weight.double().T + model.fc.bias.double()).log_softmax(-1)
    assert other.mean().item() != pytest.approx(want.item(), rel=1e-3)  # the permutation matters to this model
    got.backward()
    assert model.fc.weight.grad is not None and model.fc.weight.grad.abs().sum() > 0


def test_flow_head_queries_later_frame_keys_earlier_frame():
    """Flow logits are ``(B, T-1, P, 9)``; output ``t`` attends from frame ``t+1`` (queries) to frame ``t`` (keys and
    values), and equals a float64 recomputation (scale D^-0.5, projection, LayerNorm eps 1e-6, head).

    Catches queries and keys swapped (``flow_q(earlier)``: one patch of frame t+1 would change every row of output
    t), an off-by-one frame pairing (``x[:, 2:]``) and a missing or per-head scale."""
    heads, tokens = _heads(), _tokens()
    out = heads.flow_logits(tokens)
    assert out.shape == (B, T - 1, P, NUM_FLOW_CLASSES)
    torch.testing.assert_close(out.double(), _flow_logits64(heads, tokens), rtol=1e-5, atol=1e-5)

    t = 1
    changed = tokens.clone()
    changed[:, t + 1, 0] += 1.0  # patch 0 of frame t+1: a query of output t, a key / value of output t+1
    diff = (heads.flow_logits(changed) - out).abs().amax(-1)  # (B, T-1, P)
    assert (diff[:, t, 0] > 1e-4).all()
    assert (diff[:, t, 1:] == 0).all()  # queries are per patch: the other patches of output t are untouched
    assert (diff[:, t + 1] > 1e-4).all()  # as keys / values, frame t+1 reaches every patch of output t+1
    assert (diff[:, :t] == 0).all()

    changed = tokens.clone()
    changed[:, t + 2] += 1.0  # frame t+2 takes no part in output t
    diff = (heads.flow_logits(changed) - out).abs().amax(-1)
    assert (diff[:, : t + 1] == 0).all() and (diff[:, t + 1] > 1e-4).all()


def test_flow_loss_matches_float64_and_checks_patches():
    """``flow`` = label-smoothed CE of the flow logits on the (B, T-1, H/p, W/p) labels, flattened row-major.

    Catches the labels flattened column-major (``transpose(-1, -2)`` before ``flatten``) and a label grid of another
    patch size passing silently."""
    heads, tokens, labels = _heads(), _tokens(), _flow_targets()
    got = temporal_losses(heads, tokens, labels, label_smoothing=0.2)["flow"]
    want = _smoothed_ce64(_flow_logits64(heads, tokens), labels.flatten(2), 0.2)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert temporal_losses(heads, tokens, labels.flatten(2))["flow"].item() == pytest.approx(got.item(), rel=1e-6)
    with pytest.raises(ValueError, match="same patch size"):
        temporal_losses(heads, tokens, torch.zeros(B, T - 1, 4, 4, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------------------------
# config and the combined objective
# ---------------------------------------------------------------------------------------------------------------------
def test_label_smoothing_is_shared_by_task_order_and_flow():
    """One ``label_smoothing`` sets the smoothing of the task loss, ``order`` and ``flow`` (train.py:156-158 builds one
    loss function for all three); ``debias`` does not depend on it; ``loss`` is their sum with weights 1.

    Catches ``objective`` passing the default 0.2 to the temporal losses instead of its own value, and a task loss
    without smoothing."""
    heads, tokens, labels = _heads(), _tokens(), _flow_targets()
    task_logits = torch.randn(B, 5, generator=torch.Generator().manual_seed(3))
    task_labels = torch.tensor([1, 4])
    video = torch.randn(B, T, 3, generator=torch.Generator().manual_seed(4))
    model = _ToyClassifier(frames=T)
    debias = []
    for eps in (0.0, 0.1, 0.35):
        cfg = TemporalSSLConfig(enabled=True, label_smoothing=eps)
        out = cfg.objective(
            task_logits, task_labels, heads, tokens, labels,
            classify_shuffled=lambda p: model(video[:, p]), generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        assert out["task"].item() == pytest.approx(_smoothed_ce64(task_logits, task_labels, eps).item(), rel=1e-5)
        order = _smoothed_ce64(_order_logits64(heads, tokens), torch.arange(T).expand(B, T), eps)
        assert out["order"].item() == pytest.approx(order.item(), rel=1e-5)
        flow = _smoothed_ce64(_flow_logits64(heads, tokens), labels.flatten(2), eps)
        assert out["flow"].item() == pytest.approx(flow.item(), rel=1e-5)
        total = out["task"] + out["order"] + out["debias"] + out["flow"]
        assert out["loss"].item() == pytest.approx(total.item(), rel=1e-6)
        debias.append(out["debias"].item())
    assert debias[0] == debias[1] == debias[2]


def test_config_weights_and_switch():
    """``from_dict`` fills the official weights (1 each), a weight of 0 skips its term (no second forward), a
    disabled config gives the task loss only, and bad keys are errors at their path.

    Catches a zero weight still calling ``classify_shuffled`` (the de-bias forward would run for nothing) or still
    computing the flow term, and ``enabled: false`` still adding the temporal terms."""
    cfg = TemporalSSLConfig.from_dict({"enabled": True, "weights": {"debias": 0, "flow": 0.5}})
    assert cfg.weights == {"order": 1.0, "debias": 0.0, "flow": 0.5} and cfg.label_smoothing == 0.2
    assert cfg.patch_size == 16 and TemporalSSLConfig.from_dict(None).enabled is False

    heads, tokens, labels = _heads(), _tokens(), _flow_targets()
    task_logits, task_labels = torch.randn(B, 5), torch.tensor([0, 3])

    def forbidden(perm):
        raise AssertionError("the de-bias forward ran with weight 0")

    out = cfg.objective(task_logits, task_labels, heads, tokens, labels, classify_shuffled=forbidden)
    assert set(out) == {"task", "order", "flow", "loss"}
    assert out["loss"].item() == pytest.approx((out["task"] + out["order"] + 0.5 * out["flow"]).item(), rel=1e-6)

    no_flow = TemporalSSLConfig(enabled=True, weights={"flow": 0, "debias": 0})
    assert set(no_flow.objective(task_logits, task_labels, heads, tokens, labels, None)) == {"task", "order", "loss"}
    assert set(no_flow.objective(task_logits, task_labels, heads, tokens, None, None)) == {"task", "order", "loss"}

    off = TemporalSSLConfig.from_dict({"enabled": False}).objective(
        task_logits, task_labels, heads, tokens, labels, classify_shuffled=forbidden
    )
    assert set(off) == {"task", "loss"} and off["loss"] is off["task"]

    with pytest.raises(ConfigError, match=r"temporal_ssl\.weights: unknown loss 'motion'"):
        TemporalSSLConfig.from_dict({"weights": {"motion": 1}})
    with pytest.raises(ConfigError, match=r"temporal_ssl\.smoothing: unknown key"):
        TemporalSSLConfig.from_dict({"smoothing": 0.1})
    with pytest.raises(ConfigError, match=r"temporal_ssl\.label_smoothing"):
        TemporalSSLConfig(label_smoothing=1.0)
    with pytest.raises(ValueError, match="no flow labels"):
        TemporalSSLConfig(enabled=True).objective(task_logits, task_labels, heads, tokens, None, forbidden)


def test_official_key_map_covers_every_parameter():
    """Every parameter of the heads has an official name (``vit.py:217-224``), so official checkpoints load by map.

    Catches a submodule added or renamed without its entry in ``OFFICIAL_KEYS``."""
    mapped = set(TemporalHeads.OFFICIAL_KEYS.values())
    names = {key.split(".")[0] for key in TemporalHeads(D, T).state_dict()}
    assert names == mapped
    assert set(LOSS_NAMES) == {"order", "debias", "flow"}
