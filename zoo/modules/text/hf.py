"""Text encoder ``hf``: a transformers encoder (BERT, RoBERTa, XLM-R, MiniLM, ...) behind the text-encoder contract.

Reused from transformers: the whole model (``AutoModel`` from a local folder, or ``AutoConfig.for_model`` +
``AutoModel.from_config`` for random models), its masks and the tokenizer (``AutoTokenizer``). The model is built with
``attn_implementation="mmzoo"`` (see :func:`zoo.modules.attention.register_transformers_attention`), so its attention
runs through the framework's op and follows :func:`~zoo.modules.attention.set_attention_backend` /
:func:`~zoo.modules.attention.force_backend`.

Hand-written: layer selection after loading (``layers=N`` keeps the first N layers, ``layers=[1, 3, ...]`` an explicit
list, as CCLM keeps XLM-R-large's odd layers), the wrapping into :class:`~zoo.modules.outputs.EncoderOutput`, and
local-only tokenizer loading. ``pooled`` is the pooler output when ``add_pooling_layer`` is true, else the CLS (first)
token's final state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from zoo.modules.attention import register_transformers_attention
from zoo.modules.outputs import EncoderOutput
from zoo.registry import TEXT_ENCODERS
from zoo.spec import ConfigError

__all__ = ["HFTextEncoder", "load_tokenizer", "select_layers", "set_hf_grad_checkpointing"]


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------
def load_tokenizer(path: str | os.PathLike | None, owner: str = "text encoder") -> Any:
    """A transformers tokenizer from a LOCAL folder (no hub look-up); a clear error when none is configured."""
    if path is None:
        raise ValueError(
            f"{owner} has no tokenizer configured: set its 'tokenizer' argument to a local folder holding "
            "tokenizer.json / vocab files (it defaults to the 'pretrained' folder when that is given)"
        )
    from zoo.hub import resolve_path  # noqa: PLC0415

    path = resolve_path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{owner}: tokenizer folder {path} does not exist (tokenizers load from local folders)")
    from transformers import AutoTokenizer  # noqa: PLC0415

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def select_layers(layers: int | list[int] | None, available: int, owner: str = "layers") -> list[int]:
    """Indices of the layers to keep: first N (int), an explicit increasing list, or all (None)."""
    if layers is None:
        return list(range(available))
    if isinstance(layers, int):
        if not 1 <= layers <= available:
            raise ConfigError(f"{owner}={layers}: the model has {available} layers; keep between 1 and {available}")
        return list(range(layers))
    idx = list(layers)
    if not idx:
        raise ConfigError(f"{owner} is an empty list; list the layer indices to keep")
    bad = [i for i in idx if not 0 <= i < available]
    if bad:
        raise ConfigError(f"{owner}: indices {bad} out of range; the model has layers 0..{available - 1}")
    if sorted(set(idx)) != idx:
        raise ConfigError(f"{owner}={idx}: indices must be strictly increasing (each layer kept once, in order)")
    return idx


def set_hf_grad_checkpointing(model: Any, enable: bool = True) -> None:
    """Gradient (activation) checkpointing of a transformers model, non-reentrant, under the name its version has."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
        if enable:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.activation_checkpointing_disable()
    elif enable:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_disable()


# ---------------------------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------------------------
@TEXT_ENCODERS.register("hf")
class HFTextEncoder(nn.Module):
    """A transformers encoder model returning ``EncoderOutput(tokens, pooled, mask)``.

    Args:
        pretrained: local folder with ``config.json`` and weights (``AutoModel.from_pretrained``); or None to build a
            randomly initialised model from ``model_type`` + ``config``.
        model_type: transformers model type (``"bert"``, ``"roberta"``, ``"xlm-roberta"``, ...) when not pretrained.
        config: overrides of the transformers config (``hidden_size``, ``num_hidden_layers``, ``vocab_size``, ...);
            applied over the pretrained folder's config too (dropout, for instance).
        layers: keep the first N layers (int) or the listed layers (``[1, 3, ..., 23]``), after loading the weights.
        add_pooling_layer: build the pooler; ``pooled`` is then its output, else the CLS token's state.
        tokenizer: local tokenizer folder (default: ``pretrained``).
    """

    def __init__(
        self,
        pretrained: str | None = None,
        model_type: str = "bert",
        config: dict[str, Any] | None = None,
        layers: int | list[int] | None = None,
        add_pooling_layer: bool = False,
        tokenizer: str | None = None,
    ):
        super().__init__()
        from transformers import AutoConfig, AutoModel  # noqa: PLC0415

        impl = register_transformers_attention()
        overrides = dict(config or {})
        if pretrained is not None:
            if not Path(pretrained).is_dir():
                raise ConfigError(f"pretrained={pretrained!r}: not a local folder (expected config.json + weights)")
            self.model = AutoModel.from_pretrained(
                pretrained, attn_implementation=impl, add_pooling_layer=add_pooling_layer, local_files_only=True,
                **overrides,
            )
        else:
            try:
                hf_config = AutoConfig.for_model(model_type, **overrides)
            except ValueError as exc:
                raise ConfigError(f"model_type={model_type!r}: {exc}") from None
            self.model = AutoModel.from_config(
                hf_config, attn_implementation=impl, add_pooling_layer=add_pooling_layer
            )
        encoder = getattr(self.model, "encoder", None)
        if encoder is None or not hasattr(encoder, "layer"):
            raise ConfigError(
                f"{type(self.model).__name__} has no encoder.layer list; 'hf' wraps BERT-like encoders"
            )
        keep = select_layers(layers, len(encoder.layer))
        if len(keep) != len(encoder.layer):
            encoder.layer = nn.ModuleList([encoder.layer[i] for i in keep])
            self.model.config.num_hidden_layers = len(keep)
        self.kept_layers = keep
        self.add_pooling_layer = add_pooling_layer
        self.width: int = self.model.config.hidden_size
        self.tokenizer = tokenizer if tokenizer is not None else pretrained

    def get_tokenizer(self) -> Any:
        return load_tokenizer(self.tokenizer, "text encoder 'hf'")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        set_hf_grad_checkpointing(self.model, enable)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        token_type_ids: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> EncoderOutput:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        tokens = out.last_hidden_state
        pooled = out.pooler_output if self.add_pooling_layer else tokens[:, 0]
        return EncoderOutput(
            tokens=tokens,
            pooled=pooled,
            mask=attention_mask,
            hidden_states=out.hidden_states if output_hidden_states else None,
            attentions=out.attentions if output_attentions else None,
        )

