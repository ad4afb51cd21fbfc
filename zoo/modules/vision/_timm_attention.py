"""Route timm's attention modules through :func:`zoo.modules.attention.attention`.

Hand-written because timm lets no caller choose the attention kernel: its attention modules call
``F.scaled_dot_product_attention`` (or a written-out softmax) themselves, so neither xformers nor the framework's
backend switch (:func:`zoo.modules.attention.set_attention_backend`, ``force_backend``, ``MMZOO_ATTENTION``) reaches
them. :func:`route_timm_attention` swaps the class of each supported module for a subclass defined here whose
``forward`` computes the same projections as timm 1.0.31's ``forward`` of that class and hands the product to the
framework's op, with timm's relative position bias (and Swin's shifted-window mask) passed as the additive ``bias``.
Only ``__class__`` changes: parameters, buffers, initialisation and state-dict keys stay timm's, and
``isinstance(module, <timm class>)`` still holds.

Supported classes (exact types; subclasses may change behaviour and are left alone):

============================================  =========================================================
``timm.layers.Attention``                      ViT family (``timm.models.vision_transformer.Attention``)
``timm.models.beit.Attention``                 BEiT / BEiT-v2 (q/v biases, per-block relative position bias)
``timm.models.swin_transformer.WindowAttention``  Swin (relative position bias + shifted-window 0/-100 mask)
============================================  =========================================================

Modes (``mode=`` of :func:`route_timm_attention`, ``attention=`` of the timm-based encoders):

``zoo``
    every call runs on the framework op, on the backend the op selects (``attn_backend`` of the module, a
    ``force_backend`` block, ``MMZOO_ATTENTION``, else ``auto``).
``auto``
    decided at every call: when the op would pick ``sdpa`` and timm's module is itself on its fused SDPA path
    (``module.fused_attn``), timm's original ``forward`` runs (the same kernel, nothing re-implemented in the way);
    otherwise (xformers on CUDA half precision, a ``math`` request, timm's fused path switched off) the op runs.
    On CPU with default settings a routed ViT/BEiT therefore runs exactly timm's code; Swin's ``WindowAttention``
    keeps timm's written-out softmax off by default (``fused_attn`` is experimental there), so in ``auto`` it runs
    the op's sdpa backend instead.

Each routed module gets an ``attn_backend`` attribute (None = the op's default) and ``attn_route`` (the mode).
Attention probabilities are not returned (timm's modules have no such output).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers.attention import Attention as _TimmAttention
from timm.models.beit import Attention as _BeitAttention
from timm.models.swin_transformer import WindowAttention as _WindowAttention
from torch import Tensor, nn

from zoo.modules.attention import attention, select_backend

__all__ = [
    "RoutedBeitAttention",
    "RoutedTimmAttention",
    "RoutedWindowAttention",
    "route_timm_attention",
    "routed_attention_modules",
]

RouteMode = Literal["zoo", "auto"]


class _Routed:
    """Mixin of the routed classes: the attributes every routed module carries and the per-call decision."""

    attn_backend: str | None = None
    attn_route: str = "zoo"

    def _use_timm_forward(self, x: Tensor, head_dim: int) -> bool:
        """In ``auto`` mode: True when timm's own forward would run the very kernel the op would choose."""
        if self.attn_route != "auto" or not getattr(self, "fused_attn", False):
            return False
        # select_backend reads only device, dtype and head dim: a (B, 1, N, head_dim)-shaped view stands in for q/k/v
        probe = x.unsqueeze(1)[..., :head_dim]
        return select_backend(probe, probe, probe, self.attn_backend) == "sdpa"

    def _dropout_p(self) -> float:
        return self.attn_drop.p if self.training else 0.0


# ---------------------------------------------------------------------------------------------------------------------
# ViT family: timm.layers.Attention
# ---------------------------------------------------------------------------------------------------------------------
class RoutedTimmAttention(_Routed, _TimmAttention):
    """``timm.layers.Attention`` on the framework op (q/k norm, scale norm and the output gate as timm applies them)."""

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if self._use_timm_forward(x, self.head_dim):
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        b, n, _ = x.shape
        gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        mask = bias = None
        if attn_mask is not None and not is_causal:  # timm: is_causal takes precedence over attn_mask
            if attn_mask.dtype == torch.bool:
                mask = attn_mask  # True = attend, as in SDPA
            else:
                bias = attn_mask
        x = attention(
            q, k, v, mask=mask, bias=bias, causal=is_causal, dropout_p=self._dropout_p(), scale=self.scale,
            backend=self.attn_backend,
        )
        x = x.transpose(1, 2).reshape(b, n, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


# ---------------------------------------------------------------------------------------------------------------------
# BEiT: timm.models.beit.Attention
# ---------------------------------------------------------------------------------------------------------------------
class RoutedBeitAttention(_Routed, _BeitAttention):
    """timm BEiT ``Attention`` on the framework op; the relative position bias (per block and/or shared) is ``bias``.

    The k bias is zero by construction (BEiT has q and v biases only); it is built with ``zeros_like`` rather than read
    from timm's non-persistent ``k_bias`` buffer, so a model materialised from the meta device computes the same.
    """

    def forward(self, x: Tensor, shared_rel_pos_bias: Tensor | None = None) -> Tensor:
        head_dim = self.qkv.out_features // (3 * self.num_heads)
        if self._use_timm_forward(x, head_dim):
            return super().forward(x, shared_rel_pos_bias=shared_rel_pos_bias)
        b, n, _ = x.shape
        if self.q_bias is None:
            qkv = self.qkv(x)
        else:
            qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
            if self.qkv_bias_separate:
                qkv = self.qkv(x) + qkv_bias
            else:
                qkv = F.linear(x, weight=self.qkv.weight, bias=qkv_bias)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self._get_rel_pos_bias() if self.relative_position_bias_table is not None else None
        if shared_rel_pos_bias is not None:
            bias = shared_rel_pos_bias if bias is None else bias + shared_rel_pos_bias
        x = attention(q, k, v, bias=bias, dropout_p=self._dropout_p(), scale=self.scale, backend=self.attn_backend)
        x = x.transpose(1, 2).reshape(b, n, -1)
        return self.proj_drop(self.proj(x))


# ---------------------------------------------------------------------------------------------------------------------
# Swin: timm.models.swin_transformer.WindowAttention
# ---------------------------------------------------------------------------------------------------------------------
class RoutedWindowAttention(_Routed, _WindowAttention):
    """timm Swin ``WindowAttention`` on the framework op; ``bias`` = relative position bias + shifted-window mask.

    Inputs are ``(num_windows * B, N, C)`` with the windows of one image contiguous (timm's ``window_partition``); the
    ``(num_windows, N, N)`` mask (0 / -100, additive, as timm builds it) is repeated over the batch.
    """

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        head_dim = self.qkv.out_features // (3 * self.num_heads)
        if self._use_timm_forward(x, head_dim):
            return super().forward(x, mask=mask)
        bw, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self._get_rel_pos_bias()  # (1, H, N, N)
        if mask is not None:
            num_win = mask.shape[0]
            bias = bias.unsqueeze(1) + mask.to(bias.dtype).view(1, num_win, 1, n, n)  # (1, nW, H, N, N)
            bias = bias.expand(bw // num_win, -1, -1, -1, -1).reshape(bw, self.num_heads, n, n)
        x = attention(q, k, v, bias=bias, dropout_p=self._dropout_p(), scale=self.scale, backend=self.attn_backend)
        x = x.transpose(1, 2).reshape(bw, n, -1)
        return self.proj_drop(self.proj(x))


# ---------------------------------------------------------------------------------------------------------------------
# routing
# ---------------------------------------------------------------------------------------------------------------------
_ROUTED: dict[type, type] = {
    _TimmAttention: RoutedTimmAttention,
    _BeitAttention: RoutedBeitAttention,
    _WindowAttention: RoutedWindowAttention,
}
_ORIGINAL: dict[type, type] = {routed: base for base, routed in _ROUTED.items()}


def route_timm_attention(model: nn.Module, enable: bool = True, *, mode: RouteMode = "zoo") -> list[str]:
    """Route (``enable=True``) or un-route every supported timm attention module of ``model``; returns their names.

    Routing swaps each module's class for its routed subclass and sets ``attn_backend`` (kept when already set)
    and ``attn_route = mode``; un-routing restores timm's class and removes both attributes. Idempotent.
    """
    if mode not in ("zoo", "auto"):
        raise ValueError(f"route_timm_attention: mode must be 'zoo' or 'auto', got {mode!r}")
    names = []
    for name, module in model.named_modules():
        cls = type(module)
        if enable:
            routed = _ROUTED.get(cls, cls if cls in _ORIGINAL else None)
            if routed is None:
                continue
            module.__class__ = routed
            module.attn_backend = module.__dict__.get("attn_backend")
            module.attn_route = mode
        else:
            base = _ORIGINAL.get(cls)
            if base is None:
                continue
            module.__class__ = base
            module.__dict__.pop("attn_backend", None)
            module.__dict__.pop("attn_route", None)
        names.append(name)
    return names


def routed_attention_modules(model: nn.Module) -> list[nn.Module]:
    """The routed attention modules of ``model``, in registration order."""
    return [m for m in model.modules() if isinstance(m, _Routed)]
