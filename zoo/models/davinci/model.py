"""DaVinci (Diao et al., "Write and Paint", 2022): a ResNet grid, a prefix encoder with a 2-D relative position bias,
and one causal decoder that writes text *and* VQGAN image codes, with word embeddings tied three ways.

Facts from the official code (shizhediao/DaVinci @283ea6f: models/davinci_pretrain.py, models/xbert.py
``BertModelImage`` for the encoder, models/bert.py ``BertLMHeadModel`` for the decoder, models/resnet.py
``resnet101emb``, Pretrain.py, configs/config_bert.json, configs/{Pretrain,VQA,gen_coco,VE,NLVR,image_sampling}.yaml):

- vision (``vision``, :mod:`zoo.models.davinci.resnet_grid`): ResNet-101 through ``layer3``, CLS token and learned
  position embedding → ``(B, 1 + N, 1024)``; ``vision_proj`` Linear(1024 → 768) to the encoder width.
- encoder (``text``, :class:`DaVinciEncoder`, official ``encoder``): BERT embeddings over the *text* only (word +
  position 0.. + token type 0, LayerNorm, dropout; vocabulary 30522 text + 1024 visual = 31546; 257 positions), then
  the projected image tokens are *prepended* without any embedding, and 6 bidirectional BERT layers run over
  ``[image ; text]``. Every layer owns a relative position bias table ``((2g−1)², heads)`` (g = 16, zeros at
  initialisation); the bias ``table[index[i, j]]`` with ``index = (Δrow + g − 1)(2g − 1) + (Δcol + g − 1)`` over the
  row-major g×g grid is added to the attention scores (after the 1/√d scaling) of the image *patch* tokens — sequence
  positions ``1 .. g²``, the CLS token at 0 and the text get none. It is applied only when an image is given and it is
  not a prefix image (``twoD_relative = input_v_embs is not None and not prefix_image``): text-only inputs and the
  prefix-image branch run without it. At resolutions above 256 px the grid stays 16: the bias covers the first 256
  patch tokens with 16-wide indexing (an official quirk, kept).
- decoder (``text_decoder``, the ``vqa_generative`` head: its 6 causal BERT layers with cross-attention to the encoder
  output and BERT's LM head): its own position / token-type embeddings and LayerNorm; word embeddings, LM output matrix
  and encoder word embeddings are one tensor (3-way tying), the LM bias one tensor with ``predictions.bias``. The
  official decoder layers also hold ``relative_bias_table`` parameters in self- and cross-attention that its forward
  never reads; they are kept (frozen, ``requires_grad=False``) so official checkpoints load and the parameter count is
  the official 153,284,178.
- objectives: prefix text LM (caption split at a random word: image + prefix → encoder, decoder ``[CLS] suffix [SEP]``),
  prefix image modelling (the top ``r`` grid rows of the image, ``r`` uniform in ``0 .. g−2``, + the whole caption →
  encoder without the relative bias; the decoder reads ``[IMG_BOS = 2]`` then writes the VQGAN codes of the remaining
  rows, offset by the text vocabulary 30522), text-only prefix LM (C4 in the paper); each a mean token cross-entropy
  over the shifted targets with padding ignored; total = weighted sum (official weights 1, 1, 1).
- VQA: image + question → encoder; answers ``[CLS] answer [SEP]`` ([SEP] is the end token the decoder learns); loss
  ``Σ weight · (summed token CE) / B``; evaluation ranks an answer list (first-token top-k, then full sequences) —
  exactly X²-VLM's ``rank_answer``, reused from :class:`zoo.heads.vqa.GenerativeVQAHead`.
- captioning: empty encoder text (``[CLS]`` only) after the image; decoder trained on ``[CLS] a picture of caption
  [SEP]`` with the prompt positions ignored and label smoothing 0.1; beam search (2 beams, max_length 20 counting the
  prompt, min_length 5) from ``[CLS] a picture of``.
- SNLI-VE / NLVR2: empty encoder text after the image, the hypothesis / sentence into the decoder, the decoder state at
  the last token (``[SEP]``, ``attention_mask.sum − 1``) → ``Linear(d, d) → ReLU → Linear(d, 3)`` (VE) or, for the two
  images' states concatenated, ``Linear(2d, d) → ReLU → Linear(d, 2)`` (NLVR2).
- text-to-image: the caption alone → encoder; the decoder samples 256 codes after ``[IMG_BOS]`` (top-k 4000, config
  top-p 0.9), decoded to pixels by the VQGAN.

Reused: timm (the ResNet), transformers (BERT embeddings, LM head, top-k / top-p warpers), diffusers (the VQGAN, see
:mod:`zoo.models.davinci.vqgan`), :class:`zoo.modules.layers.TransformerLayer` and the attention op (the bias goes in
as its additive ``bias``), :class:`zoo.heads.vqa.GenerativeVQAHead` (decoder, answer loss, ranking) and
:func:`zoo.generation.beam_search`. Hand-written: the bias table lookup, the objectives' batching, the converter.

Deviations, on purpose: the official eval answer list is tokenised ``answer + "[SEP]"`` by a tokenizer that adds
another ``[SEP]`` (``[CLS] a [SEP] [SEP]``) while training answers end with one; both end with one here (the
collators' format). Text-to-image samples among the 1024 code logits only (the official samples the whole vocabulary
and discards an image when a text token comes out) and applies top-p as configured (the official sampler has it
commented out). Caption beam search is :func:`zoo.generation.beam_search` (s2s-ft semantics, no n-gram blocking,
no length penalty) rather than transformers' ``generate``; ``max_length`` / ``min_length`` still count the prompt,
as the official ``generate`` call does.

Decoding (captions, open-ended answers, and image codes through ``generate_image``) keeps a key/value cache by
default (:mod:`zoo.modules.kv_cache`): per decoder layer the self-attention keys/values of the tokens already written,
and the encoder states' cross-attention keys/values projected once per example (shared by its beams); each step runs
the newest token only, and the LM head only at the last position. ``use_cache=False`` reruns the whole prefix every
step (same outputs up to float rounding; ``generate_codes`` called directly reruns unless given ``use_cache=True``).
Answer ranking (``vqa_predict``) scores whole answers in one teacher-forced pass and has no steps to cache.

Keys: ``vision.trunk.*`` / ``vision.{cls_token,pos_embed}``, ``vision_proj.*``, ``text.{embeddings,encoder.layer.N}.*``,
``text_decoder.decoder.bert.*``, ``text_decoder.cls.*``, optional ``image_tokenizer.vq.*`` (diffusers names),
``ve_head.*``, ``nlvr_head.*``; :func:`zoo.models.davinci.convert.convert_official_state_dict` maps the official names.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.models.base import CLIP_PREPROCESS, ZooModel
from zoo.modules.kv_cache import KVCache
from zoo.modules.layers import LayerStack, TransformerLayer, init_bert_weights
from zoo.modules.outputs import EncoderOutput
from zoo.registry import MODELS, TEXT_ENCODERS
from zoo.spec import ConfigError, Part, check_width

__all__ = [
    "DaVinci",
    "DaVinciEncoder",
    "relative_position_index",
    "official_tokenize",
    "pretrain_batch_inputs",
    "pretrain_text_inputs",
]

_IGNORE = -100
LOSS_NAMES = ("prefix_lm", "image_lm", "text_lm")


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------
def relative_position_index(grid: int) -> Tensor:
    """``(g², g²)`` index into the ``((2g−1)², heads)`` table for the row-major g×g grid, as the official
    ``BertSelfAttention``: ``(Δrow + g − 1)·(2g − 1) + (Δcol + g − 1)`` with Δ = query − key."""
    coords = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]
    return (rel[0] + grid - 1) * (2 * grid - 1) + (rel[1] + grid - 1)


def official_tokenize(tokenizer: Any, texts: Sequence[str], max_tokens: int | None = 30) -> tuple[Tensor, Tensor]:
    """``(ids, mask)`` as DaVinci's tokenizer (``add_single_sep=False``): ``[CLS] text [SEP]``, but only ``[CLS]`` for
    an empty text; cut to ``max_tokens`` (special tokens included), padded to the longest."""
    pieces = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    keep = None if max_tokens is None else max(max_tokens - 2, 0)
    rows = [[cls, *(p if keep is None else p[:keep]), sep] if p else [cls] for p in pieces]
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def _split_at_random_word(text: str, rng: random.Random, max_prefix_words: int) -> tuple[str, str]:
    words = text.split(" ")
    cut = min(rng.randrange(len(words)), max_prefix_words)  # official: min(np.random.randint(0, len(wds)), MAX)
    return " ".join(words[:cut]), " ".join(words[cut:])


def pretrain_text_inputs(
    tokenizer: Any,
    captions: Sequence[str],
    texts: Sequence[str] | None = None,
    *,
    rng: random.Random | None = None,
    max_tokens: int = 30,
    text_max_words: int = 96,
    text_max_tokens: int = 256,
) -> dict[str, Tensor]:
    """The text part of a pre-training batch, as the official Pretrain.py builds it.

    Each caption is split at a random word (prefix → ``prefix_ids``, suffix → ``target_ids``; ``max_tokens`` 30) and
    kept whole (``caption_ids``, for image modelling); each text-only document (``texts``) likewise into
    ``text_prefix_ids`` / ``text_target_ids`` (prefix at most ``text_max_words`` words, ``text_max_tokens`` 256).
    """
    rng = rng if rng is not None else random.Random()
    out: dict[str, Tensor] = {}
    pre, gen = zip(*(_split_at_random_word(c, rng, max_tokens) for c in captions))
    out["prefix_ids"], out["prefix_mask"] = official_tokenize(tokenizer, pre, max_tokens)
    out["target_ids"], out["target_mask"] = official_tokenize(tokenizer, gen, max_tokens)
    out["caption_ids"], out["caption_mask"] = official_tokenize(tokenizer, captions, max_tokens)
    if texts:
        pre, gen = zip(*(_split_at_random_word(t, rng, text_max_words) for t in texts))
        out["text_prefix_ids"], out["text_prefix_mask"] = official_tokenize(tokenizer, pre, text_max_tokens)
        out["text_target_ids"], out["text_target_mask"] = official_tokenize(tokenizer, gen, text_max_tokens)
    return out


def pretrain_batch_inputs(tokenizer: Any, captions: Sequence[str], images: Tensor, *, rng: random.Random,
                          max_tokens: int = 30, codes: bool = False, mean: Sequence[float] = CLIP_PREPROCESS["mean"],
                          std: Sequence[float] = CLIP_PREPROCESS["std"]) -> dict[str, Tensor]:
    """What ``mmzoo train``'s pre-training batches add for DaVinci (:attr:`DaVinci.pretrain_inputs`): the caption
    splits of :func:`pretrain_text_inputs` and, with ``codes`` (a model with an image tokenizer), ``code_images``: the
    batch's images back in [0, 1] (the data transform's normalisation by ``mean`` / ``std``, the model's, undone),
    which the image tokenizer turns into the codes image modelling predicts."""
    out = pretrain_text_inputs(tokenizer, captions, rng=rng, max_tokens=max_tokens)
    if codes:
        m = images.new_tensor(tuple(mean)).view(1, 3, 1, 1)
        s = images.new_tensor(tuple(std)).view(1, 3, 1, 1)
        out["code_images"] = (images * s + m).clamp(0.0, 1.0)
    return out


def _add_relative_tables(attn: nn.Module, grid: int, heads: int, trainable: bool = True) -> None:
    """Give an attention module the official ``relative_bias_table`` parameter (zeros, as the official init)."""
    table = nn.Parameter(torch.zeros((2 * grid - 1) ** 2, heads), requires_grad=trainable)
    attn.register_parameter("relative_bias_table", table)


# ---------------------------------------------------------------------------------------------------------------------
# encoder
# ---------------------------------------------------------------------------------------------------------------------
@TEXT_ENCODERS.register("davinci_text")
class DaVinciEncoder(nn.Module):
    """DaVinci's prefix encoder (official ``BertModelImage``): text embeddings, image tokens prepended, bidirectional
    BERT layers with a per-layer 2-D relative position bias over the image grid (see the module docstring).

    Args:
        hidden_size, num_layers, num_heads, intermediate_size: layer sizes (official 768, 6, 12, 3072).
        vocab_size: text vocabulary (bert-base-uncased 30522); visual_vocab_size: VQGAN codes (1024) — the embedding
            table has ``vocab_size + visual_vocab_size`` rows and code ``c`` is token ``vocab_size + c``.
        max_position_embeddings: text positions (official 257); type_vocab_size: 2.
        relative_grid: side g of the grid the bias table covers (official 16, the 256 px grid); image inputs need at
            least g² patch tokens.
        pad_token_id, layer_norm_eps, hidden_dropout, attention_dropout: BERT's (0, 1e-12, 0.1, 0.1).
        tokenizer: local tokenizer folder (``pkg:`` paths allowed).
        initializer_range: std of BERT's normal initialisation (0.02; ``0.02·√(768 / width)`` for toy widths).
    """

    def __init__(
        self,
        hidden_size: int = 768,
        num_layers: int = 6,
        num_heads: int = 12,
        intermediate_size: int = 3072,
        vocab_size: int = 30522,
        visual_vocab_size: int = 1024,
        max_position_embeddings: int = 257,
        type_vocab_size: int = 2,
        relative_grid: int = 16,
        pad_token_id: int = 0,
        layer_norm_eps: float = 1e-12,
        hidden_dropout: float = 0.1,
        attention_dropout: float = 0.1,
        tokenizer: str | None = None,
        initializer_range: float = 0.02,
    ):
        super().__init__()
        from zoo.modules.text.split_bert import build_embeddings  # noqa: PLC0415

        if hidden_size % num_heads:
            raise ConfigError(f"hidden_size={hidden_size} is not a multiple of num_heads={num_heads}")
        if relative_grid < 1 or num_layers < 1:
            raise ConfigError(f"relative_grid={relative_grid} and num_layers={num_layers} must be positive")
        self.width = hidden_size
        self.num_heads = num_heads
        self.text_vocab_size = vocab_size
        self.visual_vocab_size = visual_vocab_size
        self.vocab_size = vocab_size + visual_vocab_size
        self.relative_grid = relative_grid
        self.tokenizer = tokenizer
        self.embeddings = build_embeddings(
            "bert", vocab_size=self.vocab_size, hidden_size=hidden_size,
            max_position_embeddings=max_position_embeddings,
            type_vocab_size=type_vocab_size, pad_token_id=pad_token_id, layer_norm_eps=layer_norm_eps,
            dropout=hidden_dropout,
        )
        self.encoder = LayerStack([
            TransformerLayer(hidden_size, num_heads, intermediate_size, eps=layer_norm_eps, attn_drop=attention_dropout,
                             drop=hidden_dropout)
            for _ in range(num_layers)
        ])
        init_bert_weights(self, initializer_range)
        for layer in self.encoder.layer:
            _add_relative_tables(layer.attention.self, relative_grid, num_heads)
        # recomputed from the grid (the official state dict stores it as ``relative_index``; the converter drops it)
        self.register_buffer("relative_index", relative_position_index(relative_grid), persistent=False)

    # -- contract ----------------------------------------------------------------------------------------------------
    def get_tokenizer(self) -> Any:
        from zoo.modules.text.hf import load_tokenizer  # noqa: PLC0415

        return load_tokenizer(self.tokenizer, "text encoder 'davinci_text'")

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    # -- bias --------------------------------------------------------------------------------------------------------
    def relative_bias(self, layer: int) -> Tensor:
        """``(heads, g², g²)``: layer ``layer``'s table looked up at every (query patch, key patch) pair."""
        table = self.encoder.layer[layer].attention.self.relative_bias_table
        return table[self.relative_index].permute(2, 0, 1)

    def _full_bias(self, layer: int, length: int, num_image: int) -> Tensor:
        g2 = self.relative_grid ** 2
        if num_image - 1 < g2:
            raise ValueError(
                f"the relative position bias covers a {self.relative_grid}×{self.relative_grid} grid "
                f"({g2} patch tokens) but the image gave {num_image - 1}; use images of at least the configured "
                "resolution or set relative_grid to the image's grid"
            )
        bias = self.relative_bias(layer)
        # image patch tokens sit at sequence positions 1 .. g² (0 is the image CLS)
        return F.pad(bias, (1, length - 1 - g2, 1, length - 1 - g2))[None]

    # -- forward -----------------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        image_tokens: Tensor | None = None,
        relative_bias: bool | None = None,
        token_type_ids: Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        """Encode ``[image_tokens ; embedded text]``.

        Args:
            input_ids, attention_mask: ``(B, L)`` text (1 = token).
            image_tokens: ``(B, N, width)`` projected image tokens (token 0 the image CLS) or None (text only).
            relative_bias: add the 2-D bias (default: whenever an image is given; pass False for prefix images, as the
                official ``prefix_image=True`` branch).
        Returns:
            EncoderOutput(tokens ``(B, N + L, width)``, pooled = token 0, mask ``(B, N + L)``, hidden_states).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        mask = attention_mask
        num_image = 0
        if image_tokens is not None:
            if image_tokens.shape[-1] != self.width or image_tokens.shape[0] != x.shape[0]:
                raise ValueError(f"image_tokens {tuple(image_tokens.shape)} do not fit text states {tuple(x.shape)}")
            num_image = image_tokens.shape[1]
            x = torch.cat([image_tokens.to(x.dtype), x], dim=1)
            mask = torch.cat([attention_mask.new_ones(image_tokens.shape[:2]), attention_mask], dim=1)
        use_bias = image_tokens is not None if relative_bias is None else relative_bias
        if use_bias and image_tokens is None:
            raise ValueError("relative_bias=True needs image_tokens (the bias is over the image grid)")
        states = (x,) if output_hidden_states else None
        stack = self.encoder
        for i, layer in enumerate(stack.layer):
            bias = self._full_bias(i, x.shape[1], num_image).to(x.dtype) if use_bias else None
            if stack.grad_checkpointing and self.training and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint  # noqa: PLC0415

                x = checkpoint(lambda h, m, b, lay=layer: lay(h, m, bias=b)[0], x, mask, bias, use_reentrant=False)
            else:
                x = layer(x, mask, bias=bias)[0]
            if output_hidden_states:
                states += (x,)
        return EncoderOutput(tokens=x, pooled=x[:, 0], mask=mask, hidden_states=states)


# ---------------------------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------------------------
@MODELS.register("davinci")
class DaVinci(ZooModel):
    """DaVinci (see the module docstring).

    Args:
        vision: the image encoder (``resnet_grid``); its ``width`` feeds ``vision_proj``.
        text: the prefix encoder (``davinci_text``); owns the shared word embeddings and the tokenizer.
        decoder: the causal decoder + LM head (``vqa_generative`` with the joint vocabulary and ``encoder_width`` = the
            encoder width); its word embeddings and output matrix are tied to ``text``'s.
        image_tokenizer: the VQGAN (``vqgan``) for image modelling from pixels and for :meth:`generate_image`;
            optional (pre-training can take precomputed codes; the official parameter count excludes it).
        ve_head, nlvr_head: build the SNLI-VE (3-way) / NLVR2 (2-way) MLP.
        loss_weights: weights of ``prefix_lm``, ``image_lm``, ``text_lm`` (official ``loss_pair_alpha``,
            ``loss_image_generation_alpha``, ``c4_alpha``: 1, 1, 1).
        label_smoothing: of the pre-training LM losses (official 0).
        image_bos_token_id: the token before the codes (official ``IMG_BOS`` = 2, ``[unused1]``).
        max_tokens: text length cap of the helpers (official MAX_TOKENS 30 in pre-training).
        caption_prompt, caption_label_smoothing, caption_num_beams, caption_max_length, caption_min_length: official
            captioning config ('a picture of ', 0.1, 2, 20, 5; lengths count the prompt).
        image_top_k, image_top_p, image_temperature: text-to-image sampling (official 4000, 0.9, 1.0).
    """

    # the class order of the official SNLI-VE data (DaVinci ``dataset/ve_dataset.py``, ``labels``)
    ve_labels = ("contradiction", "neutral", "entailment")
    # VQA and captioning decode with the shared decoder; VE and NLVR need their MLP heads built
    #: the official recipe: CLIP's mean / std, bicubic square resize (DaVinci ``dataset/__init__.py``)
    preprocess_defaults = CLIP_PREPROCESS
    # a data-built tokenizer (`text.tokenizer: data`) sizes the text embedding and the decoder, whose vocabulary is
    # the text ids followed by the image codes (decoder.vocab_size: see tokenizer_settings)
    tokenizer_fields: ClassVar[Mapping[str, str]] = {"text.vocab_size": "rows", "text.pad_token_id": "pad", "decoder.pad_token_id": "pad",
                        "decoder.bos_token_id": "bos", "decoder.eos_token_id": "eos"}

    @classmethod
    def tokenizer_settings(cls, model_cfg: Mapping[str, Any], facts: Mapping[str, int]) -> dict[str, int]:
        settings = super().tokenizer_settings(model_cfg, facts)
        text, decoder = model_cfg.get("text"), model_cfg.get("decoder")
        if isinstance(text, Mapping) and isinstance(decoder, Mapping):  # the image codes follow the text ids
            codes = text.get("visual_vocab_size", inspect.signature(DaVinciEncoder).parameters["visual_vocab_size"].default)
            settings["decoder.vocab_size"] = settings["text.vocab_size"] + int(codes)
        return settings

    task_heads = {"vqa": (), "captioning": (), "ve": ("ve_head",), "nlvr": ("nlvr_head",), "pretrain": ()}

    def __init__(
        self,
        vision: Part["vision_encoder"],
        text: Part["text_encoder"],
        decoder: Part["head"],
        image_tokenizer: Part["vision_encoder"] | None = None,
        ve_head: bool = False,
        nlvr_head: bool = False,
        loss_weights: dict[str, float] | None = None,
        label_smoothing: float = 0.0,
        image_bos_token_id: int = 2,
        max_tokens: int = 30,
        caption_prompt: str = "a picture of ",
        caption_label_smoothing: float = 0.1,
        caption_num_beams: int = 2,
        caption_max_length: int = 20,
        caption_min_length: int = 5,
        image_top_k: int = 4000,
        image_top_p: float = 0.9,
        image_temperature: float = 1.0,
    ):
        super().__init__()
        if not isinstance(text, DaVinciEncoder):
            raise ConfigError(f"text must be the DaVinci prefix encoder ('davinci_text'), got {type(text).__name__}")
        if not hasattr(decoder, "rank_answers"):
            raise ConfigError(f"decoder must be a causal decoder head such as 'vqa_generative', got "
                              f"{type(decoder).__name__}")
        check_width(decoder, "hidden_size", decoder.width, text, text.width)
        check_width(decoder, "encoder_width", decoder.encoder_width, text, text.width)
        if decoder.vocab_size != text.vocab_size:
            raise ConfigError(
                f"decoder vocab_size={decoder.vocab_size} but the encoder's joint vocabulary is {text.vocab_size} "
                f"(text {text.text_vocab_size} + visual {text.visual_vocab_size}); the word embeddings are shared"
            )
        weights = {name: 1.0 for name in LOSS_NAMES}
        for key, value in (loss_weights or {}).items():
            if key not in weights:
                raise ConfigError(f"loss_weights.{key}: unknown loss; expected {', '.join(LOSS_NAMES)}")
            weights[key] = float(value)
        self.vision, self.text, self.text_decoder = vision, text, decoder
        self.vision_proj = nn.Linear(vision.width, text.width)
        self.image_tokenizer = image_tokenizer
        if image_tokenizer is not None:
            if not all(hasattr(image_tokenizer, m) for m in ("encode_codes", "decode_codes", "grid")):
                raise ConfigError(f"image_tokenizer must be an image tokenizer such as 'vqgan' (encode_codes / "
                                  f"decode_codes), got {type(image_tokenizer).__name__}")
            if getattr(image_tokenizer, "n_embed", text.visual_vocab_size) != text.visual_vocab_size:
                raise ConfigError(f"image_tokenizer has {image_tokenizer.n_embed} codes but the vocabulary reserves "
                                  f"visual_vocab_size={text.visual_vocab_size}")
            cells = image_tokenizer.grid[0] * image_tokenizer.grid[1]
            positions = decoder.decoder.bert.embeddings.position_embeddings.num_embeddings
            if cells + 1 > positions:
                raise ConfigError(f"the decoder has {positions} positions but an image is [IMG_BOS] + {cells} codes")
        d = text.width
        self.ve_head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 3)) if ve_head else None
        self.nlvr_head = nn.Sequential(nn.Linear(2 * d, d), nn.ReLU(), nn.Linear(d, 2)) if nlvr_head else None
        self.loss_weights = weights
        self.label_smoothing = label_smoothing
        self.image_bos_token_id = image_bos_token_id
        self.max_tokens = max_tokens
        self.caption_prompt = caption_prompt
        self.caption_label_smoothing = caption_label_smoothing
        self.caption_num_beams, self.caption_max_length = caption_num_beams, caption_max_length
        self.caption_min_length = caption_min_length
        self.image_top_k, self.image_top_p, self.image_temperature = image_top_k, image_top_p, image_temperature
        self._tokenizer: Any = None
        # the official decoder layers carry relative-bias tables its forward never reads: kept, frozen
        for layer in decoder.decoder.bert.encoder.layer:
            _add_relative_tables(layer.attention.self, text.relative_grid, text.num_heads, trainable=False)
            if layer.has_cross_attention:
                _add_relative_tables(layer.crossattention.self, text.relative_grid, text.num_heads, trainable=False)
        self.tie_weights()

    @staticmethod
    def official_converter(checkpoint: str, out_dir: str, model: str | None = None,
                           task: str | None = None) -> dict[str, Any]:
        """DaVinci checkpoints (shizhediao/DaVinci), with or without the VQGAN.

        The task (VE, NLVR; else the shared-decoder model) and resolution are told from the keys and shapes
        (``model`` / ``task`` name them instead); see :func:`zoo.models.davinci.convert.convert_official_checkpoint`."""
        from zoo.models.davinci.convert import convert_official_checkpoint  # noqa: PLC0415

        return convert_official_checkpoint(checkpoint, out_dir, model=model, task=task)

    # -- structure ---------------------------------------------------------------------------------------------------
    def tie_weights(self) -> None:
        """Encoder word embeddings = decoder word embeddings = decoder output matrix (official 3-way tying)."""
        self.text_decoder.decoder.bert.embeddings.word_embeddings.weight = self.text.embeddings.word_embeddings.weight
        self.text_decoder.tie_weights()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.text.set_grad_checkpointing(enable)
        self.text_decoder.set_grad_checkpointing(enable)

    @property
    def text_vocab_size(self) -> int:
        return self.text.text_vocab_size

    @property
    def generative_vqa(self) -> bool:
        return True

    def tokenizer(self) -> Any:
        """The encoder's tokenizer (loaded once)."""
        if self._tokenizer is None:
            self._tokenizer = self.text.get_tokenizer()
        return self._tokenizer

    # -- encoding ----------------------------------------------------------------------------------------------------
    def encode_image(self, images: Tensor) -> Tensor:
        """Images → projected tokens ``(B, 1 + N, width)`` (token 0 the image CLS)."""
        return self.vision_proj(self.vision(images).tokens)

    def encode(
        self, images: Tensor | None, input_ids: Tensor, attention_mask: Tensor | None = None, *,
        relative_bias: bool | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Encoder states and mask of ``[image ; text]`` (text only when ``images`` is None)."""
        image_tokens = None if images is None else self.encode_image(images)
        out = self.text(input_ids, attention_mask, image_tokens=image_tokens, relative_bias=relative_bias)
        return out.tokens, out.mask

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor | None = None) -> dict[str, Tensor]:
        """One prefix-LM pass, the shape of every DaVinci objective: image + text → encoder (with the relative bias),
        the decoder reads the same text with teacher forcing. ``{"encoder_states", "encoder_mask", "logits"}``
        (logits over the joint text + code vocabulary; what ``mmzoo bench model`` times)."""
        states, smask = self.encode(images, input_ids, attention_mask)
        return {"encoder_states": states, "encoder_mask": smask,
                "logits": self.decoder_logits(input_ids, attention_mask, states, smask)}

    def _empty_context(self, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The official ``tokenizer([""] * B)``: ``[CLS]`` alone."""
        ids = torch.full((batch, 1), self.text_decoder.bos_token_id, dtype=torch.long, device=device)
        return ids, torch.ones_like(ids)

    def decoder_logits(self, ids: Tensor, mask: Tensor | None, states: Tensor, states_mask: Tensor | None) -> Tensor:
        """``(B, T, vocab)``: position t predicts token t + 1 (joint text + code vocabulary)."""
        return self.text_decoder.logits(ids, mask, states, states_mask)

    def lm_loss(
        self, ids: Tensor, mask: Tensor | None, states: Tensor, states_mask: Tensor | None, *,
        ignore_prefix: int = 0, label_smoothing: float = 0.0,
    ) -> Tensor:
        """Mean next-token cross-entropy of ``ids`` given the encoder states (official ``decode_forward``): targets
        ``ids[:, 1:]``, padding ignored, and the first ``ignore_prefix`` tokens (``[CLS]`` + prompt) not scored."""
        targets = ids.masked_fill(ids == self.text_decoder.pad_token_id, _IGNORE)
        if mask is not None:
            targets = targets.masked_fill(mask == 0, _IGNORE)
        if ignore_prefix:
            targets[:, :ignore_prefix] = _IGNORE
        logits = self.decoder_logits(ids, mask, states, states_mask)[:, :-1]
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1),
                               ignore_index=_IGNORE, label_smoothing=label_smoothing)

    # -- pre-training objectives -------------------------------------------------------------------------------------
    def prefix_lm_loss(self, images: Tensor, prefix_ids: Tensor, prefix_mask: Tensor, target_ids: Tensor,
                       target_mask: Tensor) -> Tensor:
        """Prefix text LM: image + caption prefix → encoder (with the relative bias); the decoder writes the suffix."""
        states, smask = self.encode(images, prefix_ids, prefix_mask)
        return self.lm_loss(target_ids, target_mask, states, smask, label_smoothing=self.label_smoothing)

    def text_lm_loss(self, prefix_ids: Tensor, prefix_mask: Tensor, target_ids: Tensor, target_mask: Tensor) -> Tensor:
        """Text-only prefix LM (C4): text prefix → encoder; the decoder writes the rest."""
        states, smask = self.encode(None, prefix_ids, prefix_mask)
        return self.lm_loss(target_ids, target_mask, states, smask, label_smoothing=self.label_smoothing)

    def code_token_ids(self, codes: Tensor) -> Tensor:
        """VQGAN codes → their token ids in the joint vocabulary: ``code + text_vocab_size`` (official
        davinci_pretrain.py: ``masked_image_ids + text_vocab_size``). The one mapping image-modelling targets
        (:meth:`code_input_ids`) and sampling (:meth:`generate_codes`) use; :meth:`codes_of_token_ids` inverts it."""
        return codes + self.text_vocab_size

    def codes_of_token_ids(self, ids: Tensor) -> Tensor:
        """Token ids of the joint vocabulary → VQGAN codes: the inverse of :meth:`code_token_ids`."""
        return ids - self.text_vocab_size

    def code_input_ids(self, codes: Tensor) -> Tensor:
        """``(B, h, w)`` or ``(B, n)`` codes → decoder ids ``[IMG_BOS, code + text_vocab, ...]`` (row-major)."""
        codes = codes.flatten(1).long()
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.text.visual_vocab_size):
            raise ValueError(f"image codes must lie in [0, {self.text.visual_vocab_size})")
        bos = codes.new_full((codes.shape[0], 1), self.image_bos_token_id)
        return torch.cat([bos, self.code_token_ids(codes)], dim=1)

    def prefix_image_loss(self, images: Tensor, caption_ids: Tensor, caption_mask: Tensor, prefix_rows: int,
                          suffix_codes: Tensor) -> Tensor:
        """Prefix image modelling: the top ``prefix_rows`` grid rows of ``images`` (none when 0) + the caption →
        encoder *without* the relative bias (official ``prefix_image=True``); the decoder writes ``suffix_codes``
        (the codes of the remaining rows) after ``[IMG_BOS]``."""
        prefix = None
        if prefix_rows > 0:
            prefix = images[:, :, : prefix_rows * self.vision.stride, :]
        image_tokens = None if prefix is None else self.encode_image(prefix)
        out = self.text(caption_ids, caption_mask, image_tokens=image_tokens, relative_bias=False)
        ids = self.code_input_ids(suffix_codes)
        return self.lm_loss(ids, None, out.tokens, out.mask, label_smoothing=self.label_smoothing)

    def _suffix_codes(self, batch: Mapping[str, Any], prefix_rows: int, grid_rows: int) -> Tensor:
        if "image_codes" in batch:
            codes = batch["image_codes"]
            if codes.dim() != 3 or codes.shape[1] != grid_rows:
                raise ValueError(f"image_codes must be (B, {grid_rows}, cols) code grids; got {tuple(codes.shape)}")
            return codes[:, prefix_rows:]
        if "code_images" in batch:
            self._require(image_tokenizer=self.image_tokenizer)
            pixels = batch["code_images"]
            rows_px = pixels.shape[-2] // grid_rows
            with torch.no_grad():
                return self.image_tokenizer.encode_codes(pixels[:, :, prefix_rows * rows_px:, :])
        raise KeyError("image modelling needs 'image_codes' (B, rows, cols) or 'code_images' (pixels in [0, 1] for "
                       "the image tokenizer)")

    @property
    def pretrain_inputs(self) -> Any:
        """The pre-training task's batch builder (``mmzoo train`` with ``task: pretrain``): caption splits for the
        prefix LM, and images for the codes of image modelling when the model has an image tokenizer
        (:func:`pretrain_batch_inputs`; a picklable function, as data-loader workers need)."""
        import functools  # noqa: PLC0415

        pre = self.preprocess_config()
        return functools.partial(pretrain_batch_inputs, codes=self.image_tokenizer is not None, mean=pre.mean,
                                 std=pre.std)

    def pretrain_losses(self, batch: Mapping[str, Any], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The official pre-training step on whatever the batch holds:

        - ``prefix_lm``: ``images``, ``prefix_ids/_mask``, ``target_ids/_mask`` (:func:`pretrain_text_inputs`);
        - ``image_lm``: ``images``, ``caption_ids/_mask``, ``image_codes`` (B, rows, cols) or ``code_images`` (pixels in
          [0, 1] for the tokenizer), optional ``prefix_rows`` (default: uniform in ``0 .. rows − 2`` as the official
          ``prefix_image: dynamic``);
        - ``text_lm``: ``text_prefix_ids/_mask``, ``text_target_ids/_mask``.

        Returns each loss and ``loss`` = the weighted sum (``loss_weights``).
        """
        losses: dict[str, Tensor] = {}
        if "prefix_ids" in batch:
            losses["prefix_lm"] = self.prefix_lm_loss(batch["images"], batch["prefix_ids"], batch["prefix_mask"],
                                                      batch["target_ids"], batch["target_mask"])
        if "caption_ids" in batch and ("image_codes" in batch or "code_images" in batch):
            images = batch["images"]
            grid_rows = images.shape[-2] // self.vision.stride
            rows = batch.get("prefix_rows")
            if rows is None:
                rows = int(torch.randint(0, max(grid_rows - 1, 1), (), generator=generator))
            rows = int(rows)
            if not 0 <= rows < grid_rows:
                raise ValueError(f"prefix_rows={rows} must lie in 0 .. {grid_rows - 1}")
            codes = self._suffix_codes(batch, rows, grid_rows)
            losses["image_lm"] = self.prefix_image_loss(images, batch["caption_ids"], batch["caption_mask"], rows,
                                                        codes)
        if "text_prefix_ids" in batch:
            losses["text_lm"] = self.text_lm_loss(batch["text_prefix_ids"], batch["text_prefix_mask"],
                                                  batch["text_target_ids"], batch["text_target_mask"])
        if not losses:
            raise KeyError("the batch holds inputs of no DaVinci objective (see pretrain_losses)")
        losses["loss"] = sum(self.loss_weights[k] * v for k, v in losses.items())
        return losses

    # -- VQA ---------------------------------------------------------------------------------------------------------
    def vqa_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``images``, ``question_ids/_mask``, ``answer_ids/_mask`` (``[CLS] answer [SEP]``), ``weights``,
        ``answers_per_question``: Σ weight · summed answer CE / number of questions (official ``is_vqa`` branch)."""
        states, smask = self.encode(batch["images"], batch["question_ids"], batch["question_mask"])
        return self.text_decoder(states, smask, batch["answer_ids"], batch["answer_mask"],
                                 weights=batch.get("weights"), k=batch.get("answers_per_question"))

    @torch.no_grad()
    def vqa_predict(self, images: Tensor, question_ids: Tensor, question_mask: Tensor, answer_ids: Tensor | None = None,
                    answer_mask: Tensor | None = None, k: int | None = None,
                    answers: list[str] | None = None) -> dict[str, Any]:
        """Rank an answer list (official ``rank_answer``: first-token top-``k``, default ``k_test`` 128, then full
        sequences). ``answer_ids`` default: ``answers`` tokenised. ``{"index", "prob", "answer"}``."""
        if answer_ids is None:
            if not answers:
                raise ValueError("vqa_predict ranks an answer list: pass answer_ids/answer_mask or answers")
            answer_ids, answer_mask = self.text_decoder.encode_answers(answers, self.tokenizer(), images.device)
        states, smask = self.encode(images, question_ids, question_mask)
        return self.text_decoder.predict(states, smask, answer_ids, answer_mask, k=k, answers=answers)

    @torch.no_grad()
    def vqa_generate(self, images: Tensor, question_ids: Tensor, question_mask: Tensor, max_length: int = 10,
                     num_beams: int = 1, use_cache: bool = True) -> list[str]:
        """Open-ended answers: decode from ``[CLS]`` until ``[SEP]`` (the end token answers are trained with);
        ``use_cache=False`` reruns the prefix every step."""
        from zoo.generation import beam_search  # noqa: PLC0415

        states, smask = self.encode(images, question_ids, question_mask)
        start = torch.full((states.shape[0], 1), self.text_decoder.bos_token_id, dtype=torch.long,
                           device=states.device)
        out = beam_search(self._step_fn(states, smask, text_only=True, use_cache=use_cache), start,
                          eos_token_id=self.text_decoder.eos_token_id, num_beams=num_beams, max_length=max_length,
                          min_length=0, forbid_duplicate_ngrams=False)
        tok = self.tokenizer()
        return [tok.decode(seq, skip_special_tokens=True).strip() for seq in out.sequences]

    # -- captioning --------------------------------------------------------------------------------------------------
    def _prompt_ids(self, prompt: str, tokenizer: Any = None) -> list[int]:
        tok = tokenizer if tokenizer is not None else self.tokenizer()
        return [tok.cls_token_id, *tok(prompt, add_special_tokens=False)["input_ids"]]

    def _caption_targets(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(ids, mask)`` of ``[CLS] prompt caption [SEP]``: ``caption_ids/_mask`` when present, else recovered from
        the X²-VLM captioning collator's masked inputs (every original token is in ``input_ids_masked``; the inserted
        ``[MASK]`` tokens sit at ``masked_pos`` and share the next token's position id)."""
        if "caption_ids" in batch:
            return batch["caption_ids"], batch["caption_mask"]
        if "input_ids_masked" not in batch:
            raise KeyError("caption_loss needs 'caption_ids'/'caption_mask' or the captioning collator's inputs")
        ids, pos = batch["input_ids_masked"], batch["position_ids"]
        masked_pos, weight, masked_ids = batch["masked_pos"], batch["masked_weight"], batch["masked_ids"]
        pad = self.text_decoder.pad_token_id
        rows = []
        fg_free = bool((pos[:, 1:] == pos[:, :-1]).any())
        for b in range(ids.shape[0]):
            row = ids[b].clone()
            chosen = masked_pos[b][weight[b] > 0]
            if fg_free:
                keep = torch.ones_like(row, dtype=torch.bool)
                keep[chosen] = False
                row = row[keep]
            else:
                row[chosen] = masked_ids[b][weight[b] > 0]
            rows.append(row[row != pad])
        length = max(len(r) for r in rows)
        out = torch.full((len(rows), length), pad, dtype=torch.long, device=ids.device)
        mask = torch.zeros_like(out)
        for b, r in enumerate(rows):
            out[b, : len(r)] = r
            mask[b, : len(r)] = 1
        return out, mask

    def caption_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Captioning fine-tuning (official gen_coco.py): image + empty text → encoder; the decoder learns
        ``[CLS] a picture of caption [SEP]`` with the prompt not scored, label smoothing 0.1."""
        ids, mask = self._caption_targets(batch)
        images = batch["images"]
        ctx, ctx_mask = self._empty_context(images.shape[0], images.device)
        states, smask = self.encode(images, ctx, ctx_mask)
        prompt_len = int(batch.get("prompt_length", len(self._prompt_ids(self.caption_prompt))))
        loss = self.lm_loss(ids, mask, states, smask, ignore_prefix=prompt_len,
                            label_smoothing=self.caption_label_smoothing)
        return {"loss": loss}

    def new_decoder_cache(self) -> KVCache:
        """An empty key/value cache of the decoder (:meth:`last_logits`)."""
        return self.text_decoder.decoder.bert.new_cache()

    def last_logits(self, tokens: Tensor, states: Tensor, states_mask: Tensor | None,
                    cache: KVCache | None = None) -> Tensor:
        """``(N, vocab)`` next-token logits after the last token of each row of ``tokens``.

        Without ``cache``: the decoder over the whole of ``tokens`` (row ``i`` reads ``states[i]``). With ``cache``:
        only the tokens after the ``cache.length`` cached ones run; ``states`` / ``states_mask`` are read on the first
        call, one row per example (the rows of ``tokens`` example-major, see :mod:`zoo.modules.kv_cache`)."""
        bert = self.text_decoder.decoder.bert
        hidden = bert(tokens if cache is None else tokens[:, cache.length:], None, mode="full", vision_tokens=states,
                      vision_mask=states_mask, causal=True, cache=cache).tokens[:, -1]
        return self.text_decoder.cls(hidden)

    def _step_fn(self, states: Tensor, smask: Tensor | None, text_only: bool = False, use_cache: bool = False):
        """The beam-search step over the decoder; ``use_cache``: a :class:`~zoo.generation.CachedStep` that runs the
        newest token only (rows as :func:`~zoo.generation.beam_search` orders them)."""
        from zoo.generation import CachedStep

        text_vocab = self.text_vocab_size

        if not use_cache:
            def step(tokens: Tensor, rows: Tensor) -> Tensor:
                logits = self.decoder_logits(tokens, None, states[rows],
                                             None if smask is None else smask[rows])[:, -1]
                return logits[:, :text_vocab] if text_only else logits

            return step

        cache = self.new_decoder_cache()

        def cached(tokens: Tensor, rows: Tensor) -> Tensor:
            logits = self.last_logits(tokens, states, smask, cache)
            return logits[:, :text_vocab] if text_only else logits

        return CachedStep(cached, cache)

    @torch.no_grad()
    def generate_captions(self, images: Tensor, tokenizer: Any = None, prompt: str | None = None,
                          num_beams: int | None = None, max_length: int | None = None,
                          min_length: int | None = None, use_cache: bool = True) -> list[str]:
        """Captions by beam search from ``[CLS] + prompt`` (official 2 beams; ``max_length`` 20 and ``min_length`` 5
        count the prompt, as the official ``generate``). Returns the caption text after the prompt.
        ``use_cache=False`` reruns the prefix every step (same captions, slower)."""
        tok = tokenizer if tokenizer is not None else self.tokenizer()
        out = self.caption_beam_search(images, tok, prompt, num_beams=num_beams, max_length=max_length,
                                       min_length=min_length, use_cache=use_cache)
        return [tok.decode(seq, skip_special_tokens=True).strip() for seq in out.sequences]

    @torch.no_grad()
    def caption_beam_search(self, images: Tensor, tokenizer: Any = None, prompt: str | None = None, *,
                            num_beams: int | None = None, max_length: int | None = None,
                            min_length: int | None = None, use_cache: bool = True) -> Any:
        """The beam search of :meth:`generate_captions`: its :class:`~zoo.generation.BeamSearchOutput` (the token
        ids after the prompt, with their scores)."""
        from zoo.generation import beam_search  # noqa: PLC0415

        tok = tokenizer if tokenizer is not None else self.tokenizer()
        prompt_ids = self._prompt_ids(self.caption_prompt if prompt is None else prompt, tok)
        ctx, ctx_mask = self._empty_context(images.shape[0], images.device)
        states, smask = self.encode(images, ctx, ctx_mask)
        start = torch.tensor(prompt_ids, dtype=torch.long, device=images.device).expand(images.shape[0], -1)
        max_len = (self.caption_max_length if max_length is None else max_length) - len(prompt_ids)
        min_len = max((self.caption_min_length if min_length is None else min_length) - len(prompt_ids), 0)
        out = beam_search(self._step_fn(states, smask, text_only=True, use_cache=use_cache), start,
                          eos_token_id=self.text_decoder.eos_token_id,
                          num_beams=self.caption_num_beams if num_beams is None else num_beams,
                          max_length=max(max_len, 1), min_length=min_len, forbid_duplicate_ngrams=False)
        return out

    # -- SNLI-VE / NLVR2 ---------------------------------------------------------------------------------------------
    def _last_token_state(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Empty encoder text after the image; the text through the decoder; its state at the last token."""
        ctx, ctx_mask = self._empty_context(images.shape[0], images.device)
        states, smask = self.encode(images, ctx, ctx_mask)
        hidden = self.text_decoder.decode(input_ids, attention_mask, states, smask)
        last = attention_mask.long().sum(1) - 1  # official last_hidden_id_shift = 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def ve_logits(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """SNLI-VE: 3-way logits (official label order of the data)."""
        self._require(ve_head=self.ve_head)
        return self.ve_head(self._last_token_state(images, input_ids, attention_mask))

    def ve_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        logits = self.ve_logits(batch["images"], batch["input_ids"], batch["attention_mask"])
        return {"loss": F.cross_entropy(logits, batch["labels"].long()), "logits": logits}

    def nlvr_logits(self, images_a: Tensor, images_b: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """NLVR2: each image with the sentence, the two last-token states concatenated (image a first) → 2-way."""
        self._require(nlvr_head=self.nlvr_head)
        b = images_a.shape[0]
        last = self._last_token_state(torch.cat([images_a, images_b]), input_ids.repeat(2, 1),
                                      attention_mask.repeat(2, 1))
        return self.nlvr_head(torch.cat([last[:b], last[b:]], dim=1))

    def nlvr_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        logits = self.nlvr_logits(batch["images_a"], batch["images_b"], batch["input_ids"], batch["attention_mask"])
        return {"loss": F.cross_entropy(logits, batch["labels"].long()), "logits": logits}

    # -- text-to-image -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_codes(self, input_ids: Tensor, attention_mask: Tensor, grid: tuple[int, int], *,
                       top_k: int | None = None, top_p: float | None = None, temperature: float | None = None,
                       generator: torch.Generator | None = None, use_cache: bool = True) -> Tensor:
        """Sample a ``grid`` of codes ``(B, rows, cols)`` for a tokenised caption (text-only encoder input).

        ``use_cache=True`` (the default) runs the newest token only each step with the decoder's key/value cache
        (:meth:`last_logits`); ``False`` reruns the whole prefix through :meth:`decoder_logits` for each code. The
        same codes for the same ``generator`` (up to float rounding)."""
        from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper  # noqa: PLC0415

        top_k = self.image_top_k if top_k is None else top_k
        top_p = self.image_top_p if top_p is None else top_p
        temperature = self.image_temperature if temperature is None else temperature
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be positive")
        states, smask = self.encode(None, input_ids, attention_mask)
        code_ids = self.code_token_ids(torch.arange(self.text.visual_vocab_size, device=input_ids.device))
        n_codes = len(code_ids)
        warpers = []
        if top_k and top_k > 0:
            warpers.append(TopKLogitsWarper(top_k=min(top_k, n_codes)))
        if top_p is not None and top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=top_p))
        b = input_ids.shape[0]
        tokens = torch.full((b, 1), self.image_bos_token_id, dtype=torch.long, device=input_ids.device)
        cache = self.new_decoder_cache() if use_cache else None
        for _ in range(grid[0] * grid[1]):
            if cache is None:
                logits = self.decoder_logits(tokens, None, states, smask)[:, -1, code_ids]
            else:
                logits = self.last_logits(tokens, states, smask, cache)[:, code_ids]
            logits = logits.float() / temperature
            for warp in warpers:
                logits = warp(tokens, logits)
            code = torch.multinomial(logits.softmax(-1), 1, generator=generator)  # column k of code_ids is code k
            tokens = torch.cat([tokens, self.code_token_ids(code)], dim=1)
        return self.codes_of_token_ids(tokens[:, 1:]).view(b, grid[0], grid[1])

    @torch.no_grad()
    def generate_image(self, text: str | Sequence[str], tokenizer: Any = None, *, top_k: int | None = None,
                       top_p: float | None = None, temperature: float | None = None,
                       generator: torch.Generator | None = None, use_cache: bool = True) -> Tensor:
        """Text → images ``(B, 3, H, W)`` with pixels in [0, 1]: codes sampled by :meth:`generate_codes` over the
        tokenizer's grid (16×16 at 256 px), decoded by the VQGAN; ``use_cache=False`` reruns the prefix per code."""
        self._require(image_tokenizer=self.image_tokenizer)
        tok = tokenizer if tokenizer is not None else self.tokenizer()
        texts = [text] if isinstance(text, str) else list(text)
        ids, mask = official_tokenize(tok, texts, self.max_tokens)
        device = self.vision_proj.weight.device
        codes = self.generate_codes(ids.to(device), mask.to(device), self.image_tokenizer.grid, top_k=top_k,
                                    top_p=top_p, temperature=temperature, generator=generator, use_cache=use_cache)
        return self.image_tokenizer.decode_codes(codes)
