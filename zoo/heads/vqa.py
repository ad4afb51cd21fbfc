"""Generative VQA head ``vqa_generative`` (X²-VLM): a BERT decoder that writes the answer, ranked over an answer list.

The decoder is a small BERT language model: its own embeddings, ``num_layers`` layers of causal self-attention ->
cross-attention to the fused question states -> FFN, and BERT's LM prediction head whose output matrix and bias are
tied to the decoder's own word embeddings and to ``predictions.bias``. Training scores each reference answer of a
question by its sequence cross-entropy (the question states repeated once per answer) and sums them weighted by the
answer weights, divided by the number of questions. Inference ranks a fixed answer list: the probability of each
answer's first token after the start token picks the top ``k``, whose full sequences are then re-scored.

Facts from the official code (zengyan-97/X2-VLM @21ed5a5, ``XVLMForVQA`` in models/model_generation.py, ``BertLMHeadModel``
in models/xbert.py, VQA.py, dataset/vqa_dataset.py):

- answers are tokenized as ``[CLS] answer [SEP]`` padded with ``[PAD]`` (bert-base-uncased: 101 ... 102, pad 0); the
  ``[CLS]`` is the start token (no replacement by another id), the targets are the ids shifted by one with padding
  set to -100, so ``[SEP]`` is the end token the decoder learns to predict;
- loss: per sequence the *sum* of token cross-entropies (no label smoothing), ``Σ weight × loss / num_questions``;
- ranking: ``log p(first token) + Σ_t log p(token_t)`` — the first token's log-probability is counted twice, once from
  the prefilter and once inside the sequence sum — then a softmax over the ``k`` candidates; the prediction is the
  candidate with the highest probability;
- initialisation for fine-tuning: decoder embeddings and LM head from the pre-trained text encoder's embeddings and
  MLM head, decoder layer ``i`` from fusion layer ``fusion_start + i`` (or, with half as many decoder layers, from the
  odd-numbered fusion layers); cross-attention key/value are left as initialised when the widths differ.

Reused: :class:`zoo.modules.text.split_bert.SplitBert` (``fusion_start=0``, run with ``causal=True``) for the
embeddings and layers — its layers are the framework's attention op with transformers' ``BertLayer`` keys, and its
embeddings are transformers' ``BertEmbeddings`` — and transformers' ``BertOnlyMLMHead`` for the prediction head (keys
``predictions.transform.{dense,LayerNorm}``, ``predictions.decoder``, ``predictions.bias``). Hand-written: the weight
tying (transformers >= 5 ties only inside ``PreTrainedModel``), the loss and the ranking (the official formulas; the
LM head runs only on the positions that carry a target, in chunks, instead of on every position as the official code
does — the numbers are the same, the memory is not), and the initialisation map.

Keys: ``decoder.bert.{embeddings,encoder.layer.N}.*`` and ``cls.predictions.*``; the official ``text_decoder.bert.*``
and ``text_decoder.cls.*`` map onto them by prefix (:func:`convert_official_decoder`). ``state_dict()`` lists the tied
tensors under both names, as the official state dict does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.modules.layers import init_bert_weights
from zoo.modules.text.split_bert import SplitBert
from zoo.registry import HEADS
from zoo.spec import ConfigError

__all__ = [
    "OFFICIAL_PREFIXES",
    "GenerativeVQAHead",
    "convert_official_decoder",
    "decoder_init_state",
    "decoder_layer_sources",
]

# official key prefix -> ours (the head's own state-dict keys)
OFFICIAL_PREFIXES: dict[str, str] = {"text_decoder.bert.": "decoder.bert.", "text_decoder.cls.": "cls."}

_IGNORE = -100  # target value skipped by the loss
_TIED = ("predictions.decoder.weight", "predictions.decoder.bias")  # cls keys that alias other tensors


def _upcast(x: Tensor) -> Tensor:
    """float16 / bfloat16 logits to float32 for the softmax; float32 and float64 stay as they are."""
    return x.float() if x.is_floating_point() and x.element_size() < 4 else x


class _Decoder(nn.Module):
    """Holds the decoder stack as ``bert`` so that its keys read ``bert.embeddings.*``, ``bert.encoder.layer.N.*``."""

    def __init__(self, bert: SplitBert):
        super().__init__()
        self.bert = bert

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None, context: Tensor, context_mask: Tensor | None
    ) -> Tensor:
        out = self.bert(
            input_ids, attention_mask, mode="full", vision_tokens=context, vision_mask=context_mask, causal=True
        )
        return out.tokens


def _lm_head(hidden_size: int, vocab_size: int, layer_norm_eps: float) -> nn.Module:
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertOnlyMLMHead

    config = BertConfig(
        hidden_size=hidden_size, vocab_size=vocab_size, layer_norm_eps=layer_norm_eps, hidden_act="gelu"
    )
    return BertOnlyMLMHead(config)


@HEADS.register("vqa_generative")
class GenerativeVQAHead(nn.Module):
    """X²-VLM's answer decoder: trained by weighted answer likelihood, evaluated by ranking an answer list.

    Args:
        hidden_size, num_heads, intermediate_size: decoder layer sizes (base 768/12/3072, large 1024/16/4096).
        vocab_size, max_position_embeddings, type_vocab_size: embedding sizes (bert-base-uncased 30522/512/2).
        num_layers: decoder layers (official 6 = the number of fusion layers; 3 = half of them is also supported
            by the initialisation).
        encoder_width: width of the question states the decoder cross-attends to (the fusion width).
        pad_token_id: padding id of the answer ids; those targets are ignored (-100).
        bos_token_id: the first id of every answer sequence and the start token of ranking (BERT's ``[CLS]``, 101).
        eos_token_id: the id closing every answer sequence, learnt as the last target (BERT's ``[SEP]``, 102).
        k_test: candidates kept by the first-token prefilter at inference (official 128).
        layer_norm_eps: 1e-12 (BERT).
        hidden_dropout, attention_dropout: BERT's ``hidden_dropout_prob`` and ``attention_probs_dropout_prob``.
        lm_chunk: positions sent through the LM head at once (memory bound of ranking; no effect on the numbers).
        initializer_range: std of BERT's normal initialisation (official 0.02 at width 768; a toy width keeps
            the official activation scale with ``0.02·√(768 / width)``, e.g. 0.07 at 64).
    """

    def __init__(
        self,
        hidden_size: int = 768,
        num_heads: int = 12,
        intermediate_size: int = 3072,
        vocab_size: int = 30522,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        num_layers: int = 6,
        encoder_width: int = 768,
        pad_token_id: int = 0,
        bos_token_id: int = 101,
        eos_token_id: int = 102,
        k_test: int = 128,
        layer_norm_eps: float = 1e-12,
        hidden_dropout: float = 0.1,
        attention_dropout: float = 0.1,
        lm_chunk: int = 8192,
        initializer_range: float = 0.02,
    ):
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"num_layers={num_layers}: the decoder needs at least one layer")
        if k_test < 1:
            raise ConfigError(f"k_test={k_test}: expected a positive number of candidates")
        if lm_chunk < 1:
            raise ConfigError(f"lm_chunk={lm_chunk}: expected a positive number of positions")
        for name, value in (("pad_token_id", pad_token_id), ("bos_token_id", bos_token_id),
                            ("eos_token_id", eos_token_id)):
            if not 0 <= value < vocab_size:
                raise ConfigError(f"{name}={value} lies outside the vocabulary (vocab_size={vocab_size})")
        self.width = hidden_size
        self.encoder_width = encoder_width
        self.num_layers = num_layers
        self.vocab_size = vocab_size
        self.pad_token_id, self.bos_token_id, self.eos_token_id = pad_token_id, bos_token_id, eos_token_id
        self.k_test = k_test
        self.lm_chunk = lm_chunk
        self.decoder = _Decoder(SplitBert(
            num_layers=num_layers, fusion_start=0, hidden_size=hidden_size, num_heads=num_heads,
            intermediate_size=intermediate_size, vocab_size=vocab_size,
            max_position_embeddings=max_position_embeddings, type_vocab_size=type_vocab_size,
            encoder_width=encoder_width, embeddings="bert", pad_token_id=pad_token_id, layer_norm_eps=layer_norm_eps,
            hidden_dropout=hidden_dropout, attention_dropout=attention_dropout, initializer_range=initializer_range,
        ))
        self.cls = _lm_head(hidden_size, vocab_size, layer_norm_eps)
        init_bert_weights(self.cls, initializer_range)
        self.tie_weights()

    # -- structure ---------------------------------------------------------------------------------------------------
    def tie_weights(self) -> None:
        """Share the output matrix with the word embeddings and the output bias with ``predictions.bias``."""
        pred = self.cls.predictions
        pred.decoder.weight = self.decoder.bert.embeddings.word_embeddings.weight
        pred.decoder.bias = pred.bias

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.decoder.bert.set_grad_checkpointing(enable)

    # -- decoding ----------------------------------------------------------------------------------------------------
    def decode(
        self, answer_ids: Tensor, answer_mask: Tensor | None, question_states: Tensor, question_mask: Tensor | None
    ) -> Tensor:
        """Decoder output states ``(N, L, width)``: causal over the answer, cross-attending to the question states."""
        return self.decoder(answer_ids, answer_mask, question_states, question_mask)

    def logits(
        self, answer_ids: Tensor, answer_mask: Tensor | None, question_states: Tensor, question_mask: Tensor | None
    ) -> Tensor:
        """Next-token logits ``(N, L, vocab)`` at every answer position (position t predicts token t + 1)."""
        return self.cls(self.decode(answer_ids, answer_mask, question_states, question_mask))

    def _targets(self, answer_ids: Tensor, answer_mask: Tensor | None) -> Tensor:
        keep = answer_ids != self.pad_token_id
        if answer_mask is not None:
            keep = keep & answer_mask.bool()
        return answer_ids.masked_fill(~keep, _IGNORE)[:, 1:]

    def sequence_nll(
        self, question_states: Tensor, question_mask: Tensor | None, answer_ids: Tensor, answer_mask: Tensor | None
    ) -> Tensor:
        """``(N,)`` negative log-likelihood of each answer: the sum of its token cross-entropies after the start token.

        Row ``i`` of the question tensors conditions answer ``i``. Padding (``pad_token_id`` or ``answer_mask == 0``)
        carries no target. The LM head runs only on the positions with a target, ``lm_chunk`` at a time.
        """
        if answer_ids.shape[0] != question_states.shape[0]:
            raise ValueError(
                f"{answer_ids.shape[0]} answers but {question_states.shape[0]} question rows: repeat the question "
                "states once per answer (forward does this from k)"
            )
        hidden = self.decode(answer_ids, answer_mask, question_states, question_mask)[:, :-1]
        targets = self._targets(answer_ids, answer_mask)
        valid = targets != _IGNORE
        h, t = hidden[valid], targets[valid]
        parts = [
            F.cross_entropy(_upcast(self.cls(h[i : i + self.lm_chunk])), t[i : i + self.lm_chunk], reduction="none")
            for i in range(0, h.shape[0], self.lm_chunk)
        ]
        token_nll = torch.cat(parts) if parts else _upcast(h.new_zeros(0))
        per_pos = torch.zeros(targets.shape, dtype=token_nll.dtype, device=token_nll.device)
        per_pos = per_pos.masked_scatter(valid, token_nll)
        return per_pos.sum(1)

    # -- training ----------------------------------------------------------------------------------------------------
    def forward(
        self,
        question_states: Tensor,
        question_mask: Tensor | None,
        answer_ids: Tensor,
        answer_mask: Tensor | None,
        weights: Tensor | None = None,
        k: Sequence[int] | Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Training loss of the official VQA fine-tuning.

        Args:
            question_states: ``(Q, Lq, encoder_width)`` fused question states (the fusion stack's output tokens).
            question_mask: ``(Q, Lq)`` 1 = question token, 0 = padding.
            answer_ids: ``(A, La)`` ``[CLS] answer [SEP]`` padded with ``pad_token_id``; the answers of question 0
                first, then those of question 1, ...
            answer_mask: ``(A, La)`` 1 = token (or None: padding is recognised by ``pad_token_id``).
            weights: ``(A,)`` answer weights (VQA: count / number of annotations; Visual Genome: 0.5); default 1.
            k: answers per question (length Q, summing to A); default one answer per question.
        Returns:
            ``{"loss": Σ_a weight_a · nll_a / Q, "answer_nll": (A,) nll_a}`` with ``nll_a`` the answer's summed token
            cross-entropy.
        """
        num_q, num_a = question_states.shape[0], answer_ids.shape[0]
        if k is None:
            if num_a != num_q:
                raise ValueError(f"{num_a} answers for {num_q} questions: pass k (answers per question)")
            states, mask = question_states, question_mask
        else:
            counts = torch.as_tensor(k, dtype=torch.long, device=question_states.device)
            if counts.shape != (num_q,):
                raise ValueError(f"k has shape {tuple(counts.shape)}; expected one count per question ({num_q})")
            total = int(sum(k)) if not isinstance(k, Tensor) else int(k.sum())
            if total != num_a:
                raise ValueError(f"k sums to {total} but {num_a} answers were given")
            states = question_states.repeat_interleave(counts, 0, output_size=num_a)
            mask = None if question_mask is None else question_mask.repeat_interleave(counts, 0, output_size=num_a)
        nll = self.sequence_nll(states, mask, answer_ids, answer_mask)
        if weights is None:
            weighted = nll
        else:
            if weights.shape != (num_a,):
                raise ValueError(f"weights has shape {tuple(weights.shape)}; expected ({num_a},)")
            weighted = weights.to(nll.dtype) * nll
        return {"loss": weighted.sum() / num_q, "answer_nll": nll}

    # -- inference ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def rank_answers(
        self,
        question_states: Tensor,
        question_mask: Tensor | None,
        answer_ids: Tensor,
        answer_mask: Tensor | None,
        k: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Rank an answer list per question, as the official ``rank_answer``.

        1. One decoder step on the start token gives each answer's first-token probability; the top ``k`` answers
           (default ``k_test``, at most the list's length) are kept.
        2. Each kept answer is scored ``log p(first token) + Σ_t log p(token_t | previous)`` (the sum runs over every
           target, the first token and ``[SEP]`` included, so the first token counts twice, as in the official code).
        3. Softmax over the ``k`` scores, sorted descending.

        Args:
            question_states, question_mask: ``(Q, Lq, encoder_width)``, ``(Q, Lq)``.
            answer_ids, answer_mask: the tokenized answer list ``(A, La)``, every row starting with ``bos_token_id``
                (see :meth:`encode_answers`).
        Returns:
            ``(indices, probs)``, both ``(Q, k)``: answer-list indices, best first, and their re-ranked probabilities.
        """
        num_q, num_a = question_states.shape[0], answer_ids.shape[0]
        if answer_ids.shape[1] < 2:
            raise ValueError("answer_ids need a start token and at least one answer token per row")
        if not bool((answer_ids[:, 0] == self.bos_token_id).all()):
            raise ValueError(f"every answer must start with bos_token_id={self.bos_token_id} (see encode_answers)")
        k = min(self.k_test if k is None else k, num_a)
        start = answer_ids.new_full((num_q, 1), self.bos_token_id)
        first_logits = _upcast(self.cls(self.decode(start, None, question_states, question_mask)[:, 0]))
        first_probs = first_logits.softmax(-1).index_select(1, answer_ids[:, 1])  # (Q, A)
        top_probs, top_ids = first_probs.topk(k, dim=1)

        flat = top_ids.reshape(-1)
        cand_ids = answer_ids.index_select(0, flat)
        cand_mask = None if answer_mask is None else answer_mask.index_select(0, flat)
        states = question_states.repeat_interleave(k, 0)
        mask = None if question_mask is None else question_mask.repeat_interleave(k, 0)
        nll = self.sequence_nll(states, mask, cand_ids, cand_mask).view(num_q, k)
        scores = top_probs.log() - nll
        probs = scores.softmax(-1)
        probs, order = probs.topk(k, dim=1)
        return top_ids.gather(1, order), probs

    @torch.no_grad()
    def predict(
        self,
        question_states: Tensor,
        question_mask: Tensor | None,
        answer_ids: Tensor,
        answer_mask: Tensor | None,
        k: int | None = None,
        answers: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """The answer of each question: ``{"index": (Q,) answer-list index, "prob": (Q,), "answer": [str] | None}``.

        ``answer`` is filled when ``answers`` (the answer list's strings, in the order of ``answer_ids``) is given;
        it is what the VQA accuracy compares with the annotations.
        """
        if answers is not None and len(answers) != answer_ids.shape[0]:
            raise ValueError(f"answers has {len(answers)} strings but answer_ids has {answer_ids.shape[0]} rows")
        ids, probs = self.rank_answers(question_states, question_mask, answer_ids, answer_mask, k)
        index = ids[:, 0]
        return {
            "index": index,
            "prob": probs[:, 0],
            "answer": None if answers is None else [answers[i] for i in index.tolist()],
        }

    def encode_answers(
        self, answers: Sequence[str], tokenizer: Any, device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(ids, mask)`` of ``[bos] answer [eos]`` padded with ``pad_token_id`` to the longest answer.

        For a BERT tokenizer this equals the official ``tokenizer(answers, padding="longest")``. ``tokenizer`` is any
        callable returning ``{"input_ids": [[...], ...]}`` for ``add_special_tokens=False`` (transformers tokenizers).
        """
        if not answers:
            raise ValueError("no answers to encode")
        pieces = tokenizer(list(answers), add_special_tokens=False)["input_ids"]
        rows = [[self.bos_token_id, *p, self.eos_token_id] for p in pieces]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return ids.to(device), mask.to(device)

    # -- initialisation ----------------------------------------------------------------------------------------------
    def init_from_text_encoder(
        self, text_encoder: SplitBert | Mapping[str, Tensor], mlm_head: nn.Module | Mapping[str, Tensor] | None = None
    ) -> dict[str, list[str]]:
        """Initialise the decoder as the official fine-tuning does (see :func:`decoder_init_state`).

        Args:
            text_encoder: the pre-trained X²-VLM text stack (a :class:`SplitBert`, or its state dict:
                ``embeddings.*``, ``encoder.layer.N.*``); its ``num_layers`` and ``fusion_start`` give the layer map.
            mlm_head: the pre-trained MLM head (a module or state dict with ``predictions.*`` keys); without it the
                prediction transform and bias stay as initialised (the output matrix follows the copied word
                embeddings, being tied to them).
        Returns:
            ``{"copied": [our keys], "initialised": [our keys left as they were]}``.
        """
        if isinstance(text_encoder, SplitBert):
            num_layers, fusion_start = text_encoder.num_layers, text_encoder.fusion_start
            state: dict[str, Tensor] = dict(text_encoder.state_dict())
        else:
            state = dict(text_encoder)
            found = [int(m.group(1)) for key in state if (m := re.match(r"encoder\.layer\.(\d+)\.", key))]
            cross = [int(m.group(1)) for key in state if (m := re.match(r"encoder\.layer\.(\d+)\.crossattention\.", key))]
            if not found or not cross:
                raise ValueError("the text-encoder state dict has no fusion (cross-attention) layers")
            num_layers, fusion_start = max(found) + 1, min(cross)
        if mlm_head is not None:
            head_state = mlm_head.state_dict() if isinstance(mlm_head, nn.Module) else mlm_head
            state.update({f"cls.{k}": v for k, v in head_state.items()})
        new = decoder_init_state(
            state, num_layers=num_layers, fusion_start=fusion_start, num_dec_layers=self.num_layers,
            prefix="", mlm_prefix="cls." if mlm_head is not None else None,
        )
        own = self.state_dict()
        kv = (".crossattention.self.key.", ".crossattention.self.value.")
        # official: when the fusion layers read another width than the decoder (vision width != text width), the
        # cross-attention key/value projections (weights and biases) are not copied
        drop_kv = any(
            any(p in key for p in kv) and tuple(value.shape) != tuple(own[key].shape) for key, value in new.items()
        )
        copied: list[str] = []
        with torch.no_grad():
            for key, value in new.items():
                if drop_kv and any(p in key for p in kv):
                    continue
                if tuple(value.shape) != tuple(own[key].shape):
                    raise ValueError(f"{key}: source shape {tuple(value.shape)}, ours {tuple(own[key].shape)}")
                own[key].copy_(value)
                copied.append(key)
        done = {own[key].data_ptr() for key in copied}  # tied entries count as copied with what they alias
        initialised = [key for key in own if own[key].data_ptr() not in done and not key.endswith("position_ids")]
        return {"copied": copied, "initialised": initialised}


# ---------------------------------------------------------------------------------------------------------------------
# official layouts
# ---------------------------------------------------------------------------------------------------------------------
def decoder_layer_sources(num_layers: int, fusion_start: int, num_dec_layers: int) -> list[int]:
    """Text-encoder layer that initialises each decoder layer, as the official ``load_pretrained``.

    With as many decoder layers as fusion layers, decoder layer ``i`` comes from layer ``fusion_start + i``; with half
    as many, from the odd-numbered fusion layers (even layer numbers are skipped), in order. Other counts raise.
    """
    num_cross = num_layers - fusion_start
    if num_dec_layers == num_cross:
        return [fusion_start + i for i in range(num_dec_layers)]
    if num_dec_layers == num_cross // 2 and num_dec_layers > 0:
        # official: layers with an even number are dropped, layer n becomes decoder layer (n - fusion_start) // 2
        sources = {(n - fusion_start) // 2: n for n in range(fusion_start, num_layers) if n % 2 == 1}
        return [sources[i] for i in range(num_dec_layers)]
    raise ConfigError(
        f"decoder with {num_dec_layers} layers: the official initialisation needs {num_cross} (the fusion layers) "
        f"or {num_cross // 2} (half of them)"
    )


def decoder_init_state(
    state: Mapping[str, Tensor],
    *,
    num_layers: int,
    fusion_start: int,
    num_dec_layers: int,
    prefix: str = "text_encoder.bert.",
    mlm_prefix: str | None = "text_encoder.cls.",
) -> dict[str, Tensor]:
    """Our head's initial tensors (keys ``decoder.bert.*``, ``cls.*``) from a pre-trained text stack.

    ``state`` holds the stack under ``prefix`` (official pre-training checkpoints: ``text_encoder.bert.``) and
    optionally the MLM head under ``mlm_prefix`` (``text_encoder.cls.``). Embeddings are copied as they are, decoder
    layer ``i`` from the layer :func:`decoder_layer_sources` names, the MLM head onto ``cls`` except its
    ``predictions.decoder.{weight,bias}``: ours are tied to the word embeddings and ``predictions.bias`` (in the
    official pre-trained head they are tied the same way, so nothing is lost). Shapes are not checked here
    (cross-attention key/value of another width are the caller's to drop).
    """
    sources = decoder_layer_sources(num_layers, fusion_start, num_dec_layers)
    out: dict[str, Tensor] = {}
    emb = f"{prefix}embeddings."
    for key, value in state.items():
        if key.startswith(emb):
            out["decoder.bert." + key[len(prefix):]] = value
        elif mlm_prefix is not None and key.startswith(mlm_prefix):
            rest = key[len(mlm_prefix):]
            if rest not in _TIED:  # tied: they follow the word embeddings and predictions.bias
                out["cls." + rest] = value
    for i, src in enumerate(sources):
        head = f"{prefix}encoder.layer.{src}."
        layer = {k[len(head):]: v for k, v in state.items() if k.startswith(head)}
        if not layer:
            raise KeyError(f"the source has no {head}* keys (decoder layer {i} comes from layer {src})")
        out.update({f"decoder.bert.encoder.layer.{i}.{rest}": v for rest, v in layer.items()})
    return out


def convert_official_decoder(state: Mapping[str, Tensor], prefix: str = "text_decoder.") -> dict[str, Tensor]:
    """The official fine-tuned ``text_decoder.{bert,cls}.*`` tensors under our keys (``decoder.bert.*``, ``cls.*``).

    ``prefix`` is the official decoder's prefix in ``state`` (``text_decoder.`` in X²-VLM's VQA checkpoints).
    """
    mapping = {prefix + k[len("text_decoder."):]: v for k, v in OFFICIAL_PREFIXES.items()}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        for src, dst in mapping.items():
            if key.startswith(src):
                out[dst + key[len(src):]] = value
    return out
