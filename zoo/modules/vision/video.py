"""Video encoder: an image encoder run frame by frame, combined over time as X²-VLM does (registered as ``video``).

X²-VLM (``XVLMBase._encode_frames`` / ``_encode_video_pooling``, video_encoding ``avgpool``): frames ``(B, F, C, H, W)``
go through the image ViT as a batch of ``B*F`` images; a learnable frame position embedding
``absolute_frame_pos_embed`` of shape ``(1, F, 1, D)`` (zeros, then trunc-normal std 0.02) is added to every token of
frame ``f``; the frames are averaged per token position -> ``(B, P, D)``, one image's worth of tokens. The parameter
name is the official one, so the video checkpoint's ``absolute_frame_pos_embed`` loads as it is; a checkpoint with a
different frame count fills the first ``min(F, F')`` frames (the official loader does the same) with a warning.

Hand-written (nothing in timm / transformers does this): the frame loop, the position embedding, the pooling and the
optional ``temporal_attention`` combine: one pre-norm transformer layer (self-attention over the ``F`` frames of each
token position on :func:`zoo.modules.attention.attention`, with its own time embedding at the attention's input, then
an MLP) before the mean over frames. Its output projections start at zero, so at initialisation it equals
``avgpool``. ``concat`` keeps every frame: the tokens are ``(B, 1 + T · N, D)``, the pooled vector (the mean over
frames, as ``avgpool``'s, so token 0 stays the video's summary as X²-VLM's image CLS is) and then each frame's ``N``
tokens frame after frame, each carrying its frame's position embedding: the cross-attention of a fusion sees every
frame's patches and can compare them (``T`` times the tokens to attend to).

``pooled`` is combined exactly like the tokens (the image encoder's pooled vector of each frame plus that frame's
position embedding, averaged over frames, or passed through the temporal layer as one more token position); for
``beit_v2`` it therefore equals ``tokens[:, 0]`` as for images.

Temporal self-supervision (``temporal_ssl: {enabled: true, ...}``, :mod:`zoo.modules.temporal`, "Time Is MattEr"):
the encoder owns ``temporal_heads`` (:class:`~zoo.modules.temporal.TemporalHeads`: frame-order head and flow module)
and returns ``frame_tokens`` ``(B, T, P, D)``: the image encoder's output tokens of each frame, patch tokens only
(the last ``P = (H / p) · (W / p)`` of each frame's sequence: every image encoder puts its pooled / CLS / register
positions before the patches, ``beit_v2`` its mean token), after the frame position embedding and the temporal layer,
before the mean over frames — the official heads read the per-frame tokens of a backbone that added the time
embedding at its input and attended across frames in every block, after the final norm, before pooling
(``vit.py`` ``prepare_tokens``, ``forward_features``, ``:328-341``). Taken before the frame position, each frame's
tokens would not know their index and the order head could only guess from content (measured: its loss stayed at
``ln T``). The flow labels' ``patch_size`` is the image encoder's (taken from its patch embedding when not
given; a different value is a ConfigError at ``vision.temporal_ssl.patch_size``). The objective itself is the
family's training loss (:func:`zoo.modules.temporal.temporal_ssl_loss`). Disabled (the default) nothing is added:
parameters, state-dict keys and outputs are those of the encoder without it.

Temporal shift (``temporal_shift``, TSM: Lin, Gan and Han, "TSM: Temporal Shift Module for Efficient Video
Understanding", ICCV 2019): inside the image encoder, at the input of every block's attention branch (a forward
pre-hook on the block's first norm, ``norm1`` in timm / BEiT blocks, ``ln_1`` in open_clip's), a fraction of the
channels of each frame's tokens is replaced by the previous frame's and as many by the next frame's (zeros past the
clip's ends); the residual stream keeps its own channels (the paper's "residual shift"). The block's spatial attention
then sees, at every position, what was there a frame before and after beside what is there now — a moving object is
an arrival at one place and a departure at its neighbour, which a per-position temporal layer alone cannot relate.
No parameters, no FLOPs, state-dict keys unchanged; 0 (the default) registers nothing.

Frame count: with ``frame_pos`` the input must have exactly ``num_frames`` frames (a ``ValueError`` says so; sample
``num_frames`` frames per video — the embedding is not interpolated). Without ``frame_pos`` any number of frames works.
``hidden_states`` (when asked) are the image encoder's, over the ``B*F`` frame batch.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Literal

import torch
from einops import rearrange
from timm.layers import trunc_normal_
from torch import Tensor, nn

from zoo.modules.attention import attention
from zoo.modules.outputs import EncoderOutput
from zoo.modules.temporal import TemporalHeads, TemporalSSLConfig
from zoo.registry import VISION_ENCODERS
from zoo.spec import ConfigError, Part

__all__ = ["TemporalAttentionLayer", "VideoEncoder", "temporal_shift"]


# ---------------------------------------------------------------------------------------------------------------------
# blocks
# ---------------------------------------------------------------------------------------------------------------------
class TemporalAttentionLayer(nn.Module):
    """Pre-norm transformer layer over time: ``x + proj(attn(norm1(x) + time_embed))``, then ``x + mlp(norm2(x))``; x
    is (B, T, P, D) (P token positions of T frames).

    ``span`` says what a token attends to: ``position`` (the same token position in every frame: ``(B·P, T)``
    sequences, TimeSformer's temporal attention), ``clip`` (every token of every frame: one ``(B, T·P)`` sequence,
    ViViT's joint space-time attention) or ``divided`` (TimeSformer's divided block: the ``position`` attention, then
    a second attention over the P tokens of each frame, ``(B·T, P)`` sequences, with its own ``norm_s``, ``qkv_s``
    and zero-initialised ``proj_s``, then the MLP). A moving object is at another position in the next frame:
    attending over its own position only, a token sees that something arrived or left there, not where from; over the
    clip it can find the object in the other frames (the tokens carry the image encoder's spatial position); divided,
    a token that saw something arrive then looks at its neighbours in the same frame (where the object is now).

    ``time_embed`` ``(1, T, D)`` (normal, std 1: the scale of the normalised tokens it is added to) tells the attention
    which frame each token comes from. Without it the layer is equivariant to a permutation of the frames and the mean
    after it invariant: a clip and the clip played backwards give the same video tokens (the frame position embedding
    of X²-VLM, std 0.02 against tokens of unit scale, breaks the tie too weakly to learn from; measured: direction,
    order and "what colour did it become" stayed at chance). It enters the attention's input only, not the residual
    stream, and ``proj`` and the MLP's output layer start at zero: the layer is the identity at initialisation.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, num_frames: int = 1,
                 span: Literal["position", "clip", "divided"] = "position"):
        super().__init__()
        if span not in ("position", "clip", "divided"):
            raise ConfigError(f"the temporal layer's span must be 'position', 'clip' or 'divided', got {span!r}",
                              "temporal_span")
        self.num_heads = num_heads
        self.span = span
        self.attn_backend: str | None = None
        self.time_embed = nn.Parameter(torch.randn(1, num_frames, dim))
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        zeroed = [self.proj]
        if span == "divided":  # the spatial attention within each frame, after the temporal one
            self.norm_s = nn.LayerNorm(dim, eps=1e-6)
            self.qkv_s = nn.Linear(dim, 3 * dim)
            self.proj_s = nn.Linear(dim, dim)
            zeroed.append(self.proj_s)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        for layer in (*zeroed, self.mlp[2]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, t, p, _ = x.shape
        if t != self.time_embed.shape[1]:
            raise ValueError(f"the temporal layer was built for {self.time_embed.shape[1]} frames, got {t}")
        h = self.norm1(x) + self.time_embed.unsqueeze(2)  # every token of frame t gets time_embed[t]
        seqs = "b h (t p) e" if self.span == "clip" else "(b p) h t e"  # (sequences, heads, length, head dim)
        x = x + self.proj(self._attend(self.qkv(h), seqs, b, p))
        if self.span == "divided":  # then each frame's tokens among themselves
            x = x + self.proj_s(self._attend(self.qkv_s(self.norm_s(x)), "(b t) h p e", b, p))
        return x + self.mlp(self.norm2(x))

    def _attend(self, qkv: Tensor, seqs: str, b: int, p: int) -> Tensor:
        """Attention over the sequences ``seqs`` names, back to (B, T, P, D)."""
        q, k, v = rearrange(qkv, f"b t p (three h e) -> three {seqs}", three=3, h=self.num_heads)
        return rearrange(attention(q, k, v, backend=self.attn_backend), f"{seqs} -> b t p (h e)", b=b, p=p)


def _owners(image_encoder: nn.Module) -> list[nn.Module]:
    """The encoder, then the timm / open_clip model it wraps (``model`` / ``visual``) where it has one."""
    return [m for m in (image_encoder, getattr(image_encoder, "model", None), getattr(image_encoder, "visual", None))
            if m is not None]


def _patch_size(image_encoder: nn.Module) -> int | None:
    """The square patch size of a ViT-like image encoder (its ``patch_embed.patch_size`` or ``patch_size``, on the
    encoder or the timm / open_clip model it wraps), None when it has none or a non-square one."""
    for owner in _owners(image_encoder):
        size = getattr(getattr(owner, "patch_embed", None), "patch_size", None)
        if size is None:
            size = getattr(owner, "patch_size", None)
        if isinstance(size, int) and not isinstance(size, bool):
            return size
        if isinstance(size, (tuple, list)) and len(size) == 2 and size[0] == size[1]:
            return int(size[0])
        if size is not None:
            return None
    return None


def temporal_shift(x: Tensor, frames: int, fraction: float) -> Tensor:
    """TSM's shift of ``x`` ``(B·T, N, D)`` (T frames of each clip, consecutive): in channels ``[0, c)`` frame t takes
    frame t-1's values, in ``[c, 2c)`` frame t+1's (zeros past the ends), ``c = floor(D · fraction / 2)``; the other
    channels stay."""
    if x.dim() != 3 or x.shape[0] % frames:
        raise ValueError(f"temporal shift expects tokens (B*T, N, D) with T={frames} frames per clip and the batch "
                         f"first, got shape {tuple(x.shape)}")
    c = int(x.shape[-1] * fraction / 2)
    if c == 0:
        return x
    x = x.unflatten(0, (-1, frames))  # (B, T, N, D)
    past = torch.nn.functional.pad(x[:, :-1, :, :c], (0, 0, 0, 0, 1, 0))  # frame t <- t-1
    future = torch.nn.functional.pad(x[:, 1:, :, c : 2 * c], (0, 0, 0, 0, 0, 1))  # frame t <- t+1
    return torch.cat((past, future, x[..., 2 * c :]), dim=-1).flatten(0, 1)


def _branch_norms(image_encoder: nn.Module) -> list[nn.Module]:
    """The first norm of every block's attention branch (``blocks[i].norm1``, timm / BEiT; ``resblocks[i].ln_1``,
    open_clip), on the encoder or the timm / open_clip model it wraps; a ConfigError when there is none."""
    for owner in _owners(image_encoder):
        blocks = getattr(owner, "blocks", None)
        if blocks is None:
            blocks = getattr(getattr(owner, "transformer", None), "resblocks", None)
        norms = [getattr(b, "norm1", None) or getattr(b, "ln_1", None) for b in blocks or ()]
        if norms and all(isinstance(n, nn.Module) for n in norms):
            return norms
    raise ConfigError(
        f"the image encoder {type(image_encoder).__name__} has no transformer blocks with a first norm (norm1 / ln_1) "
        "to shift channels at; temporal_shift needs a ViT-like encoder", "vision.temporal_shift")


def _temporal_config(node: dict | None, image_encoder: nn.Module) -> TemporalSSLConfig:
    """``temporal_ssl`` parsed, its ``patch_size`` the image encoder's; errors at ``vision.temporal_ssl.KEY``."""
    try:
        cfg = TemporalSSLConfig.from_dict(node)
    except ConfigError as exc:  # the video encoder is the model's vision part in every family
        raise ConfigError(exc.message, f"vision.{exc.path}" if exc.path else "vision.temporal_ssl") from None
    if not cfg.enabled:
        return cfg
    own = _patch_size(image_encoder)
    if "patch_size" not in (node or {}):
        if own is None:
            raise ConfigError(
                f"the image encoder {type(image_encoder).__name__} has no square patch size to take: "
                "give the size of its output token grid",
                "vision.temporal_ssl.patch_size",
            )
        return dataclasses.replace(cfg, patch_size=own)
    if own is not None and cfg.patch_size != own:
        raise ConfigError(
            f"{cfg.patch_size} differs from the image encoder's patch size {own}: the flow labels are "
            "one per output patch (leave it out to take the encoder's)",
            "vision.temporal_ssl.patch_size",
        )
    return cfg


# ---------------------------------------------------------------------------------------------------------------------
# encoder
# ---------------------------------------------------------------------------------------------------------------------
class VideoEncoder(nn.Module):
    """Frames ``(B, T, C, H, W)`` -> the image encoder per frame -> + frame position -> combined over time.

    Args:
        image_encoder: any vision encoder (``beit_v2`` in X²-VLM).
        num_frames: frames per video (X²-VLM stage 2: 3); the size of the frame position embedding.
        combine: ``avgpool`` (X²-VLM), ``temporal_attention`` (one transformer layer over frames, then the mean) or
            ``concat`` (no pooling: every frame's tokens, each with its frame position, one after the other).
        frame_pos: add the learnable frame position embedding (X²-VLM ``add_frame_pos``).
        frame_pos_std: its initial standard deviation (X²-VLM: 0.02, which after ``avgpool`` only shifts every token
            alike). With ``concat`` the frame position is what tells one frame's tokens from another's in the fusion's
            cross-attention: at 0.02 against tokens of unit scale it is all but invisible to it, and a value near the
            tokens' own scale (1.0) lets a query pick "the square in the last frame" from the start.
        num_heads: attention heads of the temporal layer.
        temporal_layer: the temporal layer before any ``combine`` (``temporal_attention`` always has it): with
            ``concat``, every frame's tokens have attended to the same position in the other frames (what changed
            there) before the fusion sees them.
        temporal_span: what the temporal layer attends over: ``position`` (each token position over its frames),
            ``clip`` (every token of every frame, joint space-time attention: ``T·(1+P)`` tokens per clip) or
            ``divided`` (``position``, then each frame's tokens among themselves: TimeSformer's divided block).
        temporal_shift: the fraction of each token's channels shifted in time inside the image encoder, half from
            the previous frame, half from the next (TSM's 1/8 + 1/8: 0.25); 0 is off.
        temporal_ssl: ``{enabled, weights, label_smoothing, patch_size}``
            (:class:`zoo.modules.temporal.TemporalSSLConfig`; None: off). Enabled: ``temporal_heads`` and
            ``frame_tokens`` (see the module docstring).
    """

    is_video = True  # models check this to accept (B, T, C, H, W) input

    def __init__(
        self,
        image_encoder: Part["vision_encoder"],
        num_frames: int = 3,
        combine: Literal["avgpool", "temporal_attention", "concat"] = "avgpool",
        frame_pos: bool = True,
        frame_pos_std: float = 0.02,
        num_heads: int = 8,
        temporal_layer: bool = False,
        temporal_span: Literal["position", "clip", "divided"] = "position",
        temporal_shift: float = 0.0,
        temporal_ssl: dict | None = None,
    ):
        super().__init__()
        width = getattr(image_encoder, "width", None)
        if not isinstance(width, int):
            raise ConfigError(f"image_encoder {type(image_encoder).__name__} has no integer 'width' attribute")
        if num_frames <= 0:
            raise ConfigError(f"num_frames must be positive, got {num_frames}")
        if combine not in ("avgpool", "temporal_attention", "concat"):
            raise ConfigError(f"combine must be 'avgpool', 'temporal_attention' or 'concat', got {combine!r}")
        temporal_layer = bool(temporal_layer) or combine == "temporal_attention"
        if temporal_layer and (num_heads <= 0 or width % num_heads):
            raise ConfigError(f"num_heads {num_heads} must divide the image encoder's width {width}")
        self.image_encoder = image_encoder
        self.num_frames = num_frames
        self.combine = combine
        self.width = width
        self.image_size = getattr(image_encoder, "image_size", None)
        if frame_pos:
            self.absolute_frame_pos_embed = nn.Parameter(torch.zeros(1, num_frames, 1, width))
            if not frame_pos_std >= 0:
                raise ConfigError(f"frame_pos_std must be >= 0, got {frame_pos_std!r}", "frame_pos_std")
            trunc_normal_(self.absolute_frame_pos_embed, std=frame_pos_std)  # timm's cut at ±2, as the official
        else:
            self.register_parameter("absolute_frame_pos_embed", None)
        self.temporal = (TemporalAttentionLayer(width, num_heads, num_frames=num_frames, span=temporal_span)
                         if temporal_layer else None)
        if not 0.0 <= temporal_shift <= 1.0:
            raise ConfigError(f"temporal_shift must lie in [0, 1] (a fraction of the channels), got {temporal_shift!r}",
                              "vision.temporal_shift")
        self.temporal_shift = float(temporal_shift)
        self._shift_frames: int | None = None  # the clip length while a forward is in flight
        if self.temporal_shift > 0:
            for norm in _branch_norms(image_encoder):
                norm.register_forward_pre_hook(self._shift_hook)
        self.temporal_ssl = _temporal_config(temporal_ssl, image_encoder)
        if self.temporal_ssl.enabled:
            if num_frames < 2:
                raise ConfigError("the temporal objectives need num_frames >= 2", "vision.temporal_ssl.enabled")
            self.temporal_heads = TemporalHeads(width, num_frames)
        else:
            self.temporal_heads = None  # a plain attribute: no parameters, no state-dict keys

    def preprocess_defaults(self) -> dict | None:
        """The frame encoder's own preprocessing (every frame goes through it)."""
        own = getattr(self.image_encoder, "preprocess_defaults", None)
        return own() if callable(own) else None

    def forward(self, frames: Tensor, output_hidden_states: bool = False) -> EncoderOutput:
        """``frames`` (B, T, C, H, W) -> tokens (B, P, D), pooled (B, D)."""
        if frames.dim() != 5:
            raise ValueError(f"video encoder expects frames (B, T, C, H, W), got shape {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        if self.absolute_frame_pos_embed is not None and t != self.num_frames:
            raise ValueError(
                f"video encoder was built for num_frames={self.num_frames} (its frame position embedding has that "
                f"many entries) but got {t} frames; sample {self.num_frames} frames per video or set num_frames"
            )
        kwargs = {"output_hidden_states": True} if output_hidden_states else {}
        self._shift_frames = t
        try:
            out = self.image_encoder(frames.flatten(0, 1), **kwargs)
        finally:
            self._shift_frames = None
        tokens = out.tokens.unflatten(0, (b, t))  # (B, T, P, D)
        pooled = out.pooled.unflatten(0, (b, t)).unsqueeze(2)  # (B, T, 1, D)
        x = torch.cat((pooled, tokens), dim=2)  # pooled travels as token position 0
        if self.absolute_frame_pos_embed is not None:
            x = x + self.absolute_frame_pos_embed
        if self.temporal is not None:  # attention over the frames of each token position, or over the whole clip
            x = self.temporal(x)
        # the per-frame tokens the temporal objectives read: after the frame position and the temporal layer (the
        # official heads read tokens that carry the time embedding and have attended across frames), before the mean
        frame_tokens = self._patch_tokens(x[:, :, 1:], frames) if self.temporal_heads is not None else None
        if self.combine == "concat":  # pooled, then every frame's tokens frame after frame: (B, 1 + T * N, D)
            pooled_mean = x[:, :, 0].mean(dim=1)
            frames_tokens = rearrange(x[:, :, 1:], "b t n d -> b (t n) d")  # frame after frame
            return EncoderOutput(tokens=torch.cat((pooled_mean.unsqueeze(1), frames_tokens), dim=1),
                                 pooled=pooled_mean, hidden_states=out.hidden_states, frame_tokens=frame_tokens)
        x = x.mean(dim=1)  # (B, 1 + P, D)
        return EncoderOutput(
            tokens=x[:, 1:], pooled=x[:, 0], hidden_states=out.hidden_states, frame_tokens=frame_tokens
        )

    def _shift_hook(self, module: nn.Module, args: tuple) -> tuple | None:
        """Forward pre-hook on a block's first norm: the block's input with the shifted channels."""
        t = self._shift_frames
        if t is None:  # the image encoder called on its own (images, not a clip)
            return None
        return (temporal_shift(args[0], t, self.temporal_shift), *args[1:])

    def _patch_tokens(self, tokens: Tensor, frames: Tensor) -> Tensor:
        """The last ``(H / p) · (W / p)`` tokens of each frame: its patch tokens, in row-major order."""
        p = self.temporal_ssl.patch_size
        height, width = frames.shape[-2:]
        n = (height // p) * (width // p)
        if height % p or width % p or tokens.shape[2] < n:
            raise ValueError(
                f"temporal_ssl: the image encoder gives {tokens.shape[2]} tokens per {height}x{width} frame, not one "
                f"per {p}x{p} patch ({n}); the temporal objectives need a ViT-like encoder with one output token per "
                "patch"
            )
        return tokens[:, :, tokens.shape[2] - n :]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable and self.temporal_shift > 0:
            # the shift reads the clip length of the forward in flight; a block recomputed in backward would run
            # unshifted and give other gradients
            raise ConfigError("gradient checkpointing does not combine with vision.temporal_shift (the image "
                              "encoder's blocks would be recomputed in backward without the shift)",
                              "train.grad_checkpointing")
        self.image_encoder.set_grad_checkpointing(enable)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A frame position embedding saved for another frame count fills the first ``min(F, F')`` frames; an image
        encoder's weights (no ``image_encoder.`` key under this prefix: an image model's vision part) load into
        :attr:`image_encoder`, the video-only parameters keeping their values — how X²-VLM's video models start from
        the image pre-training (the official loader fills the frame positions anew)."""
        self._adopt_image_weights(state_dict, prefix)
        key = prefix + "absolute_frame_pos_embed"
        saved = state_dict.get(key)
        own = self.absolute_frame_pos_embed
        if saved is not None and own is not None and saved.shape != own.shape and saved.shape[2:] == own.shape[2:]:
            n = min(saved.shape[1], own.shape[1])
            warnings.warn(
                f"{key}: checkpoint has {saved.shape[1]} frames, the encoder {own.shape[1]}; loading the first {n}",
                stacklevel=2,
            )
            adapted = own.detach().clone()
            adapted[:, :n] = saved[:, :n].to(adapted.dtype)
            state_dict[key] = adapted
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


    def _adopt_image_weights(self, state_dict, prefix: str) -> None:
        ours = [k for k in state_dict if k.startswith(prefix)]
        if not ours or any(k.startswith(prefix + "image_encoder.") for k in ours):
            return
        video_only = {name for name, _ in self.named_children() if name != "image_encoder"}
        video_only |= {name for name, _ in self.named_parameters(recurse=False)}
        image_keys = [k for k in ours if k[len(prefix):].split(".", 1)[0] not in video_only]
        if not image_keys:
            return
        for k in image_keys:
            state_dict[prefix + "image_encoder." + k[len(prefix):]] = state_dict.pop(k)
        kept = []
        for name, tensor in self.state_dict().items():
            if not name.startswith("image_encoder.") and prefix + name not in state_dict:
                state_dict[prefix + name] = tensor
                kept.append(name.split(".", 1)[0])
        if kept:
            warnings.warn(f"{prefix.rstrip('.') or 'video encoder'}: image encoder weights loaded into image_encoder; "
                          f"{', '.join(dict.fromkeys(kept))} keep their initialisation", stacklevel=3)


VISION_ENCODERS.register("video")(VideoEncoder)
