"""BEiT-v2 vision encoder as X²-VLM (and CCLM-X2VLM) use it, registered as ``beit_v2``.

From timm (:class:`timm.models.beit.Beit`, subclassed, so state-dict keys are timm's and the official ones with no
prefix): patch embedding, CLS token, blocks with q/v biases (no k bias), a relative position bias table per block,
layer scale ``gamma_1``/``gamma_2``, LayerNorm eps 1e-6, ``fc_norm``; and timm's BEiT checkpoint filter, which resizes
the relative position tables (``timm.layers.resize_rel_pos_bias_table``) when the resolution changes. The settings
equal the official ``beit_base_patch16`` / ``beit_large_patch16`` of X²-VLM (``use_abs_pos_emb=False,
use_rel_pos_bias=True, use_shared_rel_pos_bias=False, use_mean_pooling=True, init_values=0.1, qkv_bias=True``,
drop path 0.1); timm's ``beitv2_*_patch16_224`` differ only in ``init_values`` (1e-5).

Written here:

- the X²-VLM output: the CLS state is dropped, ``fc_norm`` is applied to every patch token and the MEAN of the
  normalised patch tokens is prepended as token 0; ``tokens`` is that ``(B, 1 + P, D)`` sequence, ``pooled`` its token 0.
  (timm's ``forward_head`` instead averages first and normalises after.)
- ``relative_position_index`` is a persistent buffer, as in the official model (timm keeps it non-persistent), so the
  state dict has exactly the official keys; it is rebuilt on load and may be absent from a checkpoint.
- the block loop (hidden states: the input of the first block and the output of every block, before ``fc_norm``;
  gradient checkpointing), and the loader: a full X²-VLM checkpoint is reduced to its ``vision_encoder.`` keys; a
  BEiT-v2 pre-training checkpoint's shared ``rel_pos_bias`` table is copied into every block (as the official loader
  does); classifier / pre-training heads are dropped.

Resizing note: the official loader interpolates the tables with SciPy's ``interp2d`` on a geometric-progression grid;
timm's helper follows the same recipe (with its own interpolation backend), so values after a resolution change can
differ slightly from the official numbers. Tables at their own resolution are untouched.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial

import torch
from timm.layers import LayerNorm
from timm.models.beit import Beit
from timm.models.beit import checkpoint_filter_fn as _timm_beit_filter
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from zoo.hub import load_state_dict, load_weights
from zoo.modules.outputs import EncoderOutput
from zoo.modules.vision.timm_encoder import (
    AttentionMode,
    _apply_attention,
    _select_prefix,
)
from zoo.registry import VISION_ENCODERS
from zoo.spec import ConfigError

__all__ = ["BEiTv2Encoder", "checkpoint_filter_fn"]

#: prefixes under which published multimodal checkpoints hold the vision tower
_PREFIXES = ("vision_encoder.",)
#: keys of BEiT-v2 classification / pre-training checkpoints that the encoder does not use (ignored officially too)
_DROPPED = ("head.", "lm_head.", "cls_pt_layers.", "mask_token")


# ---------------------------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------------------------
class BEiTv2Encoder(Beit):
    """BEiT-v2 ViT with X²-VLM's output ``tokens = [mean(fc_norm(patches)); fc_norm(patches)]``, ``pooled = tokens[:, 0]``.

    Defaults are the X²-VLM base encoder at 224 (85,761,984 parameters); large: ``embed_dim=1024, depth=24,
    num_heads=16``. VQA fine-tuning uses ``img_size=768``, captioning/grounding 384.

    Args:
        img_size: input resolution; the relative position tables depend on it.
        patch_size: patch size (16 in the published models).
        embed_dim, depth, num_heads, mlp_ratio: size of the ViT.
        drop_path_rate: stochastic depth at the last block (official 0.1).
        init_values: initial layer-scale value (official 0.1).
        pretrained: LOCAL checkpoint file: the official X²-VLM checkpoint (full, its ``vision_encoder.`` keys are
            used), a BEiT-v2 / timm ``beitv2_*`` checkpoint, or this encoder's own state dict; relative position
            tables are resized to ``img_size``.
        attention: ``timm`` | ``zoo`` | ``auto`` (see :mod:`zoo.modules.vision._timm_attention`).
        use_abs_pos_emb: add a learned absolute position embedding (``pos_embed``, 1 + patches, resampled on
            resolution change) to the relative position bias. Off in the official encoders; a model trained from
            scratch on questions about absolute positions ("where is ...?") needs it, as relative biases alone
            carry no absolute position. Initialised from the 2-D sine-cosine table, then learned.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        init_values: float = 0.1,
        pretrained: str | None = None,
        attention: AttentionMode = "auto",
        use_abs_pos_emb: bool = False,
    ):
        if min(img_size, patch_size, embed_dim, depth, num_heads) <= 0:
            raise ConfigError("img_size, patch_size, embed_dim, depth and num_heads must be positive")
        if img_size % patch_size:
            raise ConfigError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        if embed_dim % num_heads:
            raise ConfigError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ConfigError(f"drop_path_rate must lie in [0, 1), got {drop_path_rate}")
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            num_classes=0,
            global_pool="avg",  # fc_norm present, final norm an Identity: the official layout
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            qkv_bias=True,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
            norm_layer=partial(LayerNorm, eps=1e-6),
            init_values=init_values,
            use_abs_pos_emb=use_abs_pos_emb,
            use_rel_pos_bias=True,
            use_shared_rel_pos_bias=False,
            use_fc_norm=True,
        )
        self._persist_position_index()
        if self.pos_embed is not None:
            self._init_sincos_pos_embed()
        self.width = embed_dim
        self.image_size = img_size
        if pretrained is not None:
            self.load_pretrained(pretrained)
        _apply_attention(self, attention)

    @torch.no_grad()
    def _init_sincos_pos_embed(self) -> None:
        """Start the absolute position embedding from the fixed 2-D sine-cosine table (MAE's; the cls slot 0): unit-scale
        position signals from the first step instead of timm's std-0.02 noise, which a model trained from scratch
        takes hundreds of steps to grow."""
        from timm.layers import build_sincos2d_pos_embed  # noqa: PLC0415

        grid = list(self.patch_embed.grid_size)
        table = build_sincos2d_pos_embed(grid, self.pos_embed.shape[-1])
        self.pos_embed.zero_()
        self.pos_embed[0, self.num_prefix_tokens:] = table.to(self.pos_embed.dtype)

    def _persist_position_index(self) -> None:
        """Make every block's ``relative_position_index`` part of the state dict, as in the official encoder."""
        for block in self.blocks:
            block.attn.register_buffer("relative_position_index", block.attn.relative_position_index, persistent=True)

    # -- forward -------------------------------------------------------------------------------------------------
    def forward(self, images: Tensor, output_hidden_states: bool = False) -> EncoderOutput:  # type: ignore[override]
        """``images`` (B, C, H, W) -> tokens (B, 1 + P, D) (token 0 = mean of the normalised patches), pooled (B, D)."""
        if images.dim() != 4:
            raise ValueError(f"beit_v2 expects images (B, C, H, W), got shape {tuple(images.shape)}")
        x = self.patch_embed(images)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x), dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed.to(x.dtype)
        x = self.pos_drop(x)
        states = [x] if output_hidden_states else None
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if states is not None:
                states.append(x)
        patches = self.fc_norm(self.norm(x[:, self.num_prefix_tokens:]))  # norm is an Identity (mean pooling)
        pooled = patches.mean(dim=1)
        tokens = torch.cat((pooled.unsqueeze(1), patches), dim=1)
        return EncoderOutput(tokens=tokens, pooled=pooled, hidden_states=tuple(states) if states else None)

    # -- weights -------------------------------------------------------------------------------------------------
    def load_pretrained(self, path: str | os.PathLike) -> None:
        """Load a local checkpoint through :func:`checkpoint_filter_fn` with a strict, checked load."""
        state_dict = checkpoint_filter_fn(load_state_dict(path), self)
        load_weights(self, state_dict, what=f"checkpoint {str(path)!r}",
                      optional=lambda k: k.endswith("relative_position_index"))

    def set_input_size(self, img_size=None, patch_size=None) -> None:
        """timm's resize (relative position tables interpolated), keeping the index buffers persistent."""
        super().set_input_size(img_size=img_size, patch_size=patch_size)
        self._persist_position_index()
        self.image_size = int(self.patch_embed.img_size[0])


# ---------------------------------------------------------------------------------------------------------------------
# checkpoint filter
# ---------------------------------------------------------------------------------------------------------------------
def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: BEiTv2Encoder) -> dict[str, Tensor]:
    """A BEiT-v2 state dict in a published layout -> this encoder's keys, tables resized to the model's resolution.

    Accepts the X²-VLM / CCLM-X2VLM full checkpoint (keys under ``vision_encoder.``), BEiT-v2 checkpoints (shared
    ``rel_pos_bias.relative_position_bias_table`` copied into every block; ``head``, ``lm_head``, ``cls_pt_layers``,
    ``mask_token`` dropped) and this encoder's state dict. ``relative_position_index`` buffers are dropped (rebuilt).
    """
    sd = _select_prefix(state_dict, _PREFIXES)
    shared = sd.pop("rel_pos_bias.relative_position_bias_table", None)
    if shared is not None:
        for i in range(len(model.blocks)):
            sd.setdefault(f"blocks.{i}.attn.relative_position_bias_table", shared.clone())
    sd = {k: v for k, v in sd.items() if not k.startswith(_DROPPED)}
    return _timm_beit_filter(sd, model)


VISION_ENCODERS.register("beit_v2")(BEiTv2Encoder)
