"""BERT-style layers (zoo.modules.layers) and the ``cross_attention`` fusion.

References: transformers' ``BertLayer`` on the same weights (float32 and float64), official parameter counts from the
X²-VLM / CCLM reference files, and invariances (padding, masking, bidirectionality) that must hold exactly.
"""

from __future__ import annotations


import re

import pytest
import torch
from safetensors.torch import save_file

from zoo.modules.attention import force_backend, set_attention_backend
from zoo.modules.fusion.cross_attention import CrossAttentionFusion
from zoo.modules.layers import TransformerLayer
from zoo.registry import FUSIONS
from zoo.spec import ConfigError

BertConfig = pytest.importorskip("transformers").BertConfig
from transformers.models.bert.modeling_bert import BertLayer  # noqa: E402

# official counts (X²-VLM @21ed5a5 / CCLM reference builds; see the reference JSON files named below)
BASE_LAYER, BASE_FUSION_LAYER = 7_087_872, 9_451_776
CCLM_X2VLM_BASE_CROSS, CCLM_X2VLM_LARGE_CROSS = 56_710_656, 100_780_032

W, H, FF, EW = 32, 4, 64, 24  # tiny sizes; the vision width differs from the text width on purpose


from conftest import load_reference as _reference  # noqa: E402


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _hf_layer(ours: TransformerLayer, impl: str = "eager", dtype=torch.float32) -> BertLayer:
    """transformers' BertLayer holding exactly our layer's weights (its cross K/V widened to encoder_width)."""
    cfg = BertConfig(
        hidden_size=W, num_attention_heads=H, intermediate_size=FF, is_decoder=True, add_cross_attention=True,
        hidden_act="gelu", layer_norm_eps=1e-12, attn_implementation=impl,
    )
    hf = BertLayer(cfg)
    if ours.encoder_width != W:  # BertLayer projects cross K/V from hidden_size; give it the vision width
        hf.crossattention.self.key = torch.nn.Linear(ours.encoder_width, W)
        hf.crossattention.self.value = torch.nn.Linear(ours.encoder_width, W)
    hf.load_state_dict(ours.state_dict(), strict=True)
    return hf.to(dtype).eval()


def _additive(keep: torch.Tensor, dtype) -> torch.Tensor:
    return torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, torch.finfo(dtype).min)


def _hf_out(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.fixture()
def inputs():
    g = torch.Generator().manual_seed(0)
    text = torch.randn(2, 6, W, generator=g)
    vision = torch.randn(2, 5, EW, generator=g)
    text_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    vision_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    return text, text_mask, vision, vision_mask


# ---------------------------------------------------------------------------------------------------------------------
# parameter counts and key names
# ---------------------------------------------------------------------------------------------------------------------
def test_layer_parameter_counts_match_official():
    with torch.device("meta"):
        plain = TransformerLayer(768, 12, 3072)
        fused = TransformerLayer(768, 12, 3072, cross_attention=True, encoder_width=768)
    assert _count(plain) == BASE_LAYER
    assert _count(fused) == BASE_FUSION_LAYER
    ref = _reference("x2vlm_base_pretrain.json")
    per_layer = ref["layer_group_counts"]["text_encoder.bert.encoder.layer"]["per_layer"]
    assert per_layer["0"] == BASE_LAYER and per_layer["12"] == BASE_FUSION_LAYER
    official = {k[len("text_encoder.bert.encoder.layer.12."):]: tuple(s) for k, s in ref["state_dict"]
                if k.startswith("text_encoder.bert.encoder.layer.12.")}
    assert {k: tuple(v.shape) for k, v in fused.state_dict().items()} == official


def test_layer_keys_equal_transformers_bertlayer():
    ours = TransformerLayer(W, H, FF, cross_attention=True)
    cfg = BertConfig(hidden_size=W, num_attention_heads=H, intermediate_size=FF, is_decoder=True,
                     add_cross_attention=True)
    assert list(ours.state_dict()) == list(BertLayer(cfg).state_dict())


@pytest.mark.parametrize(
    "sizes, expected, reference",
    [
        (dict(), CCLM_X2VLM_BASE_CROSS, "cclm_x2vlm_base.json"),
        (dict(hidden_size=1024, num_heads=16, intermediate_size=4096, encoder_width=1024), CCLM_X2VLM_LARGE_CROSS,
         "cclm_x2vlm_large.json"),
    ],
)
def test_fusion_parameter_counts_match_official(sizes, expected, reference):
    with torch.device("meta"):
        fusion = CrossAttentionFusion(num_layers=6, **sizes)
    assert _count(fusion) == expected
    ref = _reference(reference)
    assert ref["params_by_prefix"]["cross_encoder"] == expected
    official = [(k[len("cross_encoder."):], tuple(s)) for k, s in ref["state_dict"]
                if k.startswith("cross_encoder.")]
    assert [(k, tuple(v.shape)) for k, v in fusion.state_dict().items()] == official
    assert fusion.width == sizes.get("hidden_size", 768) and fusion.encoder_width == sizes.get("encoder_width", 768)


# ---------------------------------------------------------------------------------------------------------------------
# agreement with transformers' BertLayer
# ---------------------------------------------------------------------------------------------------------------------
# float64: the math backend runs its softmax in float32 (zoo.modules.attention._math), hence 1e-6 rather than 1e-12
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-6)])
@pytest.mark.parametrize("causal", [False, True])
def test_layer_matches_bertlayer_with_explicit_masks(inputs, dtype, tol, causal):
    text, text_mask, vision, vision_mask = (t.to(dtype) if t.is_floating_point() else t for t in inputs)
    torch.manual_seed(1)
    ours = TransformerLayer(W, H, FF, cross_attention=True, encoder_width=EW, causal=causal).to(dtype).eval()
    hf = _hf_layer(ours, "eager", dtype)
    keep = text_mask.bool()[:, None, None, :].expand(-1, 1, 6, -1)
    if causal:
        keep = keep & torch.ones(6, 6, dtype=torch.bool).tril()
    cross_keep = vision_mask.bool()[:, None, None, :].expand(-1, 1, 6, -1)
    with torch.no_grad():
        expected = _hf_out(
            hf(text, _additive(keep, dtype), vision, encoder_attention_mask=_additive(cross_keep, dtype))
        )
        for backend in ("math", "sdpa"):
            set_attention_backend(ours, backend)
            got = ours(text, text_mask, vision, vision_mask)[0]
            assert (got - expected).abs().max().item() < tol, backend


def test_noncausal_layer_matches_bertlayer_full_mask_and_avoids_sdpa_trap(inputs):
    text, _, vision, _ = inputs
    torch.manual_seed(2)
    ours = TransformerLayer(W, H, FF, cross_attention=True).eval()
    vision = vision[..., :1].expand(-1, -1, W).contiguous() + torch.randn(2, 5, W)
    hf = _hf_layer(ours, "sdpa")
    with torch.no_grad():
        got = ours(text, None, vision)[0]
        full = _hf_out(hf(text, torch.zeros(2, 1, 6, 6), vision))
        no_mask = _hf_out(hf(text, None, vision))  # is_decoder=True + sdpa + no mask: transformers goes causal
    assert (got - full).abs().max().item() < 1e-5
    assert (got - no_mask).abs().max().item() > 1e-3  # the trap is real, and our layer is not in it


# ---------------------------------------------------------------------------------------------------------------------
# behaviour of the fusion stack
# ---------------------------------------------------------------------------------------------------------------------
def _tiny_fusion(**kw) -> CrossAttentionFusion:
    torch.manual_seed(3)
    return CrossAttentionFusion(
        num_layers=2, hidden_size=W, num_heads=H, intermediate_size=FF, encoder_width=EW, **kw
    ).eval()


def test_fusion_depends_on_vision_and_respects_masks(inputs):
    text, text_mask, vision, vision_mask = inputs
    fusion = _tiny_fusion()
    with torch.no_grad():
        out = fusion(text, text_mask, vision, vision_mask)
        assert out.tokens.shape == (2, 6, W) and out.mask is text_mask
        assert torch.equal(out.pooled, out.tokens[:, 0])
        # a real vision token changes the output of every text token
        v2 = vision.clone()
        v2[:, 0] += 1.0
        changed = fusion(text, text_mask, v2, vision_mask).tokens
        assert (changed - out.tokens).abs().amax(dim=-1).min().item() > 1e-4
        # padded vision tokens (sample 1, positions 3, 4) have no influence
        v3 = vision.clone()
        v3[1, 3:] = 100.0
        same = fusion(text, text_mask, v3, vision_mask).tokens
        assert torch.allclose(same[1], out.tokens[1], atol=1e-6)
        # padded text tokens (sample 1, positions 4, 5) do not influence the real ones
        t2 = text.clone()
        t2[1, 4:] = -50.0
        same = fusion(t2, text_mask, vision, vision_mask).tokens
        assert torch.allclose(same[1, :4], out.tokens[1, :4], atol=1e-6)
        # ... while without the mask they do (the check above can fail)
        unmasked = fusion(t2, None, vision, vision_mask).tokens
        assert not torch.allclose(unmasked[1, :4], out.tokens[1, :4], atol=1e-4)


def test_fusion_is_bidirectional_unless_causal(inputs):
    text, _, vision, _ = inputs
    for causal, should_change in ((False, True), (True, False)):
        fusion = _tiny_fusion(causal=causal)
        t2 = text.clone()
        t2[:, -1] += 1.0
        for backend in ("sdpa", "math"):
            with torch.no_grad(), force_backend(backend):
                a = fusion(text, None, vision).tokens[:, 0]
                b = fusion(t2, None, vision).tokens[:, 0]
            assert ((a - b).abs().max().item() > 1e-4) == should_change, (causal, backend)


def test_fusion_backends_agree_and_math_returns_probabilities(inputs):
    text, text_mask, vision, vision_mask = inputs
    fusion = _tiny_fusion()
    with torch.no_grad():
        with force_backend("math"):
            a = fusion(text, text_mask, vision, vision_mask).tokens
        with force_backend("sdpa"):
            b = fusion(text, text_mask, vision, vision_mask).tokens
        assert (a - b).abs().max().item() < 1e-5
        out = fusion(text, text_mask, vision, vision_mask, output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == 2 and len(out.hidden_states) == 3
    probs = out.attentions[0]
    assert probs.shape == (2, H, 6, 6)
    assert torch.allclose(probs.sum(-1), torch.ones(2, H, 6), atol=1e-6)
    assert probs[1, :, :, 4:].abs().max().item() == 0.0  # padded text keys get no weight
    assert torch.allclose(out.tokens, a, atol=1e-5)


def test_fusion_backward_finite_gradients_and_checkpointing(inputs):
    text, text_mask, vision, vision_mask = inputs
    grads = []
    for ckpt in (False, True):
        fusion = _tiny_fusion(hidden_dropout=0.0, attention_dropout=0.0).train()
        fusion.set_grad_checkpointing(ckpt)
        v = vision.clone().requires_grad_(True)
        fusion(text, text_mask, v, vision_mask).tokens.square().mean().backward()
        for name, p in fusion.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0 and v.grad.abs().sum() > 0
        grads.append({n: p.grad.clone() for n, p in fusion.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_layer_additive_bias_matches_boolean_mask(inputs):
    text, _, _, _ = inputs
    torch.manual_seed(4)
    layer = TransformerLayer(W, H, FF).eval()
    keep = torch.ones(6, 6, dtype=torch.bool)
    keep[:, 2] = False
    bias = torch.zeros(1, H, 6, 6).masked_fill(~keep, -1e9)
    with torch.no_grad():
        a = layer(text, mask=keep)[0]
        b = layer(text, bias=bias)[0]
        c = layer(text)[0]
    assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, c, atol=1e-4)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        layer(text, None, torch.randn(2, 3, W))


# ---------------------------------------------------------------------------------------------------------------------
# weights and registry
# ---------------------------------------------------------------------------------------------------------------------
def test_fusion_pretrained_roundtrip_and_layer_map(tmp_path, inputs):
    text, text_mask, vision, vision_mask = inputs
    src = _tiny_fusion()
    path = tmp_path / "ckpt.safetensors"
    save_file({f"cross_encoder.{k}": v.contiguous() for k, v in src.state_dict().items()}, str(path))
    loaded = CrossAttentionFusion(num_layers=2, hidden_size=W, num_heads=H, intermediate_size=FF, encoder_width=EW,
                                  pretrained=str(path)).eval()
    with torch.no_grad():
        assert torch.equal(loaded(text, text_mask, vision, vision_mask).tokens,
                           src(text, text_mask, vision, vision_mask).tokens)
    swapped = CrossAttentionFusion(num_layers=2, hidden_size=W, num_heads=H, intermediate_size=FF, encoder_width=EW,
                                   pretrained=str(path), layer_map=[1, -1])
    assert torch.equal(swapped.encoder.layer[0].crossattention.self.key.weight,
                       src.encoder.layer[1].crossattention.self.key.weight)
    assert not torch.equal(swapped.encoder.layer[1].output.dense.weight, src.encoder.layer[1].output.dense.weight)
    with pytest.raises(ValueError, match=r"crossattention\.self\.key\.weight has shape"):
        CrossAttentionFusion(num_layers=2, hidden_size=W, num_heads=H, intermediate_size=FF, encoder_width=EW + 8,
                             pretrained=str(path))
    with pytest.raises(ConfigError, match="layer_map"):
        CrossAttentionFusion(num_layers=2, hidden_size=W, num_heads=H, intermediate_size=FF, layer_map=[0])
    # legacy Google-BERT names (LayerNorm gamma/beta) load; a missing tensor is named in the error
    legacy = {f"m.{k}".replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in src.state_dict().items()}
    torch.save(legacy, tmp_path / "legacy.pth")
    again = CrossAttentionFusion(num_layers=2, hidden_size=W, num_heads=H, intermediate_size=FF, encoder_width=EW,
                                 pretrained=str(tmp_path / "legacy.pth"))
    assert torch.equal(again.encoder.layer[1].output.LayerNorm.weight, src.encoder.layer[1].output.LayerNorm.weight)
    del legacy["m.encoder.layer.1.output.dense.weight"]
    torch.save({"model": legacy}, tmp_path / "broken.pth")
    with pytest.raises(KeyError, match=r"broken\.pth: the checkpoint lacks encoder\.layer\.1\.output\.dense\.weight"):
        CrossAttentionFusion(num_layers=2, hidden_size=W, num_heads=H, intermediate_size=FF, encoder_width=EW,
                             pretrained=str(tmp_path / "broken.pth"))


def test_registered_and_buildable_from_config():
    from zoo.spec import build

    assert FUSIONS.get("cross_attention") is CrossAttentionFusion
    part = build({"type": "cross_attention", "num_layers": 1, "hidden_size": W, "num_heads": H,
                  "intermediate_size": FF, "encoder_width": EW}, "fusion")
    assert isinstance(part, CrossAttentionFusion) and part.encoder_width == EW
    with pytest.raises(ConfigError, match="num_heads"):
        build({"type": "cross_attention", "hidden_size": W, "num_heads": 5}, "fusion")


def test_find_prefix_names_what_it_found():
    from zoo.modules.layers import find_prefix

    state = {"text_encoder.bert.embeddings.word_embeddings.weight": torch.zeros(1), "a.b": torch.zeros(1)}
    assert find_prefix(state, "embeddings.word_embeddings.weight", "ckpt.pth") == "text_encoder.bert."
    with pytest.raises(KeyError, match=r"ckpt\.pth: no key ends with 'pooler\.dense\.weight'; is this the right "
                                       r"checkpoint\? \(first keys: text_encoder\.bert\.embeddings\.word_embeddings"
                                       r"\.weight, a\.b\)"):
        find_prefix(state, "pooler.dense.weight", "ckpt.pth")
    two = {"x.emb.w": torch.zeros(1), "y.emb.w": torch.zeros(1)}
    with pytest.raises(KeyError, match=r"ckpt\.pth: several candidate prefixes hold 'emb\.w': 'x\.', 'y\.'; "):
        find_prefix(two, "emb.w", "ckpt.pth")
    three = {**two, "z.emb.w": torch.zeros(1)}
    with pytest.raises(KeyError, match=r"'x\.', 'y\.', 'z\.'"):
        find_prefix(three, "emb.w", "ckpt.pth")


def test_load_bert_layers_reports_ignored_keys_and_names_missing_ones(tmp_path):
    from zoo.modules.layers import load_bert_layers

    torch.manual_seed(0)
    src = CrossAttentionFusion(num_layers=2, hidden_size=W, num_heads=H, intermediate_size=FF, encoder_width=EW)
    dst = CrossAttentionFusion(num_layers=1, hidden_size=W, num_heads=H, intermediate_size=FF, encoder_width=EW)
    state = {f"m.{k}": v for k, v in src.state_dict().items()}
    state["m.extra.weight"] = torch.zeros(2)
    report = load_bert_layers(dst, state, source="ckpt.pth", prefix="m.", layer_sources=[1])
    assert report["initialised"] == []
    assert report["ignored"] == sorted(["extra.weight"] + [k for k in src.state_dict() if k.startswith("encoder.layer.0.")])
    layer1 = [k for k in state if k.startswith("m.encoder.layer.1.") and "crossattention" not in k]
    for key in layer1[:6]:  # six missing keys are all named
        del state[key]
    shown = ", ".join(k[len("m."):].replace("layer.1.", "layer.0.") + f" (from m.{k[len('m.'):]})" for k in layer1[:6])
    with pytest.raises(KeyError, match="^" + re.escape(repr(f"ckpt.pth: the checkpoint lacks {shown}")) + "$"):
        load_bert_layers(dst, state, source="ckpt.pth", prefix="m.", layer_sources=[1])
    del state[layer1[6]]  # beyond six: the first six and the count
    with pytest.raises(KeyError, match="^" + re.escape(repr(f"ckpt.pth: the checkpoint lacks {shown}, ... (7 in all)"))
                       + "$"):
        load_bert_layers(dst, state, source="ckpt.pth", prefix="m.", layer_sources=[1])


@pytest.mark.parametrize("checkpointing", [False, True])
def test_layer_stack_passes_mask_bias_and_causality_to_every_layer(checkpointing):
    """A stack equals its layers run one after the other with the same arguments (with and without gradient
    checkpointing, which recomputes each layer with them)."""
    from zoo.modules.layers import LayerStack

    torch.manual_seed(0)
    layers = [TransformerLayer(W, H, FF) for _ in range(2)]
    stack = LayerStack(layers)
    stack.set_grad_checkpointing(checkpointing)
    x = torch.randn(2, 5, W, requires_grad=checkpointing)
    pad = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    bias = torch.randn(1, H, 5, 5)
    keep = torch.rand(5, 5) > 0.3
    keep[:, 0] = True
    out, *_ = stack(x, pad, mask=keep, bias=bias, causal=True)
    want = x
    for layer in layers:
        want = layer(want, pad, mask=keep, bias=bias, causal=True)[0]
    torch.testing.assert_close(out, want)
    plain, *_ = stack(x, pad, causal=True)
    assert not torch.allclose(plain, want)  # the bias and mask change the result, so they were used


def test_layers_use_their_backend_and_the_math_one_for_maps(monkeypatch):
    """A layer's attention runs on the backend set for it, except when maps are asked for (only the math backend
    returns them); cross-attention maps come back too; context for a layer without cross-attention is refused."""
    import zoo.modules.layers as L

    calls = []
    real = L.attention

    def recording(*args, **kwargs):
        calls.append((kwargs.get("backend"), kwargs.get("return_probs")))
        return real(*args, **kwargs)

    monkeypatch.setattr(L, "attention", recording)
    torch.manual_seed(0)
    layer = TransformerLayer(W, H, FF, cross_attention=True, encoder_width=EW)
    set_attention_backend(layer, "sdpa")
    x, ctx = torch.randn(2, 3, W), torch.randn(2, 4, EW)
    _, self_map, cross_map = layer(x, None, ctx)
    assert calls == [("sdpa", False), ("sdpa", False)] and self_map is None and cross_map is None
    calls.clear()
    _, self_map, cross_map = layer(x, None, ctx, output_attentions=True)
    assert calls == [("math", True), ("math", True)]
    assert self_map.shape == (2, H, 3, 3) and cross_map.shape == (2, H, 3, 4)
    torch.testing.assert_close(cross_map.sum(-1), torch.ones(2, H, 3))
    with pytest.raises(ValueError, match=r"^encoder_hidden_states was given to a layer built without "
                                         r"cross-attention$"):
        TransformerLayer(W, H, FF)(x, None, ctx)


def test_layer_norm_eps_defaults_are_berts():
    """Every LayerNorm of a layer built with defaults uses BERT's eps (transformers' ``BertConfig`` default)."""
    import transformers

    from zoo.modules.layers import AttentionBlock, Output

    want = transformers.BertConfig().layer_norm_eps
    norms = [m for m in TransformerLayer(W, H, FF, cross_attention=True).modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 3 and {m.eps for m in norms} == {want}
    assert AttentionBlock(W, H).output.LayerNorm.eps == want and Output(FF, W).LayerNorm.eps == want
