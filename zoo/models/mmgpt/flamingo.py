"""OpenFlamingo's fusion pieces, as MultiModal-GPT uses them: the perceiver resampler and the gated cross-attention
block.

Follows the official code (open-mmlab/Multimodal-GPT @9c73e47, ``mmgpt/models/open_flamingo/helpers.py``, itself from
lucidrains/flamingo-pytorch); module and parameter names are the official ones, so state-dict keys match
(``latents``, ``layers.N.0.{norm_media,norm_latents,to_q,to_kv,to_out}``, ``layers.N.1.{0,1,3}``, ``norm``;
``attn.{norm,to_q,to_kv,to_out}``, ``attn_gate``, ``ff.{0,1,3}``, ``ff_gate``).

- :class:`FeedForward`: ``LayerNorm → Linear(d, mult·d, bias=False) → GELU → Linear(mult·d, d, bias=False)`` (keys
  ``0``, ``1``, ``3``: the official LoRA targets ``ff.1`` / ``ff.3``).
- :class:`PerceiverResampler`: ``num_latents`` learned latents; each layer ``latents += attn(media, latents)``,
  ``latents += ff(latents)``; keys/values are ``concat(norm_media(media), norm_latents(latents))``, queries the
  normalised latents; a final LayerNorm. Frame embeddings (``max_num_frames``) and media-time embeddings
  (``max_num_media``) are optional as official; MultiModal-GPT builds the resampler with neither (``PerceiverResampler
  (dim=vis_dim)``), the default here.
- :class:`MaskedCrossAttention`: text queries (``LayerNorm`` first) attend to the media latents. The official
  ``text_time = cumsum(media_locations)`` numbers each text token with the count of ``<image>`` tokens up to and
  including it; with ``only_attend_immediate_media`` a token attends only to the latents of image ``text_time`` (the
  nearest preceding ``<image>``), and tokens with ``text_time == 0`` (before any image) get zero attention, hence a
  zero output (``to_out`` has no bias). ``attend_previous=False`` reproduces the official shift (non-media tokens get
  ``text_time + 1``, values above the image count become 0): text then attends to the FOLLOWING image, and text after
  the last image to nothing. The official MultiModal-GPT training runs with ``attend_previous=False`` (the flag is
  only set to True, half the time, by ``--use_media_placement_augmentation``).
- :class:`GatedCrossAttentionBlock`: ``x = tanh(attn_gate)·xattn(x) + x``, ``x = tanh(ff_gate)·ff(x) + x``, both gates
  initialised at 0 (the block is the identity before training).

Written here: the attention goes through :func:`zoo.modules.attention.attention` (the official computes it with
einsum; the masked rows, ``-finfo.max`` in the official, are masked by the op the same way), and the key/value-cache
case: the block is called with ``decoding=True`` on only the new tokens, which get the text time of the end of the
cached sequence (generation suppresses ``<image>``, so no new media start while decoding).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from zoo.modules.attention import attention

__all__ = ["FeedForward", "GatedCrossAttentionBlock", "MaskedCrossAttention", "PerceiverAttention",
           "PerceiverResampler", "text_time"]


class FeedForward(nn.Sequential):
    """``LayerNorm → Linear(bias=False) → GELU → Linear(bias=False)`` (official ``FeedForward``; keys 0, 1, 3)."""

    def __init__(self, dim: int, mult: int = 4):
        inner = int(dim * mult)
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(),
                         nn.Linear(inner, dim, bias=False))


def _heads(x: Tensor, h: int) -> Tensor:
    """``(..., n, h·d)`` → ``(B', h, n, d)`` with all leading dims folded into the batch."""
    *lead, n, hd = x.shape
    return x.reshape(-1, n, h, hd // h).transpose(1, 2)


def _merge(x: Tensor, lead: tuple[int, ...]) -> Tensor:
    """``(B', h, n, d)`` → ``(*lead, n, h·d)``."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(*lead, n, h * d)


class PerceiverAttention(nn.Module):
    """Latents attend to ``concat(media, latents)`` (official ``PerceiverAttention``)."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.attn_backend: str | None = None

    def forward(self, x: Tensor, latents: Tensor) -> Tensor:
        """``x`` (b, T, n1, D) media, ``latents`` (b, T, n2, D) → (b, T, n2, D)."""
        x = self.norm_media(x)
        latents = self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        out = attention(_heads(q, self.heads), _heads(k, self.heads), _heads(v, self.heads),
                        backend=self.attn_backend)
        return self.to_out(_merge(out, tuple(latents.shape[:-2])))


class PerceiverResampler(nn.Module):
    """Media tokens → ``num_latents`` latents per media item (official ``PerceiverResampler``).

    Args:
        dim: width of the media tokens (and of the latents): the vision encoder's width (1024 for ViT-L/14).
        depth: layers (official 6).
        dim_head, heads: attention head width and count (official 64 × 8).
        num_latents: latents per media item (official 64).
        max_num_media: media-time embeddings ``(max_num_media, 1, dim)`` added per media item (None: none, as
            MultiModal-GPT).
        max_num_frames: frame embeddings ``(max_num_frames, dim)`` added per frame (None: none, as MultiModal-GPT).
        ff_mult: FFN width multiplier (official 4).
    """

    def __init__(self, dim: int, depth: int = 6, dim_head: int = 64, heads: int = 8, num_latents: int = 64,
                 max_num_media: int | None = None, max_num_frames: int | None = None, ff_mult: int = 4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.frame_embs = nn.Parameter(torch.randn(max_num_frames, dim)) if max_num_frames else None
        self.media_time_embs = nn.Parameter(torch.randn(max_num_media, 1, dim)) if max_num_media else None
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), FeedForward(dim, ff_mult)]) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.dim, self.num_latents = dim, num_latents

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (b, T, F, v, D) (media items T, frames F, tokens v) → (b, T, num_latents, D)."""
        if x.dim() != 5 or x.shape[-1] != self.dim:
            raise ValueError(f"PerceiverResampler expects (b, T, F, v, {self.dim}), got {tuple(x.shape)}")
        b, t, f, v, d = x.shape
        if self.frame_embs is not None:
            if f > self.frame_embs.shape[0]:
                raise ValueError(f"{f} frames but max_num_frames={self.frame_embs.shape[0]}")
            x = x + self.frame_embs[:f].view(1, 1, f, 1, d)
        x = x.reshape(b, t, f * v, d)
        if self.media_time_embs is not None:
            if t > self.media_time_embs.shape[0]:
                raise ValueError(f"{t} media items but max_num_media={self.media_time_embs.shape[0]}")
            x = x + self.media_time_embs[:t]
        latents = self.latents.to(x.dtype).expand(b, t, -1, -1)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents)


def text_time(media_locations: Tensor, length: int, decoding: bool, attend_previous: bool = True) -> Tensor:
    """Which media item (1-based; 0 = none) each of ``length`` text tokens attends to (official ``text_time``).

    ``media_locations`` (B, L): True at ``<image>`` tokens of the sequence the call started with. A longer call
    (uncached generation: prompt + generated tokens) treats the extra tokens as text; a ``decoding`` call (the
    ``length`` new tokens after a cache) gives them the time of the end of the sequence.
    """
    loc = media_locations.bool()
    count = loc.sum(-1, keepdim=True)
    if decoding:
        loc = loc.new_zeros((loc.shape[0], length))
        tt = count.expand(-1, length).clone()
    else:
        if length > loc.shape[1]:
            loc = torch.cat([loc, loc.new_zeros((loc.shape[0], length - loc.shape[1]))], 1)
        elif length < loc.shape[1]:
            raise ValueError(f"media_locations cover {loc.shape[1]} tokens, the hidden states {length}")
        tt = loc.long().cumsum(-1)
    if not attend_previous:  # official shift: text attends to the following media item
        tt = tt + (~loc).long()
        tt = tt.masked_fill(tt > count, 0)
    return tt


class MaskedCrossAttention(nn.Module):
    """Text attends to media latents with the official ``<image>`` masking (see the module docstring).

    Args:
        dim: text width (the LM hidden size); dim_visual: media width; dim_head, heads: official 64 × 8.
        only_attend_immediate_media: attend only to the latents of the current media item (official True); False:
            to every media item up to it.
    """

    def __init__(self, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8,
                 only_attend_immediate_media: bool = True):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_visual, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.only_attend_immediate_media = only_attend_immediate_media
        self.attn_backend: str | None = None

    def forward(self, x: Tensor, media: Tensor, media_locations: Tensor | None = None, *, decoding: bool = False,
                attend_previous: bool = True) -> Tensor:
        """``x`` (B, L, dim), ``media`` (B, T_img, n, dim_visual), ``media_locations`` (B, L0) bool → (B, L, dim)."""
        b, t_img, n = media.shape[:3]
        x = self.norm(x)
        q = _heads(self.to_q(x), self.heads)
        k, v = self.to_kv(media.reshape(b, t_img * n, -1)).chunk(2, dim=-1)
        k, v = _heads(k, self.heads), _heads(v, self.heads)
        keep = None
        tt = None
        if media_locations is not None:
            tt = text_time(media_locations.to(x.device), x.shape[1], decoding, attend_previous)  # (B, L)
            media_time = torch.arange(1, t_img + 1, device=x.device).repeat_interleave(n)  # (T_img·n,)
            op = torch.eq if self.only_attend_immediate_media else torch.ge
            keep = op(tt[:, None, :, None], media_time[None, None, None, :])  # (B, 1, L, T_img·n)
        out = attention(q, k, v, mask=keep, backend=self.attn_backend)
        if tt is not None and self.only_attend_immediate_media:
            out = out * (tt > 0)[:, None, :, None].to(out.dtype)  # text without media: zero attention
        return self.to_out(_merge(out, (b,)))


class GatedCrossAttentionBlock(nn.Module):
    """``tanh(attn_gate)``-gated masked cross-attention then ``tanh(ff_gate)``-gated FFN, gates at 0 (official).

    Called by :meth:`zoo.modules.lm.causal_lm.HFCausalLM.insert_blocks` as ``block(h, decoding=..., layer_idx=...,
    **context)``: without ``media`` in the context (language-only input, the official ``condition_only_lang_x``)
    it returns ``h`` unchanged.
    """

    def __init__(self, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8, ff_mult: int = 4,
                 only_attend_immediate_media: bool = True):
        super().__init__()
        self.attn = MaskedCrossAttention(dim, dim_visual, dim_head, heads, only_attend_immediate_media)
        self.attn_gate = nn.Parameter(torch.tensor([0.0]))
        self.ff = FeedForward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.tensor([0.0]))

    def forward(self, x: Tensor, media: Tensor | None = None, media_locations: Tensor | None = None, *,
                decoding: bool = False, attend_previous: bool = True, **_: Any) -> Tensor:
        if media is None:
            return x
        media = media.to(x.dtype)
        x = self.attn(x, media, media_locations, decoding=decoding, attend_previous=attend_previous) \
            * self.attn_gate.tanh() + x
        return self.ff(x) * self.ff_gate.tanh() + x
