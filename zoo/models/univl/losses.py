"""UniVL's similarity losses (official ``modules/until_module.py`` in microsoft/UniVL @8db88f3), on a square
similarity matrix ``(texts, videos)`` whose row ``i`` and column ``i`` are one aligned pair.

- :func:`mil_nce` (``MILNCELoss``, until_module.py:193-221): stage I pre-training and the stage II joint similarity
  with ``--sampled_use_mil`` (the published scripts, ``n_pair`` 3);
- :func:`max_margin_ranking` (``MaxMarginRankingLoss``, until_module.py:223-251): the same places without
  ``use_mil``, and retrieval fine-tuning (FT-Joint and FT-Align: ``main_task_retrieval.py`` never sets
  ``stage_two``, so ``modeling.py:183`` picks it); margin 0.1, hard-negative rate 0.5, negative weighting on
  (``main_pretrain.py:50-52``, ``main_task_retrieval.py:50-52``);
- :func:`cross_en` (``CrossEn``, until_module.py:182-191): the stage II cross-encoder similarity
  (``modeling.py:180`` / ``183``: ``loss_fct`` is ``CrossEn`` once ``stage_two`` is set).

With ``n_pair`` > 1 the rows are ``batch × n_pair`` clips, video-major (``view(-1, L)`` of ``(batch, n_pair, L)``,
``modeling.py:192``): clips ``b·n_pair .. b·n_pair + n_pair - 1`` come from video ``b``. None of the losses scales the
similarity by a temperature: pre-training with MIL-NCE uses the raw dot product of the mean-pooled states
(``modeling.py:386-389`` normalises only when ``use_mil`` is off).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cross_en", "max_margin_ranking", "mil_nce", "pair_blocks"]


def _check_square(sim: Tensor, n_pair: int) -> int:
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"expected a square (texts, videos) similarity matrix, got {tuple(sim.shape)}")
    if n_pair < 1 or sim.shape[0] % n_pair:
        raise ValueError(f"{sim.shape[0]} rows are not a whole number of videos of n_pair={n_pair} clips")
    return sim.shape[0] // n_pair


def pair_blocks(n: int, n_pair: int, device: torch.device | None = None) -> Tensor:
    """``(n, n)`` bool: rows ``i`` and ``j`` are clips of the same video (the official
    ``np.kron(np.eye(batch_size), np.ones((n_pair, n_pair)))``)."""
    video = torch.arange(n, device=device) // n_pair
    return video[:, None] == video[None, :]


def cross_en(sim: Tensor) -> Tensor:
    """``CrossEn``: the mean over rows of ``-log softmax(sim[i])[i]`` — text ``i`` against every video, its own
    video the target; one direction only (until_module.py:186-191)."""
    _check_square(sim, 1)
    return -F.log_softmax(sim.float(), dim=-1).diagonal().mean()


def mil_nce(sim: Tensor, n_pair: int = 1) -> Tensor:
    """``MILNCELoss`` over ``batch × n_pair`` clips (until_module.py:201-221).

    For row ``i`` the candidates are column ``i`` (every text against video ``i``) and row ``i`` without the columns
    of ``i``'s own video (text ``i`` against the other videos); the positives are the texts of ``i``'s own video in
    column ``i``. The loss of row ``i`` is ``logsumexp(candidates) - logsumexp(positives)``, averaged over one row per
    video: its middle clip, ``b·n_pair + n_pair // 2``. With ``n_pair`` 1 this is the symmetric InfoNCE of the
    diagonal (text→video and video→text terms in one softmax).
    """
    batch = _check_square(sim, n_pair)
    sim = sim.float()
    same = pair_blocks(sim.shape[0], n_pair, sim.device)
    from_video = sim.t()  # row i: every text against video i
    from_text = sim.masked_fill(same, float("-inf"))  # row i: text i against the other videos
    candidates = torch.logsumexp(torch.cat([from_video, from_text], dim=-1), dim=-1)
    positives = torch.logsumexp(from_video.masked_fill(~same, float("-inf")), dim=-1)
    anchors = torch.arange(batch, device=sim.device) * n_pair + n_pair // 2
    return (candidates - positives)[anchors].mean()


def max_margin_ranking(sim: Tensor, margin: float = 0.1, n_pair: int = 1, hard_negative_rate: float = 0.5,
                       negative_weighting: bool = True) -> Tensor:
    """``MaxMarginRankingLoss`` (until_module.py:245-251): the mean over every entry ``(i, j)`` — the diagonal
    included, which adds ``2·margin`` per diagonal entry as in the official code — of
    ``relu(margin + sim[i, j] - sim[i, i]) + relu(margin + sim[i, j] - sim[j, j])``.

    With ``negative_weighting``, ``n_pair`` > 1 and more than one video, each entry is weighted (the official
    ``mm_mask``, until_module.py:238-243): ``batch · rate`` between clips of one video (hard negatives) and
    ``batch · (1 - rate) / (batch - 1)`` between videos, so that the hard negatives carry ``rate`` of the weight
    of a row and the entries average to 1.
    """
    batch = _check_square(sim, n_pair)
    sim = sim.float()
    d = sim.diagonal()
    loss = F.relu(margin + sim - d[:, None]) + F.relu(margin + sim - d[None, :])
    if negative_weighting and n_pair > 1 and batch > 1:
        same = pair_blocks(sim.shape[0], n_pair, sim.device)
        loss = loss * torch.where(same, batch * hard_negative_rate,
                                  batch * (1.0 - hard_negative_rate) / (batch - 1))
    return loss.mean()
