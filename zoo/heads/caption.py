"""X²-VLM captioning ("MLM as generation"): training inputs, the label-smoothed loss, and the ``caption`` head.

Official facts (zengyan-97/X2-VLM: dataset/captioning_dataset.py ``coco_karpathy_train_mlm``,
models/model_generation.py ``XVLMForMLMCaptioning``, configs/finetune/coco_captioning_large.yaml), following UniLM's
s2s-ft "pseudo masking":

- text = ``[CLS] + prompt + caption + [SEP]`` cut to ``max_tokens`` (40); the prompt ``'a picture of'`` and ``[CLS]``
  are never masked; ``n = min(max_masks, max(1, round((len(text) - len(prompt)) * mask_prob)))`` positions are chosen
  as BERT pre-training does (shuffled candidates, whole words, skip-grams of 2..3 with probability 0.2);
- ``fg_free`` (the COCO config's ``apply_FG_free: True``, after "An Investigation of Suitability of Pre-Trained Language
  Models for Dialogue Generation"): a ``[MASK]`` is *inserted before* each chosen token, with the same position id; the
  real tokens stay. The per-example ``(L, L)`` mask (``L = max_tokens + max_masks``) is lower-triangular with the
  ``[MASK]`` columns removed except each ``[MASK]``'s own: every token sees the real tokens before it, a ``[MASK]``
  also itself — exactly what a ``[MASK]`` appended after a prefix sees at generation time. Without ``fg_free`` the
  chosen tokens are replaced in place (80 % ``[MASK]``, 10 % random, 10 % kept) under a plain causal mask;
- targets are the chosen tokens (``masked_ids``, padded with ``[CLS]``, the loss's ignore index), ``masked_weight``
  1 for real targets;
- loss: ``KL(q || softmax(logits))`` per target, ``q`` = 1 - ε on the target, ``ε / (V - 2)`` on every other token but
  the ignore index (0 there, and q = 0 for ignored targets), then ``Σ w·loss / (Σ w + 1e-5)``.

Reused: :class:`zoo.heads.mlm.MLMHead` (the ``caption`` head *is* an MLM head, same keys ``cls.predictions.*``, so the
official ``text_encoder.cls.*`` loads into either), ``split_bert``'s ``mask=`` / ``position_ids=`` arguments, and
:mod:`zoo.generation` for decoding (with a key/value cache by default). Hand-written: the rest (written from the
facts above; the loss in closed form rather than by materialising ``q``, which is equal and needs no ``(N, V)`` target
tensor).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from zoo.data.masking import select_spans
from zoo.generation import BeamSearchOutput, generate_mlm_captions
from zoo.heads.mlm import MLMHead
from zoo.registry import HEADS
from zoo.spec import ConfigError

__all__ = [
    "CaptionHead",
    "build_caption_inputs",
    "caption_inputs_from_text",
    "caption_logits",
    "caption_loss",
    "choose_masked_positions",
    "collate_caption_inputs",
    "label_smoothing_loss",
    "masked_normalize",
    "prompt_token_ids",
]

CAPTION_KEYS = ("input_ids_masked", "attention_mask", "position_ids", "masked_pos", "masked_ids", "masked_weight")


# ---------------------------------------------------------------------------------------------------------------------
# loss
# ---------------------------------------------------------------------------------------------------------------------
def label_smoothing_loss(logits: Tensor, target: Tensor, smoothing: float, ignore_index: int) -> Tensor:
    """Per-target ``KL(q || p)`` of the official ``LabelSmoothingLoss`` (``(..., V)`` logits, ``(...)`` targets).

    ``q`` puts ``1 - smoothing`` on the target, ``smoothing / (V - 2)`` on the other tokens except ``ignore_index``
    (which gets 0); targets equal to ``ignore_index`` have ``q = 0`` and loss 0. Computed in float32, in closed form.
    """
    vocab = logits.shape[-1]
    if vocab <= 2:
        raise ValueError(f"label smoothing spreads over vocab - 2 tokens; vocab={vocab}")
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing={smoothing} must lie in [0, 1]")
    logp = torch.log_softmax(logits.float(), dim=-1)
    target = target.long()
    conf, other = 1.0 - smoothing, smoothing / (vocab - 2)
    lp_target = logp.gather(-1, target[..., None])[..., 0]
    lp_rest = logp.sum(-1) - lp_target - logp[..., ignore_index]  # the V - 2 smoothed tokens
    entropy = (conf * math.log(conf) if conf > 0 else 0.0) + (smoothing * math.log(other) if other > 0 else 0.0)
    loss = entropy - conf * lp_target - other * lp_rest
    return loss.masked_fill(target == ignore_index, 0.0)


def masked_normalize(loss: Tensor, weight: Tensor) -> Tensor:
    """``Σ loss·w / (Σ w + 1e-5)`` (the official ``loss_mask_and_normalize``)."""
    weight = weight.to(loss.dtype)
    return (loss * weight / (weight.sum() + 1e-5)).sum()


def caption_loss(
    logits: Tensor, masked_ids: Tensor, masked_weight: Tensor, *, label_smoothing: float = 0.1, ignore_index: int = 101
) -> Tensor:
    """The official captioning loss: label-smoothed KL per masked target, weighted mean by ``masked_weight``."""
    return masked_normalize(label_smoothing_loss(logits, masked_ids, label_smoothing, ignore_index),
                            masked_weight.float())


# ---------------------------------------------------------------------------------------------------------------------
# training inputs (the official collator, per example)
# ---------------------------------------------------------------------------------------------------------------------
def choose_masked_positions(
    num_tokens: int,
    num_fixed: int,
    *,
    mask_prob: float,
    max_masks: int,
    is_subword: Sequence[bool] | None = None,
    skipgram_prb: float = 0.2,
    skipgram_size: int = 3,
    rng: random.Random | None = None,
) -> list[int]:
    """Positions to predict, as the official ``TextMaskingGenerator`` chooses them (sorted unless cut to ``n``).

    Args:
        num_tokens: length of ``[CLS] + prompt + caption + [SEP]``.
        num_fixed: leading positions never chosen (``[CLS]`` + prompt).
        is_subword: per position, True for a word-piece continuation (``##``): spans grow to whole words. None = no
            whole-word expansion (the official ``mask_whole_word=False``).
    The number ``n = min(max_masks, max(1, round((num_tokens - num_fixed + 1) * mask_prob)))`` counts ``[CLS]`` as
    the official does (its prompt count excludes ``[CLS]``).
    """
    rng = rng if rng is not None else random.Random()
    n_pred = min(max_masks, max(1, round((num_tokens - num_fixed + 1) * mask_prob)))
    cand = list(range(num_fixed, num_tokens))
    if not cand:
        return []
    chosen = select_spans(cand, n_pred, rng, length=num_tokens, allowed=lambda p: p >= num_fixed,
                          is_subword=is_subword.__getitem__ if is_subword is not None else None,
                          skipgram_prb=skipgram_prb, skipgram_size=skipgram_size)
    positions = sorted(chosen)
    if len(positions) > n_pred:
        rng.shuffle(positions)
        positions = positions[:n_pred]
    return positions


def build_caption_inputs(
    caption_ids: Sequence[int],
    prompt_ids: Sequence[int],
    *,
    sep_token_id: int = 102,
    mask_token_id: int = 103,
    pad_token_id: int = 0,
    ignore_index: int = 101,
    max_tokens: int = 40,
    max_masks: int = 18,
    mask_prob: float = 0.6,
    skipgram_prb: float = 0.2,
    skipgram_size: int = 3,
    is_subword: Sequence[bool] | None = None,
    fg_free: bool = True,
    vocab_size: int | None = None,
    rng: random.Random | None = None,
) -> dict[str, Tensor]:
    """One training example of the official captioning collator.

    Args:
        caption_ids: the caption's token ids (no special tokens).
        prompt_ids: ``[CLS] + prompt tokens`` (the same list generation starts from, :func:`prompt_token_ids`).
        ignore_index: pads ``masked_ids`` (the official uses ``[CLS]``, the loss's ignore index).
        is_subword: per caption token, True for ``##`` continuations (whole-word masking); None = off.
        fg_free: insert ``[MASK]`` before each target (official COCO config) rather than replace in place.
        vocab_size: needed without ``fg_free`` (10 % of targets become random tokens).
        rng: a ``random.Random`` (seed it for reproducible masks).
    Returns:
        ``input_ids_masked (L,)``, ``attention_mask (L, L)`` (1 = row may attend to column), ``position_ids (L,)``,
        ``masked_pos``, ``masked_ids``, ``masked_weight`` ``(max_masks,)``; ``L = max_tokens (+ max_masks if
        fg_free)``.
    """
    rng = rng if rng is not None else random.Random()
    if not len(caption_ids):
        raise ValueError("empty caption")
    if not fg_free and vocab_size is None:
        raise ValueError("fg_free=False replaces 10% of the targets by random tokens: pass vocab_size")
    tokens = (list(prompt_ids) + list(caption_ids) + [sep_token_id])[:max_tokens]
    flags = None
    if is_subword is not None:
        if len(is_subword) != len(caption_ids):
            raise ValueError(f"is_subword has {len(is_subword)} entries for {len(caption_ids)} caption tokens")
        flags = ([False] * len(prompt_ids) + [bool(f) for f in is_subword] + [False])[:max_tokens]
    chosen = choose_masked_positions(
        len(tokens), len(prompt_ids), mask_prob=mask_prob, max_masks=max_masks, is_subword=flags,
        skipgram_prb=skipgram_prb,
        skipgram_size=skipgram_size, rng=rng,
    )
    # the official generator also draws the 80/10/10 replacement (FG-free discards it)
    replaced = list(tokens)
    for p in chosen:
        if rng.random() < 0.8:
            replaced[p] = mask_token_id
        elif rng.random() < 0.5 and vocab_size is not None:
            replaced[p] = rng.randint(0, vocab_size - 1)

    if fg_free:
        length = max_tokens + max_masks
        ids, positions, masked_pos = [], [], []
        chosen_set = set(chosen)
        for i, tok in enumerate(tokens):
            if i in chosen_set:
                masked_pos.append(len(ids))
                ids += [mask_token_id, tok]
                positions += [i, i]
            else:
                ids.append(tok)
                positions.append(i)
        masked_ids = [tokens[i] for i in sorted(chosen)]
        att = torch.tril(torch.ones(length, length, dtype=torch.long))
        for p in masked_pos:
            att[:, p] = 0
            att[p, p] = 1
        positions += list(range(len(tokens), len(tokens) + length - len(positions)))
    else:
        length = max_tokens
        ids, positions, masked_pos = replaced, list(range(length)), list(chosen)
        masked_ids = [tokens[p] for p in chosen]
        att = torch.tril(torch.ones(length, length, dtype=torch.long))
    n = len(masked_pos)
    ids = ids + [pad_token_id] * (length - len(ids))
    return {
        "input_ids_masked": torch.tensor(ids, dtype=torch.long),
        "attention_mask": att,
        "position_ids": torch.tensor(positions, dtype=torch.long),
        "masked_pos": torch.tensor(masked_pos + [0] * (max_masks - n), dtype=torch.long),
        "masked_ids": torch.tensor(masked_ids + [ignore_index] * (max_masks - n), dtype=torch.long),
        "masked_weight": torch.tensor([1] * n + [0] * (max_masks - n), dtype=torch.long),
    }


def collate_caption_inputs(examples: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Stack examples of :func:`build_caption_inputs` (images, if present, are stacked too)."""
    keys = [k for k in examples[0] if k in CAPTION_KEYS or k == "images"]
    return {k: torch.stack([ex[k] for ex in examples]) for k in keys}


def prompt_token_ids(tokenizer: Any, prompt: str = "a picture of ") -> list[int]:
    """``[CLS] + tokenize(prompt)`` as ids: the prefix of training texts and of generation."""
    return tokenizer.convert_tokens_to_ids([tokenizer.cls_token] + tokenizer.tokenize(prompt))


def caption_inputs_from_text(
    tokenizer: Any, caption: str, prompt: str = "a picture of ", *, mask_whole_word: bool = True, **kwargs: Any
) -> dict[str, Tensor]:
    """:func:`build_caption_inputs` from text with a BERT word-piece tokenizer (special ids taken from it)."""
    pieces = tokenizer.tokenize(caption)
    ids = tokenizer.convert_tokens_to_ids(pieces)
    kwargs.setdefault("sep_token_id", tokenizer.sep_token_id)
    kwargs.setdefault("mask_token_id", tokenizer.mask_token_id)
    kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    kwargs.setdefault("ignore_index", tokenizer.cls_token_id)
    kwargs.setdefault("vocab_size", tokenizer.vocab_size)
    subword = [p.startswith("##") for p in pieces] if mask_whole_word else None
    return build_caption_inputs(ids, prompt_token_ids(tokenizer, prompt.strip()), is_subword=subword, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# forward through the text stack
# ---------------------------------------------------------------------------------------------------------------------
def caption_logits(
    text: nn.Module,
    head: MLMHead,
    vision_tokens: Tensor,
    vision_mask: Tensor | None,
    batch: Mapping[str, Tensor],
) -> Tensor:
    """``(B, max_masks, V)`` logits at the masked positions: the whole stack (``mode="full"``) with the per-example
    mask and position ids, cross-attending to the image (official ``text_encoder(..., masked_pos=...)``)."""
    states = text(
        batch["input_ids_masked"], None, mode="full", vision_tokens=vision_tokens, vision_mask=vision_mask,
        mask=batch["attention_mask"], position_ids=batch["position_ids"],
    ).tokens
    return head.logits(states, batch["masked_pos"])


# ---------------------------------------------------------------------------------------------------------------------
# head
# ---------------------------------------------------------------------------------------------------------------------
@HEADS.register("caption")
class CaptionHead(MLMHead):
    """The MLM head with X²-VLM's captioning loss and decoding defaults (keys as ``mlm``: ``cls.predictions.*``).

    Args:
        hidden_size, vocab_size, layer_norm_eps, hidden_act, initializer_range: as :class:`~zoo.heads.mlm.MLMHead`.
        label_smoothing: ε of the loss (official 0.1).
        ignore_index: target id that pads ``masked_ids`` and gets no smoothing mass (official: ``[CLS]`` = 101).
        mask_token_id, eos_token_id: ``[MASK]`` (103) and ``[SEP]`` (102) of BERT uncased.
        num_beams, min_length, max_length, length_penalty, ngram_size: decoding defaults (official 3, 5, 50, 0, 3;
            ``ngram_size=0`` turns n-gram blocking off).
    """

    def __init__(
        self,
        hidden_size: int = 768,
        vocab_size: int = 30522,
        layer_norm_eps: float = 1e-12,
        hidden_act: str = "gelu",
        label_smoothing: float = 0.1,
        ignore_index: int = 101,
        mask_token_id: int = 103,
        eos_token_id: int = 102,
        num_beams: int = 3,
        min_length: int = 5,
        max_length: int = 50,
        length_penalty: float = 0.0,
        ngram_size: int = 3,
        initializer_range: float = 0.02,
    ):
        super().__init__(hidden_size, vocab_size, layer_norm_eps, hidden_act, initializer_range)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ConfigError(f"label_smoothing={label_smoothing} must lie in [0, 1]")
        if vocab_size <= 2:
            raise ConfigError(f"vocab_size={vocab_size}: label smoothing spreads over vocab_size - 2 tokens")
        for name, value in (("ignore_index", ignore_index), ("mask_token_id", mask_token_id),
                            ("eos_token_id", eos_token_id)):
            if not 0 <= value < vocab_size:
                raise ConfigError(f"{name}={value} is outside the vocabulary (0..{vocab_size - 1})")
        if num_beams < 1 or max_length < 1 or min_length < 0:
            raise ConfigError(f"need num_beams >= 1, max_length >= 1, min_length >= 0 (got {num_beams}, "
                              f"{max_length}, {min_length})")
        if ngram_size == 1 or ngram_size < 0:
            raise ConfigError(f"ngram_size={ngram_size}: use 0 (no blocking) or >= 2")
        self.label_smoothing = label_smoothing
        self.ignore_index = ignore_index
        self.mask_token_id, self.eos_token_id = mask_token_id, eos_token_id
        self.generation = {"num_beams": num_beams, "min_length": min_length, "max_length": max_length,
                           "length_penalty": length_penalty, "ngram_size": ngram_size}

    def forward(
        self,
        states: Tensor,
        labels: Tensor | None = None,
        masked_pos: Tensor | None = None,
        weights: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """``{"logits"}`` (at ``masked_pos`` when given) and, with ``labels`` (``masked_ids``), the label-smoothed
        ``"loss"`` weighted by ``weights`` (``masked_weight``; default: labels != ignore_index)."""
        logits = self.logits(states, masked_pos)
        out = {"logits": logits}
        if labels is not None:
            if weights is None:
                weights = labels != self.ignore_index
            out["loss"] = caption_loss(logits, labels, weights, label_smoothing=self.label_smoothing,
                                       ignore_index=self.ignore_index)
        return out

    def loss(self, text: nn.Module, vision_tokens: Tensor, vision_mask: Tensor | None,
             batch: Mapping[str, Tensor]) -> Tensor:
        """The official ``XVLMForMLMCaptioning.forward`` given image tokens and a collated batch."""
        logits = caption_logits(text, self, vision_tokens, vision_mask, batch)
        return caption_loss(logits, batch["masked_ids"], batch["masked_weight"],
                            label_smoothing=self.label_smoothing, ignore_index=self.ignore_index)

    @torch.no_grad()
    def generate(self, text: nn.Module, vision_tokens: Tensor, vision_mask: Tensor | None,
                 prompt_ids: Sequence[int] | Tensor, *, use_cache: bool = True, **overrides: Any) -> BeamSearchOutput:
        """Captions (token ids, prompt and EOS excluded) by beam search; ``overrides`` replace the decoding defaults
        (``num_beams``, ``min_length``, ``max_length``, ``length_penalty``, ``ngram_size``). ``use_cache=False``
        reruns the whole prefix every step instead of keeping the earlier positions' keys/values (same captions)."""
        unknown = set(overrides) - set(self.generation)
        if unknown:
            raise TypeError(f"unknown decoding options {sorted(unknown)}; expected {sorted(self.generation)}")
        opts = {**self.generation, **overrides}
        ngram = opts.pop("ngram_size")
        return generate_mlm_captions(
            text, self, vision_tokens, vision_mask, prompt_ids, mask_token_id=self.mask_token_id,
            eos_token_id=self.eos_token_id, forbid_duplicate_ngrams=ngram > 0, ngram_size=max(ngram, 2),
            use_cache=use_cache, **opts,
        )
