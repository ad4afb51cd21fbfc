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


_HEAD_KEYS = ("transform.dense.weight", "transform.dense.bias", "transform.LayerNorm.weight",
              "transform.LayerNorm.bias", "bias", "decoder.weight")


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
        pretrained: a transformers masked-LM checkpoint (file or folder) whose LM head initialises this one, as the
            official models start theirs: BERT's ``cls.predictions.*`` (X²-VLM from bert-base) or XLM-R's
            ``lm_head.*`` (CCLM from xlm-roberta-large; see :meth:`load_pretrained`).
    """

    def __init__(
        self,
        hidden_size: int = 768,
        vocab_size: int = 30522,
        layer_norm_eps: float = 1e-12,
        hidden_act: str = "gelu",
        initializer_range: float = 0.02,
        pretrained: str | None = None,
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
        if pretrained is not None:
            self.load_pretrained(pretrained)

    def load_pretrained(self, path: str) -> None:
        """Copy the LM head of a transformers masked-LM checkpoint into this head.

        BERT (``BertForMaskedLM`` / ``BertForPreTraining``): ``cls.predictions.{transform.dense, transform.LayerNorm,
        bias, decoder}``; XLM-R / RoBERTa (``XLMRobertaForMaskedLM``): ``lm_head.{dense, layer_norm, bias, decoder}``
        (dense → GELU → LayerNorm → decoder, the same computation). A decoder matrix the file leaves out (stored
        once, tied to the word embeddings) is read from the word embeddings. Missing tensors or other shapes raise
        :class:`zoo.hub.WeightsError` naming them.
        """
        from zoo.hub import WeightsError, load_state_dict  # noqa: PLC0415

        state = load_state_dict(path)
        found = {k.split("cls.predictions.", 1)[1]: v for k, v in state.items() if "cls.predictions." in k}
        names = {key: key for key in _HEAD_KEYS}  # BERT's own names
        if not found:  # XLM-R / RoBERTa
            found = {k.split("lm_head.", 1)[1]: v for k, v in state.items() if "lm_head." in k}
            names = dict(zip(_HEAD_KEYS, ("dense.weight", "dense.bias", "layer_norm.weight", "layer_norm.bias", "bias",
                                          "decoder.weight")))
        if not found:
            raise WeightsError(f"{path}: no masked-LM head (expected BERT cls.predictions.* or XLM-R lm_head.* keys)")
        if "decoder.weight" not in found:
            tied = [v for k, v in state.items() if k.endswith("embeddings.word_embeddings.weight")]
            if len(tied) == 1:
                found["decoder.weight"] = tied[0]
        own = dict(self.cls.predictions.named_parameters(remove_duplicate=False))
        missing = [f"{theirs} (for {mine})" for mine, theirs in names.items() if theirs not in found]
        if missing:
            raise WeightsError(f"{path}: the masked-LM head lacks {', '.join(missing)}")
        wrong = [f"{theirs}: file {tuple(found[theirs].shape)} vs head {tuple(own[mine].shape)}"
                 for mine, theirs in names.items() if tuple(found[theirs].shape) != tuple(own[mine].shape)]
        if wrong:
            raise WeightsError(f"{path}: masked-LM head shape mismatch: {'; '.join(wrong)}")
        with torch.no_grad():
            for mine, theirs in names.items():
                own[mine].copy_(found[theirs])

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
