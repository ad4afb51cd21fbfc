"""Language model ``hf_causal_lm``: equal to transformers without conditioning; injection, prefix and inserted blocks
checked against computations written out here on transformers' own layers; cached and uncached generation agree;
official OPT / LLaMA sizes on the meta device equal the parameter counts of their config formulas."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zoo.modules.lm.causal_lm import HFCausalLM, Injection, causal_lm_loss, find_decoder_layers, left_pad
from zoo.registry import LANGUAGE_MODELS
from zoo.spec import ConfigError

V = 120
TINY = {
    "opt": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, ffn_dim=64, vocab_size=V,
                max_position_embeddings=64, word_embed_proj_dim=32, dropout=0.0, attention_dropout=0.0,
                pad_token_id=1, bos_token_id=2, eos_token_id=2, init_std=0.2),
    "llama": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64, vocab_size=V, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                  eos_token_id=2, initializer_range=0.2),
    "gpt2": dict(n_embd=32, n_layer=4, n_head=4, vocab_size=V, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
                 attn_pdrop=0.0, bos_token_id=1, eos_token_id=2, initializer_range=0.2),
}
FAMILIES = sorted(TINY)


def _lm(model_type: str, **kw) -> HFCausalLM:
    torch.manual_seed(0)
    return HFCausalLM(model_type=model_type, config=TINY[model_type], **kw).eval()


def _plain(lm: HFCausalLM, impl: str = "eager") -> nn.Module:
    """A separate transformers model (no hooks) with the same weights, on transformers' own attention."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(lm.config.model_type, **TINY[lm.config.model_type])
    ref = AutoModelForCausalLM.from_config(cfg, attn_implementation=impl).eval()
    ref.load_state_dict(lm.model.state_dict())
    return ref


def _batch(b: int = 2, length: int = 7, pad_last: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (b, length), generator=g)
    mask = torch.ones_like(ids)
    if pad_last:
        mask[-1, length - pad_last:] = 0
        ids[-1, length - pad_last:] = 0
    return ids, mask


def test_registered_and_layers_found():
    assert LANGUAGE_MODELS.get("hf_causal_lm") is HFCausalLM
    paths = {mt: _lm(mt).layers_path for mt in FAMILIES}
    assert paths == {"gpt2": "transformer.h", "llama": "model.layers", "opt": "model.decoder.layers"}
    with pytest.raises(ConfigError, match="model_type='nope'"):
        HFCausalLM(model_type="nope")


@pytest.mark.parametrize("model_type", FAMILIES)
def test_no_conditioning_equals_transformers(model_type):
    lm = _lm(model_type)
    ids, mask = _batch()
    ref = _plain(lm)(input_ids=ids, attention_mask=mask).logits
    out = lm(ids, mask).logits
    keep = mask.bool()
    torch.testing.assert_close(out[keep], ref[keep], atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_freeze_option(model_type):
    assert not any(p.requires_grad for p in _lm(model_type).parameters())
    assert all(p.requires_grad for p in _lm(model_type, freeze=False).parameters())


def _positions_hidden(model_type: str, ref: nn.Module, ids: torch.Tensor, mask: torch.Tensor):
    """Embeddings + positions for the text, as each family computes them before layer 0."""
    if model_type == "opt":
        dec = ref.model.decoder
        pos = (torch.cumsum(mask, 1) * mask - 1).long()
        return dec.embed_tokens(ids) + dec.embed_positions(mask, 0, position_ids=pos)
    if model_type == "gpt2":
        return ref.transformer.wte(ids) + ref.transformer.wpe(torch.arange(ids.shape[1])[None])
    return ref.model.embed_tokens(ids)


def _manual_injected_logits(model_type, ref, ids, mask, tokens, start, end, step):
    """The injection written out: a loop over the transformers layers of ``ref`` with an explicit float mask."""
    b, n = ids.shape
    h = _positions_hidden(model_type, ref, ids, mask)
    path, layers = find_decoder_layers(ref)
    low = torch.finfo(h.dtype).min

    def additive(length: int, lead: int) -> torch.Tensor:
        keep = torch.ones(length, length).tril().bool()[None, None].repeat(b, 1, 1, 1)
        keys = torch.cat([torch.ones(b, lead), mask.float()], 1).bool()  # padding keys masked
        keep = keep & keys[:, None, None, :]
        return torch.zeros(b, 1, length, length).masked_fill(~keep, low)

    rope = getattr(ref.model, "rotary_emb", None) if model_type == "llama" else None
    lead = 0
    for i, layer in enumerate(layers):
        if i == start:
            h, lead = torch.cat([tokens[0], h], 1), tokens[0].shape[1]
        elif start < i < end:
            h = torch.cat([tokens[min((i - start) // step, len(tokens) - 1)], h[:, lead:]], 1)
        m = additive(h.shape[1], lead)
        kwargs = {}
        if rope is not None:
            pos = torch.cat([torch.zeros(1, lead, dtype=torch.long), torch.arange(n)[None]], 1)
            kwargs["position_embeddings"] = rope(h, position_ids=pos)
            kwargs["position_ids"] = pos
        if model_type == "gpt2":
            h = layer(h, None, m)
        else:
            h = layer(h, attention_mask=m, **kwargs)
        h = h[0] if isinstance(h, tuple) else h
    h = h[:, lead:]
    norm = {"opt": lambda: ref.model.decoder.final_layer_norm, "llama": lambda: ref.model.norm,
            "gpt2": lambda: ref.transformer.ln_f}[model_type]()
    return ref.lm_head(norm(h))


@pytest.mark.parametrize("model_type", FAMILIES)
def test_injection_equals_manual_computation(model_type):
    """Prepend at layer 1, overwrite at layer 2 (two tokens, step 1), nothing at layer 3: equal to the written-out
    loop over transformers' layers with an explicit float mask and transformers' eager attention."""
    lm = _lm(model_type)
    ids, mask = _batch()
    g = torch.Generator().manual_seed(3)
    tokens = [torch.randn(2, 1, 32, generator=g) for _ in range(2)]
    out = lm(ids, mask, injection=Injection(tokens, start=1, end=3)).logits
    with torch.no_grad():
        ref = _manual_injected_logits(model_type, _plain(lm), ids, mask, tokens, start=1, end=3, step=1)
    keep = mask.bool()
    torch.testing.assert_close(out[keep], ref[keep], atol=1e-5, rtol=0)
    plain = lm(ids, mask).logits
    assert (out[keep] - plain[keep]).abs().max() > 1e-3  # the injection does change the outputs


@pytest.mark.parametrize("model_type", FAMILIES)
def test_injection_seen_by_layers(model_type):
    """A probe hook registered after the part's own sees: layers < start the text only; layer start the token
    prepended; later layers in range the next token at position 0; layers >= end the previous layer's output there."""
    lm = _lm(model_type)
    ids, mask = _batch(pad_last=0)
    tokens = [torch.full((2, 1, 32), float(i + 1)) for i in range(3)]  # step = (4-1)//3 = 1
    seen: dict[int, torch.Tensor] = {}
    layers = lm.decoder_layers
    handles = [layer.register_forward_pre_hook(
        lambda mod, args, kwargs, i=i: seen.__setitem__(i, args[0].detach().clone()), with_kwargs=True)
        for i, layer in enumerate(layers)]
    lm(ids, mask, injection=Injection(tokens, start=1, end=4))
    for h in handles:
        h.remove()
    assert seen[0].shape[1] == 7
    for i in (1, 2, 3):
        assert seen[i].shape[1] == 8
        torch.testing.assert_close(seen[i][:, 0], tokens[i - 1][:, 0])
    # schedule of the official code: 12 layers, 6 tokens -> step 2
    inj = Injection([torch.full((1, 1, 4), float(j)) for j in range(6)], start=19, end=31)
    assert inj.step == 2
    assert [int(inj.token_for(layer)[0, 0, 0]) for layer in range(19, 31)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


@pytest.mark.parametrize("model_type", FAMILIES)
def test_prefix_equals_inputs_embeds(model_type):
    """A prefix is the same as transformers called with inputs_embeds = [prefix; word embeddings]."""
    lm = _lm(model_type)
    ids, mask = _batch()
    prefix = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(4))
    out = lm(ids, mask, prefix=prefix)
    ref = _plain(lm)(inputs_embeds=torch.cat([prefix, lm.embed(ids)], 1),
                     attention_mask=torch.cat([torch.ones(2, 3, dtype=mask.dtype), mask], 1)).logits
    keep = mask.bool()
    torch.testing.assert_close(out.logits[keep], ref[:, 3:][keep], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.prefix_logits, ref[:, :3], atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", FAMILIES)
@pytest.mark.parametrize("num_beams", [1, 3])
def test_generation_cached_equals_uncached(model_type, num_beams):
    """With prefix and injection active: greedy / beam search give the same tokens with and without the key/value
    cache, and greedy tokens equal the step-by-step argmax of the part's own (uncached) forward."""
    lm = _lm(model_type)
    ids, mask = _batch()
    g = torch.Generator().manual_seed(5)
    inj = Injection([torch.randn(2, 1, 32, generator=g) for _ in range(2)], start=1, end=3)
    prefix = torch.randn(2, 2, 32, generator=g)
    kw = dict(injection=inj, prefix=prefix, max_new_tokens=6, num_beams=num_beams, do_sample=False,
              eos_token_id=None)
    cached = lm.generate(ids, mask, use_cache=True, **kw)
    uncached = lm.generate(ids, mask, use_cache=False, **kw)
    assert cached.shape == (2, 6)
    assert torch.equal(cached, uncached)
    if num_beams == 1:
        seq_ids, seq_mask = left_pad(ids, mask, lm.pad_token_id)
        for _ in range(6):
            nxt = lm(seq_ids, seq_mask, injection=inj, prefix=prefix).logits[:, -1].argmax(-1, keepdim=True)
            seq_ids = torch.cat([seq_ids, nxt], 1)
            seq_mask = torch.cat([seq_mask, torch.ones_like(nxt)], 1)
        assert torch.equal(seq_ids[:, -6:], cached)
    plain = lm.generate(ids, mask, max_new_tokens=6, num_beams=num_beams, do_sample=False, eos_token_id=None)
    assert not torch.equal(plain, cached)  # the conditioning reaches generation


def test_sampling_runs_with_conditioning():
    """Sampling with an injection is reproducible under a seed and the injection reaches it: catches an injection
    dropped from sampled generation (e.g. not expanded to ``num_return_sequences`` rows, or ignored), which equal
    outputs under one seed alone let through. The injection is drawn from a seeded generator."""
    lm = _lm("opt")
    ids, mask = _batch()
    inj = Injection(torch.randn(2, 1, 32, generator=torch.Generator().manual_seed(3)) * 4, start=2, end=4)
    kw = dict(do_sample=True, top_k=5, max_new_tokens=4, num_return_sequences=2)
    torch.manual_seed(0)
    a = lm.generate(ids, mask, injection=inj, **kw)
    torch.manual_seed(0)
    b = lm.generate(ids, mask, injection=inj, **kw)
    assert a.shape == (4, 4) and torch.equal(a, b)
    torch.manual_seed(0)
    plain = lm.generate(ids, mask, **kw)
    assert not torch.equal(plain, a)  # the same draws without the injection give other tokens
    # the first sampled token's distribution is the injected model's: the first step's top-5 logits under the
    # injection differ from the plain model's, so the injection changes what is sampled from
    with torch.no_grad():
        first = lm(ids, mask, injection=inj).logits[:, -1]
        first_plain = lm(ids, mask).logits[:, -1]
    assert not torch.allclose(first, first_plain)


class _AddContext(nn.Module):
    """An inserted block: h + scale * media (broadcast over positions); records what it was called with."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.calls: list[tuple[int, bool, int]] = []

    def forward(self, h, *, decoding, layer_idx, media=None):
        self.calls.append((layer_idx, decoding, h.shape[1]))
        return h if media is None else h + self.scale * media[:, None, :]


@pytest.mark.parametrize("model_type", FAMILIES)
def test_inserted_blocks(model_type):
    """insert_blocks runs the block right before the layer: equal to the written-out loop; keys are inserted.<i>.*;
    generation with the cache passes decoding=True and expands context tensors for beam search."""
    lm = _lm(model_type)
    assert lm.every_nth_layer(2) == [1, 3] and lm.every_nth_layer(4) == [3]
    block = _AddContext()
    lm.insert_blocks({2: block})
    assert "inserted.2.scale" in lm.state_dict() and lm.inserted["2"].scale.requires_grad
    ids, mask = _batch(pad_last=0)
    media = torch.randn(2, 32, generator=torch.Generator().manual_seed(6))
    out = lm(ids, mask, media=media).logits
    ref = _plain(lm)
    layer2 = find_decoder_layers(ref)[1][2]
    handle = layer2.register_forward_pre_hook(
        lambda m, args, kwargs: ((args[0] + media[:, None, :], *args[1:]), kwargs), with_kwargs=True)
    expected = ref(input_ids=ids, attention_mask=mask).logits
    handle.remove()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    block.calls.clear()
    lm.generate(ids, mask, max_new_tokens=3, num_beams=2, context={"media": media})
    assert block.calls[0] == (2, False, 7) and block.calls[1] == (2, True, 1)
    with pytest.raises(ValueError, match="out of range"):
        lm.insert_blocks({9: _AddContext()})


def test_loss_and_left_pad():
    logits = torch.randn(2, 4, 5, dtype=torch.float64)
    labels = torch.tensor([[1, 2, -100, 3], [-100, 4, 0, -100]])
    manual = [-torch.log_softmax(logits[0, 0], -1)[2], -torch.log_softmax(logits[0, 2], -1)[3],
              -torch.log_softmax(logits[1, 0], -1)[4], -torch.log_softmax(logits[1, 1], -1)[0]]
    torch.testing.assert_close(causal_lm_loss(logits, labels, "sum").double(), torch.stack(manual).sum().float()
                               .double(), atol=1e-5, rtol=0)
    torch.testing.assert_close(causal_lm_loss(logits, labels, "per_sample"),
                               torch.stack([manual[0] + manual[1], manual[2] + manual[3]]).float(), atol=1e-5, rtol=0)
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    lid, lmask = left_pad(ids, mask, pad_id=0)
    assert lid.tolist() == [[5, 6, 7], [0, 8, 9]] and lmask.tolist() == [[1, 1, 1], [0, 1, 1]]


# ---------------------------------------------------------------------------------------------------------------------
# official sizes on the meta device
# ---------------------------------------------------------------------------------------------------------------------
OPT_2_7B = dict(hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, ffn_dim=10240, vocab_size=50272,
                max_position_embeddings=2048, word_embed_proj_dim=2560, do_layer_norm_before=True)
OPT_6_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, ffn_dim=16384, vocab_size=50272,
                max_position_embeddings=2048, word_embed_proj_dim=4096, do_layer_norm_before=True)
LLAMA_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                intermediate_size=11008, vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False)


def _opt_formula(c: dict) -> int:
    d, f, v, n = c["hidden_size"], c["ffn_dim"], c["vocab_size"], c["num_hidden_layers"]
    layer = 4 * (d * d + d) + 2 * 2 * d + (d * f + f) + (f * d + d)  # q k v out, 2 LayerNorms, fc1, fc2
    return v * d + (c["max_position_embeddings"] + 2) * d + n * layer + 2 * d  # tokens, positions (+2), final LN


def _llama_formula(c: dict) -> int:
    d, f, v, n = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    layer = 4 * d * d + 3 * d * f + 2 * d  # q k v o (no bias), gate up down, 2 RMSNorms
    return v * d + n * layer + d + v * d  # embeddings, layers, final norm, untied lm_head


@pytest.mark.parametrize("model_type, cfg, formula, known", [
    ("opt", OPT_2_7B, _opt_formula, 2_651_596_800),
    ("opt", OPT_6_7B, _opt_formula, 6_658_473_984),
    ("llama", LLAMA_7B, _llama_formula, 6_738_415_616),
])
def test_official_sizes_on_meta(model_type, cfg, formula, known):
    with torch.device("meta"):
        lm = HFCausalLM(model_type=model_type, config=cfg)
    count = sum(p.numel() for p in {id(p): p for p in lm.parameters()}.values())
    assert formula(cfg) == known
    assert count == known
    assert lm.num_layers == 32 and not any(p.requires_grad for p in lm.parameters())


def test_prefix_with_positional_call():
    """The prefix hook also rewrites a call that passes input_ids (and the mask) positionally."""
    lm = _lm("llama")
    ids, mask = _batch(pad_last=0)
    prefix = torch.randn(2, 2, 32, generator=torch.Generator().manual_seed(8))
    placeholders = torch.cat([torch.zeros(2, 2, dtype=ids.dtype), ids], 1)
    with lm.conditioning(prefix=prefix):
        positional = lm.model(placeholders, torch.ones_like(placeholders)).logits
    torch.testing.assert_close(positional[:, 2:], lm(ids, mask, prefix=prefix).logits, atol=1e-5, rtol=0)
