"""Fusion ``cross_attention``: a stack of BERT layers (self-attention -> cross-attention -> FFN) over text tokens that
cross-attend to vision tokens; CCLM-X2VLM's separate 6-layer ``cross_encoder`` and any ALBEF-style fusion encoder.

Nothing is reused from transformers here beyond the key names: the layers are
:class:`zoo.modules.layers.TransformerLayer`, hand-written because transformers' ``BertLayer`` cannot project
cross-attention keys/values from a different vision width, does not call the framework's attention op, and with
``is_decoder=True`` turns its self-attention causal under sdpa. Self-attention is bidirectional unless ``causal=True``.
Keys ``encoder.layer.N.*``, as the official ``cross_encoder.encoder.layer.N.*``. ``pretrained`` loads from a local file
or folder in that layout (any prefix) and ``layer_map`` picks the source layers (CCLM-X2VLM initialises its cross
encoder from X²-VLM's fusion layers 12-17).
"""

from __future__ import annotations

from torch import Tensor, nn

from zoo.hub import load_state_dict
from zoo.modules.layers import (
    LayerStack,
    TransformerLayer,
    find_prefix,
    init_bert_weights,
    load_bert_layers,
)
from zoo.modules.outputs import EncoderOutput
from zoo.registry import FUSIONS
from zoo.spec import ConfigError

__all__ = ["CrossAttentionFusion"]


@FUSIONS.register("cross_attention")
class CrossAttentionFusion(nn.Module):
    """``num_layers`` BERT layers with cross-attention; returns the fused text tokens.

    Args:
        num_layers, hidden_size, num_heads, intermediate_size: stack sizes (``width`` = ``hidden_size``).
        encoder_width: width of the vision tokens (keys/values of the cross-attention are projected from it).
        causal: causal self-attention (decoders); False = bidirectional (fusion encoders).
        hidden_dropout, attention_dropout, layer_norm_eps: as BERT.
        pretrained: local weights file or folder holding ``encoder.layer.N.*`` keys under any prefix.
        layer_map: source layer of each of our layers (default ``0..num_layers-1``; -1 keeps a layer as initialised).
            Source layers without cross-attention weights (plain BERT) leave our cross-attention as initialised.
        initializer_range: std of BERT's normal initialisation (official 0.02 at width 768; a toy width keeps
            the official activation scale with ``0.02·√(768 / width)``, e.g. 0.07 at 64).
    """

    def __init__(
        self,
        num_layers: int = 6,
        hidden_size: int = 768,
        num_heads: int = 12,
        intermediate_size: int = 3072,
        encoder_width: int = 768,
        causal: bool = False,
        hidden_dropout: float = 0.1,
        attention_dropout: float = 0.1,
        layer_norm_eps: float = 1e-12,
        pretrained: str | None = None,
        layer_map: list[int] | None = None,
        initializer_range: float = 0.02,
    ):
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"num_layers={num_layers}: need at least one layer")
        if hidden_size % num_heads:
            raise ConfigError(f"hidden_size={hidden_size} is not a multiple of num_heads={num_heads}")
        if layer_map is not None and len(layer_map) != num_layers:
            raise ConfigError(f"layer_map has {len(layer_map)} entries; it needs one per layer ({num_layers})")
        if layer_map is not None and pretrained is None:
            raise ConfigError("layer_map chooses pretrained layers: set pretrained too")
        self.width = hidden_size
        self.encoder_width = encoder_width
        self.causal = causal
        self.encoder = LayerStack([
            TransformerLayer(
                hidden_size, num_heads, intermediate_size, cross_attention=True, encoder_width=encoder_width,
                causal=causal, eps=layer_norm_eps, attn_drop=attention_dropout, drop=hidden_dropout,
            )
            for _ in range(num_layers)
        ])
        init_bert_weights(self, initializer_range)
        self.pretrained = pretrained
        if pretrained is not None:
            self._load_pretrained(pretrained, layer_map)

    def _load_pretrained(self, path: str, layer_map: list[int] | None) -> None:
        if layer_map is None:
            sources: list[int | None] = list(range(len(self.encoder.layer)))
        else:
            sources = [None if s < 0 else s for s in layer_map]
        first = next((s for s in sources if s is not None), None)
        if first is None:
            return
        state = load_state_dict(path)
        prefix = find_prefix(state, f"encoder.layer.{first}.attention.self.query.weight", path)
        self.load_report = load_bert_layers(self, state, source=path, prefix=prefix, layer_sources=sources)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    def forward(
        self,
        text_tokens: Tensor,
        text_mask: Tensor | None,
        vision_tokens: Tensor,
        vision_mask: Tensor | None = None,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> EncoderOutput:
        """``text_tokens`` ``(B, L, width)`` attend to ``vision_tokens`` ``(B, N, encoder_width)``.

        Returns EncoderOutput(tokens (B, L, width), pooled = first token's state, mask = text_mask, hidden_states,
        attentions = self-attention maps per layer).
        """
        if text_tokens.shape[-1] != self.width:
            raise ValueError(f"text_tokens have width {text_tokens.shape[-1]} but this fusion has width {self.width}")
        if vision_tokens.shape[-1] != self.encoder_width:
            raise ValueError(
                f"vision_tokens have width {vision_tokens.shape[-1]} but encoder_width={self.encoder_width}"
            )
        x, states, self_maps, _ = self.encoder(
            text_tokens, text_mask, vision_tokens, vision_mask,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
        )
        return EncoderOutput(tokens=x, pooled=x[:, 0], mask=text_mask, hidden_states=states, attentions=self_maps)
