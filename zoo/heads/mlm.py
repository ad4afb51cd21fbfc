"""Masked-language-model head ``mlm``: BERT's LM prediction head over text states.

``transform`` (dense → activation → LayerNorm) then the vocabulary projection ``decoder`` with its bias. Keys
``cls.predictions.{bias, transform.dense, transform.LayerNorm, decoder}`` equal the official X²-VLM
``text_encoder.cls.predictions.*`` (and any BERT ``cls.predictions.*``), so checkpoints load by prefix.

Reused from transformers: ``BertOnlyMLMHead`` (exposed as ``self.cls``). Hand-written: the bias tie (transformers 5
no longer ties ``decoder.bias`` to ``predictions.bias`` inside the module; the official xbert does, so both keys hold
one tensor and the bias is counted once), :meth:`MLMHead.tie_to` (the official pre-training model shares the decoder
matrix with the word embeddings: X²-VLM base ``text_encoder.cls`` then holds 622,650 own parameters), gathering at the
masked positions, and the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.modules.layers import init_bert_weights
from zoo.registry import HEADS
from zoo.spec import ConfigError

__all__ = ["MLMHead", "gather_positions"]


def gather_positions(states: Tensor, positions: Tensor) -> Tensor:
    """``states[b, positions[b, i]]``: ``(B, L, D)`` and ``(B, n)`` → ``(B, n, D)`` (xbert's ``masked_pos`` gather)."""
    return torch.gather(states, 1, positions.long().unsqueeze(-1).expand(-1, -1, states.shape[-1]))


@HEADS.register("mlm")
class MLMHead(nn.Module):
    """BERT LM prediction head; ``forward`` returns logits and, with labels, the MLM cross-entropy.

    Args:
        hidden_size: width of the text states (``width``).
        vocab_size: output vocabulary (30522 for bert-base/large-uncased).
        layer_norm_eps: LayerNorm epsilon of the transform (BERT 1e-12).
        hidden_act: activation of the transform (transformers' ``ACT2FN`` name; BERT ``"gelu"``, exact erf GELU).
        initializer_range: std of BERT's normal initialisation (official 0.02 at width 768; a toy width keeps
            the official activation scale with ``0.02·√(768 / width)``, e.g. 0.07 at 64).
    """

    def __init__(
        self,
        hidden_size: int = 768,
        vocab_size: int = 30522,
        layer_norm_eps: float = 1e-12,
        hidden_act: str = "gelu",
        initializer_range: float = 0.02,
    ):
        super().__init__()
        from transformers import BertConfig  # noqa: PLC0415
        from transformers.activations import ACT2FN  # noqa: PLC0415
        from transformers.models.bert.modeling_bert import BertOnlyMLMHead  # noqa: PLC0415

        if hidden_size <= 0 or vocab_size <= 0:
            raise ConfigError(f"hidden_size={hidden_size} and vocab_size={vocab_size} must be positive")
        if hidden_act not in ACT2FN:
            raise ConfigError(f"hidden_act={hidden_act!r}: expected one of {', '.join(sorted(ACT2FN))}")
        self.width = hidden_size
        self.vocab_size = vocab_size
        config = BertConfig(
            hidden_size=hidden_size, vocab_size=vocab_size, layer_norm_eps=layer_norm_eps, hidden_act=hidden_act
        )
        self.cls = BertOnlyMLMHead(config)
        init_bert_weights(self.cls, initializer_range)
        pred = self.cls.predictions
        pred.decoder.bias = pred.bias  # one output bias, as the official head (both keys in the state dict)

    def tie_to(self, embedding: nn.Embedding) -> None:
        """Share the decoder matrix with ``embedding`` (the text word embeddings): the same Parameter object."""
        decoder = self.cls.predictions.decoder
        if tuple(embedding.weight.shape) != tuple(decoder.weight.shape):
            raise ConfigError(
                f"cannot tie the MLM decoder {tuple(decoder.weight.shape)} to word embeddings "
                f"{tuple(embedding.weight.shape)}: vocab_size / hidden_size differ"
            )
        decoder.weight = embedding.weight

    def logits(self, states: Tensor, masked_pos: Tensor | None = None) -> Tensor:
        """Vocabulary logits for every state, or only at ``masked_pos`` ``(B, n)`` → ``(B, n, vocab)``."""
        if masked_pos is not None:
            states = gather_positions(states, masked_pos)
        return self.cls(states)

    def forward(
        self, states: Tensor, labels: Tensor | None = None, masked_pos: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``{"logits"}`` and, when ``labels`` (same leading shape as the logits, -100 = ignore) are given,
        ``"loss"``: the mean cross-entropy over the labelled positions (0 when none is labelled)."""
        logits = self.logits(states, masked_pos)
        out = {"logits": logits}
        if labels is not None:
            if labels.shape != logits.shape[:-1]:
                raise ValueError(f"labels {tuple(labels.shape)} do not match the logits {tuple(logits.shape[:-1])}")
            flat = labels.reshape(-1).long()
            # sum / count = the mean over labelled positions, without a host sync; 0 (not NaN) when none is labelled
            total = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), flat, ignore_index=-100, reduction="sum"
            )
            out["loss"] = total / (flat != -100).sum().clamp(min=1)
        return out

    @torch.no_grad()
    def predict(self, states: Tensor, masked_pos: Tensor | None = None) -> Tensor:
        """The most likely token id at each state (or at ``masked_pos``)."""
        return self.logits(states, masked_pos).argmax(-1)
