"""Temporal self-supervision of "Time Is MattEr" (Yun et al., ICML 2022) as a reusable training objective.

Three training-only signals on a video transformer's per-frame patch tokens ``(B, T, P, D)`` (taken after the final
norm, before any pooling over frames; ``P = (H / p) · (W / p)`` patches in row-major order, one token frame per input
frame):

``order``
    :attr:`TemporalHeads.order_head` (``Linear(D, T)``) on the mean over patches of each frame predicts the frame's
    index; targets ``0 … T-1`` (official ``vit.py:217``, ``:341``; ``train.py:170-172``).
``flow``
    For each pair of consecutive frames, single-head attention with queries from frame ``t+1`` and keys / values from
    frame ``t`` (separate ``Linear(D, D)`` projections with bias, logits scaled by ``D^-0.5``), then ``Linear(D, D)``,
    ``LayerNorm(D, eps=1e-6)`` and ``Linear(D, 9)`` per patch, no residual (``vit.py:219-224``, ``:328-341``). The
    targets are :func:`flow_direction_labels` (``train.py:166-168``).
``debias``
    The frames of the whole batch are permuted by one random permutation, the *task* model (backbone and task head, in
    training mode, with gradients) is run on the permuted clip, and its logits are pushed towards the uniform
    distribution: ``mean_b mean_k -log softmax(logits)_k`` (``train.py:174-179``; ``vit.py:326-327``).

The total is ``task + order + debias + flow`` (each weight 1, ``train.py:182``), where the task loss, ``order`` and
``flow`` share one label smoothing (0.2 in the official SSv2 config, ``configs/timesformer/ssv2/train.yaml``
``SOLVER.SMOOTHING``; ``train.py:156-158`` builds one loss function and uses it for all three). Evaluation returns the
task output only (``vit.py:323-324``): the heads are unused there.

:class:`TemporalSSLConfig` is the ``temporal_ssl: {enabled, weights, label_smoothing, patch_size}`` switch a video
model owns; :meth:`TemporalSSLConfig.objective` computes the task loss and the three terms with its one label
smoothing and returns their weighted sum.

In the zoo the switch is the ``temporal_ssl`` argument of the ``video`` vision encoder
(:class:`zoo.modules.vision.video.VideoEncoder`): enabled, the encoder owns the :class:`TemporalHeads` and returns the
per-frame patch tokens (``EncoderOutput.frame_tokens``); a family's training loss adds :func:`temporal_ssl_loss`
(flow labels from the frames it received, the weighted terms) to its own task loss — X²-VLM's ``vqa_loss`` does.

Line numbers refer to github.com/alinlab/temporal-selfsupervision at commit 42097b4 (files
``research_platform/models/timesformer/vit.py``, ``train.py``, ``research_platform/datasets/ssv2/ssv2_webm.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.modules.attention import attention
from zoo.spec import ConfigError

__all__ = [
    "LOSS_NAMES",
    "NUM_FLOW_CLASSES",
    "TemporalHeads",
    "TemporalSSLConfig",
    "flow_direction_labels",
    "frames_to_uint8",
    "smoothed_cross_entropy",
    "temporal_losses",
    "temporal_ssl_loss",
    "uniform_cross_entropy",
]

NUM_FLOW_CLASSES = 9  # 0 = no motion, 1 … 8 = one of eight 45-degree direction sectors (vit.py:224)
LOSS_NAMES = ("order", "debias", "flow")

# cv2.calcOpticalFlowFarneback(prev, next, None, pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags)
_FARNEBACK = (0.5, 3, 15, 3, 5, 1.2, 0)  # ssv2_webm.py:254
_GREY = (0.299, 0.587, 0.114)  # ssv2_webm.py:251, on R, G, B
_INTENSITY = 128  # ssv2_webm.py:254: the grey frames are multiplied by 128 before Farneback


# ---------------------------------------------------------------------------------------------------------------------
# flow labels (data side)
# ---------------------------------------------------------------------------------------------------------------------
def _pair_labels(cv2: Any, prev: np.ndarray, nxt: np.ndarray, patch_size: int) -> np.ndarray:
    h, w = prev.shape[0] // patch_size, prev.shape[1] // patch_size
    flow = cv2.calcOpticalFlowFarneback(prev * _INTENSITY, nxt * _INTENSITY, None, *_FARNEBACK)  # (H, W, 2): dx, dy
    # mean flow per patch: (H, W, 2) -> (2, h, w, p·p) -> (2, h, w)   (ssv2_webm.py:255-256)
    per_patch = flow.reshape(h, patch_size, w, patch_size, 2).transpose(4, 0, 2, 1, 3)
    per_patch = per_patch.reshape(2, h, w, patch_size * patch_size).mean(-1)
    # angle of (dx, dy) in image coordinates (y down), degrees in [0, 360)   (ssv2_webm.py:257-258)
    magnitude, angle = cv2.cartToPolar(per_patch[0], per_patch[1])
    angle = angle * 180 / np.pi
    # magnitude min-max normalised to [0, 100] over this pair's patches; moving when the floor is > 0, i.e. >= 1
    # (ssv2_webm.py:259); a pair whose magnitudes are all equal (a static clip) normalises to 0 everywhere
    moving = cv2.normalize(magnitude, None, 0, 100, cv2.NORM_MINMAX) // 1 > 0
    # sector k of 45 degrees -> class k + 1, 0 when not moving   (ssv2_webm.py:260)
    return ((np.clip(angle // 45, 0, 7) + 1) * moving).astype(np.int64)


def flow_direction_labels(frames: Tensor, patch_size: int = 16) -> Tensor:
    """Per-patch motion-direction classes between consecutive frames, as the official SSv2 data code computes them.

    Args:
        frames: RGB frames ``(B, T, 3, H, W)`` or ``(T, 3, H, W)``, either ``uint8`` in ``[0, 255]`` or floating point
            in ``[0, 1]`` (*not* mean/std-normalised: undo the model's normalisation first), already cropped / resized
            as fed to the model. ``H`` and ``W`` must be multiples of ``patch_size``. Channel 0 is red.
        patch_size: the model's spatial patch size (the flow is averaged over each patch).

    Returns:
        ``LongTensor`` ``(B, T-1, H/p, W/p)`` (``(T-1, H/p, W/p)`` for a 4-d input): entry ``t`` describes the motion
        from frame ``t`` to frame ``t+1``. Class 0: no motion (magnitude below 1 % of the largest patch magnitude of
        that frame pair); class ``k + 1`` for ``k = 0 … 7``: the patch's mean flow ``(dx, dy)`` points into the sector
        ``[45k, 45k + 45)`` degrees, measured from the +x axis (rightwards) *towards +y, which points down* in image
        coordinates: 1 = right and slightly down, 3 = down and slightly left, 5 = left and slightly up, 7 = up and
        slightly right (``ssv2_webm.py:251-260``).

    The frames are normalised as the official pipeline does before the flow (``uint8 / 255``, then mean 0.5 / std
    0.5 per channel: ``ssv2_webm.py:225-226`` with ``MEAN = STD = [0.5, 0.5, 0.5]`` in the SSv2 config,
    ``datasets/utils.py:331-353``), turned grey with weights 0.299 / 0.587 / 0.114, multiplied by 128 and passed to
    ``cv2.calcOpticalFlowFarneback`` with ``(0.5, 3, 15, 3, 5, 1.2, 0)`` (``ssv2_webm.py:251-254``), all in float32.
    Runs on the CPU with OpenCV (the ``video`` extra, ``opencv-python-headless``): call it in the dataset or the
    collate function, as the official code does, not in the training step.
    """
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ImportError(
            "flow_direction_labels needs OpenCV: pip install opencv-python-headless (the 'video' extra)"
        ) from e
    if not isinstance(frames, Tensor):
        raise TypeError(f"frames must be a torch.Tensor, got {type(frames).__name__}")
    squeeze = frames.dim() == 4
    if squeeze:
        frames = frames.unsqueeze(0)
    if frames.dim() != 5 or frames.shape[2] != 3:
        raise ValueError(f"frames must be (B, T, 3, H, W) or (T, 3, H, W) RGB, got {tuple(frames.shape)}")
    b, t, _, height, width = frames.shape
    if t < 2:
        raise ValueError(f"flow labels need at least 2 frames, got {t}")
    if patch_size <= 0 or height % patch_size or width % patch_size:
        raise ValueError(f"frame size {height}x{width} is not a multiple of patch_size {patch_size}")
    x = frames.detach().cpu()
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif x.is_floating_point():
        x = x.float()
    else:
        raise TypeError(f"frames must be uint8 or floating point, got {x.dtype}")
    x = (x - 0.5) / 0.5
    grey = (_GREY[0] * x[:, :, 0] + _GREY[1] * x[:, :, 1] + _GREY[2] * x[:, :, 2]).contiguous().numpy()
    out = np.empty((b, t - 1, height // patch_size, width // patch_size), dtype=np.int64)
    for i in range(b):
        for j in range(t - 1):
            out[i, j] = _pair_labels(cv2, grey[i, j], grey[i, j + 1], patch_size)
    labels = torch.from_numpy(out)
    return labels[0] if squeeze else labels


# ---------------------------------------------------------------------------------------------------------------------
# heads (model side)
# ---------------------------------------------------------------------------------------------------------------------
class TemporalHeads(nn.Module):
    """The frame-order head and the flow module of the official TimeSformer (``vit.py:217-224``).

    Submodules (official name in brackets): ``order_head`` (``temp_head``), ``flow_q`` / ``flow_k`` / ``flow_v``
    (``mlp_q`` / ``mlp_k`` / ``mlp_v``), ``flow_proj`` (``mlp_proj``), ``flow_norm`` (``mlp_norm``), ``flow_head``
    (``flow_head``); :attr:`OFFICIAL_KEYS` maps the names for loading official checkpoints. Weights are initialised
    as the official ``_init_vit_weights`` does (``vit.py:349-375``): linear weights truncated normal with std 0.02
    and zero biases, LayerNorm ones and zeros.

    Args:
        width: token width ``D``.
        num_frames: ``T``, the number of frames (token frames) per clip: the order head's number of classes.
        norm_eps: the flow module's LayerNorm epsilon (the official model's ``norm_layer`` uses 1e-6, ``vit.py:190``).
    """

    OFFICIAL_KEYS: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            "temp_head": "order_head",
            "mlp_q": "flow_q",
            "mlp_k": "flow_k",
            "mlp_v": "flow_v",
            "mlp_proj": "flow_proj",
            "mlp_norm": "flow_norm",
            "flow_head": "flow_head",
        }
    )

    def __init__(self, width: int, num_frames: int, norm_eps: float = 1e-6):
        super().__init__()
        if width <= 0 or num_frames < 2:
            raise ValueError(f"TemporalHeads needs width > 0 and num_frames >= 2, got {width}, {num_frames}")
        self.width, self.num_frames = width, num_frames
        self.order_head = nn.Linear(width, num_frames)
        self.flow_q = nn.Linear(width, width)
        self.flow_k = nn.Linear(width, width)
        self.flow_v = nn.Linear(width, width)
        self.flow_proj = nn.Linear(width, width)
        self.flow_norm = nn.LayerNorm(width, eps=norm_eps)
        self.flow_head = nn.Linear(width, NUM_FLOW_CLASSES)
        self.attn_backend: str | None = None  # set by zoo.modules.attention.set_attention_backend
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _check(self, frame_tokens: Tensor) -> None:
        if frame_tokens.dim() != 4 or frame_tokens.shape[-1] != self.width:
            raise ValueError(f"frame tokens must be (B, T, P, {self.width}), got {tuple(frame_tokens.shape)}")
        if frame_tokens.shape[1] != self.num_frames:
            raise ValueError(f"TemporalHeads was built for {self.num_frames} frames, got {frame_tokens.shape[1]}")

    def order_logits(self, frame_tokens: Tensor) -> Tensor:
        """``(B, T, P, D)`` -> ``(B, T, T)``: frame-index logits of each frame's mean patch token (``vit.py:341``)."""
        self._check(frame_tokens)
        return self.order_head(frame_tokens.mean(2))

    def flow_logits(self, frame_tokens: Tensor) -> Tensor:
        """``(B, T, P, D)`` -> ``(B, T-1, P, 9)``: entry ``t`` is the motion from frame ``t`` to ``t+1``.

        Queries come from frame ``t+1``, keys and values from frame ``t`` (``vit.py:329-339``).
        """
        self._check(frame_tokens)
        b, t, p, d = frame_tokens.shape
        earlier, later = frame_tokens[:, :-1], frame_tokens[:, 1:]
        q = self.flow_q(later).reshape(b * (t - 1), 1, p, d)
        k = self.flow_k(earlier).reshape(b * (t - 1), 1, p, d)
        v = self.flow_v(earlier).reshape(b * (t - 1), 1, p, d)
        x = attention(q, k, v, scale=d**-0.5, backend=self.attn_backend).reshape(b, t - 1, p, d)
        return self.flow_head(self.flow_norm(self.flow_proj(x)))

    def forward(self, frame_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Order logits ``(B, T, T)`` and flow logits ``(B, T-1, P, 9)``."""
        return self.order_logits(frame_tokens), self.flow_logits(frame_tokens)


# ---------------------------------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------------------------------
def smoothed_cross_entropy(logits: Tensor, target: Tensor, label_smoothing: float) -> Tensor:
    """``mean((1 - ε) · NLL + ε · mean_k -log p_k)``: timm's ``LabelSmoothingCrossEntropy`` the official code uses
    (``losses.py:13``, ``train.py:156-158``). Logits ``(..., K)``, integer targets ``(...)``."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), label_smoothing=label_smoothing
    )


def uniform_cross_entropy(logits: Tensor) -> Tensor:
    """Cross-entropy to the uniform distribution, ``mean_b mean_k -log softmax(logits)_k`` (``train.py:177-179``)."""
    return -F.log_softmax(logits.float(), dim=-1).mean(-1).mean()


def temporal_losses(
    heads: TemporalHeads,
    frame_tokens: Tensor,
    flow_labels: Tensor | None,
    label_smoothing: float = 0.2,
    generator: torch.Generator | None = None,
    classify_shuffled: Callable[[Tensor], Tensor] | None = None,
    order: bool = True,
) -> dict[str, Tensor]:
    """The three temporal losses, unweighted.

    Args:
        heads: the :class:`TemporalHeads` of the model.
        frame_tokens: ``(B, T, P, D)`` per-frame patch tokens of the (unpermuted) clip, after the backbone's final
            norm; ``P`` must equal the number of patches of the flow labels, in the same (row-major) order.
        flow_labels: :func:`flow_direction_labels` of the clip, ``(B, T-1, H/p, W/p)`` or ``(B, T-1, P)``; None skips
            ``flow``.
        label_smoothing: shared by ``order`` and ``flow`` (and, in the official recipe, the task loss).
        generator: draws the de-bias frame permutation (``torch.randperm(T, generator=generator)``; like the
            official ``np.random.permutation`` it may be the identity).
        classify_shuffled: ``perm -> task logits (B, K)`` of the model on ``video[:, perm]`` (backbone and task head,
            training mode, with gradients): the de-bias term. None skips ``debias``.
        order: False skips ``order``.

    Returns:
        ``{"order": …, "flow": …, "debias": …}`` (scalars; the skipped ones absent).
    """
    b, t = frame_tokens.shape[:2]
    out: dict[str, Tensor] = {}
    if order:
        target = torch.arange(t, device=frame_tokens.device).expand(b, t)
        out["order"] = smoothed_cross_entropy(heads.order_logits(frame_tokens), target, label_smoothing)
    if classify_shuffled is not None:
        perm = torch.randperm(t, generator=generator)
        out["debias"] = uniform_cross_entropy(classify_shuffled(perm.to(frame_tokens.device)))
    if flow_labels is not None:
        p = frame_tokens.shape[2]
        if flow_labels.dim() == 4:
            flow_labels = flow_labels.flatten(2)
        if tuple(flow_labels.shape) != (b, t - 1, p):
            raise ValueError(
                f"flow labels {tuple(flow_labels.shape)} do not match frame tokens {tuple(frame_tokens.shape)}: "
                f"expected (B, T-1, P) = {(b, t - 1, p)} (same patch size as the model?)"
            )
        logits = heads.flow_logits(frame_tokens)
        out["flow"] = smoothed_cross_entropy(logits, flow_labels.to(logits.device).long(), label_smoothing)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------------------
def _default_weights() -> dict[str, float]:
    return {name: 1.0 for name in LOSS_NAMES}  # train.py:182


@dataclass(frozen=True)
class TemporalSSLConfig:
    """The ``temporal_ssl`` block of a video model: ``{enabled, weights, label_smoothing, patch_size}``.

    ``weights`` may name any of ``order``, ``debias``, ``flow`` (the others stay 1, the official weights); a weight of
    0 skips that term's computation. ``label_smoothing`` is shared by the task loss, ``order`` and ``flow``;
    ``patch_size`` is the one :func:`flow_direction_labels` must use (the model's spatial patch size).
    """

    enabled: bool = False
    weights: Mapping[str, float] = field(default_factory=_default_weights)
    label_smoothing: float = 0.2
    patch_size: int = 16

    def __post_init__(self) -> None:
        path = "temporal_ssl"
        unknown = sorted(set(self.weights) - set(LOSS_NAMES))
        if unknown:
            raise ConfigError(
                f"unknown loss {unknown[0]!r}; expected one of {', '.join(LOSS_NAMES)}", f"{path}.weights"
            )
        weights = _default_weights()
        for name, value in self.weights.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"must be a finite number >= 0, got {value!r}", f"{path}.weights.{name}")
            weights[name] = float(value)
        object.__setattr__(self, "weights", weights)
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"must be true or false, got {self.enabled!r}", f"{path}.enabled")
        ls = self.label_smoothing
        if isinstance(ls, bool) or not isinstance(ls, (int, float)) or not 0 <= ls < 1:
            raise ConfigError(f"must be a number in [0, 1), got {ls!r}", f"{path}.label_smoothing")
        if isinstance(self.patch_size, bool) or not isinstance(self.patch_size, int) or self.patch_size <= 0:
            raise ConfigError(f"must be a positive integer, got {self.patch_size!r}", f"{path}.patch_size")

    @classmethod
    def from_dict(cls, node: Mapping[str, Any] | None) -> TemporalSSLConfig:
        """Build from a config mapping (None or ``{}`` gives the disabled default); unknown keys are an error."""
        node = dict(node or {})
        unknown = sorted(set(node) - {"enabled", "weights", "label_smoothing", "patch_size"})
        if unknown:
            raise ConfigError(
                "unknown key; expected enabled, weights, label_smoothing, patch_size", f"temporal_ssl.{unknown[0]}"
            )
        if "weights" in node and not isinstance(node["weights"], Mapping):
            raise ConfigError(f"must be a mapping, got {node['weights']!r}", "temporal_ssl.weights")
        return cls(**node)

    def objective(
        self,
        task_logits: Tensor,
        labels: Tensor,
        heads: TemporalHeads,
        frame_tokens: Tensor,
        flow_labels: Tensor | None,
        classify_shuffled: Callable[[Tensor], Tensor] | None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """The training loss: ``{"task", "order", "debias", "flow", "loss"}`` with
        ``loss = task + Σ weights[name] · name`` (``train.py:182``).

        The task loss is :func:`smoothed_cross_entropy` with :attr:`label_smoothing`, the same ε as ``order`` and
        ``flow``. Terms whose weight is 0 are not computed (no second forward for ``debias``, no flow labels needed
        for ``flow``); when :attr:`enabled` is false only the task loss is. Call it in training only: evaluation
        returns the task output, the heads unused.
        """
        task = smoothed_cross_entropy(task_logits, labels, self.label_smoothing)
        out: dict[str, Tensor] = {"task": task}
        out["loss"] = task
        if self.enabled:
            out.update(self.terms(heads, frame_tokens, flow_labels, classify_shuffled, generator))
            out["loss"] = task + out.pop("temporal")
        return out

    def terms(
        self,
        heads: TemporalHeads,
        frame_tokens: Tensor,
        flow_labels: Tensor | None,
        classify_shuffled: Callable[[Tensor], Tensor] | None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """The terms whose weight is not 0 (unweighted, with the shared label smoothing) and ``"temporal"``, their
        weighted sum; a term with weight > 0 whose input is missing (flow labels, the de-bias callback) is an error."""
        w = self.weights
        if w["flow"] and flow_labels is None:
            raise ValueError("temporal_ssl: the flow loss has weight > 0 but no flow labels were given")
        if w["debias"] and classify_shuffled is None:
            raise ValueError("temporal_ssl: the de-bias loss has weight > 0 but no classify_shuffled was given")
        out = temporal_losses(heads, frame_tokens, flow_labels if w["flow"] else None,
                              label_smoothing=self.label_smoothing, generator=generator,
                              classify_shuffled=classify_shuffled if w["debias"] else None, order=bool(w["order"]))
        out["temporal"] = sum((w[name] * out[name] for name in LOSS_NAMES if name in out),
                              start=frame_tokens.new_zeros((), dtype=torch.float32))
        return out


# ---------------------------------------------------------------------------------------------------------------------
# a video model's training loss
# ---------------------------------------------------------------------------------------------------------------------
def frames_to_uint8(frames: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """Normalised frames ``(..., 3, H, W)`` (``(x / 255 - mean) / std``) back to ``uint8`` pixels in ``[0, 255]``
    (rounded, clamped), on the CPU: the input :func:`flow_direction_labels` takes."""
    x = frames.detach().float().cpu()
    m = torch.as_tensor(mean, dtype=torch.float32).reshape(3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).reshape(3, 1, 1)
    return (x * s + m).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)


def temporal_ssl_loss(
    encoder: nn.Module,
    frames: Tensor,
    frame_tokens: Tensor | None,
    classify_shuffled: Callable[[Tensor], Tensor] | None,
    mean: Sequence[float] | Tensor,
    std: Sequence[float] | Tensor,
    generator: torch.Generator | None = None,
    flow_labels: Tensor | None = None,
) -> dict[str, Tensor]:
    """The weighted temporal terms a video model adds to its task loss in training (any family; the encoder is a
    :class:`zoo.modules.vision.video.VideoEncoder` built with ``temporal_ssl: {enabled: true, ...}``).

    Args:
        encoder: owns ``temporal_ssl`` (a :class:`TemporalSSLConfig`) and ``temporal_heads`` (:class:`TemporalHeads`).
        frames: ``(B, T, 3, H, W)`` the frames the model received, normalised with ``mean`` / ``std``.
        frame_tokens: ``(B, T, P, D)`` the encoder's ``EncoderOutput.frame_tokens`` of those frames.
        classify_shuffled: ``perm -> task logits (B, K)`` of the whole model (training mode, with gradients) on
            ``frames[:, perm]``; may be None only when the ``debias`` weight is 0.
        mean, std: the model's normalisation (``model.preprocess_config()``), to undo it for the flow.
        generator: draws the de-bias permutation (None: torch's global generator).
        flow_labels: precomputed :func:`flow_direction_labels` (from a data pipeline); None computes them here.

    Returns:
        ``{"order", "flow", "debias"}`` (unweighted; a term whose weight is 0 is absent: not computed — no flow
        labels, no second forward) and ``"temporal"``: ``Σ weights[name] · name`` (``train.py:182``; zero when every
        weight is 0). The caller adds ``temporal`` to its task loss. ``order`` and ``flow`` use the config's
        ``label_smoothing`` (``train.py:156-158``); the task loss stays the model's own.

    The flow labels are computed from the frames the model received: un-normalised with ``mean`` / ``std``, rounded
    to ``uint8`` and then normalised as the official code does (:func:`flow_direction_labels`), with the config's
    ``patch_size`` (the encoder's). They therefore see the data transform's resize, crop, flip and augmentation, as
    the official labels do: ``ssv2_webm.py`` runs RandAugment, ``tensor_normalize`` (``:225-226``) and
    ``spatial_sampling`` (random resized crop and flip) before the flow (``:251-260``). With crops and augmentation
    off (``videoqa-temporal-ssl-shapes``) they are the flow of the resized clip. The only departure is the rounding
    to whole pixel values (at most half a level of 255). They are computed on the CPU
    with OpenCV in the training step (one Farneback call per frame pair; cheap at the shapes' 64 px, a cost to
    measure at 224 px, where passing ``flow_labels`` from the collate function moves it into the data workers).
    """
    cfg = getattr(encoder, "temporal_ssl", None)
    heads = getattr(encoder, "temporal_heads", None)
    if not isinstance(cfg, TemporalSSLConfig) or not cfg.enabled or heads is None:
        raise ValueError(f"{type(encoder).__name__} has no temporal self-supervision (temporal_ssl.enabled: true)")
    if frame_tokens is None:
        raise ValueError("temporal_ssl: the encoder output carries no frame_tokens")
    if cfg.weights["flow"] and flow_labels is None:
        flow_labels = flow_direction_labels(frames_to_uint8(frames, mean, std), cfg.patch_size)
    return cfg.terms(heads, frame_tokens, flow_labels, classify_shuffled, generator)
