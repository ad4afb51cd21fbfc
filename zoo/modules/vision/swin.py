"""Swin Transformer vision encoder as CCLM (and X²-VLM's Swin option) use it, registered as ``swin``.

From timm (:class:`timm.models.swin_transformer.SwinTransformer`, subclassed, so state-dict keys are timm's with no
prefix): patch embedding with LayerNorm, stages of (shifted) window attention with relative position bias tables,
patch merging, the final LayerNorm; and timm's Swin checkpoint filter (relative position tables resized to another
window size, patch embedding resampled). Defaults are CCLM's Swin-B at 224 (embed 128, depths 2-2-18-2, heads
4-8-16-32, window 7, drop path 0.1): 86,743,224 parameters, equal to the official CCLM ``vision_encoder``. CCLM at 384
uses ``img_size=384, window_size=12``.

Written here:

- the CCLM output: the final LayerNorm is applied to the last stage's tokens and their MEAN (the official
  ``AdaptiveAvgPool1d``) is prepended as token 0: ``tokens`` (B, 1 + H*W/32², D), ``pooled`` = token 0.
- ``hidden_states``: the patch embeddings and the output of every stage, each flattened to ``(B, N_i, C_i)`` (length
  and width change from stage to stage; the last one is before the final norm).
- :func:`convert_official_swin`: the official (Microsoft / X-VLM / CCLM) key layout differs from timm's in two ways
  that no renaming of modules can hide, so checkpoints are converted:

  1. patch merging sits at the END of stage i officially (``layers.i.downsample``, i = 0..2) and at the START of stage
     i+1 in timm (``layers.{i+1}.downsample``); the tensors are identical (same 2x2 concatenation order, norm over
     4C, reduction 4C -> 2C), only the index moves.
  2. the official state dict stores the buffers ``layers.i.blocks.j.attn.relative_position_index`` and
     ``layers.i.blocks.j.attn_mask`` (shifted blocks); timm computes both and keeps them out of the state dict
     (non-persistent, same shapes). They are dropped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
from timm.models.swin_transformer import SwinTransformer
from timm.models.swin_transformer import checkpoint_filter_fn as _timm_swin_filter
from torch import Tensor

from zoo.hub import load_state_dict, load_weights
from zoo.modules.outputs import EncoderOutput
from zoo.modules.vision.timm_encoder import (
    AttentionMode,
    _apply_attention,
    _as_tokens,
    _select_prefix,
)
from zoo.registry import VISION_ENCODERS
from zoo.spec import ConfigError

__all__ = ["SwinEncoder", "checkpoint_filter_fn", "convert_official_swin"]

_PREFIXES = ("vision_encoder.",)
_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")


# ---------------------------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------------------------
class SwinEncoder(SwinTransformer):
    """Swin Transformer with CCLM's output ``tokens = [mean(norm(x)); norm(x)]`` over the last stage, ``pooled = tokens[:, 0]``.

    Args:
        img_size: input resolution (224 or 384 in CCLM).
        patch_size: patch size of the embedding (4).
        embed_dim: width of the first stage; stage i is ``embed_dim * 2**i`` wide, the last one is ``width``.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: attention window (7 at 224, 12 at 384).
        drop_path_rate: stochastic depth at the last block (0.1 in CCLM).
        pretrained: LOCAL checkpoint file: official Swin / CCLM layout (a full CCLM checkpoint's ``vision_encoder.``
            keys are used), timm layout, or this encoder's own state dict.
        attention: ``timm`` | ``zoo`` | ``auto`` (see :mod:`zoo.modules.vision._timm_attention`).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 4,
        embed_dim: int = 128,
        depths: tuple[int, ...] = (2, 2, 18, 2),
        num_heads: tuple[int, ...] = (4, 8, 16, 32),
        window_size: int = 7,
        drop_path_rate: float = 0.1,
        pretrained: str | None = None,
        attention: AttentionMode = "auto",
    ):
        depths, num_heads = tuple(depths), tuple(num_heads)
        if not depths or len(depths) != len(num_heads):
            raise ConfigError(f"depths {list(depths)} and num_heads {list(num_heads)} must be non-empty and equally long")
        if min(*depths, *num_heads, embed_dim, window_size, patch_size, img_size) <= 0:
            raise ConfigError("img_size, patch_size, embed_dim, depths, num_heads and window_size must be positive")
        for i, heads in enumerate(num_heads):
            if (embed_dim * 2**i) % heads:
                raise ConfigError(f"stage {i} width {embed_dim * 2**i} is not divisible by num_heads[{i}]={heads}")
        if img_size % (patch_size * 2 ** (len(depths) - 1)):
            raise ConfigError(
                f"img_size {img_size} must be a multiple of patch_size * 2**(stages - 1) = "
                f"{patch_size * 2 ** (len(depths) - 1)}"
            )
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            num_classes=0,
            global_pool="avg",
            embed_dim=embed_dim,
            depths=depths,
            num_heads=num_heads,
            window_size=window_size,
            mlp_ratio=4.0,
            qkv_bias=True,
            drop_path_rate=drop_path_rate,
        )
        self.width = int(self.num_features)
        self.image_size = img_size
        if pretrained is not None:
            self.load_pretrained(pretrained)
        _apply_attention(self, attention)

    # -- forward -------------------------------------------------------------------------------------------------
    def forward(self, images: Tensor, output_hidden_states: bool = False) -> EncoderOutput:  # type: ignore[override]
        """``images`` (B, C, H, W) -> tokens (B, 1 + N, D) (token 0 = mean of the normalised last-stage tokens)."""
        if images.dim() != 4:
            raise ValueError(f"swin expects images (B, C, H, W), got shape {tuple(images.shape)}")
        x = self.patch_embed(images)  # (B, H, W, C)
        states = [_as_tokens(x, "NHWC")] if output_hidden_states else None
        for stage in self.layers:  # each stage honours its grad_checkpointing flag
            x = stage(x)
            if states is not None:
                states.append(_as_tokens(x, "NHWC"))
        x = _as_tokens(self.norm(x), "NHWC")
        pooled = x.mean(dim=1)
        tokens = torch.cat((pooled.unsqueeze(1), x), dim=1)
        return EncoderOutput(tokens=tokens, pooled=pooled, hidden_states=tuple(states) if states else None)

    # -- weights -------------------------------------------------------------------------------------------------
    def load_pretrained(self, path: str | os.PathLike) -> None:
        """Load a local checkpoint through :func:`checkpoint_filter_fn` with a strict, checked load."""
        load_weights(self, checkpoint_filter_fn(load_state_dict(path), self), what=f"checkpoint {str(path)!r}")


# ---------------------------------------------------------------------------------------------------------------------
# checkpoint conversion
# ---------------------------------------------------------------------------------------------------------------------
def convert_official_swin(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official Swin keys (Microsoft / X-VLM / CCLM ``vision_encoder``, prefix already stripped) -> timm's keys.

    ``layers.i.downsample.*`` -> ``layers.{i+1}.downsample.*``; the ``relative_position_index`` and ``attn_mask``
    buffers and a classifier ``head.*`` are dropped. A state dict already in timm's layout (no
    ``layers.0.downsample``) is returned unchanged apart from those drops.
    """
    official = any(k.startswith("layers.0.downsample.") for k in state_dict)
    out = {}
    for key, value in state_dict.items():
        if key.endswith(("relative_position_index", "attn_mask")) or key.startswith("head."):
            continue
        if official:
            key = _DOWNSAMPLE.sub(lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", key)
        out[key] = value
    return out


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: SwinEncoder) -> dict[str, Tensor]:
    """Select a full checkpoint's ``vision_encoder.`` keys, convert the official layout, resize tables to ``model``."""
    sd = convert_official_swin(_select_prefix(state_dict, _PREFIXES))
    return _timm_swin_filter(sd, model)


VISION_ENCODERS.register("swin")(SwinEncoder)
