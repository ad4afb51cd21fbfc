"""BERT-style transformer layers on the framework's attention op, and the local weight reader they share.

:class:`TransformerLayer` is self-attention (optionally causal, with an optional additive bias such as a relative
position bias) -> optional cross-attention (keys/values projected from ``encoder_width``, which may differ from the
hidden size) -> feed-forward, each sub-block post-LayerNorm with a residual as in BERT, GELU (erf form) in the FFN.

Hand-written rather than reused from transformers because ``transformers.BertLayer`` cannot do what the zoo needs:
its cross-attention projects keys/values from ``hidden_size`` only (X²-VLM and CCLM project them from the vision width),
it takes no additive attention bias (DaVinci's relative position bias), ``is_decoder=True`` silently makes its
self-attention causal under sdpa (X²-VLM's fusion layers are bidirectional), and it does not call
:func:`zoo.modules.attention.attention` with a per-module backend. The module names are transformers' own, so the
state-dict keys equal ``BertLayer``'s (``attention.self.{query,key,value}``, ``attention.output.{dense,LayerNorm}``,
``crossattention.*``, ``intermediate.dense``, ``output.{dense,LayerNorm}``) and official and Hugging Face checkpoints
load without renaming; tests/test_fusion.py checks numerical agreement with ``BertLayer`` on the same weights.

:class:`LayerStack` runs a slice of such layers (``layer.N`` keys) with gradient checkpointing, hidden states and
attention maps, or, for decoding step by step, only the new positions with a key/value cache of the earlier ones
(:mod:`zoo.modules.kv_cache`). :func:`load_bert_layers` copies embeddings and layers by key name from a local
checkpoint (read with :func:`zoo.hub.load_state_dict`), optionally from other source layers (X²-VLM initialises its fusion layers 12–17 from BERT layers 6–11; CCLM keeps XLM-R's odd layers).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from zoo.modules.attention import attention
from zoo.modules.kv_cache import KVCache, LayerCache

__all__ = [
    "MultiHeadAttention",
    "AttentionBlock",
    "Intermediate",
    "Output",
    "TransformerLayer",
    "LayerStack",
    "init_bert_weights",
    "read_hf_config",
    "find_prefix",
    "load_bert_layers",
]


# ---------------------------------------------------------------------------------------------------------------------
# blocks
# ---------------------------------------------------------------------------------------------------------------------
class MultiHeadAttention(nn.Module):
    """Query/key/value projections (keys ``query``, ``key``, ``value``) around :func:`attention`.

    Keys and values are projected from ``kv_width`` (default ``width``): the context of cross-attention may be wider or
    narrower than the queries.
    """

    def __init__(self, width: int, num_heads: int, kv_width: int | None = None, attn_drop: float = 0.0):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"hidden size {width} is not a multiple of the number of heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        kv_width = width if kv_width is None else kv_width
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(kv_width, width)
        self.value = nn.Linear(kv_width, width)
        self.attn_drop = attn_drop
        self.attn_backend: str | None = None

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        mask: Tensor | None = None,
        bias: Tensor | None = None,
        causal: bool = False,
        return_probs: bool = False,
        cache: LayerCache | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """``cache`` (decoding, :mod:`zoo.modules.kv_cache`): without ``context`` the keys/values of the earlier
        positions are prepended to those of ``x`` and the new ones stored (``key_padding_mask`` / ``mask`` then
        cover every key); with ``context`` its keys/values are projected on the first call only, one row per
        context example, and the rows of ``x`` (example-major) attend to their example's."""
        q = self._heads(self.query(x))
        folded = False
        if cache is None:
            context = x if context is None else context
            k, v = self._heads(self.key(context)), self._heads(self.value(context))
        else:
            if return_probs:
                raise ValueError("attention probabilities are not returned while decoding with a key/value cache")
            if context is None:
                k, v = cache.extend(self._heads(self.key(x)), self._heads(self.value(x)))
            else:
                ctx = context
                k, v, key_padding_mask = cache.context(
                    lambda: (self._heads(self.key(ctx)), self._heads(self.value(ctx))), key_padding_mask
                )
                q, folded = cache.fold(q, k.shape[0]), True
        out = attention(
            q, k, v,
            key_padding_mask=key_padding_mask, mask=mask, bias=bias, causal=causal,
            dropout_p=self.attn_drop if self.training else 0.0,
            # probabilities exist only on the math backend; asking for them picks it (as the transformers integration)
            backend="math" if return_probs else self.attn_backend,
            return_probs=return_probs,
        )
        probs = None
        if return_probs:
            out, probs = out
        if folded:
            out = cache.unfold(out)
        b, _, n, _ = out.shape
        return out.transpose(1, 2).reshape(b, n, -1), probs


class Output(nn.Module):
    """Projection, dropout, residual, post-LayerNorm (keys ``dense``, ``LayerNorm``): BERT's ``SelfOutput`` (after
    attention, ``in_width == width``) and ``Output`` (after the FFN)."""

    def __init__(self, in_width: int, width: int, eps: float = 1e-12, drop: float = 0.0):
        super().__init__()
        self.dense = nn.Linear(in_width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.dropout = nn.Dropout(drop)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class AttentionBlock(nn.Module):
    """``self`` (the attention) + ``output`` (projection and LayerNorm), as transformers' ``BertAttention``."""

    def __init__(
        self, width: int, num_heads: int, kv_width: int | None = None, *, eps: float = 1e-12, attn_drop: float = 0.0,
        drop: float = 0.0,
    ):
        super().__init__()
        self.self = MultiHeadAttention(width, num_heads, kv_width, attn_drop)
        self.output = Output(width, width, eps, drop)

    def forward(self, x: Tensor, context: Tensor | None = None, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        out, probs = self.self(x, context, **kwargs)
        return self.output(out, x), probs


class Intermediate(nn.Module):
    """First FFN projection and GELU (key ``dense``)."""

    def __init__(self, width: int, intermediate_size: int):
        super().__init__()
        self.dense = nn.Linear(width, intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class TransformerLayer(nn.Module):
    """One BERT layer: self-attention -> cross-attention (when ``cross_attention``) -> FFN, post-LayerNorm.

    Args:
        width: hidden size.
        num_heads: attention heads (self and cross).
        intermediate_size: FFN inner size.
        cross_attention: add the ``crossattention`` block.
        encoder_width: width of the context tokens cross-attention reads (default ``width``).
        causal: default of the self-attention's causal flag (a forward call may override it).
        eps: LayerNorm epsilon.
        attn_drop: dropout on attention probabilities; drop: dropout after the projections (BERT's hidden dropout).
    """

    def __init__(
        self,
        width: int,
        num_heads: int,
        intermediate_size: int,
        *,
        cross_attention: bool = False,
        encoder_width: int | None = None,
        causal: bool = False,
        eps: float = 1e-12,
        attn_drop: float = 0.0,
        drop: float = 0.0,
    ):
        super().__init__()
        self.width = width
        self.causal = causal
        self.encoder_width = (width if encoder_width is None else encoder_width) if cross_attention else None
        self.attention = AttentionBlock(width, num_heads, eps=eps, attn_drop=attn_drop, drop=drop)
        self.has_cross_attention = cross_attention
        if cross_attention:
            self.crossattention = AttentionBlock(
                width, num_heads, self.encoder_width, eps=eps, attn_drop=attn_drop, drop=drop
            )
        self.intermediate = Intermediate(width, intermediate_size)
        self.output = Output(intermediate_size, width, eps, drop)

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        bias: Tensor | None = None,
        causal: bool | None = None,
        output_attentions: bool = False,
        cache: LayerCache | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Returns ``(hidden_states, self-attention probabilities, cross-attention probabilities)``.

        Args:
            hidden_states: ``(B, L, width)``.
            attention_mask: ``(B, L)`` key padding of the self-attention, 1 = token, 0 = padding.
            encoder_hidden_states: ``(B, M, encoder_width)`` context of the cross-attention (required when the layer has
                one; ignored otherwise is an error, so that a misrouted call does not silently skip the fusion).
            encoder_attention_mask: ``(B, M)`` key padding of the context.
            mask: boolean keep-mask of the self-attention broadcastable to ``(B, H, L, L)`` (prefix-LM masks, ...).
            bias: additive self-attention bias broadcastable to ``(B, H, L, L)`` (relative position bias).
            causal: overrides the layer's ``causal`` default for this call.
            output_attentions: return the probabilities (math backend).
            cache: this layer's key/value cache while decoding (:mod:`zoo.modules.kv_cache`): ``hidden_states`` are
                the new positions only.
        """
        causal = self.causal if causal is None else causal
        x, self_probs = self.attention(
            hidden_states, key_padding_mask=attention_mask, mask=mask, bias=bias, causal=causal,
            return_probs=output_attentions, cache=cache,
        )
        cross_probs = None
        if self.has_cross_attention:
            if encoder_hidden_states is None:
                raise ValueError("this layer has cross-attention: pass encoder_hidden_states (the vision tokens)")
            x, cross_probs = self.crossattention(
                x, encoder_hidden_states, key_padding_mask=encoder_attention_mask, return_probs=output_attentions,
                cache=cache,
            )
        elif encoder_hidden_states is not None:
            raise ValueError("encoder_hidden_states was given to a layer built without cross-attention")
        x = self.output(self.intermediate(x), x)
        return x, self_probs, cross_probs


class LayerStack(nn.Module):
    """A list of :class:`TransformerLayer` (keys ``layer.N.*``) run in order, or a slice of them.

    Gradient checkpointing (``set_grad_checkpointing``) recomputes each layer in the backward pass while training.
    """

    def __init__(self, layers: Sequence[TransformerLayer]):
        super().__init__()
        self.layer = nn.ModuleList(layers)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        *,
        start: int = 0,
        end: int | None = None,
        mask: Tensor | None = None,
        bias: Tensor | None = None,
        causal: bool | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        cache: KVCache | None = None,
    ) -> tuple[Tensor, tuple[Tensor, ...] | None, tuple[Tensor, ...] | None, tuple[Tensor, ...] | None]:
        """Run layers ``start`` to ``end`` (exclusive); context is passed only to layers with cross-attention.

        ``cache`` (decoding, :mod:`zoo.modules.kv_cache`): ``hidden_states`` are the new positions only; layer ``i``
        reads and extends ``cache.at(i)``.

        Returns ``(hidden_states, all hidden states, self-attention maps, cross-attention maps)``; the tuples are None
        unless requested (the hidden states hold the input and every layer's output).
        """
        states = (hidden_states,) if output_hidden_states else None
        self_maps = () if output_attentions else None
        cross_maps = () if output_attentions else None
        if cache is not None and len(cache.self_kv) != len(self.layer):
            raise ValueError(f"the cache has {len(cache.self_kv)} layers but the stack {len(self.layer)}")
        x = hidden_states
        for index in range(len(self.layer))[start:end]:
            layer = self.layer[index]
            ctx = encoder_hidden_states if layer.has_cross_attention else None
            ctx_mask = encoder_attention_mask if layer.has_cross_attention else None
            run = functools.partial(
                layer, mask=mask, bias=bias, causal=causal, output_attentions=output_attentions,
                cache=None if cache is None else cache.at(index),
            )
            if cache is None and self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x, sp, cp = checkpoint(run, x, attention_mask, ctx, ctx_mask, use_reentrant=False)
            else:
                x, sp, cp = run(x, attention_mask, ctx, ctx_mask)
            if output_hidden_states:
                states += (x,)
            if output_attentions:
                self_maps += (sp,)
                if cp is not None:
                    cross_maps += (cp,)
        return x, states, self_maps, cross_maps


def init_bert_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation: normal(0, std) linear and embedding weights (padding row 0), zero biases, unit norms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------------------------------
# local checkpoints
# ---------------------------------------------------------------------------------------------------------------------
def read_hf_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``config.json`` of a local folder (or of the folder holding a weights file), or None."""
    p = Path(path)
    cfg = (p if p.is_dir() else p.parent) / "config.json"
    if not cfg.is_file():
        return None
    with open(cfg, encoding="utf-8") as f:
        return json.load(f)


def find_prefix(state: dict[str, Tensor], suffix: str, source: str | os.PathLike) -> str:
    """The single prefix before ``suffix`` among the keys (``""``, ``"bert."``, ``"text_encoder.bert."``, ...)."""
    prefixes = sorted({k[: -len(suffix)] for k in state if k.endswith(suffix) and (k == suffix or
                                                                                      k[: -len(suffix)].endswith("."))})
    if not prefixes:
        raise KeyError(f"{source}: no key ends with {suffix!r}; is this the right checkpoint? (first keys: "
                       f"{', '.join(list(state)[:5])})")
    if len(prefixes) > 1:
        raise KeyError(f"{source}: several candidate prefixes hold {suffix!r}: {', '.join(repr(x) for x in prefixes)}; "
                       "extract the part you want into its own file")
    return prefixes[0]


def _rename_legacy(key: str) -> str:
    # original Google BERT conversions name the LayerNorm parameters gamma/beta
    if key.endswith(".gamma"):
        return key[:-6] + ".weight"
    if key.endswith(".beta"):
        return key[:-5] + ".bias"
    return key


def load_bert_layers(
    module: nn.Module,
    state: dict[str, Tensor],
    *,
    source: str | os.PathLike,
    prefix: str,
    layer_prefix: str = "encoder.layer.",
    layer_sources: Sequence[int | None],
    extra: Sequence[str] = (),
) -> dict[str, list[str]]:
    """Copy BERT-layout weights from ``state`` into ``module``.

    Our layer ``i`` (``{layer_prefix}{i}.*`` in ``module``) receives the tensors of source layer ``layer_sources[i]``
    (None: leave it as initialised). Cross-attention weights absent from the source stay as initialised (BERT
    checkpoints have none; X²-VLM's fusion layers learn them in pre-training); every other weight of a mapped layer must
    be present.
    Every key of ``module`` starting with one of ``extra`` (e.g. ``"embeddings."``) must be present under ``prefix``,
    except the ``position_ids`` buffer. Shapes must match. Returns ``{"initialised": [...], "ignored": [...]}``: keys
    of ``module`` left as initialised and source keys under ``prefix`` that were not used.
    """
    src = {_rename_legacy(k[len(prefix):]): v for k, v in state.items() if k.startswith(prefix)}
    own = module.state_dict()
    new: dict[str, Tensor] = {}
    used: set[str] = set()
    initialised: list[str] = []
    missing: list[str] = []
    for key in own:
        if any(key.startswith(e) for e in extra):
            src_key = key
        elif key.startswith(layer_prefix):
            idx, rest = key[len(layer_prefix):].split(".", 1)
            s = layer_sources[int(idx)] if int(idx) < len(layer_sources) else None
            if s is None:
                initialised.append(key)
                continue
            src_key = f"{layer_prefix}{s}.{rest}"
        else:
            continue
        if src_key in src:
            new[key] = src[src_key]
            used.add(src_key)
        elif key.endswith("position_ids"):  # a derived index buffer (0..L-1), not a weight; newer files omit it
            continue
        elif ".crossattention." in f".{key}":
            initialised.append(key)
        else:
            missing.append(key if src_key == key else f"{key} (from {prefix}{src_key})")
    if missing:
        shown = ", ".join(missing[:6]) + (f", ... ({len(missing)} in all)" if len(missing) > 6 else "")
        raise KeyError(f"{source}: the checkpoint lacks {shown}")
    for key, value in new.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(
                f"{source}: {prefix}{key} has shape {tuple(value.shape)} but the module expects {tuple(own[key].shape)}"
                " (check hidden_size / intermediate_size / vocab_size / encoder_width against the checkpoint)"
            )
    module.load_state_dict(new, strict=False)
    ignored = sorted(k for k in src if k not in used)
    return {"initialised": initialised, "ignored": ignored}
