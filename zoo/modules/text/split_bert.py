"""Text encoder ``split_bert``: X²-VLM's single BERT stack whose last layers add cross-attention to vision tokens.

Layers ``0 .. fusion_start - 1`` are text-only; layers ``fusion_start .. num_layers - 1`` are self-attention ->
cross-attention (keys/values from the vision width ``encoder_width``) -> FFN. ``mode="text"`` runs the embeddings and
the text layers, ``mode="fusion"`` runs the fusion layers over given text states, ``mode="full"`` both. X²-VLM base is
bert-base with 18 layers and fusion from 12; large a 12-layer bert-large extended to 18; CCLM is XLM-R-large cut to its
12 odd layers with fusion from 6 (``embeddings="xlm-roberta"``).

Reused from transformers: the embeddings (``BertEmbeddings`` / ``XLMRobertaEmbeddings``, same keys, XLM-R's position ids
counted from the pad id) and the tokenizer. Hand-written: the layers (:mod:`zoo.modules.layers`, because transformers'
``BertLayer`` cannot project cross-attention keys/values from another width, runs its own attention code, and with
``is_decoder=True`` makes its self-attention causal under sdpa — X²-VLM's fusion layers are bidirectional), the mode
split, and the loader that maps source layers onto ours (``init_fusion_from``, ``layer_map``).

Keys: ``embeddings.*`` (with a persistent ``position_ids`` buffer, as in the official checkpoints) and
``encoder.layer.N.*`` with global N, so ``{"bert." + k: v}`` equals the official ``text_encoder.bert.*`` layout. No
pooler (the official stack has none); ``pooled`` is the first token's final state.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from zoo.hub import load_state_dict
from zoo.modules.kv_cache import KVCache
from zoo.modules.layers import (
    LayerStack,
    TransformerLayer,
    find_prefix,
    init_bert_weights,
    load_bert_layers,
    read_hf_config,
)
from zoo.modules.outputs import EncoderOutput
from zoo.modules.text.hf import load_tokenizer
from zoo.registry import TEXT_ENCODERS
from zoo.spec import ConfigError

__all__ = ["SplitBert", "build_embeddings"]

Mode = Literal["text", "fusion", "full"]


# ---------------------------------------------------------------------------------------------------------------------
# blocks
# ---------------------------------------------------------------------------------------------------------------------
def build_embeddings(
    kind: str,
    *,
    vocab_size: int,
    hidden_size: int,
    max_position_embeddings: int,
    type_vocab_size: int,
    pad_token_id: int,
    layer_norm_eps: float,
    dropout: float,
) -> nn.Module:
    """transformers' ``BertEmbeddings`` or ``XLMRobertaEmbeddings``, with ``position_ids`` saved in the state dict."""
    if kind == "bert":
        from transformers import BertConfig  # noqa: PLC0415
        from transformers.models.bert.modeling_bert import BertEmbeddings  # noqa: PLC0415

        cls, config_cls = BertEmbeddings, BertConfig
    elif kind == "xlm-roberta":
        from transformers import XLMRobertaConfig  # noqa: PLC0415
        from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaEmbeddings  # noqa: PLC0415

        cls, config_cls = XLMRobertaEmbeddings, XLMRobertaConfig
    else:
        raise ConfigError(f"embeddings={kind!r}: expected 'bert' or 'xlm-roberta'")
    config = config_cls(
        vocab_size=vocab_size, hidden_size=hidden_size, max_position_embeddings=max_position_embeddings,
        type_vocab_size=type_vocab_size, pad_token_id=pad_token_id, layer_norm_eps=layer_norm_eps,
        hidden_dropout_prob=dropout,
    )
    emb = cls(config)
    # transformers >= 5 stops saving position_ids; the official checkpoints (transformers 4.x) have it
    emb.register_buffer("position_ids", emb.position_ids, persistent=True)
    return emb


# ---------------------------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------------------------
@TEXT_ENCODERS.register("split_bert")
class SplitBert(nn.Module):
    """One BERT stack: text layers, then fusion layers with cross-attention to vision tokens.

    Args:
        num_layers: total layers (text + fusion).
        fusion_start: index of the first fusion layer; ``fusion_start == num_layers`` means a text-only stack.
        hidden_size, num_heads, intermediate_size: layer sizes.
        vocab_size, max_position_embeddings, type_vocab_size: embedding sizes.
        encoder_width: width of the vision tokens the fusion layers cross-attend to.
        embeddings: ``"bert"`` (position ids 0..L-1) or ``"xlm-roberta"`` (position ids from ``pad_token_id + 1``,
            padding keeps the pad position).
        initializer_range: std of BERT's normal initialisation (official 0.02 at width 768; a toy width keeps
            the official activation scale with ``0.02·√(768 / width)``, e.g. 0.07 at 64).
        pad_token_id: default 0 for ``bert``, 1 for ``xlm-roberta``.
        layer_norm_eps: 1e-12 for BERT, 1e-5 for XLM-R.
        hidden_dropout, attention_dropout: BERT's ``hidden_dropout_prob`` and ``attention_probs_dropout_prob``.
        pretrained: local folder (``config.json`` + weights) or weights file in a BERT layout (any prefix such as
            ``bert.``, ``roberta.``, ``text_encoder.bert.``); embeddings and layers are copied by key name.
        init_fusion_from: fusion layer ``i`` takes the self-attention/FFN weights of source layer
            ``i - fusion_start + init_fusion_from`` (X²-VLM: 6, copying BERT layers 6-11 into 12-17).
        layer_map: source layer of each of our layers (length ``num_layers``; -1 leaves a layer as initialised), e.g.
            the odd layers ``[1, 3, ..., 23]`` of XLM-R-large for CCLM. Exclusive with ``init_fusion_from``.
        tokenizer: local tokenizer folder (default: ``pretrained`` when it is a folder).
    """

    def __init__(
        self,
        num_layers: int = 18,
        fusion_start: int = 12,
        hidden_size: int = 768,
        num_heads: int = 12,
        intermediate_size: int = 3072,
        vocab_size: int = 30522,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        encoder_width: int = 768,
        embeddings: Literal["bert", "xlm-roberta"] = "bert",
        pad_token_id: int | None = None,
        layer_norm_eps: float = 1e-12,
        hidden_dropout: float = 0.1,
        attention_dropout: float = 0.1,
        pretrained: str | None = None,
        init_fusion_from: int | None = None,
        layer_map: list[int] | None = None,
        tokenizer: str | None = None,
        initializer_range: float = 0.02,
    ):
        super().__init__()
        if not 0 <= fusion_start <= num_layers:
            raise ConfigError(f"fusion_start={fusion_start} must lie in 0..num_layers ({num_layers})")
        if hidden_size % num_heads:
            raise ConfigError(f"hidden_size={hidden_size} is not a multiple of num_heads={num_heads}")
        if layer_map is not None and init_fusion_from is not None:
            raise ConfigError("give layer_map or init_fusion_from, not both (layer_map lists every source layer)")
        if layer_map is not None and len(layer_map) != num_layers:
            raise ConfigError(f"layer_map has {len(layer_map)} entries; it needs one per layer ({num_layers})")
        if (layer_map is not None or init_fusion_from is not None) and pretrained is None:
            raise ConfigError("layer_map / init_fusion_from choose pretrained layers: set pretrained too")
        if pad_token_id is None:
            pad_token_id = 1 if embeddings == "xlm-roberta" else 0
        self.num_layers = num_layers
        self.fusion_start = fusion_start
        self.width = hidden_size
        self.encoder_width = encoder_width
        self.embeddings = build_embeddings(
            embeddings, vocab_size=vocab_size, hidden_size=hidden_size,
            max_position_embeddings=max_position_embeddings, type_vocab_size=type_vocab_size,
            pad_token_id=pad_token_id, layer_norm_eps=layer_norm_eps, dropout=hidden_dropout,
        )
        self.encoder = LayerStack([
            TransformerLayer(
                hidden_size, num_heads, intermediate_size, cross_attention=i >= fusion_start,
                encoder_width=encoder_width, eps=layer_norm_eps, attn_drop=attention_dropout, drop=hidden_dropout,
            )
            for i in range(num_layers)
        ])
        self._sizes = dict(
            hidden_size=hidden_size, num_attention_heads=num_heads, intermediate_size=intermediate_size,
            vocab_size=vocab_size, max_position_embeddings=max_position_embeddings, type_vocab_size=type_vocab_size,
            layer_norm_eps=layer_norm_eps,
        )
        self.embeddings_kind = embeddings
        init_bert_weights(self, initializer_range)
        self.pretrained = pretrained
        if pretrained is not None:
            self._load_pretrained(pretrained, init_fusion_from, layer_map)
        self.tokenizer = tokenizer if tokenizer is not None else _folder_or_none(pretrained)

    # -- weights -----------------------------------------------------------------------------------------------------
    def _load_pretrained(self, path: str, init_fusion_from: int | None, layer_map: list[int] | None) -> None:
        hf_config = read_hf_config(path)
        if hf_config is not None:
            _check_config(hf_config, self._sizes, self.embeddings_kind, path)
        state = load_state_dict(path)
        prefix = find_prefix(state, "embeddings.word_embeddings.weight", path)
        available = _num_source_layers(state, prefix)
        if layer_map is not None:
            sources = [None if s < 0 else s for s in layer_map]
        else:
            sources = list(range(self.num_layers))
            if init_fusion_from is not None:
                for i in range(self.fusion_start, self.num_layers):
                    sources[i] = i - self.fusion_start + init_fusion_from
        bad = [(i, s) for i, s in enumerate(sources) if s is not None and s >= available]
        if bad:
            raise ConfigError(
                f"pretrained={path!r} has {available} layers but layers {', '.join(f'{i} <- {s}' for i, s in bad)} "
                "would come from layers it lacks; set init_fusion_from (a layer it has) or layer_map (-1 = keep random)"
            )
        self.load_report = load_bert_layers(
            self, state, source=path, prefix=prefix, layer_sources=sources, extra=("embeddings.",)
        )

    # -- contract ----------------------------------------------------------------------------------------------------
    def get_tokenizer(self) -> Any:
        return load_tokenizer(self.tokenizer, "text encoder 'split_bert'")

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    def new_cache(self) -> KVCache:
        """An empty key/value cache for decoding with this stack (``forward(..., cache=)``)."""
        return KVCache(self.num_layers)

    def default_position_ids(self, input_ids: Tensor, past_length: int = 0) -> Tensor:
        """The position ids the embeddings give ``input_ids`` when none are passed, after ``past_length`` earlier
        positions: ``past_length ..`` (bert, ``(1, L)``); for xlm-roberta counted from ``pad_token_id + 1`` over
        the non-padding tokens, padding keeping the pad position (``(B, L)``; exact with a cache when the earlier
        positions held no padding)."""
        emb = self.embeddings
        if self.embeddings_kind == "xlm-roberta":
            return emb.create_position_ids_from_input_ids(input_ids, emb.padding_idx, past_length)
        return emb.position_ids[:, past_length: past_length + input_ids.shape[1]]

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        mode: Mode = "text",
        vision_tokens: Tensor | None = None,
        vision_mask: Tensor | None = None,
        hidden_states: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        causal: bool = False,
        mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        cache: KVCache | None = None,
    ) -> EncoderOutput:
        """Run the text layers (``"text"``), the fusion layers (``"fusion"``) or both (``"full"``).

        Args:
            input_ids: ``(B, L)`` token ids (modes ``text`` and ``full``).
            attention_mask: ``(B, L)`` 1 = token, 0 = padding.
            vision_tokens: ``(B, N, encoder_width)`` (modes ``fusion`` and ``full``); vision_mask: ``(B, N)`` or None.
            hidden_states: ``(B, L, width)`` the text-layer output (mode ``fusion``).
            causal: causal self-attention in every layer run (X²-VLM's "MLM as generation" captioning); default off —
                the fusion layers are bidirectional.
            mask: per-example self-attention keep-mask ``(B, L, L)`` (1/True = query row may attend to key column),
                combined with ``attention_mask`` and ``causal``; the official xbert's 3-D ``attention_mask`` (the
                s2s-ft captioning masks, :mod:`zoo.heads.caption`).
            position_ids: ``(B, L)`` explicit position ids (default ``0 .. L-1``; captioning repeats positions).
            cache: decoding step by step (:mod:`zoo.modules.kv_cache`, :meth:`new_cache`): ``input_ids`` are the new
                positions only, the layers attend to the cached keys/values of the earlier ones and append theirs;
                default position ids continue after them; ``attention_mask`` / ``mask`` then cover every key
                (``(B, T)`` / ``(B, L, T)``, ``T`` = cached + new); ``vision_tokens`` are read on the first call,
                one row per example (see :class:`~zoo.modules.kv_cache.KVCache` for the row layout).
        Returns:
            EncoderOutput(tokens, pooled = first token's state, mask = attention_mask, hidden_states, attentions);
            in mode ``full`` the hidden states and attention maps cover all layers run.
        """
        if mode not in ("text", "fusion", "full"):
            raise ValueError(f"mode={mode!r}: expected 'text', 'fusion' or 'full'")
        if mode == "fusion":
            if hidden_states is None:
                raise ValueError("mode='fusion' needs hidden_states (the text output tokens)")
            x, start = hidden_states, self.fusion_start
        else:
            if input_ids is None:
                raise ValueError(f"mode={mode!r} needs input_ids")
            if position_ids is None and cache is not None and cache.length:
                position_ids = self.default_position_ids(input_ids, cache.length)
            x, start = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids,
                                       position_ids=position_ids), 0
        end = self.fusion_start if mode == "text" else self.num_layers
        if end > self.fusion_start:
            if self.fusion_start == self.num_layers and mode == "fusion":
                raise ValueError("this stack has no fusion layers (fusion_start == num_layers)")
            if vision_tokens is None and self.fusion_start < self.num_layers:
                raise ValueError(f"mode={mode!r} runs the fusion layers: pass vision_tokens")
            if vision_tokens is not None and vision_tokens.shape[-1] != self.encoder_width:
                raise ValueError(
                    f"vision_tokens have width {vision_tokens.shape[-1]} but encoder_width={self.encoder_width}"
                )
        if mask is not None:
            keys = x.shape[1] + (0 if cache is None else cache.length)
            if mask.dim() != 3 or mask.shape[0] != x.shape[0] or mask.shape[1:] != (x.shape[1], keys):
                raise ValueError(f"mask must have shape (batch, {x.shape[1]}, {keys}); got {tuple(mask.shape)}")
            mask = (mask if mask.dtype == torch.bool else mask != 0)[:, None]
        x, states, self_maps, _ = self.encoder(
            x, attention_mask, vision_tokens, vision_mask, start=start, end=end, causal=causal, mask=mask,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions, cache=cache,
        )
        return EncoderOutput(tokens=x, pooled=x[:, 0], mask=attention_mask, hidden_states=states, attentions=self_maps)


# ---------------------------------------------------------------------------------------------------------------------
# checkpoint helpers
# ---------------------------------------------------------------------------------------------------------------------
def _folder_or_none(path: str | None) -> str | None:
    return path if path is not None and Path(path).is_dir() else None


def _num_source_layers(state: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"encoder\.layer\.(\d+)\.")
    found = [int(m.group(1)) for k in state if (m := pattern.match(k))]
    return max(found) + 1 if found else 0


_XLMR_TYPES = ("xlm-roberta", "roberta", "camembert")


def _check_config(hf_config: dict[str, Any], sizes: dict[str, Any], kind: str, path: str) -> None:
    """Refuse a pretrained folder whose config.json disagrees with the configured sizes (heads, eps, ...)."""
    wrong = [
        f"{key}={hf_config[key]} (configured {value})"
        for key, value in sizes.items()
        if key in hf_config and hf_config[key] != value
    ]
    act = hf_config.get("hidden_act", "gelu")
    if act != "gelu":
        wrong.append(f"hidden_act={act!r} (these layers use exact GELU)")
    model_type = hf_config.get("model_type")
    # an XLM-R folder read with BERT-style embeddings (positions 0..L-1) is what the official CCLM does: it builds its
    # text encoder from xlm-roberta-large's config.json as a BertConfig (cclm-base.yaml: embeddings: bert); a BERT
    # folder has no offset position table for xlm-roberta embeddings
    if model_type is not None and kind == "xlm-roberta" and model_type not in _XLMR_TYPES:
        wrong.append(f"model_type={model_type!r} (configured embeddings={kind!r}; use 'bert')")
    if wrong:
        raise ConfigError(f"pretrained={path!r}: its config.json has " + "; ".join(wrong))
