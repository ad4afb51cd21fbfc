"""MultiModal-GPT (Gong et al., 2023): OpenFlamingo (CLIP ViT + perceiver resampler + gated cross-attention into a
frozen LLaMA) tuned with LoRA on instruction data.

Follows the official code (open-mmlab/Multimodal-GPT @9c73e47: ``mmgpt/models/open_flamingo/{builder,flamingo,
flamingo_lm,helpers}.py``, ``configs/lora_config.py``, ``mmgpt/datasets/*``, ``app.py``):

- vision: open_clip ViT-L/14 image tower (part ``open_clip``; ``visual(x)[1]``: the patch tokens), run without
  gradients; images ``(B, C, H, W)`` (one per sample) or ``(B, T, C, H, W)`` (T images: ``<image>`` number t uses
  image t).
- perceiver resampler (:class:`zoo.models.mmgpt.flamingo.PerceiverResampler`): depth 6, 64 latents, 8 heads × 64,
  FF mult 4, no media-time / frame embeddings (official ``PerceiverResampler(dim=vis_dim)``).
- gated cross-attention blocks (:class:`~zoo.models.mmgpt.flamingo.GatedCrossAttentionBlock`, 8 heads × 64, FF
  mult 4, tanh gates at 0) BEFORE decoder layers ``i`` with ``(i + 1) % 4 == 0`` (layers 3, 7, ..., 31), inserted into
  the LM part with :meth:`~zoo.modules.lm.causal_lm.HFCausalLM.insert_blocks` (keys ``lm.inserted.<i>.*``);
  ``media_locations = input_ids == <image>``. Language-only input (no images) skips the blocks (official
  ``condition_only_lang_x``).
- tokenizer: ``<|endofchunk|>`` and ``<image>`` added as special tokens, ``<PAD>`` as the pad token when the tokenizer
  has none (LLaMA: ids 32000, 32001, 32002); the LM's embeddings are resized to ``vocab_size`` (official
  ``resize_token_embeddings(len(tokenizer))`` = 32003). The resized rows are NOT trainable: the official code freezes
  the whole model (``model.requires_grad_(False)``) before adding LoRA, and its ``unfrozen`` list is empty.
- LoRA through peft (``inject_adapter_in_model``, r 16, alpha 16, dropout 0, no bias) on the official targets
  ``q_proj, k_proj, v_proj, o_proj, to_q, to_kv, to_out, ff.1, ff.3`` applied to the language model (official
  ``get_peft_model(model.lang_encoder, ...)``): the LLaMA attention projections and the cross-attention blocks'
  projections and FFN linears. The perceiver (not inside the language model) gets none. Everything else is frozen;
  ``unfrozen`` (official ``tuning_config.unfrozen``, substrings of parameter names) unfreezes more.
- losses: the LM's mean next-token cross-entropy; the official loop adds one language-only batch's loss to each
  visual batch's (:meth:`instruction_loss`).

Export: the trainable-only export (``save_pretrained(trainable_only=True)``) holds the LoRA tensors, as official
checkpoints; :meth:`export_merged` writes a full export with LoRA merged into the base weights (peft's ``merge``,
layers unloaded to plain ``Linear``; the config then says ``lora_r: 0``).

Difference from the official default, on purpose: ``attend_previous=True`` (text attends to the latents of the nearest
PRECEDING ``<image>``, the Flamingo paper's rule). The official training runs its ``MaskedCrossAttention`` with
``attend_previous=False`` (set whenever ``--use_media_placement_augmentation`` is off, its default), under which text
after the last ``<image>`` attends to nothing and text before it to the following image; ``attend_previous: false``
reproduces that.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import Tensor, nn

from zoo.data.collate import decode_texts
from zoo.models.base import CLIP_PREPROCESS, ZooModel
from zoo.models.mmgpt.flamingo import GatedCrossAttentionBlock, PerceiverResampler
from zoo.models.mmgpt.instruction import (
    END_OF_CHUNK,
    IMAGE_TOKEN,
    PAD_TOKEN,
    chat_prompt,
    encode_instruction,
    instruction_prompt,
)
from zoo.modules.adapters.lora import merge_lora
from zoo.modules.lm.causal_lm import left_pad
from zoo.modules.lm.processing import TextBatchProcessor, batch_text_answers
from zoo.registry import MODELS
from zoo.spec import ConfigError, Part

__all__ = ["MultiModalGPT", "OFFICIAL_LORA_TARGETS", "merge_lora"]

OFFICIAL_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "to_q", "to_kv", "to_out", "ff.1", "ff.3"]


@MODELS.register("mmgpt")
class MultiModalGPT(ZooModel):
    """MultiModal-GPT: frozen vision + perceiver + gated cross-attention into a frozen causal LM, LoRA-tuned.

    Args:
        vision: an image encoder returning patch tokens (``open_clip`` ViT; the ``timm`` part for toy models).
        lm: an ``hf_causal_lm`` part (LLaMA officially); frozen here whatever its ``freeze`` says.
        perceiver_depth, num_latents, perceiver_heads, perceiver_dim_head, perceiver_ff_mult: the resampler
            (official 6, 64, 8, 64, 4); max_num_media / max_num_frames: its optional time embeddings (official none).
        cross_attn_every_n_layers: a gated block before every n-th decoder layer (official 4: layers 3, 7, ...).
        xattn_heads, xattn_dim_head, xattn_ff_mult: the blocks (official 8, 64, 4).
        only_attend_immediate_media: text attends to one media item's latents (official True).
        attend_previous: the nearest preceding ``<image>`` (True) or the official default shift (False, see above).
        vocab_size: resize the LM embeddings to this many rows (official len(tokenizer): 32003 for LLaMA); None keeps.
        flamingo_pretrained: a local OpenFlamingo / MultiModal-GPT checkpoint (official or these key names) loaded
            before LoRA is added (perceiver, cross-attention blocks, embeddings); its LoRA keys, if any, after.
        lora_r, lora_alpha, lora_dropout, lora_targets: peft LoRA (official 16, 16, 0.0, the 9 names above); r 0: none.
        unfrozen: substrings of parameter names to train as well (official ``tuning_config.unfrozen``: empty).
        max_length: token limit of a training sequence (official 512).
        num_beams, max_answer_tokens: VQA generation; caption_instruction, max_caption_tokens: captioning.
        chat_max_tokens: new-token limit of a chat answer.
        language_only: the same prompts (``<image>`` included) without the media: no cross-attention input, the LM
            alone. With ``unfrozen: [lm.model]`` and ``lora_r: 0`` this is the language pre-training stage of a
            from-scratch LM (``mmzoo export RUN OUT --part lm`` writes it as a transformers folder).
    """

    generative_vqa = True  # VQA batches carry answer ids (the training module's generative path)
    open_ended_vqa = True  # answers are generated
    #: the official pipeline is open_clip's evaluation transform of its CLIP tower (``create_model_and_transforms``'s
    #: image processor, for training too): CLIP's mean / std, bicubic, shorter side resized then centre-cropped
    preprocess_defaults = {**CLIP_PREPROCESS, "resize_mode": "shortest"}
    processor_class = TextBatchProcessor  # text batches: questions, answers and captions as strings
    tokenizer_part = "lm"  # the language model's tokenizer
    tokenizer_fields: ClassVar[Mapping[str, str]] = {"lm.config.vocab_size": "rows", "vocab_size": "rows", "lm.config.pad_token_id": "pad",
                        "lm.config.bos_token_id": "bos", "lm.config.eos_token_id": "eos"}
    task_heads = {"vqa": (), "captioning": ()}  # the language model answers and captions

    def __init__(
        self,
        vision: Part["vision_encoder"],
        lm: Part["language_model"],
        perceiver_depth: int = 6,
        num_latents: int = 64,
        perceiver_heads: int = 8,
        perceiver_dim_head: int = 64,
        perceiver_ff_mult: int = 4,
        max_num_media: int | None = None,
        max_num_frames: int | None = None,
        cross_attn_every_n_layers: int = 4,
        xattn_heads: int = 8,
        xattn_dim_head: int = 64,
        xattn_ff_mult: int = 4,
        only_attend_immediate_media: bool = True,
        attend_previous: bool = True,
        vocab_size: int | None = None,
        flamingo_pretrained: str | None = None,
        lora_r: int = 16,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        lora_targets: list[str] | None = None,
        unfrozen: list[str] | None = None,
        max_length: int = 512,
        num_beams: int = 3,
        max_answer_tokens: int = 10,
        caption_instruction: str = "Describe the image briefly.",
        max_caption_tokens: int = 20,
        chat_max_tokens: int = 64,
        language_only: bool = False,
    ):
        super().__init__()
        for name in ("width", "num_layers", "insert_blocks", "every_nth_layer", "add_special_tokens", "generate"):
            if not hasattr(lm, name):
                raise ConfigError(f"model.lm must be a causal language model part such as 'hf_causal_lm', got "
                                  f"{type(lm).__name__} (no {name!r})")
        vis_width = getattr(vision, "width", None)
        if not isinstance(vis_width, int):
            raise ConfigError(f"model.vision ({type(vision).__name__}) has no integer 'width'")
        if not 1 <= cross_attn_every_n_layers <= lm.num_layers:
            raise ConfigError(f"cross_attn_every_n_layers={cross_attn_every_n_layers}: need 1..{lm.num_layers} "
                              "(the LM's layers)")
        if lora_r < 0:
            raise ConfigError(f"lora_r={lora_r}: must be >= 0 (0: no LoRA)")
        self.vision, self.lm = vision, lm
        self.perceiver = PerceiverResampler(vis_width, perceiver_depth, perceiver_dim_head, perceiver_heads,
                                            num_latents, max_num_media, max_num_frames, perceiver_ff_mult)
        if vocab_size is not None and vocab_size != lm.vocab_size:
            if vocab_size < lm.vocab_size:
                raise ConfigError(f"vocab_size={vocab_size} is below the LM's {lm.vocab_size} embedding rows")
            lm.model.resize_token_embeddings(vocab_size, mean_resizing=False)
            lm.vocab_size = vocab_size
        lm.add_special_tokens([END_OF_CHUNK, IMAGE_TOKEN])
        self.xattn_layers = lm.every_nth_layer(cross_attn_every_n_layers)
        lm.insert_blocks({i: GatedCrossAttentionBlock(lm.width, vis_width, xattn_dim_head, xattn_heads, xattn_ff_mult,
                                                      only_attend_immediate_media) for i in self.xattn_layers})
        self.attend_previous = attend_previous
        lora_state = None
        if flamingo_pretrained is not None:
            lora_state = self.load_flamingo(flamingo_pretrained)
        self.requires_grad_(False)  # official: freeze everything, then LoRA
        self.lora_r = lora_r
        if lora_r:
            from peft import LoraConfig, inject_adapter_in_model  # noqa: PLC0415

            config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias="none",
                                target_modules=list(lora_targets or OFFICIAL_LORA_TARGETS))
            inject_adapter_in_model(config, lm)
            if lora_state:
                from zoo.hub import load_weights  # noqa: PLC0415

                load_weights(self, lora_state, strict=False, what=f"LoRA tensors of {flamingo_pretrained!r}")
        for name, p in self.named_parameters():
            if "lora_" in name or any(s in name for s in (unfrozen or [])):
                p.requires_grad_(True)
        self.max_length, self.num_beams, self.max_answer_tokens = max_length, num_beams, max_answer_tokens
        self.caption_instruction, self.max_caption_tokens = caption_instruction, max_caption_tokens
        self.chat_max_tokens = chat_max_tokens
        self.language_only = language_only

    # -- parts the framework looks for ---------------------------------------------------------------------------
    @property
    def text(self) -> nn.Module:
        """The LM, under the name the training and prediction paths use for the tokenizer (``model.text``)."""
        return self.lm

    @property
    def tokenizer(self) -> Any:
        """The LM's tokenizer with ``<|endofchunk|>``, ``<image>`` (and ``<PAD>`` when it has no pad token)."""
        tok = self.lm.get_tokenizer()
        if tok.pad_token is None:
            tok.add_special_tokens({"pad_token": PAD_TOKEN})
            if len(tok) > self.lm.vocab_size:
                raise ConfigError(f"the tokenizer needs {len(tok)} embedding rows with {PAD_TOKEN}; set model.vocab_size "
                                  f">= {len(tok)}")
        return tok

    @property
    def media_token_id(self) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))

    @property
    def eoc_token_id(self) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(END_OF_CHUNK))

    # -- official checkpoints ------------------------------------------------------------------------------------
    @staticmethod
    def official_converter(checkpoint: str, out_dir: str, model: str | None = None, task: str | None = None,
                           parts: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """MultiModal-GPT LoRA checkpoints (open-mmlab/Multimodal-GPT) → a trainable-only export; ``parts`` names the
        OpenFlamingo checkpoint (``flamingo_pretrained``), the LLaMA folder and the CLIP tower. See
        :func:`zoo.models.mmgpt.convert.convert_official_checkpoint`."""
        from zoo.models.mmgpt.convert import convert_official_checkpoint  # noqa: PLC0415

        return convert_official_checkpoint(checkpoint, out_dir, model=model, task=task, parts=parts)

    def load_flamingo(self, path: str | Path) -> dict[str, Tensor]:
        """Load the non-LoRA tensors of an OpenFlamingo / MultiModal-GPT checkpoint (strictly shaped, partial as the
        official ``strict=False``); returns its LoRA tensors (loaded once LoRA exists)."""
        from zoo.hub import load_state_dict, load_weights  # noqa: PLC0415
        from zoo.models.mmgpt.convert import convert_official_state_dict  # noqa: PLC0415

        state = convert_official_state_dict(load_state_dict(path))
        lora = {k: v for k, v in state.items() if "lora_" in k}
        base = {k: v for k, v in state.items() if "lora_" not in k}
        result = load_weights(self, base, strict=False, what=f"flamingo_pretrained {str(path)!r}")
        if result.unexpected_keys:
            from zoo.hub import WeightsError  # noqa: PLC0415

            raise WeightsError(f"flamingo_pretrained {str(path)!r}: {len(result.unexpected_keys)} tensor(s) do not "
                               f"belong to the model: {result.unexpected_keys[:8]}")
        return lora

    # -- vision --------------------------------------------------------------------------------------------------
    def encode_media(self, images: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` or ``(B, T, C, H, W)`` → perceiver latents ``(B, T, num_latents, width)``."""
        if images.dim() == 4:
            images = images.unsqueeze(1)
        if images.dim() != 5:
            raise ValueError(f"MultiModal-GPT takes images (B, C, H, W) or (B, T, C, H, W), got {tuple(images.shape)}")
        b, t = images.shape[:2]
        train_vision = torch.is_grad_enabled() and any(p.requires_grad for p in self.vision.parameters())
        with torch.set_grad_enabled(train_vision):
            tokens = self.vision(images.flatten(0, 1)).tokens  # official visual(x)[1]
        tokens = tokens.view(b, t, 1, *tokens.shape[1:])
        return self.perceiver(tokens)

    def _context(self, images: Tensor | None, input_ids: Tensor) -> dict[str, Any]:
        if images is None or self.language_only:
            return {}
        return {"media": self.encode_media(images), "media_locations": input_ids == self.media_token_id,
                "attend_previous": self.attend_previous}

    def forward(self, images: Tensor | None, input_ids: Tensor, attention_mask: Tensor | None = None,
                labels: Tensor | None = None, reduction: str = "mean"):
        """The LM on ``input_ids`` conditioned on ``images`` (None: language only): an
        :class:`~zoo.modules.lm.causal_lm.LMOutput` (``loss`` when ``labels`` are given)."""
        dev = input_ids.device
        if images is not None:
            images = images.to(dev)
        return self.lm(input_ids, attention_mask, labels=labels, reduction=reduction,
                       **self._context(images, input_ids))

    @torch.no_grad()
    def generate(self, images: Tensor | None, input_ids: Tensor, attention_mask: Tensor | None = None,
                 **generate_kwargs: Any) -> Tensor:
        """New tokens after ``input_ids`` (rows left-padded first); ``<image>`` is never generated (so new tokens keep
        the media of the prompt); transformers' ``generate`` options pass through (``use_cache``, ``num_beams``)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        input_ids, attention_mask = left_pad(input_ids, attention_mask, self.lm.pad_token_id)
        suppress = list(generate_kwargs.pop("suppress_tokens", None) or []) + [self.media_token_id]
        return self.lm.generate(input_ids, attention_mask, context=self._context(images, input_ids),
                                suppress_tokens=suppress, **generate_kwargs)

    # -- text ----------------------------------------------------------------------------------------------------
    def encode(self, turns_per_row: Sequence[Sequence[tuple[str, str | None]]], image: bool = True,
               eos: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """Rows of ``[(question, answer), ...]`` → right-padded ``(input_ids, attention_mask, labels)`` with the
        official template and label masking (:func:`zoo.models.mmgpt.instruction.encode_instruction`); ``eos=False`` and
        answer None give a generation prompt."""
        tok = self.tokenizer
        rows = [encode_instruction(tok, [(q, a or "") for q, a in turns], image=image, bos_id=self.lm.bos_token_id,
                                   eos_id=self.lm.eos_token_id if eos else None, max_length=self.max_length)
                for turns in turns_per_row]
        return _pad(rows, self.lm.pad_token_id)

    def _prompt_ids(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        tok, bos = self.tokenizer, self.lm.bos_token_id
        rows = [(([bos] if bos is not None else []) + tok(p, add_special_tokens=False)["input_ids"], []) for p in prompts]
        ids, mask, _ = _pad(rows, self.lm.pad_token_id)
        return ids, mask

    def _decode_batch(self, ids: Tensor, mask: Tensor | None = None) -> list[str]:
        return decode_texts(self.tokenizer, ids, mask, self.lm.pad_token_id)

    def _answer_text(self, ids: Sequence[int]) -> str:
        """Generated ids → text: up to the first eos / ``<|endofchunk|>``, special tokens dropped, and only what follows
        a generated ``### Response:`` (official ``get_response``)."""
        ids = list(ids)
        for stop in (self.lm.eos_token_id, self.eoc_token_id):
            if stop is not None and stop in ids:
                ids = ids[:ids.index(stop)]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        text = re.split(r"###\s*response\s*:", text, flags=re.IGNORECASE)[-1]
        text = re.split(r"###", text)[0]
        return re.sub(r"\s+", " ", text).strip()

    def _generate_text(self, images: Tensor | None, ids: Tensor, mask: Tensor, max_new_tokens: int,
                       num_beams: int | None = None, **kwargs: Any) -> list[str]:
        dev = images.device if images is not None else ids.device
        new = self.generate(images, ids.to(dev), mask.to(dev), max_new_tokens=max_new_tokens,
                            num_beams=num_beams or self.num_beams, do_sample=False, **kwargs)
        return [self._answer_text(row) for row in new.tolist()]

    # -- instruction tuning --------------------------------------------------------------------------------------
    def instruction_loss(self, batch: Mapping[str, Any], language_batch: Mapping[str, Any] | None = None,
                         language_weight: float = 1.0) -> dict[str, Tensor]:
        """Loss on an :class:`zoo.models.mmgpt.instruction.InstructionCollator` batch (``images`` optional); with a
        ``language_batch`` (language-only) its loss is added × ``language_weight`` (the official loop: one language
        batch per visual batch, losses summed)."""
        out = self(batch.get("images"), batch["input_ids"], batch["attention_mask"], batch["labels"])
        losses = {"loss_vision" if batch.get("images") is not None else "loss_lang": out.loss}
        loss = out.loss
        if language_batch is not None:
            lang = self(None, language_batch["input_ids"], language_batch["attention_mask"], language_batch["labels"])
            losses["loss_lang"] = lang.loss
            loss = loss + language_weight * lang.loss
        return {"loss": loss, **losses}

    def tokenizer_texts(self) -> list[str]:
        """The text this model writes around the data (the instruction templates, the caption instruction): a
        tokenizer built from the data for it (``lm.tokenizer: data``) also gets these words."""
        return _template_texts(self.caption_instruction)

    @classmethod
    def tokenizer_template_texts(cls, model_cfg: Mapping[str, Any]) -> list[str]:
        return _template_texts(cls.config_value(model_cfg, "caption_instruction"))

    @classmethod
    def tokenizer_added_tokens(cls, model_cfg: Mapping[str, Any]) -> list[str]:
        return [END_OF_CHUNK, IMAGE_TOKEN]  # added when built (official: the Flamingo special tokens)

    def encode_language(self, records: Sequence[Mapping[str, str]]) -> dict[str, Tensor]:
        """Language-only instruction records ``{instruction, input, output}`` (:func:`zoo.train.data.
        read_instructions`) → a batch for :meth:`language_losses`: the template without the image section, with
        ``### Input:`` when there is one (official ``prompt_no_input_format`` / ``prompt_input_format``), labels on the
        response and eos."""
        tok = self.tokenizer
        rows = [encode_instruction(tok, [(r["instruction"], r["output"])], image=False, input=r.get("input") or None,
                                   bos_id=self.lm.bos_token_id, eos_id=self.lm.eos_token_id,
                                   max_length=self.max_length) for r in records]
        ids, mask, labels = _pad(rows, self.lm.pad_token_id)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def language_losses(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The LM loss of a language-only batch (:meth:`encode_language`; no media): what ``data.language`` adds to
        each training step."""
        out = self(None, batch["input_ids"], batch["attention_mask"], batch["labels"])
        return {"loss": out.loss}

    # -- VQA -----------------------------------------------------------------------------------------------------
    def vqa_loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Instruction-template LM loss on the answer (+ eos) of each question (official ``VQADataset``), on a text
        batch (:class:`zoo.modules.lm.processing.TextVQACollator`): each question's answer of highest weight (the
        official ``true_answer = answers[argmax(weights)]``; the first of equal ones)."""
        questions, per_q, weights = batch_text_answers(batch, "MultiModal-GPT vqa_loss")
        answers = [a[max(range(len(a)), key=w.__getitem__)] for a, w in zip(per_q, weights)]
        ids, mask, labels = self.encode([[(q, a)] for q, a in zip(questions, answers)])
        dev = batch["images"].device
        out = self(batch["images"], ids.to(dev), mask.to(dev), labels.to(dev))
        return {"loss": out.loss}

    @torch.no_grad()
    def vqa_predict(self, images: Tensor, question_ids: Tensor | None = None, question_mask: Tensor | None = None,
                    answer_ids: Tensor | None = None, answer_mask: Tensor | None = None, k: int | None = None,
                    answers: list[str] | None = None, *, questions: Sequence[str] | None = None,
                    num_beams: int | None = None, max_new_tokens: int | None = None) -> dict[str, Any]:
        """Open-ended answers by generation: ``{"answer": [str]}``. The ``questions`` are text (what the training
        module passes); ``question_ids`` / ``question_mask`` made with this model's tokenizer are decoded instead when
        no text is given. ``answer_ids`` / ``k`` / ``answers`` are accepted for a generative-VQA call and unused."""
        if questions is None:
            if question_ids is None:
                raise ValueError("MultiModal-GPT vqa_predict needs the questions (text) or their ids")
            questions = self._decode_batch(question_ids, question_mask)
        ids, mask = self._prompt_ids([instruction_prompt(q) for q in questions])
        texts = self._generate_text(images, ids, mask, max_new_tokens or self.max_answer_tokens, num_beams)
        return {"answer": texts, "prob": torch.ones(len(texts))}

    # -- captioning ----------------------------------------------------------------------------------------------
    def caption_loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """The instruction template with ``caption_instruction`` and the caption as response (raw ``captions``)."""
        caps = batch.get("captions", batch.get("caption"))
        if caps is None:
            raise ValueError("MultiModal-GPT caption_loss needs the raw caption strings in the batch ('captions')")
        caps = [c if isinstance(c, str) else c[0] for c in caps]
        ids, mask, labels = self.encode([[(self.caption_instruction, c)] for c in caps])
        dev = batch["images"].device
        return {"loss": self(batch["images"], ids.to(dev), mask.to(dev), labels.to(dev)).loss}

    @torch.no_grad()
    def generate_captions(self, images: Tensor, num_beams: int | None = None, max_length: int | None = None,
                          min_length: int | None = None, prompt: str | None = None) -> list[str]:
        ids, mask = self._prompt_ids([instruction_prompt(prompt or self.caption_instruction)] * images.shape[0])
        kwargs = {"min_new_tokens": min_length} if min_length else {}
        return self._generate_text(images, ids, mask, max_length or self.max_caption_tokens, num_beams, **kwargs)

    # -- chat ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def chat(self, image: Tensor | None, history: Sequence[tuple[str, str]], question: str,
             max_new_tokens: int | None = None, num_beams: int = 1) -> str:
        """One dialogue turn: the official chat prompt over the whole ``history`` ``[(q, a), ...]`` + ``question``;
        ``image`` (C, H, W) or None (language only)."""
        prompt = chat_prompt([*history, (question, None)], image=image is not None)
        ids, mask = self._prompt_ids([prompt])
        images = None if image is None else image.unsqueeze(0)
        return self._generate_text(images, ids, mask, max_new_tokens or self.chat_max_tokens, num_beams)[0]

    # -- export --------------------------------------------------------------------------------------------------
    def export_merged(self, directory: str | Path) -> Path:
        """A full export with LoRA merged into the base weights: a LoRA-free copy is built from the config
        (``lora_r: 0``), given this model's merged weights and saved (``save_pretrained``)."""
        from zoo.factory import create_model  # noqa: PLC0415
        from zoo.hub import load_weights, save_pretrained  # noqa: PLC0415

        if self.zoo_config is None:
            raise ValueError("export_merged: the model carries no zoo_config; build it with zoo.create_model")
        config = {k: v for k, v in self.zoo_config.items() if not k.startswith("_")}
        config["model"] = {**config["model"], "lora_r": 0, "flamingo_pretrained": None}
        config.pop("weights", None)
        state = {k: v.clone() for k, v in self.state_dict().items()}
        merged = create_model(config)
        holder = create_model({**config, "model": {**self.zoo_config["model"], "flamingo_pretrained": None}})
        load_weights(holder, state)
        merge_lora(holder)
        load_weights(merged, holder.state_dict())
        merged.zoo_config = config
        return save_pretrained(merged, directory)


def _pad(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    width = max(len(r) for r, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (r, lab) in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
        if lab:
            labels[i, :len(lab)] = torch.tensor(lab, dtype=torch.long)
    labels[:, 0] = -100
    return ids, mask, labels


def _template_texts(caption_instruction: str) -> list[str]:
    """The instruction templates and the caption instruction, whose words a data-built tokenizer gets."""
    return [instruction_prompt("", image=True), instruction_prompt("", image=False, input="x"),
            chat_prompt([("", "x"), ("", None)]), instruction_prompt(caption_instruction)]
