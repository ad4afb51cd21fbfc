"""Image–text and video–text retrieval evaluation: recall@K, median and mean rank, and the two-stage (ITC → ITM)
re-ranking of X²-VLM.

Facts from the official code (Retrieval.py in zengyan-97/X2-VLM: ``evaluation`` and ``itm_eval``):

- Re-ranking: for each image, the ``k_test`` texts with the highest ITC similarity are scored again by the ITM head
  (the raw logit of class 1, not a probability), every other entry of the row is -100; the same for each text over
  images. ``k_test`` is 128 in the shipped fine-tuning configs.
- Recall: text retrieval (image → text) ranks all texts for each image and takes the best rank among that image's
  captions; image retrieval (text → image) ranks all images for each text. R@1/5/10 in percent, ``txt_r_mean`` /
  ``img_r_mean`` the mean of the three, ``r_mean`` the mean of the two means.

Hand-written here (the official loops over numpy rows one at a time and is single-purpose): a vectorised, chunked rank
computation that works on any device, and a re-ranking loop that batches (query, candidate) pairs for a model-supplied
ITM callable. Ties are broken deterministically: among equal scores the candidate with the larger index ranks first,
which is what the official ``np.argsort(score)[::-1]`` gives with a stable sort (numpy's default sort does not promise
an order for ties, so the official result can differ only on exact ties).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["rerank_scores", "retrieval_ranks", "retrieval_recall"]

_KS = (1, 5, 10)


def _as_tensor(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(x)


def _mapping_to_list(m: Any, n: int, what: str) -> list:
    """``txt2img`` / ``img2txt`` as a list indexed 0..n-1 (accepts a sequence, a tensor or a dict keyed by index)."""
    if isinstance(m, Tensor):
        m = m.tolist()
    if isinstance(m, Mapping):
        missing = [i for i in range(n) if i not in m]
        if missing:
            raise ValueError(f"{what} has no entry for index {missing[0]} (of {n})")
        return [m[i] for i in range(n)]
    m = list(m)
    if len(m) != n:
        raise ValueError(f"{what} has {len(m)} entries but the score matrix has {n} rows")
    return m


def retrieval_ranks(scores: Tensor, query: Tensor, target: Tensor, chunk: int = 1024) -> Tensor:
    """0-based rank of ``scores[query[p], target[p]]`` within row ``query[p]`` for every pair ``p``.

    rank = #(entries strictly greater) + #(entries equal with a larger column index). Rows are processed ``chunk``
    pairs at a time, on the device of ``scores``.
    """
    query = query.to(scores.device, torch.long)
    target = target.to(scores.device, torch.long)
    cols = torch.arange(scores.shape[1], device=scores.device)
    out = []
    for s in range(0, query.numel(), chunk):
        q, t = query[s : s + chunk], target[s : s + chunk]
        rows = scores[q]  # (C, N)
        val = rows.gather(1, t[:, None])
        greater = (rows > val).sum(1)
        tied_after = ((rows == val) & (cols[None] > t[:, None])).sum(1)
        out.append(greater + tied_after)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=scores.device)


def retrieval_recall(score_i2t: Any, score_t2i: Any, txt2img: Any, img2txt: Any, chunk: int = 1024) -> dict[str, float]:
    """Recall@1/5/10 (percent) in both directions, as the official ``itm_eval``.

    Args:
        score_i2t: (N_images, N_texts) scores (tensor or array).
        score_t2i: (N_texts, N_images) scores.
        txt2img: for each text, the index of its image (sequence, tensor or dict keyed by text index).
        img2txt: for each image, the indices of its captions (sequence of sequences or dict keyed by image index).
            An image without captions counts as a miss, as in the official code.

    Returns ``txt_r1, txt_r5, txt_r10, txt_r_mean, img_r1, img_r5, img_r10, img_r_mean, r_mean`` and the median and
    mean rank of each direction ``txt_mdr, txt_mnr, img_mdr, img_mnr`` (1-based, as video retrieval reports them:
    UniVL's ``metrics.py``, MdR ``np.median(ranks) + 1`` — the mean of the two middle ranks for an even count — and
    MnR ``np.mean(ranks) + 1``; an image without captions counts as rank ``N_texts + 1``) as floats.
    """
    s_i2t, s_t2i = _as_tensor(score_i2t), _as_tensor(score_t2i)
    if s_i2t.dim() != 2 or s_t2i.dim() != 2 or s_i2t.shape != s_t2i.shape[::-1]:
        raise ValueError(f"score_i2t {tuple(s_i2t.shape)} and score_t2i {tuple(s_t2i.shape)} must be (I, T) and (T, I)")
    n_img, n_txt = s_i2t.shape
    t2i = _mapping_to_list(txt2img, n_txt, "txt2img")
    i2t = _mapping_to_list(img2txt, n_img, "img2txt")

    # image -> text: best rank over each image's captions
    q = [i for i, caps in enumerate(i2t) for _ in caps]
    t = [int(c) for caps in i2t for c in caps]
    dev = s_i2t.device
    pair_ranks = retrieval_ranks(s_i2t, torch.tensor(q, dtype=torch.long), torch.tensor(t, dtype=torch.long), chunk)
    best = torch.full((n_img,), torch.iinfo(torch.long).max, dtype=torch.long, device=dev)
    if pair_ranks.numel():
        best = best.scatter_reduce(0, torch.tensor(q, dtype=torch.long, device=dev), pair_ranks, "amin")

    # text -> image: the rank of the text's image
    img_ranks = retrieval_ranks(
        s_t2i, torch.arange(n_txt), torch.tensor([int(x) for x in t2i], dtype=torch.long), chunk
    )

    def recall(ranks: Tensor, k: int) -> float:
        return 100.0 * (ranks < k).sum().item() / max(ranks.numel(), 1)

    out: dict[str, float] = {}
    for prefix, ranks in (("txt", best), ("img", img_ranks)):
        for k in _KS:
            out[f"{prefix}_r{k}"] = recall(ranks, k)
        out[f"{prefix}_r_mean"] = sum(out[f"{prefix}_r{k}"] for k in _KS) / len(_KS)
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    for prefix, ranks, n in (("txt", best, n_txt), ("img", img_ranks, n_img)):
        one_based = ranks.clamp(max=n).double() + 1  # an image without captions ranks after every text
        out[f"{prefix}_mdr"] = one_based.quantile(0.5).item() if one_based.numel() else float("nan")
        out[f"{prefix}_mnr"] = one_based.mean().item() if one_based.numel() else float("nan")
    return out


def _shard_rows(n: int, shard: tuple[int, int] | None) -> range:
    if shard is None:
        return range(n)
    rank, world = shard
    if not 0 <= rank < world:
        raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard}")
    step = n // world + 1  # the official split
    return range(min(rank * step, n), min(rank * step + step, n))


def _rerank_one_direction(
    sims: Tensor,
    k: int,
    score_pairs: Callable[[Tensor, Tensor], Tensor],
    batch_size: int,
    fill: float,
    rows: range,
) -> Tensor:
    out = torch.full(sims.shape, fill, dtype=torch.float32, device=sims.device)
    k = min(k, sims.shape[1])
    if k <= 0 or len(rows) == 0:
        return out
    row_idx = torch.arange(rows.start, rows.stop, device=sims.device)
    top = sims[row_idx].topk(k, dim=1).indices  # (R, k)
    query = row_idx[:, None].expand(-1, k).reshape(-1)
    cand = top.reshape(-1)
    for s in range(0, query.numel(), batch_size):
        q, c = query[s : s + batch_size], cand[s : s + batch_size]
        scores = score_pairs(q, c)
        out[q, c] = scores.reshape(-1).to(device=out.device, dtype=out.dtype)
    return out


@torch.no_grad()
def rerank_scores(
    sim_i2t: Tensor,
    sim_t2i: Tensor | None,
    k: int,
    itm_score_fn: Callable[[Tensor, Tensor], Tensor],
    batch_size: int = 256,
    fill: float = -100.0,
    shard: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """The official two-stage scoring: ITC similarities choose ``k`` candidates per query, ITM scores them.

    Args:
        sim_i2t: (N_images, N_texts) ITC similarities.
        sim_t2i: (N_texts, N_images); ``None`` means ``sim_i2t.t()`` (as in the official code).
        k: candidates per query (``k_test``); clamped to the number of candidates.
        itm_score_fn: ``fn(image_idx, text_idx) -> scores``: 1-D long tensors of equal length (on the device of the
            similarity matrix) naming aligned (image, text) pairs; returns one score per pair, the ITM positive logit
            in X²-VLM. It is called with at most ``batch_size`` pairs at a time, in both directions.
        fill: the value of every entry not re-scored (-100 as official).
        shard: ``(rank, world_size)``: score only this process's rows (the official split, ``N // world + 1`` rows
            each); the other rows keep ``fill``. With ITM scores above ``fill``, an elementwise max over processes
            (``all_reduce`` with ``MAX``) gives the single-process matrices.

    Returns ``(score_i2t, score_t2i)``, float32 on the device of ``sim_i2t``.
    """
    if sim_i2t.dim() != 2:
        raise ValueError(f"sim_i2t must be (N_images, N_texts), got {tuple(sim_i2t.shape)}")
    if sim_t2i is None:
        sim_t2i = sim_i2t.t()
    if sim_t2i.shape != sim_i2t.shape[::-1]:
        raise ValueError(f"sim_t2i {tuple(sim_t2i.shape)} must be the transpose shape of {tuple(sim_i2t.shape)}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    sim_t2i = sim_t2i.to(sim_i2t.device)
    score_i2t = _rerank_one_direction(sim_i2t, k, itm_score_fn, batch_size, fill, _shard_rows(sim_i2t.shape[0], shard))
    score_t2i = _rerank_one_direction(
        sim_t2i, k, lambda txt, img: itm_score_fn(img, txt), batch_size, fill, _shard_rows(sim_t2i.shape[0], shard)
    )
    return score_i2t, score_t2i
