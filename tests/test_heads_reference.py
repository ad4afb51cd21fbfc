"""The ITC and ITM heads against the official defaults (tests/reference/official_defaults.json, each value with the
official file and line it was read from) and against float64 formulas written out here.

Every test names in its docstring the one-line bug it catches.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from conftest import official_default as official

from zoo.factory import build_part, resolve_config
from zoo.heads.contrastive import ContrastiveHead, itc_loss
from zoo.heads.matching import MatchingHead


# ---------------------------------------------------------------------------------------------------------------------
# float64 references, written out (no call into zoo)
# ---------------------------------------------------------------------------------------------------------------------
def _log_softmax_rows(x: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        m = max(float(v) for v in x[i])
        log_z = m + math.log(sum(math.exp(float(v) - m) for v in x[i]))
        out[i] = x[i] - log_z
    return out


def reference_itc(image_feat: torch.Tensor, text_feat: torch.Tensor, temp: float, ids: list[int] | None) -> float:
    """The official ``get_contrastive_loss`` (X2-VLM models/xvlm.py:794-825) in float64: logits = image @ text.T / temp;
    targets = the same-id indicator divided by its row sums (the identity without ids); cross-entropy of the row-wise
    log-softmax against the targets, image→text over the rows of the logits and text→image over the rows of their
    transpose; each averaged over rows, then the two directions averaged."""
    n = image_feat.shape[0]
    logits = torch.empty(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            logits[i, j] = sum(float(a) * float(b) for a, b in zip(image_feat[i], text_feat[j])) / temp
    ids = list(range(n)) if ids is None else ids
    targets = torch.tensor([[1.0 if ids[i] == ids[j] else 0.0 for j in range(n)] for i in range(n)], dtype=torch.float64)
    targets = targets / targets.sum(1, keepdim=True)
    i2t = -(_log_softmax_rows(logits) * targets).sum(1).mean()
    t2i = -(_log_softmax_rows(logits.t().contiguous()) * targets).sum(1).mean()
    return float((i2t + t2i) / 2)


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([r / math.sqrt(sum(float(v) ** 2 for v in r)) for r in x])


def _linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    return x @ layer.weight.detach().double().t() + layer.bias.detach().double()


def reference_mlp(x: torch.Tensor, mlp: torch.nn.Sequential) -> torch.Tensor:
    """X2-VLM's ``build_mlp``: Linear → LayerNorm (biased variance) → exact-erf GELU → Linear, in float64."""
    h = _linear(x, mlp[0])
    mu = h.mean(-1, keepdim=True)
    var = ((h - mu) ** 2).mean(-1, keepdim=True)
    h = (h - mu) / torch.sqrt(var + mlp[1].eps) * mlp[1].weight.detach().double() + mlp[1].bias.detach().double()
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    return _linear(h, mlp[3])


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


# ---------------------------------------------------------------------------------------------------------------------
# ITC
# ---------------------------------------------------------------------------------------------------------------------
def test_itc_default_temperature_and_clamp_are_official():
    """Catches ``temp: float = 0.07`` → ``0.1`` in ContrastiveHead (and a changed clamp range): the default, the initial
    parameter, and the value of every shipped model's ITC head equal the official ``temp`` config value
    (X2-VLM configs/pretrain/*.yaml, set at models/xvlm.py:515; CCLM configs/Pretrain_4m.yaml:81)."""
    temp = official("itc_temp")
    lo, hi = official("itc_temp_clamp")
    params = inspect.signature(ContrastiveHead).parameters
    assert params["temp"].default == temp
    assert (params["min_temp"].default, params["max_temp"].default) == (lo, hi)
    head = ContrastiveHead(8, 8)
    assert head.temp.item() == torch.tensor(temp).item()
    assert (head.min_temp, head.max_temp) == (lo, hi)
    # the temperature a built model starts from, for models that rely on the default and those that state it
    for name in ("demo-tiny", "x2vlm-tiny", "cclm-tiny", "x2vlm-base", "cclm-base", "cclm-x2vlm-base"):
        built = build_part(resolve_config(name)["model"]["itc"], "head")
        assert built.temp.item() == torch.tensor(temp).item(), name
    with torch.no_grad():
        head.temp.fill_(10.0)
        assert head.temperature().item() == hi
        head.temp.fill_(1e-6)
        assert head.temperature().item() == pytest.approx(lo, rel=1e-6)


def test_itc_loss_soft_targets_for_repeated_images_float64():
    """Catches soft targets left unnormalised (``targets = pos`` instead of ``pos / pos.sum(1, keepdim=True)``) in
    itc_loss: the loss with repeated image ids equals the official soft-target formula written out in float64."""
    image, text = _unit(6, 5, 0), _unit(6, 5, 1)
    ids = [3, 7, 3, 1, 7, 3]  # image 3 three times, image 7 twice
    for temp in (0.07, 0.5):
        got = itc_loss(image, text, temp, torch.tensor(ids))
        assert got.dtype == torch.float64
        # the targets are float32 as in the official code (``torch.eq(...).float()``): 1/3 is exact to ~3e-8
        assert float(got) == pytest.approx(reference_itc(image, text, temp, ids), rel=1e-7)
    # all ids distinct: the soft targets are the identity, the same loss as hard targets
    distinct = itc_loss(image, text, 0.07, torch.arange(6))
    assert float(distinct) == pytest.approx(reference_itc(image, text, 0.07, None), rel=1e-12)


def test_itc_loss_both_directions_float64():
    """Catches a missing transpose in itc_loss (``sim_t2i = sim_i2t`` instead of ``sim_i2t.t()``): with an asymmetric
    similarity the text→image term differs, and the loss equals the float64 formula only with the transpose."""
    image, text = _unit(5, 4, 2), _unit(5, 4, 3)
    sim = image @ text.t()
    assert not torch.allclose(sim, sim.t())
    for temp in (0.07, 0.3):
        assert float(itc_loss(image, text, temp)) == pytest.approx(reference_itc(image, text, temp, None), rel=1e-12)
        ids = [0, 1, 0, 2, 3]
        assert float(itc_loss(image, text, temp, torch.tensor(ids))) == pytest.approx(
            reference_itc(image, text, temp, ids), rel=1e-7)


def test_itc_head_normalises_both_embeddings_float64():
    """Catches a missing L2 normalisation of the image (or text) embeddings in ContrastiveHead (``embed_image``
    returning ``vision_proj(x)``): similarities, features and loss equal float64 cosine formulas on the projections."""
    torch.manual_seed(0)
    head = ContrastiveHead(6, 7, embed_dim=4).double()
    g = torch.Generator().manual_seed(4)
    # pooled states of very different norms, so an unnormalised projection cannot pass for a normalised one
    v = torch.randn(5, 6, generator=g, dtype=torch.float64) * torch.tensor([[0.1], [1.0], [3.0], [10.0], [0.5]])
    t = torch.randn(5, 7, generator=g, dtype=torch.float64) * torch.tensor([[2.0], [0.2], [1.0], [7.0], [0.3]])
    img_ref = _unit_rows(_linear(v, head.vision_proj))
    txt_ref = _unit_rows(_linear(t, head.text_proj))
    sim_ref = torch.tensor([[sum(float(a) * float(b) for a, b in zip(i, j)) for j in txt_ref] for i in img_ref],
                           dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(head.predict(v, t), sim_ref, rtol=1e-12, atol=1e-12)
        out = head(v, t)
        torch.testing.assert_close(out["image_feat"], img_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out["text_feat"], txt_ref, rtol=1e-12, atol=1e-12)
        temp = float(head.temperature())
        assert float(out["loss"]) == pytest.approx(reference_itc(img_ref, txt_ref, temp, None), rel=1e-10)
        ids = [5, 5, 2, 9, 2]
        got = head(v, t, image_ids=torch.tensor(ids))["loss"]
        assert float(got) == pytest.approx(reference_itc(img_ref, txt_ref, temp, ids), rel=1e-7)


# ---------------------------------------------------------------------------------------------------------------------
# ITM
# ---------------------------------------------------------------------------------------------------------------------
def test_itm_predict_is_the_softmax_match_probability_float64():
    """Catches ``predict`` returning the probability of class 0 (``[:, 0]``) instead of the match class in
    MatchingHead: predict equals softmax(logits)[:, 1] computed in float64 from the written-out MLP, class 1 being a
    match as in the official code (positives labelled 1 at X2-VLM models/xvlm.py:896, scored with ``[:, 1]`` at
    Retrieval.py:135)."""
    match = official("itm_match_class")
    torch.manual_seed(0)
    head = MatchingHead(8).double()
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    logits = reference_mlp(x, head.mlp)
    prob = torch.tensor([math.exp(float(r[match])) / sum(math.exp(float(v)) for v in r) for r in logits],
                        dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(head(x)["logits"], logits, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(head.predict(x), prob, rtol=1e-12, atol=1e-12)
    # the class meaning, through the loss: a head whose output says "match" (logit of class 1 high) has a near-zero
    # loss for label 1 (match) and predicts a probability near 1
    with torch.no_grad():
        head.mlp[3].weight.zero_()
        head.mlp[3].bias.copy_(torch.tensor([0.0, 6.0], dtype=torch.float64))
        p = head.predict(x)
        loss_match = head(x, labels=torch.full((6,), match))["loss"]
    torch.testing.assert_close(p, torch.full((6,), 1 / (1 + math.exp(-6.0)), dtype=torch.float64))
    assert float(loss_match) == pytest.approx(math.log1p(math.exp(-6.0)), rel=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# the classifier (VQA answer vocabulary, video QA) and NLVR heads
# ---------------------------------------------------------------------------------------------------------------------
def _bce_with_logits(x: float, t: float) -> float:
    """-(t log σ(x) + (1 - t) log(1 - σ(x))), written out."""
    sig = 1.0 / (1.0 + math.exp(-x))
    return -(t * math.log(sig) + (1 - t) * math.log(1 - sig))


def test_classifier_soft_target_loss_and_predict_float64():
    """Soft answer scores: binary cross-entropy summed over answers, averaged over the batch; class indices: softmax
    cross-entropy; predict: the top-k softmax probabilities. All against float64 formulas on the MLP's logits."""
    from zoo.heads.classifier import ClassifierHead

    torch.manual_seed(0)
    head = ClassifierHead(6, 5).double()
    g = torch.Generator().manual_seed(1)
    pooled = torch.randn(3, 6, generator=g, dtype=torch.float64)
    scores = torch.tensor([[0.0, 0.3, 1.0, 0.0, 0.6], [1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.9, 0.3]],
                          dtype=torch.float64)
    with torch.no_grad():
        logits = reference_mlp(pooled, head.mlp)
        out = head(pooled, scores)
        torch.testing.assert_close(out["logits"], logits, rtol=1e-10, atol=1e-12)
        want = sum(_bce_with_logits(float(logits[b, c]), float(scores[b, c])) for b in range(3) for c in range(5)) / 3
        assert float(out["loss"]) == pytest.approx(want, rel=1e-10)
        classes = torch.tensor([2, 0, 3])
        log_p = _log_softmax_rows(logits)
        assert float(head(pooled, classes)["loss"]) == pytest.approx(-sum(float(log_p[b, c]) for b, c in
                                                                          enumerate(classes.tolist())) / 3, rel=1e-10)
        probs, idx = head.predict(pooled, k=2)
    p = log_p.exp()
    for b in range(3):
        order = sorted(range(5), key=lambda c: -float(p[b, c]))[:2]
        assert idx[b].tolist() == order
        torch.testing.assert_close(probs[b], p[b, order], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"^classifier: targets have 4 classes \(answers\) but the head has "
                                         r"num_classes=5$"):
        head(pooled, scores[:, :4])


def test_nlvr_head_takes_any_positive_width_and_names_a_bad_one():
    from zoo.heads.nlvr import NLVRHead
    from zoo.spec import ConfigError

    head = NLVRHead(1)
    assert head(torch.randn(2, 1), torch.randn(2, 1))["logits"].shape == (2, 2)
    with pytest.raises(ConfigError, match=r"^width must be positive, got 0$"):
        NLVRHead(0)


def test_itc_loss_follows_the_device_of_its_inputs():
    """The targets are made on the logits' device (the meta device stands in for a GPU here: a target left on the
    CPU fails against meta logits as it would against CUDA ones)."""
    feat = torch.randn(4, 8, device="meta")
    assert itc_loss(feat, feat, 0.07).device.type == "meta"
    assert itc_loss(feat, feat, 0.07, torch.tensor([0, 1, 1, 2], device="meta")).device.type == "meta"


def test_itm_layer_norm_eps_is_torchs_default_as_in_the_official_build_mlp():
    """The official ``build_mlp`` makes ``nn.LayerNorm(hidden)`` without an eps: torch's default."""
    assert MatchingHead(8).mlp[1].eps == torch.nn.LayerNorm(4).eps


def test_mlm_head_reports_the_size_of_its_output_layer():
    from zoo.heads.mlm import MLMHead

    head = MLMHead(hidden_size=8, vocab_size=23)
    assert (head.width, head.vocab_size) == (8, 23) == (head.cls.predictions.decoder.in_features,
                                                          head.cls.predictions.decoder.out_features)
