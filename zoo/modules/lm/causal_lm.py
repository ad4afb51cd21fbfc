"""Language model ``hf_causal_lm``: a transformers causal LM (OPT, LLaMA, GPT-2 families) with conditioning hooks.

Reused from transformers, unmodified: the whole model (``AutoModelForCausalLM.from_pretrained(local_files_only=True)``
for a local folder, ``AutoConfig.for_model`` + ``from_config`` for random models), its masks, its key/value cache and
its ``generate`` (greedy, beam search, sampling). The model runs with ``attn_implementation="mmzoo"`` (see
:func:`zoo.modules.attention.register_transformers_attention`), so its attention is the framework's op.

Written here, WITHOUT copying any transformers model code: three ways of conditioning the frozen LM, all implemented as
forward (pre-)hooks registered on transformers' own modules, so state-dict keys stay transformers' and pretrained
folders load unchanged.

1. **Prefix** (soft prompt): ``prefix`` embeddings ``(B, P, embed_width)`` are placed before the text. The text is
   given placeholder ids at those positions, and a pre-hook on the LM swaps the placeholders' word embeddings for the
   prefix on every call that starts the sequence (the first call of a cached ``generate``, every call of an uncached
   one), so ``generate`` keeps working with and without the cache. The prefix takes the LM's ordinary positions (it is
   an ordinary part of the sequence for the cache and the masks).
2. **Injection** (eP-ALM, :class:`Injection`): from decoder layer ``start`` on, ``k`` tokens are prepended to the
   hidden states entering the layer (the attention mask is padded: every text token sees them, they see only
   themselves, causally); at layers ``start < l < end`` the first ``k`` positions are overwritten with the token for
   that layer; after the last layer they are dropped again, so logits align with the input. With a key/value cache
   the prepended tokens live in the cache of layers ``>= start`` only; a decoding step (the layer's cache already
   holds tokens) pads the mask by ``k`` columns and injects nothing. Rotary models (LLaMA) get the rotary angle of
   position 0 for the injected tokens, absolute-position models (OPT, GPT-2) none (their positions were added before
   layer 0). ``start`` must be >= 1: the cache length the LM reads for its own positions is layer 0's.
3. **Inserted blocks** (:meth:`HFCausalLM.insert_blocks`): an extra module runs on the hidden states right before a
   decoder layer — ``hidden = block(hidden, **context)`` — which is what MultiModal-GPT's gated cross-attention needs
   ("before every 4th decoder layer"). ``context`` is what the caller passed to :meth:`HFCausalLM.conditioning` (e.g.
   ``media=..., media_locations=...``) plus ``decoding`` (True when the call extends a key/value cache, i.e. the
   hidden states are only the new tokens) and ``layer_idx``. Tensors in the context whose batch is a divisor of the
   hidden states' batch (beam search expands the batch) are expanded with ``repeat_interleave``. The blocks live in
   ``self.inserted`` (keys ``inserted.<layer>.*``) and are trainable unless the caller freezes them. They always
   run (they are part of the model); outside :meth:`HFCausalLM.conditioning` their context holds only ``decoding``
   and ``layer_idx``.

Conditioning is active inside ``with lm.conditioning(prefix=..., injection=..., **context):``; :meth:`forward` and
:meth:`generate` take the same arguments and open it themselves.

The hooks run before transformers' per-layer gradient checkpointing (which wraps the layers' ``forward``), so a
checkpointed layer recomputes with the already conditioned inputs; inserted blocks run outside the checkpoint.
Not supported: compile-friendly static caches (the mask sizes they report are the cache capacity, not the tokens
held) and models with per-layer-type masks (sliding-window mixes; these raise NotImplementedError).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.modules.attention import register_transformers_attention
from zoo.modules.text.hf import set_hf_grad_checkpointing
from zoo.registry import LANGUAGE_MODELS
from zoo.spec import ConfigError

__all__ = [
    "HFCausalLM",
    "Injection",
    "LMOutput",
    "causal_lm_loss",
    "find_decoder_layers",
    "left_pad",
]

# where each family keeps its decoder layer list (OPT, LLaMA / Mistral / Qwen, GPT-2, GPT-NeoX)
_LAYER_PATHS = ("model.decoder.layers", "model.layers", "transformer.h", "gpt_neox.layers", "transformer.layers")
_CACHE_NAMES = ("cache", "past_key_values", "past_key_value", "layer_past")


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------
def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(dotted path, layer list)`` of a transformers causal LM's decoder layers (OPT ``model.decoder.layers``,
    LLaMA ``model.layers``, GPT-2 ``transformer.h``, GPT-NeoX ``gpt_neox.layers``)."""
    for path in _LAYER_PATHS:
        obj: Any = model
        for name in path.split("."):
            obj = getattr(obj, name, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj):
            return path, obj
    raise ConfigError(
        f"{type(model).__name__}: no decoder layer list found (looked for {', '.join(_LAYER_PATHS)}); "
        "hf_causal_lm wraps OPT, LLaMA-like, GPT-2 and GPT-NeoX models"
    )


def left_pad(input_ids: Tensor, attention_mask: Tensor, pad_id: int) -> tuple[Tensor, Tensor]:
    """The same rows with their padding moved to the left (what batched causal generation needs)."""
    if attention_mask is None or bool(attention_mask[:, -1].all()):
        return input_ids, attention_mask
    order = torch.argsort(attention_mask.to(torch.int8), dim=1, stable=True)  # pads (0) first, tokens keep order
    ids = torch.gather(input_ids, 1, order)
    mask = torch.gather(attention_mask, 1, order)
    return ids.masked_fill(mask == 0, pad_id), mask


def causal_lm_loss(logits: Tensor, labels: Tensor, reduction: str = "mean", ignore_index: int = -100) -> Tensor:
    """Next-token cross-entropy: ``logits[:, t]`` predicts ``labels[:, t + 1]``; ``reduction`` ``mean`` (over labelled
    tokens), ``sum`` or ``per_sample`` (sum over each row's tokens, as eP-ALM's ``reduction='none'`` + ``sum(1)``)."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:].to(logits.device)
    tok = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                          ignore_index=ignore_index, reduction="none").view(shift_labels.shape)
    if reduction == "per_sample":
        return tok.sum(1)
    if reduction == "sum":
        return tok.sum()
    if reduction == "mean":
        return tok.sum() / (shift_labels != ignore_index).sum().clamp(min=1)
    raise ValueError(f"reduction={reduction!r}: expected 'mean', 'sum' or 'per_sample'")


def _expand_batch(x: Tensor, batch: int, what: str) -> Tensor:
    if x.shape[0] == batch:
        return x
    if batch % x.shape[0]:
        raise ValueError(f"{what} has batch {x.shape[0]}, which does not divide the LM batch {batch}")
    return x.repeat_interleave(batch // x.shape[0], dim=0)


@dataclass
class Injection:
    """Tokens injected into decoder layers ``start .. end-1`` (eP-ALM's visual prefix).

    ``tokens``: one tensor ``(B, k, width)`` or a sequence of them. Layer ``l`` uses ``tokens[min((l - start) //
    step, n - 1)]`` with ``step = 1`` for one tensor, else ``(end - start) // n`` (at least 1) — the official eP-ALM
    schedule (``models/opt.py``: ``vis_prefix_idx = (idx - start_layer_idx) // step``). At ``start`` the tokens are
    prepended; later layers in the range overwrite the first ``k`` positions.
    """

    tokens: Tensor | Sequence[Tensor]
    start: int
    end: int
    step: int | None = None

    def __post_init__(self) -> None:
        toks = [self.tokens] if torch.is_tensor(self.tokens) else list(self.tokens)
        if not toks:
            raise ValueError("Injection needs at least one token tensor")
        shapes = {tuple(t.shape[:2]) for t in toks}
        if any(t.dim() != 3 for t in toks) or len(shapes) != 1:
            raise ValueError(f"Injection tokens must all be (B, k, width) with the same B and k, got "
                             f"{[tuple(t.shape) for t in toks]}")
        if not 1 <= self.start < self.end:
            raise ValueError(f"Injection layers: need 1 <= start < end, got start={self.start}, end={self.end}")
        self.tokens = toks
        n = len(toks)
        if self.step is None:
            span = self.end - self.start
            self.step = 1 if n == 1 else (span // n if span > n else 1)

    @property
    def k(self) -> int:
        return int(self.tokens[0].shape[1])

    def token_for(self, layer: int) -> Tensor:
        return self.tokens[min((layer - self.start) // self.step, len(self.tokens) - 1)]


@dataclass
class _State:
    prefix: Tensor | None = None
    injection: Injection | None = None
    context: dict[str, Any] = field(default_factory=dict)
    memo: dict[Any, Any] = field(default_factory=dict)  # padded masks / position tables, per original object


@dataclass
class LMOutput:
    """``logits`` aligned with the ``input_ids`` given (prefix and injected positions removed); ``loss`` when
    ``labels`` were given; ``prefix_logits`` the logits at the prefix positions (``(B, P, V)``, or None)."""

    logits: Tensor
    loss: Tensor | None = None
    prefix_logits: Tensor | None = None


# ---------------------------------------------------------------------------------------------------------------------
# the part
# ---------------------------------------------------------------------------------------------------------------------
@LANGUAGE_MODELS.register("hf_causal_lm")
class HFCausalLM(nn.Module):
    """A transformers causal LM with prefix, layer-injection and inserted-block conditioning.

    Args:
        pretrained: local folder with ``config.json`` and weights (``AutoModelForCausalLM.from_pretrained``,
            ``local_files_only=True``); None builds a randomly initialised model from ``model_type`` + ``config``.
        model_type: transformers model type when not pretrained (``opt``, ``llama``, ``gpt2``, ...).
        config: overrides of the transformers config (``hidden_size``, ``num_hidden_layers``, ``vocab_size``,
            ``dropout``, ...), applied over a pretrained folder's config too.
        freeze: set ``requires_grad=False`` on every parameter of the LM (inserted blocks added later are not touched).
        tokenizer: local tokenizer folder or ``pkg:`` path (default: ``pretrained``).
        special_tokens: extra special tokens added to the tokenizer when it is loaded (eP-ALM's ``</a>``); each must
            get an id below the embedding size (``vocab_size``).
        torch_dtype: dtype of the weights (``float32``, ``bfloat16``, ``float16``); None keeps float32.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        model_type: str = "opt",
        config: dict[str, Any] | None = None,
        freeze: bool = True,
        tokenizer: str | None = None,
        special_tokens: list[str] | None = None,
        torch_dtype: str | None = None,
    ):
        super().__init__()
        from transformers import AutoConfig, AutoModelForCausalLM  # noqa: PLC0415

        impl = register_transformers_attention()
        overrides = dict(config or {})
        dtype = None
        if torch_dtype is not None:
            dtype = getattr(torch, torch_dtype, None)
            if not isinstance(dtype, torch.dtype):
                raise ConfigError(f"torch_dtype={torch_dtype!r}: not a torch dtype (float32, bfloat16, float16)")
        if pretrained is not None:
            from zoo.hub import resolve_path  # noqa: PLC0415

            folder = resolve_path(pretrained)
            if not Path(folder).is_dir():
                raise ConfigError(f"pretrained={pretrained!r}: not a local folder (expected config.json + weights)")
            kwargs: dict[str, Any] = {"attn_implementation": impl, "local_files_only": True, **overrides}
            if dtype is not None:
                kwargs["dtype"] = dtype
            self.model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
        else:
            try:
                hf_config = AutoConfig.for_model(model_type, **overrides)
            except ValueError as exc:
                raise ConfigError(f"model_type={model_type!r}: {exc}") from None
            self.model = AutoModelForCausalLM.from_config(hf_config, attn_implementation=impl)
            if dtype is not None:
                self.model.to(dtype)
        self.layers_path, layers = find_decoder_layers(self.model)
        cfg = self.model.config
        self.width: int = int(cfg.hidden_size)
        self.embed_width: int = int(self.model.get_input_embeddings().embedding_dim)
        self.vocab_size: int = int(self.model.get_input_embeddings().num_embeddings)
        self.num_layers: int = len(layers)
        self.tokenizer = tokenizer if tokenizer is not None else pretrained
        self.special_tokens: list[str] = list(special_tokens or [])
        self._tokenizer_cache: Any = None
        self._state: _State | None = None
        self.inserted = nn.ModuleDict()
        if freeze:
            for p in self.model.parameters():
                p.requires_grad_(False)
        self.frozen = freeze
        self._signatures = [inspect.signature(layer.forward) for layer in layers]
        for idx, layer in enumerate(layers):
            layer.register_forward_pre_hook(functools.partial(self._layer_pre_hook, idx), with_kwargs=True)
        layers[-1].register_forward_hook(self._last_layer_hook)
        self.model.register_forward_pre_hook(self._model_pre_hook, with_kwargs=True)
        self._rotary = _find_rotary(self.model)
        self._model_signature = inspect.signature(self.model.forward)
        self._takes_position_ids = "position_ids" in self._model_signature.parameters

    # -- properties ----------------------------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        """The transformers config."""
        return self.model.config

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return find_decoder_layers(self.model)[1]

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def embed(self, input_ids: Tensor) -> Tensor:
        """Word embeddings (no positions): what a prefix is made of."""
        return self.model.get_input_embeddings()(input_ids)

    @property
    def bos_token_id(self) -> int | None:
        return _first_id(getattr(self.config, "bos_token_id", None))

    @property
    def eos_token_id(self) -> int | None:
        return _first_id(getattr(self.config, "eos_token_id", None))

    @property
    def pad_token_id(self) -> int:
        pad = _first_id(getattr(self.config, "pad_token_id", None))
        if pad is None:
            pad = self.eos_token_id
        return 0 if pad is None else pad

    # -- tokenizer -----------------------------------------------------------------------------------------------
    def add_special_tokens(self, tokens: Sequence[str]) -> None:
        """Tokens to add to the tokenizer (eP-ALM's ``</a>``); applied when :meth:`get_tokenizer` loads it."""
        for tok in tokens:
            if tok not in self.special_tokens:
                self.special_tokens.append(tok)
        self._tokenizer_cache = None

    def get_tokenizer(self) -> Any:
        """The tokenizer (local folder only), with :attr:`special_tokens` added; checked against the vocab size."""
        if self._tokenizer_cache is None:
            from zoo.modules.text.hf import load_tokenizer  # noqa: PLC0415

            tok = load_tokenizer(self.tokenizer, "language model 'hf_causal_lm'")
            missing = [t for t in self.special_tokens if t not in tok.get_vocab()]
            if missing:
                tok.add_special_tokens({"additional_special_tokens": missing})
            if len(tok) > self.vocab_size:
                raise ConfigError(
                    f"the tokenizer ({self.tokenizer}) has {len(tok)} tokens (special tokens added: "
                    f"{self.special_tokens}) but the LM's embedding has {self.vocab_size} rows: set "
                    f"config.vocab_size >= {len(tok)}"
                )
            self._tokenizer_cache = tok
        return self._tokenizer_cache

    def export_pretrained(self, directory: str | Path) -> Path:
        """Write the LM as a transformers folder (``config.json``, ``model.safetensors``, ``generation_config.json``
        and the tokenizer with its added special tokens) that ``pretrained:`` (and transformers'
        ``AutoModelForCausalLM.from_pretrained``) loads; inserted blocks are not part of it. LoRA layers injected
        into the LM (MultiModal-GPT) are merged into the weights of a copy: this part is left as it is. Written
        atomically."""
        import copy  # noqa: PLC0415

        from zoo.hub import atomic_dir  # noqa: PLC0415
        from zoo.modules.adapters.lora import has_lora, merge_lora  # noqa: PLC0415

        model = self.model
        if has_lora(model):
            model = copy.deepcopy(model)
            merge_lora(model)
        with atomic_dir(directory) as tmp:
            model.save_pretrained(str(tmp), safe_serialization=True)
            if self.tokenizer:
                self.get_tokenizer().save_pretrained(str(tmp))
        return Path(directory)

    # -- extension: inserted blocks ------------------------------------------------------------------------------
    def insert_blocks(self, blocks: Mapping[int, nn.Module]) -> None:
        """Run ``blocks[i]`` on the hidden states right before decoder layer ``i``: ``h = block(h, **context)``.

        ``context``: the keyword arguments of the enclosing :meth:`conditioning` (tensors expanded to the hidden
        states' batch), plus ``decoding`` (bool: the call extends a key/value cache, so ``h`` holds only the new
        tokens) and ``layer_idx``. The block must return a tensor of ``h``'s shape. Blocks are stored in
        ``self.inserted`` (state-dict keys ``inserted.<i>.*``); inserting at a layer that already has one replaces it.
        MultiModal-GPT's gated cross-attention "before every 4th layer" is
        ``lm.insert_blocks({i: GatedXAttn(...) for i in lm.every_nth_layer(4)})``.
        """
        for idx, block in blocks.items():
            if not isinstance(idx, int) or not 0 <= idx < self.num_layers:
                raise ValueError(f"insert_blocks: layer index {idx!r} out of range 0..{self.num_layers - 1}")
            if not isinstance(block, nn.Module):
                raise TypeError(f"insert_blocks: the block for layer {idx} is {type(block).__name__}, not an nn.Module")
            self.inserted[str(idx)] = block

    def every_nth_layer(self, n: int, offset: int | None = None) -> list[int]:
        """Layer indices ``offset, offset + n, ...`` (default offset ``n - 1``: layers 3, 7, 11, ... for n=4, as
        OpenFlamingo's ``cross_attn_every_n_layers``)."""
        if n < 1:
            raise ValueError(f"every_nth_layer: n must be >= 1, got {n}")
        start = n - 1 if offset is None else offset
        return list(range(start, self.num_layers, n))

    # -- conditioning --------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def conditioning(self, prefix: Tensor | None = None, injection: Injection | None = None,
                     **context: Any) -> Iterator[None]:
        """Make the next LM calls use ``prefix`` / ``injection`` / inserted-block ``context`` (nesting restores)."""
        if prefix is not None and (prefix.dim() != 3 or prefix.shape[-1] != self.embed_width):
            raise ValueError(f"prefix must be (B, P, {self.embed_width}), got {tuple(prefix.shape)}")
        if injection is not None:
            if injection.end > self.num_layers:
                raise ValueError(f"injection end={injection.end} exceeds the LM's {self.num_layers} layers")
            width = injection.tokens[0].shape[-1]
            if width != self.width:
                raise ValueError(f"injected tokens have width {width}, the LM's hidden size is {self.width}")
        previous = self._state
        self._state = _State(prefix=prefix, injection=injection, context=dict(context))
        try:
            yield
        finally:
            self._state = previous

    # -- forward / generate --------------------------------------------------------------------------------------
    def _with_placeholders(self, input_ids: Tensor, attention_mask: Tensor | None, p: int) -> tuple[Tensor, Tensor]:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if not p:
            return input_ids, attention_mask
        b = input_ids.shape[0]
        ids = torch.cat([input_ids.new_full((b, p), self.pad_token_id), input_ids], 1)
        mask = torch.cat([attention_mask.new_ones((b, p)), attention_mask], 1)
        return ids, mask

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        prefix: Tensor | None = None,
        injection: Injection | None = None,
        labels: Tensor | None = None,
        reduction: str = "mean",
        **context: Any,
    ) -> LMOutput:
        """Logits for ``input_ids`` (B, L) with the given conditioning; ``labels`` (B, L, -100 = ignored) give the
        next-token loss (``reduction`` as :func:`causal_lm_loss`)."""
        p = 0 if prefix is None else prefix.shape[1]
        ids, mask = self._with_placeholders(input_ids, attention_mask, p)
        extra = {}
        if self._takes_position_ids:  # as generate() derives them, so left-padded rows match generation
            extra["position_ids"] = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        with self.conditioning(prefix=prefix, injection=injection, **context):
            out = self.model(input_ids=ids, attention_mask=mask, use_cache=False, return_dict=True, **extra)
        logits = out.logits
        result = LMOutput(logits=logits[:, p:], prefix_logits=logits[:, :p] if p else None)
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(f"labels {tuple(labels.shape)} must have the shape of input_ids "
                                 f"{tuple(input_ids.shape)}")
            result.loss = causal_lm_loss(result.logits, labels, reduction)
        return result

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        prefix: Tensor | None = None,
        injection: Injection | None = None,
        context: Mapping[str, Any] | None = None,
        **generate_kwargs: Any,
    ) -> Tensor:
        """transformers' ``generate`` (greedy / ``num_beams`` / ``do_sample``, ``max_new_tokens``, ``use_cache``,
        ...) under the conditioning; rows padded on the right are moved to left padding first. Returns only the new
        tokens ``(B * num_return_sequences, T)`` (with ``return_dict_in_generate=True`` transformers' output whose
        ``sequences`` are the new tokens; ``compute_transition_scores`` accepts it as is)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        input_ids, attention_mask = left_pad(input_ids, attention_mask, self.pad_token_id)
        p = 0 if prefix is None else prefix.shape[1]
        ids, mask = self._with_placeholders(input_ids, attention_mask, p)
        generate_kwargs.setdefault("pad_token_id", self.pad_token_id)
        if self.eos_token_id is not None:
            generate_kwargs.setdefault("eos_token_id", self.eos_token_id)
        with self.conditioning(prefix=prefix, injection=injection, **dict(context or {})):
            out = self.model.generate(input_ids=ids, attention_mask=mask, **generate_kwargs)
        if torch.is_tensor(out):
            return out[:, ids.shape[1]:]
        out.sequences = out.sequences[:, ids.shape[1]:]  # return_dict_in_generate: the same, new tokens only
        return out

    # -- hooks ---------------------------------------------------------------------------------------------------
    def _model_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Swap the placeholder embeddings for the prefix on calls that start the sequence."""
        st = self._state
        if st is None or st.prefix is None:
            return None
        if args:  # positional call: name the arguments so they can be rewritten
            kwargs = {**self._model_signature.bind_partial(*args).arguments, **kwargs}
        input_ids = kwargs.get("input_ids")
        if input_ids is None or kwargs.get("inputs_embeds") is not None:
            return None
        cache = next((kwargs[n] for n in _CACHE_NAMES if kwargs.get(n) is not None), None)
        if cache is not None and _cache_len(cache, 0) > 0:
            return None  # a decoding step: the prefix is in the cache
        p = st.prefix.shape[1]
        if input_ids.shape[1] < p:
            raise RuntimeError(f"LM call with {input_ids.shape[1]} tokens cannot hold a prefix of {p}")
        embeds = self.embed(input_ids)
        prefix = _expand_batch(st.prefix, embeds.shape[0], "prefix").to(embeds.dtype)
        kwargs = dict(kwargs)
        kwargs["inputs_embeds"] = torch.cat([prefix, embeds[:, p:]], 1)
        kwargs["input_ids"] = None
        return (), kwargs

    def _layer_pre_hook(self, idx: int, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        st = self._state
        block = self.inserted[str(idx)] if str(idx) in self.inserted else None
        inj = st.injection if st is not None else None
        if block is None and (inj is None or idx < inj.start):
            return None
        bound = self._signatures[idx].bind(*args, **kwargs)
        names = list(self._signatures[idx].parameters)
        arg = _Args(bound, self._signatures[idx])
        hidden: Tensor = arg.get(names[0])
        cache = next((c for c in (arg.get(n) for n in _CACHE_NAMES) if c is not None), None)
        decoding = cache is not None and _cache_len(cache, idx) > 0
        if inj is not None and idx >= inj.start:
            k = inj.k
            if decoding:
                arg.set("attention_mask", self._memo(st, "dec", arg.get("attention_mask"),
                                                     lambda m: _pad_mask_columns(m, k)))
            else:
                if idx == inj.start:
                    st.memo["strip"] = k  # the last layer drops them again
                    hidden = torch.cat([_expand_batch(inj.token_for(idx), hidden.shape[0], "injected tokens")
                                        .to(hidden.dtype), hidden], 1)
                elif idx < inj.end:
                    tok = _expand_batch(inj.token_for(idx), hidden.shape[0], "injected tokens").to(hidden.dtype)
                    hidden = torch.cat([tok, hidden[:, k:]], 1)
                arg.set("attention_mask", self._memo(st, "mask", arg.get("attention_mask"),
                                                     lambda m: _pad_mask_prefill(m, k)))
                arg.set("position_embeddings", self._memo(st, "rope", arg.get("position_embeddings"),
                                                          lambda pe: self._pad_rotary(pe, hidden, k)))
                arg.set("position_ids", self._memo(st, "pos", arg.get("position_ids"),
                                                   lambda pid: _pad_position_ids(pid, k)))
        if block is not None:
            ctx = {} if st is None else {key: (_expand_batch(v, hidden.shape[0], f"context {key!r}")
                                               if torch.is_tensor(v) and v.dim() else v)
                                         for key, v in st.context.items()}
            hidden = block(hidden, decoding=decoding, layer_idx=idx, **ctx)
        arg.set(names[0], hidden)
        return bound.args, bound.kwargs

    def _last_layer_hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        """Drop the injected positions after the last layer (logits align with the input; GPT-2 reshapes to it)."""
        st = self._state
        if st is None or st.injection is None:
            return None
        lead = st.memo.pop("strip", 0)
        if not lead:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden[:, lead:]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def _memo(self, st: _State, key: Any, obj: Any, fn: Any) -> Any:
        """``fn(obj)`` computed once per original object within one conditioning (the same mask goes to each layer)."""
        if obj is None:
            return None
        hit = st.memo.get(key)
        if hit is not None and hit[0] is obj:
            return hit[1]
        value = fn(obj)
        st.memo[key] = (obj, value)
        return value

    def _pad_rotary(self, pe: Any, hidden: Tensor, k: int) -> Any:
        if not isinstance(pe, (tuple, list)) or len(pe) != 2:
            return pe
        cos, sin = pe
        if self._rotary is not None:
            pos0 = torch.zeros(1, k, dtype=torch.long, device=cos.device)
            cos0, sin0 = self._rotary(hidden, position_ids=pos0)
        else:  # identity rotation
            cos0, sin0 = torch.ones_like(cos[:, :1]).expand(-1, k, -1), torch.zeros_like(sin[:, :1]).expand(-1, k, -1)
        cos0 = cos0.to(cos.dtype).expand(cos.shape[0], -1, -1)
        sin0 = sin0.to(sin.dtype).expand(sin.shape[0], -1, -1)
        return type(pe)((torch.cat([cos0, cos], 1), torch.cat([sin0, sin], 1)))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        set_hf_grad_checkpointing(self.model, enable)


# ---------------------------------------------------------------------------------------------------------------------
# hook helpers
# ---------------------------------------------------------------------------------------------------------------------
class _Args:
    """Read / write an argument of a bound call, whether named or inside ``**kwargs``."""

    def __init__(self, bound: inspect.BoundArguments, sig: inspect.Signature):
        self.bound = bound
        self.var_kw = next((n for n, p in sig.parameters.items() if p.kind is p.VAR_KEYWORD), None)

    def get(self, name: str) -> Any:
        if name in self.bound.signature.parameters and self.bound.signature.parameters[name].kind not in (
                inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            return self.bound.arguments.get(name)
        if self.var_kw is not None:
            return self.bound.arguments.get(self.var_kw, {}).get(name)
        return None

    def set(self, name: str, value: Any) -> None:
        params = self.bound.signature.parameters
        if name in params and params[name].kind not in (inspect.Parameter.VAR_KEYWORD,
                                                         inspect.Parameter.VAR_POSITIONAL):
            if name in self.bound.arguments or value is not None:
                self.bound.arguments[name] = value
        elif self.var_kw is not None:
            extra = self.bound.arguments.setdefault(self.var_kw, {})
            if name in extra or value is not None:
                extra[name] = value


def _first_id(value: Any) -> int | None:
    if isinstance(value, (list, tuple)):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def _find_rotary(model: nn.Module) -> nn.Module | None:
    for name in ("model.rotary_emb", "gpt_neox.rotary_emb", "transformer.rotary_emb"):
        obj: Any = model
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.Module):
            return obj
    return None


def _cache_len(cache: Any, layer: int) -> int:
    """Tokens held by ``cache`` for decoder layer ``layer`` (0 when it holds none yet)."""
    try:
        layers = getattr(cache, "layers", None)
        if layers is not None and layer >= len(layers):
            return 0
        return int(cache.get_seq_length(layer))
    except (IndexError, KeyError, AttributeError, TypeError):
        return 0


def _pad_mask_prefill(mask: Any, k: int) -> Any:
    """A 4-D mask ``(B, H, q, kv)`` for ``k`` tokens prepended to queries and keys: they attend causally among
    themselves, every other query attends to them."""
    if not torch.is_tensor(mask):
        if isinstance(mask, dict):
            raise NotImplementedError("injection into models with per-layer-type masks (sliding windows) is not "
                                      "supported")
        return mask
    if mask.dim() != 4:
        raise NotImplementedError(f"injection expects a 4-D attention mask, got shape {tuple(mask.shape)}")
    b, h, q, kv = mask.shape
    tri = torch.ones(k, k, dtype=torch.bool, device=mask.device).tril()
    if mask.dtype == torch.bool:
        out = mask.new_zeros((b, h, q + k, kv + k))
        out[..., k:, :k] = True
        out[..., :k, :k] = tri
    else:
        low = torch.finfo(mask.dtype).min
        out = mask.new_full((b, h, q + k, kv + k), low)
        out[..., k:, :k] = 0
        out[..., :k, :k] = torch.zeros(k, k, dtype=mask.dtype, device=mask.device).masked_fill(~tri, low)
    out[..., k:, k:] = mask
    return out


def _pad_mask_columns(mask: Any, k: int) -> Any:
    """A decoding step's mask ``(B, H, q, kv)`` with ``k`` attended key columns in front (the cached tokens)."""
    if not torch.is_tensor(mask):
        return mask
    b, h, q, _ = mask.shape
    front = mask.new_ones((b, h, q, k)) if mask.dtype == torch.bool else mask.new_zeros((b, h, q, k))
    return torch.cat([front, mask], -1)


def _pad_position_ids(pid: Any, k: int) -> Any:
    if not torch.is_tensor(pid):
        return pid
    return torch.cat([pid.new_zeros((*pid.shape[:-1], k)), pid], -1)

