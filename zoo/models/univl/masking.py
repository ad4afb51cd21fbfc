"""Stage II pre-training inputs: conditioned masked language model (CMLM), conditioned masked frame model (CMFM) and
the video-modality enhancement, as the official HowTo100M data loader builds them
(``dataloaders/dataloader_howto100m.py`` in microsoft/UniVL @8db88f3).

- CMLM (``_mask_tokens``, :103-125): every token of the unpadded ``[CLS] … [SEP]`` row except the first and the last
  draws ``p = random()``; below 0.15 it is predicted (its label is its own id) and, with ``p / 0.15``, becomes
  [MASK] below 0.8, a uniformly random vocabulary id below 0.9 (``random.choice`` over the vocabulary, one more
  draw), else stays. Every other position — the two ends, unpicked tokens, padding — has label -1, which the MLM
  loss ignores (``CrossEntropyLoss(ignore_index=-1)``, modeling.py:165).
- The decoder's teacher-forced input ``[CLS] caption`` goes through the same masking (:197-200; its labels are
  dropped); the targets ``caption [SEP]`` stay whole.
- CMFM (``_get_video``, :313-329): every real frame (never a padded one) draws ``random()``; below 0.15 its features
  become zeros and its label is its frame index, otherwise -1 (and -1 at padding). The MFM loss reads only the
  positions whose label is not -1.
- Video-modality enhancement (``--pretrain_enhance_vmodal``, :354-358 and :166-167): one ``random()`` per example
  (all its ``n_pair`` clips) before the text; below 0.15 the text input becomes ``[CLS] [SEP]`` for every encoder
  pass — not [MASK] tokens — so the caption must come from the video alone, and CMLM has nothing to predict. The
  decoder's caption is not emptied.

Randomness: the same calls on a ``random.Random`` as the official loader makes on Python's ``random``, in its order
(per example: the enhancement draw, then per clip the text and the caption input, then per clip the frames), so a
generator in the same state gives the official output. ``rng`` may also be an int seed, a ``torch.Generator`` (one
seed drawn from it per call) or None (the global ``random`` module, as the official loader).

Written here on token ids: the official code masks token strings and converts them afterwards; its random token is
``random.choice(list(vocab.items()))``, whose index is the id of a vocabulary read in file order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from zoo.data.masking import _python_rng

__all__ = ["IGNORE_LABEL", "enhance_video_modality", "mask_frames", "mask_tokens", "stage_two_masking"]

#: the label of a position that is not predicted (official -1 for tokens and frames)
IGNORE_LABEL = -1


def mask_tokens(ids: Sequence[int], rng: Any, *, vocab_size: int, mask_token_id: int,
                mask_prob: float = 0.15) -> tuple[list[int], list[int]]:
    """One unpadded row → ``(masked ids, labels)`` (official ``_mask_tokens``; see the module docstring)."""
    ids = [int(i) for i in ids]
    masked, labels = list(ids), [IGNORE_LABEL] * len(ids)
    for pos in range(1, len(ids) - 1):
        p = rng.random()
        if p >= mask_prob:
            continue
        p /= mask_prob
        if p < 0.8:
            masked[pos] = mask_token_id
        elif p < 0.9:
            masked[pos] = rng.choice(range(vocab_size))
        labels[pos] = ids[pos]
    return masked, labels


def mask_frames(length: int, max_frames: int, rng: Any, mask_prob: float = 0.15) -> list[int]:
    """Frame labels of one clip with ``length`` real frames padded to ``max_frames``: the frame index where it is
    masked, -1 elsewhere; one draw per real frame (official ``_get_video`` frame masking)."""
    return [j if j < length and rng.random() < mask_prob else IGNORE_LABEL for j in range(max_frames)]


def enhance_video_modality(input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Rows ``(N, L)`` emptied to their first and last real tokens (``[CLS] [SEP]``), the rest padding (id 0, as the
    official loader pads)."""
    ids, mask = torch.zeros_like(input_ids), torch.zeros_like(attention_mask)
    lengths = attention_mask.sum(-1)
    for row, n in enumerate(lengths.tolist()):
        keep = [0, n - 1][: min(n, 2)]
        ids[row, : len(keep)] = input_ids[row, keep]
        mask[row, : len(keep)] = 1
    return ids, mask


def _rows(t: Tensor, trailing: int) -> tuple[Tensor, tuple[int, ...]]:
    """``t`` as ``(examples, clips, *rest)``: a batch without a clip axis is one clip per example."""
    lead = t.shape[: t.dim() - trailing]
    if len(lead) == 1:
        return t.unsqueeze(1), tuple(lead)
    if len(lead) == 2:
        return t, tuple(lead)
    raise ValueError(f"expected (batch, ...) or (batch, n_pair, ...); got {tuple(t.shape)}")


def stage_two_masking(batch: Mapping[str, Tensor], rng: Any = None, *, vocab_size: int, mask_token_id: int,
                      mask_prob: float = 0.15, enhance_vmodal: bool = False,
                      enhance_prob: float = 0.15) -> dict[str, Tensor]:
    """The stage II inputs of a batch, example by example as the official loader draws them.

    ``batch``: ``input_ids`` / ``attention_mask`` ``(B, [n_pair,] L)``, ``input_caption_ids`` / ``decoder_mask``
    ``(B, [n_pair,] Lc)``, ``video`` ``(B, [n_pair,] T, D)``, ``video_mask`` ``(B, [n_pair,] T)``. Returns a copy of
    ``batch`` with ``masked_input_ids`` and ``token_labels`` (CMLM), ``input_caption_ids`` masked, ``masked_video`` and
    ``video_labels_index`` (CMFM); with ``enhance_vmodal``, the emptied examples' ``input_ids`` / ``attention_mask``
    (also under ``token_type_ids`` if given: zeros beyond the two tokens, which are type 0 anyway).
    """
    rng = _python_rng(rng)
    ids, shape = _rows(batch["input_ids"], 1)
    mask, _ = _rows(batch["attention_mask"], 1)
    caption, _ = _rows(batch["input_caption_ids"], 1)
    caption_mask, _ = _rows(batch["decoder_mask"], 1)
    video, _ = _rows(batch["video"], 2)
    video_mask, _ = _rows(batch["video_mask"], 1)
    ids, mask, caption = ids.clone(), mask.clone(), caption.clone()
    masked_ids = ids.clone()
    token_labels = torch.full_like(ids, IGNORE_LABEL)
    masked_video = video.clone()
    frame_labels = torch.full(video_mask.shape, IGNORE_LABEL, dtype=torch.long)
    for b in range(ids.shape[0]):
        if enhance_vmodal and rng.random() < enhance_prob:
            ids[b], mask[b] = enhance_video_modality(ids[b], mask[b])
            masked_ids[b] = ids[b]
        for c in range(ids.shape[1]):
            n = int(mask[b, c].sum())
            row, labels = mask_tokens(ids[b, c, :n].tolist(), rng, vocab_size=vocab_size,
                                      mask_token_id=mask_token_id, mask_prob=mask_prob)
            masked_ids[b, c, :n] = torch.tensor(row, dtype=ids.dtype)
            token_labels[b, c, :n] = torch.tensor(labels, dtype=torch.long)
            n = int(caption_mask[b, c].sum())
            row, _ = mask_tokens(caption[b, c, :n].tolist(), rng, vocab_size=vocab_size,
                                 mask_token_id=mask_token_id, mask_prob=mask_prob)
            caption[b, c, :n] = torch.tensor(row, dtype=caption.dtype)
        for c in range(ids.shape[1]):
            labels = mask_frames(int(video_mask[b, c].sum()), video_mask.shape[-1], rng, mask_prob)
            frame_labels[b, c] = torch.tensor(labels, dtype=torch.long)
    masked_video[frame_labels != IGNORE_LABEL] = 0
    out = dict(batch)
    out.update(input_ids=ids.reshape(shape + ids.shape[-1:]), attention_mask=mask.reshape(shape + mask.shape[-1:]),
               masked_input_ids=masked_ids.reshape(shape + ids.shape[-1:]),
               token_labels=token_labels.reshape(shape + ids.shape[-1:]),
               input_caption_ids=caption.reshape(shape + caption.shape[-1:]),
               masked_video=masked_video.reshape(shape + video.shape[-2:]),
               video_labels_index=frame_labels.reshape(shape + video_mask.shape[-1:]))
    if "token_type_ids" in batch:
        types, _ = _rows(batch["token_type_ids"], 1)
        out["token_type_ids"] = (types * mask).reshape(shape + mask.shape[-1:])
    return out
