"""The attention op against an independent float64 reference, its backend selection, and its transformers hook."""

from __future__ import annotations

import copy
import math
import types

import pytest
import torch

import zoo.modules.attention as A
from zoo.modules.attention import AttentionBackendError, attention, force_backend, select_backend


def reference(q, k, v, key_padding_mask=None, mask=None, bias=None, causal=False, scale=None):
    """Written out element by element in float64, independently of the op (einsum + explicit loops for masks)."""
    q, k, v = q.double(), k.double(), v.double()
    b, h, lq, d = q.shape
    lk = k.shape[2]
    scale = 1 / math.sqrt(d) if scale is None else scale
    scores = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    if bias is not None:
        scores = scores + bias.double().expand(b, h, lq, lk)
    allowed = torch.ones(b, h, lq, lk, dtype=torch.bool)
    for i in range(lq):
        for j in range(lk):
            if causal and j > i + (lk - lq):
                allowed[:, :, i, j] = False
    if key_padding_mask is not None:
        allowed &= key_padding_mask.bool()[:, None, None, :]
    if mask is not None:
        allowed &= mask.expand(b, h, lq, lk)
    scores = scores.masked_fill(~allowed, torch.finfo(torch.float64).min)
    probs = torch.softmax(scores, -1)
    return torch.einsum("bhij,bhjd->bhid", probs, v), probs


def rel_err(a, b):
    return ((a.double() - b).abs().max() / b.abs().max()).item()


CASES = {
    "self": dict(lq=9, lk=9),
    "cross": dict(lq=5, lk=11),
    "padding": dict(lq=9, lk=9, pad=True),
    "bias": dict(lq=7, lk=7, bias=True),
    "causal": dict(lq=8, lk=8, causal=True),
    "causal_kv_cache": dict(lq=3, lk=10, causal=True),
    "causal_pad_bias": dict(lq=6, lk=6, causal=True, pad=True, bias=True),
    "bool_mask": dict(lq=6, lk=8, mask=True),
}


def make(case, dtype=torch.float32, b=3, h=4, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    lq, lk = case["lq"], case["lk"]
    q = torch.randn(b, h, lq, d, generator=g, dtype=dtype)
    k = torch.randn(b, h, lk, d, generator=g, dtype=dtype)
    v = torch.randn(b, h, lk, d, generator=g, dtype=dtype)
    kw = {}
    if case.get("pad"):
        kpm = torch.ones(b, lk, dtype=torch.bool)
        kpm[1, lk - 3 :] = False
        kpm[2, lk - 1 :] = False
        kw["key_padding_mask"] = kpm
    if case.get("bias"):
        kw["bias"] = torch.randn(1, h, lq, lk, generator=g, dtype=dtype)
    if case.get("mask"):
        m = torch.rand(lq, lk, generator=g) > 0.3
        m[:, 0] = True
        kw["mask"] = m
    if case.get("causal"):
        kw["causal"] = True
    return q, k, v, kw


@pytest.mark.parametrize("backend", ["sdpa", "math", "auto"])
@pytest.mark.parametrize("name", list(CASES))
def test_backend_matches_float64_reference(backend, name):
    q, k, v, kw = make(CASES[name])
    out = attention(q, k, v, backend=backend, **kw)
    ref, _ = reference(q, k, v, **kw)
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= 1e-5


def test_reference_would_catch_a_wrong_mask():
    # The comparison is sensitive: dropping the causal flag is far outside the tolerance.
    q, k, v, kw = make(CASES["causal"])
    ref, _ = reference(q, k, v, **kw)
    assert rel_err(attention(q, k, v, backend="sdpa"), ref) > 1e-2


def test_math_returns_probabilities():
    q, k, v, kw = make(CASES["causal_pad_bias"])
    out, probs = attention(q, k, v, backend="math", return_probs=True, **kw)
    ref, ref_probs = reference(q, k, v, **kw)
    assert rel_err(out, ref) <= 1e-5
    assert torch.allclose(probs.double(), ref_probs, atol=1e-6)
    assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-6)
    # auto with probabilities requested runs math
    assert select_backend(q, k, v, "auto", return_probs=True) == "math"


def test_custom_scale():
    q, k, v, kw = make(CASES["bias"])
    ref, _ = reference(q, k, v, scale=0.3, **kw)
    for backend in ("sdpa", "math"):
        assert rel_err(attention(q, k, v, backend=backend, scale=0.3, **kw), ref) <= 1e-5


def test_fully_masked_row_is_finite_and_backend_independent():
    q, k, v, _ = make(CASES["self"])
    kpm = torch.ones(3, 9, dtype=torch.bool)
    kpm[0] = False  # sample 0 has no valid key at all
    outs = [attention(q, k, v, key_padding_mask=kpm, backend=b) for b in ("sdpa", "math")]
    assert all(torch.isfinite(o).all() for o in outs)
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    # a query with no visible key averages the values uniformly
    assert torch.allclose(outs[1][0], v[0].mean(-2, keepdim=True).expand_as(outs[1][0]), atol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_dropout_is_unbiased(backend):
    torch.manual_seed(0)
    q, k, v, _ = make(CASES["self"], b=1, h=1, d=8)
    clean = attention(q, k, v, backend=backend)
    samples = torch.stack([attention(q, k, v, backend=backend, dropout_p=0.3) for _ in range(3000)])
    assert not torch.allclose(samples[0], clean, atol=1e-3)  # dropout is applied
    assert torch.allclose(samples.mean(0), clean, atol=0.06)  # and rescaled: the expectation is the clean output


def test_gradients_agree_between_backends():
    q, k, v, kw = make(CASES["causal_pad_bias"], dtype=torch.float64)
    grads = []
    for backend in ("sdpa", "math"):
        qq, kk, vv = (t.clone().requires_grad_(True) for t in (q, k, v))
        attention(qq, kk, vv, backend=backend, **kw).pow(2).sum().backward()
        grads.append([t.grad for t in (qq, kk, vv)])
    for a, b in zip(*grads):
        assert rel_err(a, b.double()) <= 1e-5


def test_bad_inputs_raise_clear_errors():
    q, k, v, _ = make(CASES["self"])
    with pytest.raises(ValueError, match=r"\(batch, heads, length, head_dim\)"):
        attention(q[0], k, v)
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        attention(q, k, v, key_padding_mask=torch.ones(3, 4))
    with pytest.raises(TypeError, match="mask must be boolean"):
        attention(q, k, v, mask=torch.zeros(9, 9))
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        attention(q, k, v, backend="flash")


# ---------------------------------------------------------------------------------------------------------------------
# selection rules
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def fake_xformers(monkeypatch):
    """Pretend xformers is importable (its kernels are never called in these tests)."""
    monkeypatch.setattr(A, "_xformers_ops", lambda: types.SimpleNamespace())
    return True


def _fake_cuda(dtype=torch.float16, d=64):
    return types.SimpleNamespace(is_cuda=True, dtype=dtype, shape=(2, 4, 16, d), device=torch.device("cpu"))


def test_xformers_never_chosen_for_cpu_tensors(fake_xformers):
    assert A.xformers_available()
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        q = torch.zeros(1, 2, 4, 8, dtype=dtype)
        assert select_backend(q, q, q, "auto") == "sdpa"
    q = torch.zeros(1, 2, 4, 8, dtype=torch.float16)
    with pytest.raises(AttentionBackendError, match="tensors are on cpu"):
        select_backend(q, q, q, "xformers")
    with pytest.raises(AttentionBackendError, match="xformers"):
        attention(q, q, q, backend="xformers")


def test_auto_picks_xformers_when_it_can_run(fake_xformers):
    t = _fake_cuda()
    assert select_backend(t, t, t, "auto") == "xformers"
    assert select_backend(t, t, t, "xformers") == "xformers"
    t32 = _fake_cuda(torch.float32)
    assert select_backend(t32, t32, t32, "auto") == "sdpa"  # fp32 stays on sdpa
    with pytest.raises(AttentionBackendError, match="float16/bfloat16"):
        select_backend(t32, t32, t32, "xformers")
    with pytest.raises(AttentionBackendError, match="probabilities"):
        select_backend(t, t, t, "xformers", return_probs=True)
    big = _fake_cuda(d=512)
    assert select_backend(big, big, big, "auto") == "sdpa"


def test_xformers_unavailable_is_explained(monkeypatch):
    monkeypatch.setattr(A, "_xformers_ops", lambda: None)
    t = _fake_cuda()
    assert select_backend(t, t, t, "auto") == "sdpa"
    with pytest.raises(AttentionBackendError, match="not importable"):
        select_backend(t, t, t, "xformers")


def test_sdpa_cannot_return_probabilities():
    q = torch.zeros(1, 1, 2, 4)
    with pytest.raises(AttentionBackendError, match="only 'math' returns probabilities"):
        attention(q, q, q, backend="sdpa", return_probs=True)


def test_precedence_env_call_force(monkeypatch):
    q = torch.zeros(1, 1, 2, 4)
    monkeypatch.setenv(A.ENV_VAR, "math")
    assert select_backend(q, q, q) == "math"  # environment default
    assert select_backend(q, q, q, "sdpa") == "sdpa"  # a layer/model choice beats the environment
    with force_backend("math"):
        assert select_backend(q, q, q, "sdpa") == "math"  # force beats everything
    assert select_backend(q, q, q, "sdpa") == "sdpa"  # and is undone on exit
    monkeypatch.setenv(A.ENV_VAR, "fast")
    with pytest.raises(ValueError, match=A.ENV_VAR):
        select_backend(q, q, q)


def test_set_attention_backend_reaches_layers():
    class Layer(torch.nn.Module):
        attn_backend = None

        def forward(self, q):
            return select_backend(q, q, q, self.attn_backend)

    model = torch.nn.Sequential(Layer(), torch.nn.Sequential(Layer()))
    A.set_attention_backend(model, "math")
    q = torch.zeros(1, 1, 2, 4)
    assert [m(q) for m in (model[0], model[1][0])] == ["math", "math"]
    with pytest.raises(ValueError, match="unknown attention backend"):
        A.set_attention_backend(model, "fastest")


# ---------------------------------------------------------------------------------------------------------------------
# transformers integration
# ---------------------------------------------------------------------------------------------------------------------
def _count_calls(monkeypatch):
    calls = []
    real = A.attention

    def counting(*args, **kwargs):
        calls.append(kwargs.get("backend"))
        return real(*args, **kwargs)

    monkeypatch.setattr(A, "attention", counting)
    return calls


def test_transformers_bert_runs_through_the_op(monkeypatch):
    from transformers import BertConfig, BertModel

    name = A.register_transformers_attention()
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    torch.manual_seed(0)
    eager = BertModel(cfg, add_pooling_layer=False).eval()
    eager.set_attn_implementation("eager")
    ours = BertModel(copy.deepcopy(cfg), add_pooling_layer=False).eval()
    ours.load_state_dict(eager.state_dict())
    ours.set_attn_implementation(name)
    ids = torch.randint(0, 100, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    calls = _count_calls(monkeypatch)
    with torch.no_grad():
        a = eager(input_ids=ids, attention_mask=mask).last_hidden_state
        b = ours(input_ids=ids, attention_mask=mask).last_hidden_state
    assert len(calls) == 2  # one call per layer, through our op
    assert torch.allclose(a[0], b[0], atol=1e-5)
    assert torch.allclose(a[1, :4], b[1, :4], atol=1e-5)  # padded positions are undefined in both
    A.set_attention_backend(ours, "math")
    with torch.no_grad():
        c = ours(input_ids=ids, attention_mask=mask).last_hidden_state
    assert calls[-1] == "math"
    assert torch.allclose(b[0], c[0], atol=1e-5)


def test_transformers_causal_lm_runs_through_the_op(monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    name = A.register_transformers_attention()
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    eager = LlamaForCausalLM(cfg).eval()
    eager.set_attn_implementation("eager")
    ours = LlamaForCausalLM(copy.deepcopy(cfg)).eval()
    ours.load_state_dict(eager.state_dict())
    ours.set_attn_implementation(name)
    ids = torch.randint(0, 64, (2, 9))
    calls = _count_calls(monkeypatch)
    with torch.no_grad():
        a = eager(input_ids=ids).logits
        b = ours(input_ids=ids).logits
    assert len(calls) == 2
    assert torch.allclose(a, b, atol=1e-5)
    # causality: changing the last token leaves the earlier logits unchanged
    ids2 = ids.clone()
    ids2[:, -1] = (ids2[:, -1] + 1) % 64
    with torch.no_grad():
        b2 = ours(input_ids=ids2).logits
    assert torch.allclose(b[:, :-1], b2[:, :-1], atol=1e-6)
    assert not torch.allclose(b[:, -1], b2[:, -1], atol=1e-4)
    # generation with the key/value cache gives the same tokens as eager
    with torch.no_grad():
        g1 = eager.generate(ids[:1], max_new_tokens=5, do_sample=False)
        g2 = ours.generate(ids[:1], max_new_tokens=5, do_sample=False)
    assert g1.tolist() == g2.tolist()


# ---------------------------------------------------------------------------------------------------------------------
# the xformers glue on the CPU: a stand-in for xformers.ops with its documented semantics
# ---------------------------------------------------------------------------------------------------------------------
class _BottomRightCausal:
    """Stands in for ``xformers.ops.fmha.attn_bias.LowerTriangularFromBottomRightMask``."""


def _stand_in_xops(calls: list):
    """``memory_efficient_attention`` as xformers documents it, in float64: (B, L, H, D) inputs, an additive
    ``attn_bias`` tensor (B, H, Lq, Lk) or the bottom-right causal mask object, ``scale`` and dropout ``p``."""

    def memory_efficient_attention(q, k, v, attn_bias=None, p=0.0, scale=None):
        calls.append({"bias": attn_bias, "p": p, "shapes": (q.shape, k.shape, v.shape)})
        qh, kh, vh = (t.transpose(1, 2).double() for t in (q, k, v))
        lq, lk = qh.shape[-2], kh.shape[-2]
        scores = qh @ kh.transpose(-1, -2) * (scale if scale is not None else qh.shape[-1] ** -0.5)
        if isinstance(attn_bias, _BottomRightCausal):
            rows = torch.arange(lq)[:, None] + (lk - lq)
            scores = scores.masked_fill(torch.arange(lk)[None, :] > rows, float("-inf"))
        elif attn_bias is not None:
            assert attn_bias.stride(-2) % 8 == 0  # xformers' alignment rule for bias rows
            scores = scores + attn_bias.double()
        return (torch.softmax(scores, -1) @ vh).to(q.dtype).transpose(1, 2)

    fmha = types.SimpleNamespace(attn_bias=types.SimpleNamespace(LowerTriangularFromBottomRightMask=_BottomRightCausal))
    return types.SimpleNamespace(memory_efficient_attention=memory_efficient_attention, fmha=fmha)


@pytest.mark.parametrize("name", list(CASES))
def test_xformers_glue_matches_float64_reference(monkeypatch, name):
    """Layout, masks, bias padding and causal alignment of the xformers call, checked on the CPU against the float64
    reference (the kernel itself runs only on CUDA: BENCHMARKS.md)."""
    calls: list = []
    monkeypatch.setattr(A, "_xformers_ops", lambda: _stand_in_xops(calls))
    monkeypatch.setattr(A, "select_backend", lambda *a, **kw: "xformers")
    q, k, v, kw = make(CASES[name])
    out = attention(q, k, v, **kw)
    want, _ = reference(q, k, v, **kw)
    assert rel_err(out, want) <= 1e-5 and out.shape == q.shape
    only_causal = kw.get("causal") and set(kw) == {"causal"}
    assert isinstance(calls[0]["bias"], _BottomRightCausal) == bool(only_causal)
    b, h, lq, d = q.shape
    assert calls[0]["shapes"] == (torch.Size([b, lq, h, d]), torch.Size([b, k.shape[2], h, d]),
                                  torch.Size([b, k.shape[2], h, d]))
    assert calls[0]["p"] == 0.0


def test_xformers_refusals_name_the_reason(fake_xformers):
    t = _fake_cuda()
    assert A._xformers_refusal(t, t, t, True) == "xformers cannot return attention probabilities (use the math backend)"
    wide_v = types.SimpleNamespace(is_cuda=True, dtype=torch.float16, shape=(2, 4, 16, 320), device=t.device)
    assert A._xformers_refusal(t, t, wide_v, False) == "head dim 320 > 256"
    assert A._xformers_refusal(t, t, t, False) is None


def test_keep_mask_is_made_on_the_given_device():
    """The causal keep-mask follows the tensors' device (the meta device stands in for a GPU)."""
    keep = A._keep_mask(None, None, True, 3, 5, torch.device("meta"))
    assert keep.device.type == "meta" and keep.shape == (1, 1, 3, 5)
    cpu = A._keep_mask(torch.ones(2, 5, dtype=torch.bool), None, True, 3, 5, torch.device("cpu"))
    assert cpu[0, 0].tolist() == [[j <= i + 2 for j in range(5)] for i in range(3)]


def test_incompatible_shapes_are_named():
    q, k, v, _ = make(CASES["cross"])
    with pytest.raises(ValueError, match=r"^incompatible shapes: q \(3, 4, 5, 16\), k \(3, 4, 11, 16\), "
                                         r"v \(3, 4, 10, 16\)$"):
        attention(q, k, v[:, :, :10])


def test_transformers_hook_defaults_and_one_query_with_a_cache():
    """Called as transformers calls it: no dropout unless given; a causal layer's single new query (generation with a
    key/value cache) sees every cached key; several new queries see the keys up to their own position."""
    module = torch.nn.Module()
    module.is_causal = True
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 4, n, 8, generator=g) for n in (1, 6, 6))
    out, probs = A._transformers_attention_forward(module, q, k, v, None)
    want, _ = reference(q, k, v)  # one query: nothing to hide
    assert probs is None and out.shape == (2, 1, 4, 8)
    assert rel_err(out.transpose(1, 2), want) <= 1e-5
    q3 = torch.randn(2, 4, 3, 8, generator=g)
    out3, _ = A._transformers_attention_forward(module, q3, k, v, None)
    assert rel_err(out3.transpose(1, 2), reference(q3, k, v, causal=True)[0]) <= 1e-5
