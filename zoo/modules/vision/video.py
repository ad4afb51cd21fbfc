"""Video encoder: an image encoder run frame by frame, combined over time as X²-VLM does (registered as ``video``).

X²-VLM (``XVLMBase._encode_frames`` / ``_encode_video_pooling``, video_encoding ``avgpool``): frames ``(B, F, C, H, W)``
go through the image ViT as a batch of ``B*F`` images; a learnable frame position embedding
``absolute_frame_pos_embed`` of shape ``(1, F, 1, D)`` (zeros, then trunc-normal std 0.02) is added to every token of
frame ``f``; the frames are averaged per token position -> ``(B, P, D)``, one image's worth of tokens. The parameter
name is the official one, so the video checkpoint's ``absolute_frame_pos_embed`` loads as it is; a checkpoint with a
different frame count fills the first ``min(F, F')`` frames (the official loader does the same) with a warning.

Hand-written (nothing in timm / transformers does this): the frame loop, the position embedding, the pooling and the
optional ``temporal_attention`` combine: one pre-norm transformer layer (self-attention over the ``F`` frames of each
token position on :func:`zoo.modules.attention.attention`, then an MLP) before the mean over frames. Its output
projections start at zero, so at initialisation it equals ``avgpool``.

``pooled`` is combined exactly like the tokens (the image encoder's pooled vector of each frame plus that frame's
position embedding, averaged over frames, or passed through the temporal layer as one more token position); for
``beit_v2`` it therefore equals ``tokens[:, 0]`` as for images.

Frame count: with ``frame_pos`` the input must have exactly ``num_frames`` frames (a ``ValueError`` says so; sample
``num_frames`` frames per video — the embedding is not interpolated). Without ``frame_pos`` any number of frames works.
``hidden_states`` (when asked) are the image encoder's, over the ``B*F`` frame batch.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from timm.layers import trunc_normal_
from torch import Tensor, nn

from zoo.modules.attention import attention
from zoo.modules.outputs import EncoderOutput
from zoo.registry import VISION_ENCODERS
from zoo.spec import ConfigError, Part

__all__ = ["TemporalAttentionLayer", "VideoEncoder"]


# ---------------------------------------------------------------------------------------------------------------------
# blocks
# ---------------------------------------------------------------------------------------------------------------------
class TemporalAttentionLayer(nn.Module):
    """Pre-norm transformer layer over time: ``x + proj(attn(norm1(x)))``, then ``x + mlp(norm2(x))``; x is (N, T, D).

    ``proj`` and the MLP's output layer start at zero: the layer is the identity at initialisation.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.num_heads = num_heads
        self.attn_backend: str | None = None
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        for layer in (self.proj, self.mlp[2]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(n, t, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        a = attention(q, k, v, backend=self.attn_backend)
        x = x + self.proj(a.transpose(1, 2).reshape(n, t, d))
        return x + self.mlp(self.norm2(x))


# ---------------------------------------------------------------------------------------------------------------------
# encoder
# ---------------------------------------------------------------------------------------------------------------------
class VideoEncoder(nn.Module):
    """Frames ``(B, T, C, H, W)`` -> the image encoder per frame -> + frame position -> combined over time.

    Args:
        image_encoder: any vision encoder (``beit_v2`` in X²-VLM).
        num_frames: frames per video (X²-VLM stage 2: 3); the size of the frame position embedding.
        combine: ``avgpool`` (X²-VLM) or ``temporal_attention`` (one transformer layer over frames, then the mean).
        frame_pos: add the learnable frame position embedding (X²-VLM ``add_frame_pos``).
        num_heads: attention heads of the temporal layer (``temporal_attention`` only).
    """

    is_video = True  # models check this to accept (B, T, C, H, W) input

    def __init__(
        self,
        image_encoder: Part["vision_encoder"],
        num_frames: int = 3,
        combine: Literal["avgpool", "temporal_attention"] = "avgpool",
        frame_pos: bool = True,
        num_heads: int = 8,
    ):
        super().__init__()
        width = getattr(image_encoder, "width", None)
        if not isinstance(width, int):
            raise ConfigError(f"image_encoder {type(image_encoder).__name__} has no integer 'width' attribute")
        if num_frames <= 0:
            raise ConfigError(f"num_frames must be positive, got {num_frames}")
        if combine not in ("avgpool", "temporal_attention"):
            raise ConfigError(f"combine must be 'avgpool' or 'temporal_attention', got {combine!r}")
        if combine == "temporal_attention" and (num_heads <= 0 or width % num_heads):
            raise ConfigError(f"num_heads {num_heads} must divide the image encoder's width {width}")
        self.image_encoder = image_encoder
        self.num_frames = num_frames
        self.combine = combine
        self.width = width
        self.image_size = getattr(image_encoder, "image_size", None)
        if frame_pos:
            self.absolute_frame_pos_embed = nn.Parameter(torch.zeros(1, num_frames, 1, width))
            trunc_normal_(self.absolute_frame_pos_embed, std=0.02)
        else:
            self.register_parameter("absolute_frame_pos_embed", None)
        self.temporal = TemporalAttentionLayer(width, num_heads) if combine == "temporal_attention" else None

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
        out = self.image_encoder(frames.flatten(0, 1), **kwargs)
        tokens = out.tokens.unflatten(0, (b, t))  # (B, T, P, D)
        pooled = out.pooled.unflatten(0, (b, t)).unsqueeze(2)  # (B, T, 1, D)
        x = torch.cat((pooled, tokens), dim=2)  # pooled travels as token position 0
        if self.absolute_frame_pos_embed is not None:
            x = x + self.absolute_frame_pos_embed
        if self.temporal is not None:
            p, d = x.shape[2], x.shape[3]
            x = self.temporal(x.transpose(1, 2).reshape(b * p, t, d)).reshape(b, p, t, d).transpose(1, 2)
        x = x.mean(dim=1)  # (B, 1 + P, D)
        return EncoderOutput(tokens=x[:, 1:], pooled=x[:, 0], hidden_states=out.hidden_states)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.image_encoder.set_grad_checkpointing(enable)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A frame position embedding saved for another frame count fills the first ``min(F, F')`` frames."""
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


VISION_ENCODERS.register("video")(VideoEncoder)
