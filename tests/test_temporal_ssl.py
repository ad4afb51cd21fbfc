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

import zoo
from zoo.models.base import count_parameters
from zoo.modules.temporal import (
    LOSS_NAMES,
    NUM_FLOW_CLASSES,
    TemporalHeads,
    TemporalSSLConfig,
    flow_direction_labels,
    frames_to_uint8,
    temporal_losses,
)
from zoo.modules.vision.beit import BEiTv2Encoder
from zoo.modules.vision.video import VideoEncoder
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


# ---------------------------------------------------------------------------------------------------------------------
# the video encoder's switch and X²-VLM's training loss
# ---------------------------------------------------------------------------------------------------------------------
def _image_encoder(kind: str = "beit_v2"):
    """A tiny image encoder at 32 px with 8 px patches: ``beit_v2`` (token 0 = mean of the patches, then 16 patches)
    or a timm ViT with a CLS token and 2 register tokens before its 16 patches."""
    torch.manual_seed(0)
    if kind == "beit_v2":
        return BEiTv2Encoder(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=4, drop_path_rate=0.0)
    from zoo.modules.vision.timm_encoder import TimmEncoder

    return TimmEncoder(
        "vit_tiny_patch16_224",
        img_size=32,
        model_kwargs={
            "patch_size": 8,
            "embed_dim": 32,
            "depth": 1,
            "num_heads": 4,
            "reg_tokens": 2,
            "no_embed_class": True,
        },
    )


def _video_encoder(temporal_ssl=None, kind: str = "beit_v2") -> VideoEncoder:
    image = _image_encoder(kind)
    torch.manual_seed(1)
    return VideoEncoder(image, num_frames=3, combine="temporal_attention", num_heads=4, temporal_ssl=temporal_ssl)


def _nonzero_temporal_layer(encoder: VideoEncoder) -> None:
    """The temporal layer's zero-initialised output projections made non-zero, so that it changes the tokens."""
    for p in encoder.temporal.parameters():
        torch.nn.init.normal_(p, std=0.2)


def test_temporal_ssl_off_by_default_adds_nothing():
    """Without ``temporal_ssl`` (or with ``enabled: false``) the encoder has exactly the parameters, state-dict keys
    and outputs of the encoder before the switch existed, and no ``frame_tokens``; enabled, it adds the heads' keys
    under ``temporal_heads.`` and nothing else, and its tokens and pooled vector are unchanged (the heads are read by
    the training loss only). The packaged video model has no heads either (official counts: tests/test_x2vlm.py).

    Catches the heads built whatever ``enabled`` says (extra parameters in every official video model), and the
    switch changing the combined tokens (frame tokens taken from, or written back into, the pooled path)."""
    plain, off = _video_encoder(), _video_encoder({"enabled": False, "weights": {"flow": 0.5}})
    on = _video_encoder({"enabled": True})
    assert plain.temporal_heads is None and off.temporal_heads is None
    assert plain.state_dict().keys() == off.state_dict().keys()
    assert not any("temporal_heads" in k for k in plain.state_dict())
    assert count_parameters(plain) == count_parameters(off)
    heads = {f"temporal_heads.{k}" for k in TemporalHeads(32, 3).state_dict()}
    assert set(on.state_dict()) == set(plain.state_dict()) | heads
    assert count_parameters(on) == count_parameters(plain) + count_parameters(TemporalHeads(32, 3))
    for enc in (plain, off, on):
        enc.load_state_dict(plain.state_dict(), strict=enc is not on)
        _nonzero_temporal_layer(enc)
    on.temporal.load_state_dict(plain.temporal.state_dict())
    off.temporal.load_state_dict(plain.temporal.state_dict())
    frames = torch.randn(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b, c = plain.eval()(frames), off.eval()(frames), on.eval()(frames)
    assert a.frame_tokens is None and b.frame_tokens is None and c.frame_tokens is not None
    for x in (b, c):
        assert torch.equal(x.tokens, a.tokens) and torch.equal(x.pooled, a.pooled)

    model = zoo.create_model("x2vlm-tiny-video", task="vqa_cls")
    assert model.vision.temporal_heads is None and not model.vision.temporal_ssl.enabled
    assert not any("temporal" in k for k in model.state_dict())


@pytest.mark.parametrize("kind", ["beit_v2", "timm"])
def test_frame_tokens_are_the_image_encoder_per_frame(kind):
    """``frame_tokens`` ``(B, T, P, D)`` = the image encoder run on each frame on its own, patch tokens only (beit_v2:
    without its token 0, the mean; timm ViT: without CLS and registers), plus that frame's position embedding, through
    the temporal layer (the identity at initialisation); their mean over frames is the encoder's output patch tokens
    (with a temporal layer that is not the identity); the flow patch size is the encoder's (8) when not given.

    Catches the tokens taken before the frame position embedding or before the temporal layer, the pooled / CLS /
    register positions kept (P + 1 or P + 3 tokens), and batch and time unflattened in the wrong order (``(T, B)``)."""
    enc = _video_encoder({"enabled": True}, kind).eval()
    assert enc.temporal_ssl.patch_size == 8
    frames = torch.randn(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = enc(frames).frame_tokens
        prefix = 1 if kind == "beit_v2" else enc.image_encoder.num_prefix_tokens
        assert prefix == (1 if kind == "beit_v2" else 3)
        for t in range(3):
            alone = enc.image_encoder(frames[:, t]).tokens
            assert alone.shape[1] == prefix + 16
            torch.testing.assert_close(got[:, t], alone[:, prefix:] + enc.absolute_frame_pos_embed[0, t],
                                       rtol=1e-5, atol=1e-5)
        _nonzero_temporal_layer(enc)
        out = enc(frames)
        torch.testing.assert_close(out.frame_tokens.mean(1), out.tokens[:, -16:], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out.frame_tokens, got, atol=1e-3)  # the temporal layer acted on them
    assert got.shape == (2, 3, 16, 32)


def test_a_patch_size_other_than_the_encoders_is_a_config_error_at_its_key():
    """``vision.temporal_ssl.patch_size`` must be the image encoder's patch size (the flow labels are one per output
    token); a model built with it names the key, as it names a bad weight; temporal SSL on an X²-VLM without a VQA head
    (where it trains) is an error, not a silent no-op.

    Catches a patch size that is accepted and then averages the flow over the wrong squares (the labels would still
    fit the token grid when the frame is a multiple of both)."""
    with pytest.raises(ConfigError) as info:
        _video_encoder({"enabled": True, "patch_size": 16})
    assert info.value.path == "vision.temporal_ssl.patch_size" and "patch size 8" in info.value.message
    assert _video_encoder({"enabled": True, "patch_size": 8}).temporal_ssl.patch_size == 8
    assert _video_encoder({"enabled": False, "patch_size": 16}).temporal_heads is None  # off: not checked
    with pytest.raises(ConfigError, match=r"vision\.temporal_ssl\.patch_size"):
        zoo.create_model(
            "x2vlm-tiny-video",
            task="vqa_cls",
            **{"vision.image_encoder.patch_size": 8, "vision.temporal_ssl": {"enabled": True, "patch_size": 16}},
        )
    with pytest.raises(ConfigError, match=r"vision\.temporal_ssl\.weights"):
        zoo.create_model("x2vlm-tiny-video", task="vqa_cls", **{"vision.temporal_ssl": {"weights": {"motion": 1}}})
    with pytest.raises(ConfigError, match=r"vision\.temporal_ssl\.enabled.*no vqa head"):
        zoo.create_model("x2vlm-tiny-video", task="retrieval", **{"vision.temporal_ssl": {"enabled": True}})


# a tiny X²-VLM video QA model; no dropout anywhere, so a training-mode forward is repeatable; a temporal layer (made
# non-zero below) so that the answer depends on the frame order (avgpool, or the identity layer at init, would not)
TINY_VIDEO = {
    "vision.image_encoder.patch_size": 8,
    "vision.combine": "temporal_attention",
    "vision.num_heads": 4,
    "text.hidden_dropout": 0.0,
    "text.attention_dropout": 0.0,
}
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _tiny_video_qa(temporal_ssl: dict):
    torch.manual_seed(0)
    model = zoo.create_model("x2vlm-tiny-video", task="vqa_cls", **TINY_VIDEO, **{"vision.temporal_ssl": temporal_ssl})
    _nonzero_temporal_layer(model.vision)
    return model


def _textured_clip(batch: int = 2, frames: int = 3, seed: int = 4) -> torch.Tensor:
    """``(B, T, 3, 64, 64)`` uint8: a random texture whose upper half moves right and lower half moves down, 3 pixels a
    frame (the flow labels then hold several classes)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 256, (batch, 3, 16, 16), generator=g, dtype=torch.uint8)
    base = base.repeat_interleave(4, -1).repeat_interleave(4, -2)  # 4x4 blocks: trackable texture
    out = torch.empty(batch, frames, 3, 64, 64, dtype=torch.uint8)
    for t in range(frames):
        out[:, t, :, :32] = base.roll(3 * t, dims=-1)[:, :, :32]
        out[:, t, :, 32:] = base.roll(3 * t, dims=-2)[:, :, 32:]
    return out


def _video_qa_batch(model, clip: torch.Tensor) -> dict:
    mean = torch.tensor(CLIP_MEAN).reshape(3, 1, 1)
    std = torch.tensor(CLIP_STD).reshape(3, 1, 1)
    q = torch.randint(5, 200, (clip.shape[0], 6), generator=torch.Generator().manual_seed(5))
    return {
        "images": (clip.float() / 255 - mean) / std,
        "question_ids": q,
        "question_mask": torch.ones_like(q),
        "targets": torch.tensor([1, 3]),
    }


def test_x2vlm_vqa_loss_adds_the_weighted_temporal_terms_in_training_only():
    """Training mode: ``loss`` = the classifier's VQA loss + Σ weight · term, each term equal to ``temporal_losses``
    recomputed from the model's own parts with the config's label smoothing (0.1, not the default 0.2), flow labels of
    the uint8 clip itself (the normalisation undone with the model's CLIP mean / std) and the same generator; the
    de-bias logits are the classifier's on ``images[:, perm]``. Evaluation mode: the plain VQA loss and logits.

    Catches the frames un-normalised with another mean / std (or not at all: the labels differ), the default label
    smoothing used instead of the config's, a weight applied to the wrong term, the task loss left out of ``loss``,
    the permutation drawn from the global generator, and the terms added at evaluation."""
    weights = {"order": 0.5, "flow": 2.0, "debias": 0.25}
    model = _tiny_video_qa({"enabled": True, "weights": weights, "label_smoothing": 0.1})
    pre = model.preprocess_config()
    assert (pre.mean, pre.std) == (CLIP_MEAN, CLIP_STD)
    clip = _textured_clip()
    batch = _video_qa_batch(model, clip)
    assert torch.equal(frames_to_uint8(batch["images"], pre.mean, pre.std), clip)
    labels = flow_direction_labels(clip, patch_size=8)
    assert labels.unique().numel() >= 3  # the texture moves two ways: the flow term is not trivial

    model.train()
    seen = []
    hook = model.vision.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    torch.manual_seed(123)
    got = model.vqa_loss(batch, generator=torch.Generator().manual_seed(11))
    hook.remove()
    assert set(got) == {"logits", "loss", "task", "temporal", "order", "flow", "debias"}

    images, ids, mask = batch["images"], batch["question_ids"], batch["question_mask"]
    perm = torch.randperm(3, generator=torch.Generator().manual_seed(11))
    assert not torch.equal(perm, torch.arange(3))
    with torch.no_grad():
        tokens = model.encode_image(images).frame_tokens
        task = model.vqa(model.encode_question(images, ids, mask)[:, 0], batch["targets"])["loss"]
        want = temporal_losses(
            model.vision.temporal_heads, tokens, labels, label_smoothing=0.1,
            generator=torch.Generator().manual_seed(11),
            classify_shuffled=lambda p: model.vqa(model.encode_question(images[:, p], ids, mask)[:, 0])["logits"],
        )  # fmt: skip
        shuffled = model.vqa(model.encode_question(images[:, perm], ids, mask)[:, 0])["logits"].double()
    assert want["debias"].item() == pytest.approx(-shuffled.log_softmax(-1).mean().item(), rel=1e-5)
    # the de-bias forward saw the generator's permutation (the global one after manual_seed(123) is (1, 2, 0))
    assert len(seen) == 2 and torch.equal(seen[0], images) and torch.equal(seen[1], images[:, perm])
    for name in ("order", "flow", "debias"):
        assert got[name].item() == pytest.approx(want[name].item(), rel=1e-5), name
    assert got["task"].item() == pytest.approx(task.item(), rel=1e-5)
    total = task + sum(weights[name] * want[name] for name in weights)
    assert got["loss"].item() == pytest.approx(total.item(), rel=1e-5)
    assert got["temporal"].item() == pytest.approx((total - task).item(), rel=1e-5)

    model.eval()
    plain = model.vqa_loss(batch)
    assert set(plain) == {"logits", "loss"}
    assert plain["loss"].item() == pytest.approx(task.item(), rel=1e-5)


def test_a_zero_weight_skips_its_term(monkeypatch):
    """``debias: 0``: one vision forward per step (no shuffled clip) and no ``debias`` key; ``flow: 0``: no flow labels
    computed; ``order: 0``: the order head never runs. The default weights run the vision part twice.

    Catches a zero-weight term computed and multiplied by 0 (the de-bias forward costs a second pass of the whole
    model; the flow labels an OpenCV call per frame pair)."""
    batch = _video_qa_batch(None, _textured_clip())

    def calls(model, **patches):
        count = {"vision": 0, "order": 0}
        model.vision.register_forward_hook(lambda *a: count.__setitem__("vision", count["vision"] + 1))
        model.vision.temporal_heads.order_head.register_forward_hook(
            lambda *a: count.__setitem__("order", count["order"] + 1)
        )
        out = model.train().vqa_loss(batch)
        return count, out

    count, out = calls(_tiny_video_qa({"enabled": True}))
    assert count == {"vision": 2, "order": 1} and {"order", "flow", "debias"} <= set(out)
    count, out = calls(_tiny_video_qa({"enabled": True, "weights": {"debias": 0}}))
    assert count == {"vision": 1, "order": 1} and "debias" not in out and {"order", "flow"} <= set(out)
    assert out["loss"].item() == pytest.approx((out["task"] + out["order"] + out["flow"]).item(), rel=1e-6)

    def forbidden(*args, **kwargs):
        raise AssertionError("flow labels computed for a zero flow weight")

    monkeypatch.setattr("zoo.modules.temporal.flow_direction_labels", forbidden)
    count, out = calls(_tiny_video_qa({"enabled": True, "weights": {"flow": 0, "order": 0, "debias": 0}}))
    assert count == {"vision": 1, "order": 0}
    assert set(out) == {"logits", "loss", "task", "temporal"} and out["temporal"].item() == 0.0
    assert out["loss"].item() == pytest.approx(out["task"].item(), rel=1e-6)


def test_gradients_reach_the_temporal_heads_and_the_encoder():
    """Every parameter of ``temporal_heads`` gets a non-zero gradient from ``loss``, and the temporal terms alone reach
    the image encoder (the frame tokens are not detached).

    Catches the frame tokens detached (the backbone would learn nothing from the temporal objectives) and a head
    left out of the loss (its parameters without gradient: also an unused-parameter error under DDP)."""
    model = _tiny_video_qa({"enabled": True}).train()
    batch = _video_qa_batch(model, _textured_clip())
    out = model.vqa_loss(batch)
    (out["order"] + out["flow"]).backward(retain_graph=True)  # not debias: its own forward reaches the encoder anyway
    patch = model.vision.image_encoder.patch_embed.proj.weight
    assert patch.grad is not None and patch.grad.abs().sum() > 0
    model.zero_grad()
    out["loss"].backward()
    for name, p in model.vision.temporal_heads.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_generative_vqa_trains_order_and_flow():
    """With the generative answer decoder (no answer classes) the temporal terms are order and flow; a de-bias weight
    above 0 is a config error at its key.

    Catches the generative path silently dropping the temporal terms, or running a de-bias term it has no classes
    for."""
    video = {
        "_replace_": True,
        "type": "video",
        "num_frames": 3,
        "image_encoder": {
            "type": "beit_v2",
            "img_size": 64,
            "patch_size": 8,
            "embed_dim": 64,
            "depth": 1,
            "num_heads": 4,
            "drop_path_rate": 0.0,
        },
    }
    with pytest.raises(ConfigError, match=r"vision\.temporal_ssl\.weights\.debias"):
        zoo.create_model("x2vlm-tiny", task="vqa", vision={**video, "temporal_ssl": {"enabled": True}})
    torch.manual_seed(0)
    model = zoo.create_model(
        "x2vlm-tiny", task="vqa", vision={**video, "temporal_ssl": {"enabled": True, "weights": {"debias": 0}}}
    )
    assert model.generative_vqa
    batch = _video_qa_batch(model, _textured_clip())
    answers = torch.tensor([[101, 20, 102, 0], [101, 21, 102, 0], [101, 22, 21, 102]])
    batch.update(
        answer_ids=answers,
        answer_mask=(answers != 0).long(),
        weights=torch.tensor([1.0, 0.5, 0.5]),
        answers_per_question=torch.tensor([1, 2]),
    )
    out = model.train().vqa_loss(batch)
    assert {"order", "flow"} <= set(out) and "debias" not in out
    assert out["loss"].item() == pytest.approx((out["task"] + out["order"] + out["flow"]).item(), rel=1e-6)
    assert not {"order", "flow", "task", "temporal"} & set(model.eval().vqa_loss(batch))
