"""One attention op for every attention layer the framework writes.

:func:`attention` computes ``softmax(q kᵀ · scale + bias + mask) v`` for tensors laid out ``(batch, heads, length,
head_dim)``, with key-padding masks, boolean or additive masks, an additive bias (relative position bias), a causal
flag and dropout, on one of three backends:

``xformers``
    ``xformers.ops.memory_efficient_attention``: CUDA tensors in float16/bfloat16, when xformers is importable.
``sdpa``
    :func:`torch.nn.functional.scaled_dot_product_attention` (fused flash / memory-efficient / math kernels).
``math``
    The written-out reference. The only backend that can return the attention probabilities (distillation, analysis).

``auto`` picks xformers when it can run the call, else sdpa (math when probabilities are requested).

Choosing a backend, strongest first:

1. :func:`force_backend` context manager (benchmarks, debugging): overrides everything below;
2. the ``backend=`` argument of a call; layers pass their ``attn_backend`` attribute, which a model config sets for the
   whole model (``attention: math`` in a model YAML, or :func:`set_attention_backend`);
3. the ``MMZOO_ATTENTION`` environment variable (``auto``, ``xformers``, ``sdpa`` or ``math``);
4. ``auto``.

An explicit request that cannot run the call (xformers on CPU tensors, probabilities from sdpa) raises
:class:`AttentionBackendError` saying why, rather than silently running something else.

Causal masking is aligned to the bottom right: query ``i`` of ``Lq`` sits at position ``Lk - Lq + i`` and sees keys
``0 … Lk - Lq + i``. With ``Lq == Lk`` this is the usual lower-triangular mask; with a key/value cache (``Lq < Lk``) it
is what decoding needs. Masked positions get the most negative finite value of the dtype (not ``-inf``), so a query
whose keys are all masked yields a finite (uniform) average instead of NaN, identically on every backend.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BACKENDS",
    "AttentionBackendError",
    "attention",
    "select_backend",
    "xformers_available",
    "force_backend",
    "set_attention_backend",
    "register_transformers_attention",
    "ENV_VAR",
]

BACKENDS = ("auto", "xformers", "sdpa", "math")
ENV_VAR = "MMZOO_ATTENTION"
BackendName = Literal["auto", "xformers", "sdpa", "math"]

_XFORMERS_DTYPES = (torch.float16, torch.bfloat16)


class AttentionBackendError(RuntimeError):
    """An attention backend was requested explicitly but cannot run this call (the message says why)."""


_local = threading.local()


@contextlib.contextmanager
def force_backend(name: str) -> Iterator[None]:
    """Run every attention call inside the block on ``name``, whatever layers or configs ask for."""
    _check_name(name, "force_backend(name)")
    previous = getattr(_local, "forced", None)
    _local.forced = name
    try:
        yield
    finally:
        _local.forced = previous


def _check_name(name: str, where: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{where}: unknown attention backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


def _env_backend() -> str:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    return _check_name(value, f"environment variable {ENV_VAR}")


_XOPS: list = []  # the import's result, once (a plain global: torch.compile reads it as a constant)


def _xformers_ops():
    if not _XOPS:
        try:
            import xformers.ops as xops  # noqa: PLC0415 - optional dependency
        except Exception:  # noqa: BLE001 - any import failure (missing, built for another torch): "not available"
            xops = None
        _XOPS.append(xops)
    return _XOPS[0]


def xformers_available() -> bool:
    """Whether ``xformers.ops.memory_efficient_attention`` can be imported."""
    return _xformers_ops() is not None


def _xformers_refusal(q: Tensor, k: Tensor, v: Tensor, return_probs: bool) -> str | None:
    """Why xformers cannot run this call, or None when it can."""
    if not xformers_available():
        return "xformers is not importable (install the 'gpu' extra on a CUDA machine)"
    if not (q.is_cuda and k.is_cuda and v.is_cuda):
        return f"tensors are on {q.device.type}; xformers runs only on CUDA tensors"
    if q.dtype not in _XFORMERS_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtype {q.dtype}; xformers is used for float16/bfloat16 tensors only"
    if return_probs:
        return "xformers cannot return attention probabilities (use the math backend)"
    if q.shape[-1] > 256 or v.shape[-1] > 256:
        return f"head dim {max(q.shape[-1], v.shape[-1])} > 256"
    return None


def select_backend(
    q: Tensor, k: Tensor, v: Tensor, backend: str | None = None, *, return_probs: bool = False
) -> str:
    """The backend that will run this call, following the precedence in the module docstring."""
    forced = getattr(_local, "forced", None)
    requested = forced or backend or _env_backend()
    _check_name(requested, "attention backend")
    if requested == "auto":
        if return_probs:
            return "math"
        return "xformers" if _xformers_refusal(q, k, v, False) is None else "sdpa"
    if requested == "xformers":
        reason = _xformers_refusal(q, k, v, return_probs)
        if reason is not None:
            raise AttentionBackendError(f"attention backend 'xformers' was requested but cannot run: {reason}")
    elif requested == "sdpa" and return_probs:
        raise AttentionBackendError(
            "attention backend 'sdpa' was requested with return_probs=True; only 'math' returns probabilities"
        )
    return requested


# ---------------------------------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------------------------------
def _keep_mask(
    key_padding_mask: Tensor | None, mask: Tensor | None, causal: bool, lq: int, lk: int, device: torch.device
) -> Tensor | None:
    """One boolean keep-mask broadcastable to (B, H, Lq, Lk), or None when nothing is masked."""
    keep = None
    if key_padding_mask is not None:
        if key_padding_mask.dim() != 2 or key_padding_mask.shape[-1] != lk:
            raise ValueError(
                f"key_padding_mask must have shape (batch, {lk}) (1 = attend, 0 = padding); "
                f"got {tuple(key_padding_mask.shape)}"
            )
        keep = key_padding_mask.bool()[:, None, None, :]
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be boolean (True = attend); got {mask.dtype}. Pass additive masks as bias=")
        m = mask
        while m.dim() < 4:
            m = m.unsqueeze(0)
        keep = m if keep is None else keep & m
    if causal:
        rows = torch.arange(lq, device=device)[:, None] + (lk - lq)
        tri = (torch.arange(lk, device=device)[None, :] <= rows)[None, None]
        keep = tri if keep is None else keep & tri
    return keep


def _additive(keep: Tensor | None, bias: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Combine a keep-mask and an additive bias into one additive float tensor (masked = most negative finite)."""
    if keep is None:
        return None if bias is None else bias.to(dtype)
    neg = torch.finfo(dtype).min
    if bias is None:
        return torch.zeros((), dtype=dtype, device=keep.device).masked_fill(~keep, neg)
    return bias.to(dtype).masked_fill(~keep, neg)


# ---------------------------------------------------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------------------------------------------------
def _math(q, k, v, add, dropout_p, scale, return_probs):
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if add is not None:
        scores = scores + add
    # half-precision scores are normalised in float32; float32/float64 stay in their own precision
    probs = torch.softmax(scores.float() if scores.dtype in _XFORMERS_DTYPES else scores, dim=-1).to(q.dtype)
    dropped = F.dropout(probs, p=dropout_p) if dropout_p > 0 else probs
    out = torch.matmul(dropped, v)
    return (out, probs) if return_probs else out


def _sdpa(q, k, v, keep, bias, causal_only, dropout_p, scale):
    if causal_only:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale)
    add = _additive(keep, bias, q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=add, dropout_p=dropout_p, scale=scale)


def _xformers(q, k, v, keep, bias, causal, causal_only, dropout_p, scale):
    xops = _xformers_ops()
    b, h, lq, _ = q.shape
    lk = k.shape[-2]
    if causal_only:
        attn_bias = xops.fmha.attn_bias.LowerTriangularFromBottomRightMask()
    elif keep is None and bias is None:
        attn_bias = None
    else:
        add = _additive(keep, bias, q.dtype)
        # xformers wants a (B, H, Lq, Lk) bias whose row stride is a multiple of 8 elements
        padded = torch.empty(b, h, lq, (lk + 7) // 8 * 8, dtype=q.dtype, device=q.device)
        attn_bias = padded[..., :lk]
        attn_bias.copy_(add.expand(b, h, lq, lk))
    out = xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=attn_bias, p=dropout_p, scale=scale
    )
    return out.transpose(1, 2)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    key_padding_mask: Tensor | None = None,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    backend: str | None = None,
    return_probs: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Scaled dot-product attention on the selected backend.

    Args:
        q, k, v: ``(B, H, Lq, D)``, ``(B, H, Lk, D)``, ``(B, H, Lk, Dv)``.
        key_padding_mask: ``(B, Lk)``, 1/True = attend, 0/False = padding (the transformers ``attention_mask``).
        mask: boolean keep-mask broadcastable to ``(B, H, Lq, Lk)``.
        bias: additive float bias broadcastable to ``(B, H, Lq, Lk)`` (e.g. relative position bias).
        causal: bottom-right aligned causal mask (see the module docstring).
        dropout_p: dropout on the attention probabilities; pass 0 in evaluation.
        scale: defaults to ``1 / sqrt(D)``.
        backend: ``auto``/``xformers``/``sdpa``/``math`` or None (the environment default).
        return_probs: also return the ``(B, H, Lq, Lk)`` probabilities (math backend only).

    Returns:
        ``(B, H, Lq, Dv)``, and the probabilities when ``return_probs``.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"attention expects (batch, heads, length, head_dim) tensors; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.shape[-2] != v.shape[-2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"incompatible shapes: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    name = select_backend(q, k, v, backend, return_probs=return_probs)
    lq, lk = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    keep_no_causal = _keep_mask(key_padding_mask, mask, False, lq, lk, q.device)
    causal_only = causal and keep_no_causal is None and bias is None and lq == lk
    if name == "xformers":
        causal_only_x = causal and keep_no_causal is None and bias is None
        keep = None if causal_only_x else _keep_mask(key_padding_mask, mask, causal, lq, lk, q.device)
        return _xformers(q, k, v, keep, bias, causal, causal_only_x, dropout_p, scale)
    if name == "sdpa":
        keep = None if causal_only else _keep_mask(key_padding_mask, mask, causal, lq, lk, q.device)
        return _sdpa(q, k, v, keep, bias, causal_only, dropout_p, scale)
    keep = _keep_mask(key_padding_mask, mask, causal, lq, lk, q.device)
    return _math(q, k, v, _additive(keep, bias, q.dtype), dropout_p, scale, return_probs)


def set_attention_backend(model: nn.Module, backend: str | None) -> nn.Module:
    """Set the backend of every layer of ``model`` that has an ``attn_backend`` attribute (None = global default).

    transformers sub-models running the ``"mmzoo"`` implementation follow the choice through their config
    (``config.mmzoo_attention``), and timm backbones routed through this op through their attention modules.
    """
    if backend is not None:
        _check_name(backend, "set_attention_backend(backend)")
    for module in model.modules():
        if hasattr(module, "attn_backend"):
            module.attn_backend = backend
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "_attn_implementation", None) == TRANSFORMERS_IMPLEMENTATION:
            config.mmzoo_attention = backend
    return model


# ---------------------------------------------------------------------------------------------------------------------
# transformers integration
# ---------------------------------------------------------------------------------------------------------------------
TRANSFORMERS_IMPLEMENTATION = "mmzoo"


def _transformers_attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[Tensor, Tensor | None]:
    """transformers' attention-function signature over :func:`attention`.

    transformers passes (B, H, L, D) tensors and a 4-D mask prepared by its ``sdpa`` mask function (boolean keep-mask,
    additive float mask, or None); it expects (B, Lq, H, D) back. Grouped-query attention is expanded here.
    """
    if kwargs.get("softcap") is not None:
        raise ValueError("the mmzoo attention implementation does not support softcap")
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    causal = bool(is_causal) and attention_mask is None and query.shape[2] > 1
    mask = bias = None
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            mask = attention_mask
        else:
            bias = attention_mask
    backend = getattr(getattr(module, "config", None), "mmzoo_attention", None)
    want_probs = bool(kwargs.get("output_attentions", False))
    out = attention(
        query, key, value, mask=mask, bias=bias, causal=causal, dropout_p=dropout, scale=scaling,
        backend="math" if want_probs else backend, return_probs=want_probs,
    )
    probs = None
    if want_probs:
        out, probs = out
    return out.transpose(1, 2).contiguous(), probs


@functools.lru_cache(maxsize=1)
def register_transformers_attention() -> str:
    """Register :func:`attention` as transformers' attention implementation ``"mmzoo"``; returns that name.

    Models built with ``attn_implementation="mmzoo"`` call it from every attention layer; their masks are prepared by
    transformers' own ``sdpa`` mask function (boolean keep-masks, broadcast where possible).
    """
    from transformers import AttentionInterface  # noqa: PLC0415 - transformers is imported only when used
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(TRANSFORMERS_IMPLEMENTATION, _transformers_attention_forward)
    AttentionMaskInterface.register(TRANSFORMERS_IMPLEMENTATION, ALL_MASK_ATTENTION_FUNCTIONS.get("sdpa", sdpa_mask))
    return TRANSFORMERS_IMPLEMENTATION
