"""CCLM: official parameter counts and layouts (meta device), the converters, the XLM-R-format tokenizer builder, and
the cross-lingual objectives and tasks on tiny configs (the original split-stack layout and the CCLM-X2VLM layout)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import zoo
from conftest import fit_steps, load_reference
from zoo.hub import WeightsError
from zoo.models.base import count_parameters
from zoo.models.cclm import convert_official_state_dict, detect_official_layout
from zoo.modules.outputs import EncoderOutput
from zoo.spec import ConfigError

# ---------------------------------------------------------------------------------------------------------------------
# official sizes and layouts (meta device)
# ---------------------------------------------------------------------------------------------------------------------
OFFICIAL = [
    ("cclm-base", "cclm_pretrain_4m_swinB224", "cclm"),
    ("cclm-x2vlm-base", "cclm_x2vlm_base", "cclm-x2vlm"),
    ("cclm-x2vlm-large", "cclm_x2vlm_large", "cclm-x2vlm"),
]


def _meta_official(name: str) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in load_reference(name)["state_dict"]}


@pytest.mark.parametrize("name, ref, layout", OFFICIAL)
def test_official_parameter_counts_per_part(name, ref, layout):
    model = zoo.create_model(name, device="meta")
    reference = load_reference(ref)
    by_prefix = reference["params_by_prefix"]
    assert count_parameters(model) == reference["total_params"]
    assert count_parameters(model.vision) == by_prefix["vision_encoder"]
    assert count_parameters(model.itm) == by_prefix["itm_head"]
    assert count_parameters(model.bbox) == by_prefix["bbox_head"]
    assert count_parameters(model.itc) == by_prefix["temp"] + by_prefix["vision_proj"] + by_prefix["text_proj"]
    if layout == "cclm":
        groups = reference["layer_group_counts"]["text_encoder.bert.encoder.layer"]
        layers = list(model.text.encoder.layer)
        assert sum(count_parameters(layer) for layer in layers[6:]) == groups["fusion_layers_6_11"]
        assert sum(count_parameters(layer) for layer in layers[:6]) == groups["text_layers_0_5"]
        # MLM decoder tied to the word embeddings: the text stack + own MLM parameters = official text_encoder
        assert count_parameters(torch.nn.ModuleList([model.text, model.mlm])) == by_prefix["text_encoder"]
        assert model.mlm.cls.predictions.decoder.weight is model.text.embeddings.word_embeddings.weight
    else:
        assert count_parameters(model.text) == by_prefix["text_encoder"]
        assert count_parameters(model.fusion) == by_prefix["cross_encoder"]
        assert count_parameters(model.mlm) == by_prefix["mlm_head"]  # untied: the full 250002-row decoder
        assert model.mlm.cls.predictions.decoder.weight is not model.text.get_input_embeddings().weight


@pytest.mark.parametrize("name, ref, layout", OFFICIAL)
def test_converter_maps_every_official_key_onto_our_layout(name, ref, layout):
    official = _meta_official(ref)
    assert detect_official_layout(official) == layout
    converted, dropped = convert_official_state_dict(official)
    model = zoo.create_model(name, device="meta")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == ours
    assert len(converted) + len(dropped) == len(official)
    buffers = set(load_reference(ref)["state_dict_key_is_buffer"])
    assert set(dropped) <= buffers  # only buffers that our parts recompute are dropped
    if layout == "cclm":  # Swin's relative_position_index / attn_mask (timm recomputes them)
        assert all(k.startswith("vision_encoder.") for k in dropped)
        assert "text_encoder.bert.embeddings.position_ids" not in dropped
    else:
        assert dropped == ["text_encoder.embeddings.position_ids"]


def test_converter_moves_swin_downsample_to_the_next_stage():
    official = _meta_official("cclm_pretrain_4m_swinB224")
    converted, _ = convert_official_state_dict(official)
    # official: merging at the END of stage 0 (128*4 -> 256); timm: at the START of stage 1
    assert tuple(converted["vision.layers.1.downsample.reduction.weight"].shape) == (256, 512)
    assert "vision.layers.0.downsample.reduction.weight" not in converted
    assert "text.encoder.layer.6.crossattention.self.key.weight" in converted
    assert "mlm.cls.predictions.decoder.weight" in converted and "itc.temp" in converted


def test_converter_rejects_unknown_and_unsupported_keys():
    for ref in ("cclm_pretrain_4m_swinB224", "cclm_x2vlm_base"):
        official = _meta_official(ref)
        official["some_new_head.weight"] = torch.empty(2, device="meta")
        with pytest.raises(WeightsError, match="some_new_head.weight"):
            convert_official_state_dict(official)
    marvl = _meta_official("cclm_pretrain_4m_swinB224")
    marvl["ta_head.weight"] = torch.empty(3, 1024, device="meta")
    with pytest.raises(WeightsError, match=r"^this is the original CCLM NLVR/MaRVL model \(fusion layers duplicated "
                                           r"per image, ta_head\); it has no counterpart here \(MaRVL uses X²-VLM's "
                                           r"nlvr head\)$"):
        convert_official_state_dict(marvl)
    with pytest.raises(WeightsError, match="not an official CCLM"):
        convert_official_state_dict({"vision_encoder.norm.weight": torch.empty(3)})


def test_fine_tuning_layouts_convert():
    """Fine-tuning checkpoints hold a BertModel (``text_encoder.*`` without ``bert.``), XVNLI a ``cls_head``."""
    official = {k.replace("text_encoder.bert.", "text_encoder."): v for k, v in _meta_official(
        "cclm_pretrain_4m_swinB224").items() if not k.startswith(("text_encoder.cls.", "bbox_head."))}
    official.update({"cls_head.0.weight": torch.empty(2048, 1024, device="meta")})
    converted, _ = convert_official_state_dict(official)
    assert "text.encoder.layer.11.output.dense.weight" in converted and "xvnli.mlp.0.weight" in converted


# ---------------------------------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------------------------------
SENTENCES = {
    "en": ["a red circle is left of a blue square", "the green triangle is above the yellow circle",
           "two small squares next to a big circle", "a blue triangle below a red square"],
    "de": ["ein roter Kreis ist links von einem blauen Quadrat", "das grüne Dreieck ist über dem gelben Kreis",
           "zwei kleine Quadrate neben einem großen Kreis", "ein blaues Dreieck unter einem roten Quadrat"],
    "fr": ["un cercle rouge est à gauche d'un carré bleu", "le triangle vert est au-dessus du cercle jaune",
           "deux petits carrés à côté d'un grand cercle", "un triangle bleu sous un carré rouge"],
}
ALL_SENTENCES = [s for lang in SENTENCES.values() for s in lang]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from zoo.data.multilingual_tokenizer import build_multilingual_tokenizer

    return build_multilingual_tokenizer(ALL_SENTENCES * 4, tmp_path_factory.mktemp("xlmr_tiny"), vocab_size=300)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from zoo.modules.text.hf import load_tokenizer

    return load_tokenizer(str(tokenizer_dir))


def test_tokenizer_folder_loads_as_xlm_roberta(tokenizer_dir, tokenizer):
    from transformers import AutoTokenizer

    assert {p.name for p in tokenizer_dir.iterdir()} >= {"tokenizer.json", "tokenizer_config.json",
                                                        "special_tokens_map.json"}
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    assert "XLMRoberta" in type(tok).__name__
    # XLM-R's special ids: <s> 0, <pad> 1, </s> 2, <unk> 3, <mask> the last id
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert (tok.cls_token_id, tok.sep_token_id) == (0, 2)
    assert tok.mask_token_id == len(tok) - 1 and tok.convert_ids_to_tokens(tok.mask_token_id) == "<mask>"
    assert len(tok) <= 301
    for sentence in ALL_SENTENCES:
        ids = tok(sentence)["input_ids"]
        assert ids[0] == 0 and ids[-1] == 2 and 3 not in ids  # known characters: no <unk>
        assert tok.decode(ids, skip_special_tokens=True) == sentence
    pair = tok(SENTENCES["en"][0], SENTENCES["de"][0])["input_ids"]
    a, b = tok(SENTENCES["en"][0])["input_ids"], tok(SENTENCES["de"][0])["input_ids"]
    assert pair == a + [2] + b[1:]  # <s> A </s> </s> B </s>, as XLM-R
    # the same file read by the tokenizers library splits identically
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    assert raw.encode(SENTENCES["fr"][1]).ids == tok(SENTENCES["fr"][1])["input_ids"]
    masked = tok("a <mask> circle")["input_ids"]
    assert masked.count(tok.mask_token_id) == 1
    batch = tok(SENTENCES["en"][:2], padding=True, return_tensors="pt")
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 1).all()  # padding with <pad> = 1


def test_bpe_tokenizer_and_bad_input(tmp_path):
    from transformers import AutoTokenizer

    from zoo.data.multilingual_tokenizer import build_multilingual_tokenizer

    folder = build_multilingual_tokenizer(ALL_SENTENCES, tmp_path / "bpe", vocab_size=200, model="bpe")
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.mask_token_id == len(tok) - 1
    ids = tok(SENTENCES["de"][2])["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == SENTENCES["de"][2]
    with pytest.raises(ValueError, match="non-empty"):
        build_multilingual_tokenizer(["", "  "], tmp_path / "empty")
    with pytest.raises(ValueError, match="unigram"):
        build_multilingual_tokenizer(ALL_SENTENCES, tmp_path / "x", model="wordpiece")


# ---------------------------------------------------------------------------------------------------------------------
# tiny models and batches
# ---------------------------------------------------------------------------------------------------------------------
# CCLM-X2VLM structure at toy widths: BEiT 2 blocks, XLM-R 2 layers, 2-layer cross encoder, untied MLM head
TINY_X2VLM = {
    "vision": {"img_size": 64, "embed_dim": 64, "depth": 2, "num_heads": 4, "drop_path_rate": 0.0},
    "text": {"config": {"vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                        "intermediate_size": 128, "max_position_embeddings": 66, "initializer_range": 0.07}},
    "fusion": {"num_layers": 2, "hidden_size": 64, "num_heads": 4, "intermediate_size": 128, "encoder_width": 64,
              "initializer_range": 0.07},
    "itc": {"vision_width": 64, "text_width": 64, "embed_dim": 32},
    "itm": {"width": 64},
    "bbox": {"width": 64},
    "mlm": {"hidden_size": 64, "vocab_size": 512, "initializer_range": 0.07},
}


def _tiny(kind: str, tokenizer_dir, task: str | None = None):
    torch.manual_seed(0)
    if kind == "split":
        return zoo.create_model("cclm-tiny", task=task, **{"text.tokenizer": str(tokenizer_dir)})
    return zoo.create_model("cclm-x2vlm-base", task=task, **TINY_X2VLM, **{"text.tokenizer": str(tokenizer_dir)})


def _mask(tokenizer, ids: torch.Tensor, attention_mask: torch.Tensor, n: int = 2):
    """Mask the first ``n`` non-special tokens of each row (fixed positions: a deterministic MLM batch)."""
    masked = ids.clone()
    pos = torch.zeros(ids.shape[0], n, dtype=torch.long)
    labels = torch.full((ids.shape[0], n), -100, dtype=torch.long)
    for b in range(ids.shape[0]):
        length = int(attention_mask[b].sum())
        for j, p in enumerate(range(1, min(1 + n, length - 1))):
            pos[b, j], labels[b, j] = p, ids[b, p]
            masked[b, p] = tokenizer.mask_token_id
    return masked, pos, labels


def _image_batch(tokenizer, g: torch.Generator) -> dict[str, torch.Tensor]:
    en = tokenizer(SENTENCES["en"], padding=True, return_tensors="pt")
    de = tokenizer(SENTENCES["de"], padding=True, return_tensors="pt")
    masked, pos, labels = _mask(tokenizer, en["input_ids"], en["attention_mask"])
    return {
        "images": torch.randn(4, 3, 64, 64, generator=g),
        "input_ids": en["input_ids"], "attention_mask": en["attention_mask"],
        "input_ids_2": de["input_ids"], "attention_mask_2": de["attention_mask"],
        "input_ids_masked": masked, "masked_pos": pos, "masked_ids": labels,
        "target_bbox": torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.3, 0.6, 0.2, 0.3], [0.7, 0.3, 0.3, 0.2],
                                     [0.4, 0.4, 0.5, 0.6]]),
        "is_image": torch.zeros(4),
    }


def _para_batch(tokenizer) -> dict[str, torch.Tensor]:
    en = tokenizer(SENTENCES["en"], padding=True, return_tensors="pt")
    fr = tokenizer(SENTENCES["fr"], padding=True, return_tensors="pt")
    masked, pos, labels = _mask(tokenizer, en["input_ids"], en["attention_mask"])
    return {"input_ids": en["input_ids"], "attention_mask": en["attention_mask"],
            "input_ids_2": fr["input_ids"], "attention_mask_2": fr["attention_mask"],
            "input_ids_masked": masked, "masked_pos": pos, "masked_ids": labels}


def _info_nce(a: torch.Tensor, b: torch.Tensor, temp: float) -> torch.Tensor:
    """Symmetric InfoNCE in float64, written out (the official get_contrastive_loss without image ids)."""
    logits = a.double() @ b.double().t() / temp
    target = torch.arange(a.shape[0])
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


@pytest.mark.parametrize("kind", ["split", "cross"])
def test_tiny_losses_match_the_official_formulas(kind, tokenizer_dir, tokenizer):
    model = _tiny(kind, tokenizer_dir).eval()  # eval: no dropout, so recomputation gives the same numbers
    batch = _image_batch(tokenizer, torch.Generator().manual_seed(0))
    with torch.no_grad():
        losses = model.pretrain_losses(batch, generator=torch.Generator().manual_seed(0))
        assert set(losses) == {"itc", "ttc", "itm", "mlm", "bbox_l1", "bbox_giou", "loss"}
        image = model.encode_image(batch["images"]).tokens[:, 0]
        t1 = model.encode_text(batch["input_ids"], batch["attention_mask"]).tokens[:, 0]
        t2 = model.encode_text(batch["input_ids_2"], batch["attention_mask_2"]).tokens[:, 0]
        fi = F.normalize(model.itc.vision_proj(image), dim=-1)
        f1, f2 = F.normalize(model.itc.text_proj(t1), dim=-1), F.normalize(model.itc.text_proj(t2), dim=-1)
        temp = float(model.itc.temp)
        # ITC averaged over both languages; TTC with text_proj on both sides and the same temperature
        itc = (_info_nce(fi, f1, temp) + _info_nce(fi, f2, temp)) / 2
        assert torch.allclose(losses["itc"].double(), itc, atol=1e-5)
        assert torch.allclose(losses["ttc"].double(), _info_nce(f1, f2, temp), atol=1e-5)
        # MLM: the masked first caption through text + fusion layers over the image, CE at the masked positions
        states = model.fuse(model.encode_text(batch["input_ids_masked"], batch["attention_mask"]).tokens,
                            batch["attention_mask"], model.encode_image(batch["images"]).tokens).tokens
        gathered = states[torch.arange(4)[:, None], batch["masked_pos"]]
        mlm = F.cross_entropy(model.mlm.cls(gathered).double().flatten(0, 1), batch["masked_ids"].flatten())
        assert torch.allclose(losses["mlm"].double(), mlm, atol=1e-5)
        assert torch.allclose(losses["loss"], sum(v for k, v in losses.items() if k != "loss"))

        # parallel text: TTC; MLM of sentence 1 cross-attending to sentence 2's text states
        para = _para_batch(tokenizer)
        out = model.pretrain_losses(para, generator=torch.Generator().manual_seed(0))
        assert set(out) == {"ttc", "ttm", "mlm", "loss"}
        p1 = model.encode_text(para["input_ids"], para["attention_mask"]).tokens
        p2 = model.encode_text(para["input_ids_2"], para["attention_mask_2"]).tokens
        g1, g2 = F.normalize(model.itc.text_proj(p1[:, 0]), dim=-1), F.normalize(model.itc.text_proj(p2[:, 0]), dim=-1)
        assert torch.allclose(out["ttc"].double(), _info_nce(g1, g2, temp), atol=1e-5)
        states = model.fuse(model.encode_text(para["input_ids_masked"], para["attention_mask"]).tokens,
                            para["attention_mask"], p2, para["attention_mask_2"]).tokens
        gathered = states[torch.arange(4)[:, None], para["masked_pos"]]
        mlm = F.cross_entropy(model.mlm.cls(gathered).double().flatten(0, 1), para["masked_ids"].flatten())
        assert torch.allclose(out["mlm"].double(), mlm, atol=1e-5)
        # the conditioning sentence matters: another sentence 2 changes the MLM loss
        shuffled = dict(para, input_ids_2=para["input_ids_2"].flip(0),
                        attention_mask_2=para["attention_mask_2"].flip(0))
        assert not torch.allclose(model.parallel_text_losses(shuffled, torch.Generator().manual_seed(0))["mlm"],
                                  out["mlm"])
        # without translations the multimodal branch is the official CCLM-X2VLM one (no ttc, plain ITC)
        mono = {k: v for k, v in batch.items() if not k.endswith("_2")}
        plain = model.pretrain_losses(mono, generator=torch.Generator().manual_seed(0))
        assert "ttc" not in plain and torch.allclose(plain["itc"].double(), _info_nce(fi, f1, temp), atol=1e-5)


def test_ttm_fuses_sentence_two_over_sentence_one(tokenizer_dir, tokenizer):
    """TTM = the official get_matching_loss(text_embeds, ..., text_embeds_2, ...): sentence 1 plays the image."""
    model = _tiny("split", tokenizer_dir).eval()
    para = _para_batch(tokenizer)
    with torch.no_grad():
        loss = model.parallel_text_losses(para, torch.Generator().manual_seed(3))["ttm"]
        t1 = model.encode_text(para["input_ids"], para["attention_mask"])
        t2 = model.encode_text(para["input_ids_2"], para["attention_mask_2"])
        f1, f2 = model.itc.embed_text(t1.tokens[:, 0]), model.itc.embed_text(t2.tokens[:, 0])
        from zoo.models.x2vlm import sample_hard_negatives

        neg1, neg2 = sample_hard_negatives(f1, f2, model.itc.temperature(), None, torch.Generator().manual_seed(3))
        m1, m2 = para["attention_mask"], para["attention_mask_2"]
        rows = [model.fuse(t2.tokens, m2, t1.tokens, m1), model.fuse(t2.tokens, m2, t1.tokens[neg1], m1[neg1]),
                model.fuse(t2.tokens[neg2], m2[neg2], t1.tokens, m1)]
        logits = model.itm.mlp(torch.cat([r.tokens[:, 0] for r in rows]))
        expected = F.cross_entropy(logits.double(), torch.tensor([1] * 4 + [0] * 8))
    assert torch.allclose(loss.double(), expected, atol=1e-5)
    assert (neg1 != torch.arange(4)).all() and (neg2 != torch.arange(4)).all()


@pytest.mark.parametrize("kind", ["split", "cross"])
def test_tiny_each_loss_decreases_on_a_fixed_batch(kind, tokenizer_dir, tokenizer):
    model = _tiny(kind, tokenizer_dir).train()
    image_batch = _image_batch(tokenizer, torch.Generator().manual_seed(1))
    para = _para_batch(tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history: list[dict[str, float]] = []
    for step in range(10):
        a = model.pretrain_losses(image_batch, generator=torch.Generator().manual_seed(0))
        b = model.pretrain_losses(para, generator=torch.Generator().manual_seed(0))
        total = a["loss"] + b["loss"]
        assert torch.isfinite(total)
        opt.zero_grad()
        total.backward()
        if step == 0:  # every part receives gradient (vision, text, fusion/cross, heads)
            parts = [model.vision, model.text, model.itc, model.itm, model.mlm, model.bbox]
            parts += [model.fusion] if model.fusion is not None else []
            for part in parts:
                assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), part
        opt.step()
        history.append({**{k: float(v.detach()) for k, v in a.items()},
                        **{f"para_{k}": float(v.detach()) for k, v in b.items()}})
    for key in ("itc", "ttc", "itm", "mlm", "bbox_l1", "para_ttc", "para_ttm", "para_mlm"):
        assert history[-1][key] < history[0][key], (key, [round(h[key], 4) for h in history])


def test_separate_cross_encoder_layout(tokenizer_dir, tokenizer):
    model = _tiny("cross", tokenizer_dir).eval()
    assert not model.split_stack and type(model.text).__name__ == "HFTextEncoder"
    ids = tokenizer(SENTENCES["de"][:2], padding=True, return_tensors="pt")
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(images, ids["input_ids"], ids["attention_mask"])
        fused = model.fusion(out["text"].tokens, ids["attention_mask"], out["image"].tokens).tokens
    assert out["fused"].tokens.shape == (2, ids["input_ids"].shape[1], 64)
    assert torch.allclose(out["fused"].tokens, fused)
    assert out["itm_logits"].shape == (2, 2) and out["image_feat"].shape == (2, 32)
    # the fusion is bidirectional: the first token's output depends on the last one
    changed = ids["input_ids"].clone()
    changed[1, int(ids["attention_mask"][1].sum()) - 2] = 7
    with torch.no_grad():
        again = model(images, changed, ids["attention_mask"])["fused"].tokens
    assert not torch.allclose(again[1, 0], out["fused"].tokens[1, 0])


def test_config_errors():
    with pytest.raises(ConfigError, match="fusion_start"):
        zoo.create_model("cclm-tiny", fusion={"type": "cross_attention", "num_layers": 1, "hidden_size": 64,
                                             "num_heads": 4, "intermediate_size": 128, "encoder_width": 64})
    with pytest.raises(ConfigError, match="split text/fusion stack"):
        zoo.create_model("cclm-tiny", **{"text.fusion_start": 4})
    with pytest.raises(ConfigError, match="encoder_width"):
        zoo.create_model("cclm-x2vlm-base", **{**TINY_X2VLM, "fusion": {**TINY_X2VLM["fusion"], "encoder_width": 32}})


def test_parallel_text_needs_equal_vision_and_text_width(tokenizer_dir, tokenizer):
    model = zoo.create_model("cclm-tiny", **{"vision.embed_dim": 16, "text.encoder_width": 32, "itc.vision_width": 32})
    with pytest.raises(ValueError, match="vision width == text width"):
        model.pretrain_losses(_para_batch(tokenizer))
    with pytest.raises(KeyError, match="input_ids_2"):
        model.pretrain_losses({"input_ids": torch.ones(2, 3, dtype=torch.long)})


# ---------------------------------------------------------------------------------------------------------------------
# tasks
# ---------------------------------------------------------------------------------------------------------------------
def test_tiny_retrieval(tokenizer_dir, tokenizer):
    model = _tiny("split", tokenizer_dir, task="retrieval")
    assert model.mlm is None and model.bbox is None
    batch = _image_batch(tokenizer, torch.Generator().manual_seed(2))
    english = {k: v for k, v in batch.items() if not k.endswith("_2")}
    losses = model.retrieval_losses(english, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"itc", "itm", "loss"}
    # with translations (data option `translation`): both languages' ITC and the text-text term, as pre-training
    torch.manual_seed(5)  # the same dropout draws for both calls
    both = model.retrieval_losses(batch, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    again = model.image_text_losses(batch, generator=torch.Generator().manual_seed(0))
    assert set(both) == {"itc", "ttc", "itm", "loss"} and torch.allclose(both["loss"], again["loss"])
    assert not torch.allclose(both["itc"], losses["itc"])
    model.eval()
    texts = tokenizer(ALL_SENTENCES[:5], padding=True, return_tensors="pt")
    i2t, t2i = model.retrieval_scores(batch["images"][:3], texts["input_ids"], texts["attention_mask"], k=2)
    assert i2t.shape == (3, 5) and t2i.shape == (5, 3)
    assert ((i2t != -100).sum(1) == 2).all() and ((t2i != -100).sum(1) == 2).all()
    i, t = (i2t != -100).nonzero()[0].tolist()
    with torch.no_grad():
        direct = model(batch["images"][i : i + 1], texts["input_ids"][t : t + 1],
                       texts["attention_mask"][t : t + 1])["itm_logits"][0, 1]
    assert torch.allclose(i2t[i, t], direct, atol=1e-5)


@pytest.mark.parametrize("kind", ["split", "cross"])
def test_tiny_generative_vqa_returns_answers_from_the_list(kind, tokenizer_dir, tokenizer):
    overrides = {} if kind == "split" else {"vqa": {"hidden_size": 64, "num_heads": 4, "intermediate_size": 128,
                                                    "vocab_size": 512, "max_position_embeddings": 66, "num_layers": 2,
                                                    "encoder_width": 64, "k_test": 4, "initializer_range": 0.07},
                                            "vision.img_size": 64}
    torch.manual_seed(0)
    base = "cclm-tiny" if kind == "split" else "cclm-x2vlm-base"
    extra = {} if kind == "split" else {k: v for k, v in TINY_X2VLM.items() if k in ("vision", "text", "fusion")}
    model = zoo.create_model(base, task="vqa", **extra, **overrides)
    assert model.generative_vqa and model.itc is None
    answers = ["rot", "bleu", "green"]
    answer_ids, answer_mask = model.vqa.encode_answers(answers, tokenizer)
    assert (answer_ids[:, 0] == 0).all()  # <s> starts every answer (XLM-R bos)
    q = tokenizer(["welche Farbe hat der Kreis", "quelle est la couleur du carré"], padding=True, return_tensors="pt")
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    batch = {"images": images, "question_ids": q["input_ids"], "question_mask": q["attention_mask"],
             "answer_ids": answer_ids[:2], "answer_mask": answer_mask[:2], "weights": torch.ones(2),
             "answers_per_question": torch.tensor([1, 1])}
    losses = fit_steps(lambda: model.vqa_loss(batch)["loss"], model.parameters(), steps=15, lr=2e-3)
    assert losses[-1] < losses[0]
    out = model.eval().vqa_predict(images, q["input_ids"], q["attention_mask"], answer_ids, answer_mask, k=3,
                                   answers=answers)
    assert out["answer"] == ["rot", "bleu"] and out["index"].tolist() == [0, 1]


def test_tiny_xvnli_and_marvl(tokenizer_dir, tokenizer):
    model = _tiny("split", tokenizer_dir, task="xvnli")
    g = torch.Generator().manual_seed(5)
    hyp = tokenizer(SENTENCES["fr"][:3], padding=True, return_tensors="pt")
    batch = {"images": torch.randn(3, 3, 64, 64, generator=g), "input_ids": hyp["input_ids"],
             "attention_mask": hyp["attention_mask"], "labels": torch.tensor([0, 1, 2])}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        out = model.xvnli_loss(batch)
        losses.append(float(out["loss"].detach()))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert out["logits"].shape == (3, 3) and losses[-1] < losses[0]
    model.eval()
    pred = model.xvnli_predict(batch["images"], batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():  # the 3-way MLP on the fused CLS of (image, hypothesis)
        cls = model.encode_fused(batch["input_ids"], batch["attention_mask"],
                                 model.encode_image(batch["images"])).tokens[:, 0]
        expected = model.xvnli.mlp(cls).argmax(-1)
    assert pred["index"].tolist() == expected.tolist()
    assert all(a in ("entailment", "neutral", "contradiction") for a in pred["answer"])

    marvl = _tiny("split", tokenizer_dir, task="nlvr").eval()
    a, b = torch.randn(2, 3, 64, 64, generator=g), torch.randn(2, 3, 64, 64, generator=g)
    ids = tokenizer(SENTENCES["de"][:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = marvl.nlvr_logits(a, b, ids["input_ids"], ids["attention_mask"])
    assert logits.shape == (2, 2)
    loss = marvl.nlvr_loss({"images_a": a, "images_b": b, **ids, "labels": torch.tensor([0, 1])})["loss"]
    assert torch.isfinite(loss)


@pytest.mark.parametrize("kind", ["split", "cross"])
def test_export_round_trip(kind, tokenizer_dir, tokenizer, tmp_path):
    model = _tiny(kind, tokenizer_dir).eval()
    model.save_pretrained(tmp_path / "export")
    again = zoo.from_pretrained(tmp_path / "export").eval()
    reloaded_tok = again.text.get_tokenizer()
    assert reloaded_tok("ein roter Kreis")["input_ids"] == tokenizer("ein roter Kreis")["input_ids"]
    batch = _image_batch(tokenizer, torch.Generator().manual_seed(7))
    with torch.no_grad():
        a = model(batch["images"], batch["input_ids"], batch["attention_mask"])
        b = again(batch["images"], batch["input_ids"], batch["attention_mask"])
        la = model.pretrain_losses(batch, generator=torch.Generator().manual_seed(0))
        lb = again.pretrain_losses(batch, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a["fused"].tokens, b["fused"].tokens) and torch.equal(a["itm_logits"], b["itm_logits"])
    assert all(torch.equal(la[k], lb[k]) for k in la)
    if kind == "split":
        assert again.mlm.cls.predictions.decoder.weight is again.text.embeddings.word_embeddings.weight


def test_region_batches_reuse_x2vlm_region_view(tokenizer_dir, tokenizer):
    model = _tiny("split", tokenizer_dir).eval()
    batch = _image_batch(tokenizer, torch.Generator().manual_seed(8))
    n = model.encode_image(batch["images"][:1]).tokens.shape[1]
    region = torch.zeros(4, n, dtype=torch.long)
    region[:, 0] = 1
    region[:, 1:9] = 1
    batch = dict(batch, images=batch["images"][:2], image_index=torch.tensor([0, 0, 1, 1]), region_mask=region)
    with torch.no_grad():
        losses = model.pretrain_losses(batch, generator=torch.Generator().manual_seed(0))
    assert {"itc", "ttc", "itm", "mlm", "bbox_l1", "bbox_giou"} <= set(losses)
    assert isinstance(model.region_view(model.encode_image(batch["images"]), batch["image_index"], region)[0],
                      EncoderOutput)


def test_official_checkpoints_are_recognised():
    """`mmzoo convert cclm` picks the registered model, task and resolution from the official keys and shapes."""
    from zoo.models.cclm import describe_official_checkpoint

    info = describe_official_checkpoint(_meta_official("cclm_pretrain_4m_swinB224"))
    assert (info["model"], info["layout"], info["task"], info["image_size"]) == ("cclm-base", "cclm", None, 224)
    for ref, name in (("cclm_x2vlm_base", "cclm-x2vlm-base"), ("cclm_x2vlm_large", "cclm-x2vlm-large")):
        official = _meta_official(ref)
        info = describe_official_checkpoint(official)
        assert (info["model"], info["layout"], info["task"], info["image_size"]) == (name, "cclm-x2vlm", None, 224)
        retrieval = {k: v for k, v in official.items() if not k.startswith(("mlm_head.", "bbox_head."))}
        assert describe_official_checkpoint(retrieval)["task"] == "retrieval"
        assert describe_official_checkpoint({**retrieval, "cls_head.0.weight": torch.empty(1)})["task"] == "xvnli"
        assert describe_official_checkpoint({**retrieval, "text_decoder.cls.x": torch.empty(1)})["task"] == "vqa"
    with pytest.raises(WeightsError, match="no 'text_encoder.' keys"):
        describe_official_checkpoint({"vision_encoder.x": torch.empty(1)})
    # the original layout (text_encoder.*, no cross_encoder.*) without the Swin table that tells its window
    with pytest.raises(WeightsError, match=r"^not an official CCLM checkpoint: no Swin 'vision_encoder\.layers\.0\."
                                           r"blocks\.0\.attn\.relative_position_bias_table'$"):
        describe_official_checkpoint({"text_encoder.bert.embeddings.word_embeddings.weight": torch.empty(1)})


def test_xvnli_class_order_is_the_official_label_mapper():
    """Catches a reordered XVNLI class order (``XVNLI_LABELS`` or a shipped head's ``labels``, e.g. DaVinci's
    contradiction, neutral, entailment): class i of every CCLM XVNLI head is the name the official ``label_mapper``
    maps to i (zengyan-97/CCLM dataset/xvnli_dataset.py:15, recorded with its source in
    tests/reference/official_defaults.json)."""
    import json

    from conftest import REFERENCE_DIR
    from zoo.factory import resolve_config
    from zoo.models.cclm import XVNLI_LABELS

    with open(REFERENCE_DIR / "official_defaults.json", encoding="utf-8") as fh:
        entry = json.load(fh)["values"]["cclm_xvnli_labels"]
    assert any("CCLM" in s and "xvnli_dataset.py:15" in s for s in entry["source"])
    mapper = entry["value"]
    assert {name: i for i, name in enumerate(XVNLI_LABELS)} == mapper
    for name in ("cclm-tiny", "cclm-base", "cclm-x2vlm-base", "cclm-x2vlm-large"):
        head = resolve_config(name, task="xvnli")["model"]["xvnli"]
        assert head["num_classes"] == len(mapper), name
        labels = head.get("labels") or XVNLI_LABELS
        assert {label: i for i, label in enumerate(labels)} == mapper, name
    model = zoo.create_model("cclm-tiny", task="xvnli", device="meta")
    assert {label: i for i, label in enumerate(model.ve_labels)} == mapper


# our prefix -> the official one for the original CCLM layout (the converter's rules read backwards)
_TO_OFFICIAL = [("vision.", "vision_encoder."), ("text.", "text_encoder.bert."), ("mlm.cls.", "text_encoder.cls."),
                ("itc.vision_proj.", "vision_proj."), ("itc.text_proj.", "text_proj."), ("itc.temp", "temp"),
                ("itm.mlp.", "itm_head."), ("bbox.mlp.", "bbox_head."), ("xvnli.mlp.", "cls_head."),
                ("vqa.decoder.bert.", "text_decoder.bert."), ("vqa.cls.", "text_decoder.cls.")]


def test_convert_official_checkpoint_end_to_end(tmp_path):
    """`mmzoo convert cclm`: an official-layout XVNLI checkpoint (cclm-tiny's weights under the official names, each
    Swin patch merging at the end of the stage before, as the official code keeps it) is read, its layout, task and
    window told from its keys and shapes, converted, built as the named model and exported; the export holds every
    tensor of the model it came from."""
    import re

    from zoo.models.cclm import convert_official_checkpoint

    torch.manual_seed(4)
    model = zoo.create_model("cclm-tiny", task="xvnli")
    official = {}
    for key, value in model.state_dict().items():
        merge = re.match(r"vision\.layers\.(\d+)\.downsample\.(.*)", key)
        if merge:
            key = f"vision.layers.{int(merge[1]) - 1}.downsample.{merge[2]}"
        ours, theirs = next((o, t) for o, t in _TO_OFFICIAL if key.startswith(o))
        official[theirs + key[len(ours):]] = value.clone()
    torch.save({"model": official}, tmp_path / "official.pth")
    report = convert_official_checkpoint(str(tmp_path / "official.pth"), str(tmp_path / "export"), model="cclm-tiny")
    assert (report["model"], report["layout"], report["task"], report["image_size"]) == ("cclm-tiny", "cclm", "xvnli", 64)
    assert report["tensors"] == len(official) - len(report["dropped"])
    assert all(re.search(r"\.(relative_position_index|attn_mask)$", k) for k in report["dropped"])
    again = zoo.from_pretrained(tmp_path / "export").state_dict()
    assert again.keys() == model.state_dict().keys()
    assert all(torch.equal(again[k], v) for k, v in model.state_dict().items())
    with pytest.raises(WeightsError, match="Swin window 4: .* name the registered model"):
        convert_official_checkpoint(str(tmp_path / "official.pth"), str(tmp_path / "unnamed"))
    assert not (tmp_path / "unnamed").exists()
