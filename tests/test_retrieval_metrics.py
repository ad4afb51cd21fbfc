"""Retrieval recall@K and the ITC → ITM re-ranking, against brute-force references written differently."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.metrics.retrieval import rerank_scores, retrieval_recall

KEYS = ["txt_r1", "txt_r5", "txt_r10", "txt_r_mean", "img_r1", "img_r5", "img_r10", "img_r_mean", "r_mean",
        "txt_mdr", "txt_mnr", "img_mdr", "img_mnr"]


def _data(n_img, caps, seed):
    """Captions assigned to images in a shuffled order, several per image."""
    rng = np.random.default_rng(seed)
    txt2img = np.repeat(np.arange(n_img), caps)
    rng.shuffle(txt2img)
    img2txt = [[t for t in range(len(txt2img)) if txt2img[t] == i] for i in range(n_img)]
    return rng, txt2img.tolist(), img2txt


def _brute_force(s_i2t, s_t2i, txt2img, img2txt):
    """Sort each row with Python's sorted (higher score first, ties: higher index first) and read positions."""

    def position(row, target):
        order = sorted(range(len(row)), key=lambda j: (-row[j], -j))
        return order.index(target)

    txt_ranks = [min((position(list(s_i2t[i]), t) for t in img2txt[i]), default=10**9) for i in range(len(s_i2t))]
    img_ranks = [position(list(s_t2i[t]), txt2img[t]) for t in range(len(s_t2i))]
    out = {}
    for name, ranks in (("txt", txt_ranks), ("img", img_ranks)):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * sum(r < k for r in ranks) / len(ranks)
        out[f"{name}_r_mean"] = (out[f"{name}_r1"] + out[f"{name}_r5"] + out[f"{name}_r10"]) / 3
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    for name, ranks in (("txt", txt_ranks), ("img", img_ranks)):  # 1-based, numpy's median (UniVL metrics.py)
        ranks = [min(r, len(s_t2i)) + 1 for r in ranks] if name == "txt" else [r + 1 for r in ranks]
        out[f"{name}_mdr"] = float(np.median(ranks))
        out[f"{name}_mnr"] = float(np.mean(ranks))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_matches_brute_force_on_random_scores(seed):
    n_img, caps = 40, 5
    rng, txt2img, img2txt = _data(n_img, caps, seed)
    # a weak signal so that recalls are neither 0 nor 100
    pos = np.zeros((n_img, n_img * caps))
    for t, i in enumerate(txt2img):
        pos[i, t] = 1.0
    s_i2t = rng.normal(size=pos.shape) + 1.5 * pos
    s_t2i = (rng.normal(size=pos.shape) + 1.5 * pos).T.copy()
    ours = retrieval_recall(torch.from_numpy(s_i2t), torch.from_numpy(s_t2i), txt2img, img2txt, chunk=7)
    ref = _brute_force(s_i2t, s_t2i, txt2img, img2txt)
    assert list(ours) == KEYS
    for k in KEYS:
        assert ours[k] == pytest.approx(ref[k], abs=1e-9), k
    assert 0 < ours["txt_r1"] < 100 and 0 < ours["img_r1"] < 100
    # numpy arrays and the official dict formats give the same numbers
    as_dicts = retrieval_recall(s_i2t, s_t2i, dict(enumerate(txt2img)), {i: v for i, v in enumerate(img2txt)})
    assert as_dicts == ours


def test_recall_perfect_and_reversed():
    n_img, caps = 20, 5
    rng, txt2img, img2txt = _data(n_img, caps, 5)
    pos = np.zeros((n_img, n_img * caps))
    for t, i in enumerate(txt2img):
        pos[i, t] = 1.0
    noise = rng.uniform(0, 0.5, size=pos.shape)
    perfect = retrieval_recall(pos + noise, (pos + noise).T, txt2img, img2txt)
    assert all(perfect[k] == 100.0 for k in KEYS if "_r" in k)
    assert all(perfect[k] == 1.0 for k in ("txt_mdr", "txt_mnr", "img_mdr", "img_mnr"))
    # positives below every negative: each image's captions rank 95..99, each text's image ranks 19
    reversed_ = retrieval_recall(-pos + noise, (-pos + noise).T, txt2img, img2txt)
    assert all(reversed_[k] == 0.0 for k in KEYS if "_r" in k)
    assert reversed_["txt_mdr"] == reversed_["txt_mnr"] == 96.0 and reversed_["img_mdr"] == reversed_["img_mnr"] == 20.0


def test_recall_hand_case():
    # 3 images, 6 texts; image i owns texts 2i and 2i+1
    txt2img = [0, 0, 1, 1, 2, 2]
    img2txt = [[0, 1], [2, 3], [4, 5]]
    s_i2t = torch.tensor([
        [0.1, 0.9, 0.0, 0.0, 0.0, 0.0],  # a caption of image 0 first            -> rank 0
        [0.9, 0.0, 0.1, 0.0, 0.0, 0.0],  # best own caption (text 2) second      -> rank 1
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],  # own captions 5th and 6th              -> rank 4
    ])
    s_t2i = torch.tensor([
        [1.0, 0.0, 0.0],  # text 0 -> image 0 first
        [0.0, 1.0, 0.5],  # text 1 -> image 0 third
        [0.0, 1.0, 0.0],  # first
        [1.0, 0.5, 0.0],  # second
        [0.0, 0.0, 1.0],  # first
        [0.3, 0.2, 0.1],  # third
    ])
    r = retrieval_recall(s_i2t, s_t2i, txt2img, img2txt)
    assert r["txt_r1"] == pytest.approx(100 / 3)
    assert r["txt_r5"] == r["txt_r10"] == 100.0
    assert r["img_r1"] == pytest.approx(50.0)
    assert r["img_r5"] == 100.0
    assert r["txt_r_mean"] == pytest.approx((100 / 3 + 200) / 3)
    assert r["r_mean"] == pytest.approx(((100 / 3 + 200) / 3 + 250 / 3) / 2)
    # 1-based ranks: image -> text 1, 2, 5; text -> image 1, 3, 1, 2, 1, 3 (median of an even count: mean of the two
    # middle ones, as numpy's)
    assert (r["txt_mdr"], r["txt_mnr"]) == pytest.approx((2.0, 8 / 3))
    assert (r["img_mdr"], r["img_mnr"]) == pytest.approx((1.5, 11 / 6))


def test_recall_ties_rank_larger_index_first():
    # all 12 images score the same for every text: the rank of image j is the number of images after it
    txt2img = list(range(12))
    img2txt = [[i] for i in range(12)]
    s = torch.zeros(12, 12)
    r = retrieval_recall(s, s, txt2img, img2txt)
    # images 11, 10 ... rank 0, 1 ...: R@1 = 1/12, R@5 = 5/12, R@10 = 10/12
    assert (r["img_r1"], r["img_r5"], r["img_r10"]) == pytest.approx((100 / 12, 500 / 12, 1000 / 12))
    assert r["txt_r10"] == pytest.approx(1000 / 12)
    # the direction of the rule: every text belongs to the last image, which wins every tie; images without
    # captions count as misses (the official rank 1e20)
    r = retrieval_recall(s, s, [11] * 12, [[]] * 11 + [list(range(12))])
    assert r["img_r1"] == 100.0
    assert r["txt_r1"] == r["txt_r10"] == pytest.approx(100 / 12)
    # the 11 caption-less images rank after all 12 texts (13); image 11's best caption is first
    assert (r["txt_mdr"], r["txt_mnr"]) == pytest.approx((13.0, (1 + 11 * 13) / 12))
    r = retrieval_recall(s, s, [0] * 12, [list(range(12))] + [[]] * 11)
    assert r["img_r10"] == 0.0  # image 0 loses every tie: rank 11


def test_recall_rejects_bad_inputs():
    with pytest.raises(ValueError):
        retrieval_recall(torch.zeros(3, 4), torch.zeros(3, 4), [0] * 4, [[0]] * 3)
    with pytest.raises(ValueError):
        retrieval_recall(torch.zeros(3, 4), torch.zeros(4, 3), [0] * 3, [[0]] * 3)


# ---------------------------------------------------------------------------------------------------------------------
# re-ranking
# ---------------------------------------------------------------------------------------------------------------------
class _Itm:
    """A stand-in ITM: looks scores up in a fixed matrix and records the batches it was called with."""

    def __init__(self, table, dtype=None):
        self.table, self.dtype, self.calls = table, dtype, []

    def __call__(self, img, txt):
        assert img.shape == txt.shape and img.dtype == torch.long
        self.calls.append(img.numel())
        out = self.table[img, txt]
        return out.to(self.dtype) if self.dtype is not None else out


def test_rerank_with_all_candidates_is_direct_itm_scoring():
    gen = torch.Generator().manual_seed(0)
    sims = torch.randn(9, 23, generator=gen)
    itm = torch.randn(9, 23, generator=gen)
    fn = _Itm(itm)
    s_i2t, s_t2i = rerank_scores(sims, None, k=50, itm_score_fn=fn, batch_size=16)  # k clamped to 23 and 9
    torch.testing.assert_close(s_i2t, itm)
    torch.testing.assert_close(s_t2i, itm.t())
    assert max(fn.calls) <= 16 and sum(fn.calls) == 9 * 23 * 2


def test_rerank_top_k_entries_and_fill():
    gen = torch.Generator().manual_seed(1)
    sims = torch.randn(11, 30, generator=gen)
    sims_t2i = torch.randn(30, 11, generator=gen)  # a separate t2i matrix is honoured
    itm = torch.randn(11, 30, generator=gen)
    k = 4
    fn = _Itm(itm, dtype=torch.float16)
    s_i2t, s_t2i = rerank_scores(sims, sims_t2i, k, fn, batch_size=5)
    assert s_i2t.dtype == torch.float32 and s_i2t.shape == (11, 30) and s_t2i.shape == (30, 11)
    assert max(fn.calls) <= 5 and sum(fn.calls) == (11 + 30) * k
    for scores, sim, table in ((s_i2t, sims, itm), (s_t2i, sims_t2i, itm.t())):
        for r in range(sim.shape[0]):
            top = set(np.argsort(-sim[r].numpy())[:k].tolist())
            for c in range(sim.shape[1]):
                if c in top:
                    assert scores[r, c].item() == pytest.approx(table[r, c].half().float().item())
                else:
                    assert scores[r, c].item() == -100.0


def test_rerank_shards_combine_to_the_full_result():
    gen = torch.Generator().manual_seed(2)
    sims = torch.randn(10, 17, generator=gen)
    itm = torch.randn(10, 17, generator=gen)
    full = rerank_scores(sims, None, 3, _Itm(itm))
    world = 3
    parts = [rerank_scores(sims, None, 3, _Itm(itm), shard=(r, world)) for r in range(world)]
    for d in range(2):
        combined = torch.stack([p[d] for p in parts]).amax(0)
        torch.testing.assert_close(combined, full[d])
        # each shard scored only its own rows
        assert all(((p[d] != -100).any(1)).sum() < full[d].shape[0] for p in parts)
    with pytest.raises(ValueError):
        rerank_scores(sims, None, 3, _Itm(itm), shard=(3, 3))


def test_rerank_then_recall_end_to_end():
    # ITC puts the right pairs inside the top 3 but not first; a perfect ITM fixes the order
    n_img, caps = 12, 2
    rng, txt2img, img2txt = _data(n_img, caps, 7)
    pos = torch.zeros(n_img, n_img * caps)
    for t, i in enumerate(txt2img):
        pos[i, t] = 1.0
    sims = torch.from_numpy(rng.uniform(size=pos.shape)).float() * 0.1 + 0.05 * pos
    before = retrieval_recall(sims, sims.t(), txt2img, img2txt)
    s_i2t, s_t2i = rerank_scores(sims, None, pos.shape[1], _Itm(pos * 10))
    after = retrieval_recall(s_i2t, s_t2i, txt2img, img2txt)
    assert before["r_mean"] < 100.0
    assert after["txt_r1"] == after["img_r1"] == 100.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_rerank_and_recall_on_gpu_equal_cpu():
    gen = torch.Generator().manual_seed(3)
    sims, itm = torch.randn(8, 16, generator=gen), torch.randn(8, 16, generator=gen)
    cpu = rerank_scores(sims, None, 5, _Itm(itm))
    gpu = rerank_scores(sims.cuda(), None, 5, _Itm(itm.cuda()))
    assert gpu[0].device.type == "cuda"
    torch.testing.assert_close(gpu[0].cpu(), cpu[0])
    txt2img = [i // 2 for i in range(16)]
    img2txt = [[2 * i, 2 * i + 1] for i in range(8)]
    assert retrieval_recall(gpu[0], gpu[1], txt2img, img2txt) == retrieval_recall(cpu[0], cpu[1], txt2img, img2txt)


def test_ranks_of_no_pairs_are_empty():
    from zoo.metrics.retrieval import retrieval_ranks

    ranks = retrieval_ranks(torch.randn(3, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert ranks.shape == (0,) and ranks.dtype == torch.long
