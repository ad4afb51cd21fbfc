"""CCLM (Zeng et al., 2022, "Cross-View Language Modeling"): cross-lingual cross-modal pre-training on X-VLM / X²-VLM.

Two layouts, one class (:class:`CCLM`, a subclass of :class:`~zoo.models.x2vlm.X2VLM` whose objectives it reuses):

- original CCLM (zengyan-97/CCLM @a00c3c0, ``models/model_pretrain_cclm.py`` on ``models/xvlm.py``): ``swin`` vision
  (Swin-B, the mean of the last-stage tokens prepended) and ONE ``split_bert`` stack: XLM-R-large cut to its odd layers
  1, 3, …, 23 → 6 text layers + 6 fusion layers, 1024 wide. Its embeddings are the official xbert ``BertEmbeddings``
  (position ids 0 .. L-1, not XLM-R's padding-offset positions), so ``embeddings: bert`` with ``pad_token_id: 1``.
  The MLM head is tied to the word embeddings (``BertForMaskedLM``).
- CCLM-X2VLM (zengyan-97/X2-VLM @21ed5a5, ``CrossViewLM`` on ``XVLMPlusBase``): ``beit_v2`` vision, an XLM-R text
  encoder (``hf``, all 12 / 24 layers, RoBERTa positions) and a SEPARATE 6-layer cross encoder
  (``fusion``: ``cross_attention``, a bert-base / bert-large configuration; official ``cross_encoder``), plus an
  MLM head that is NOT tied (``mlm_head``).

Objectives, as the official code computes them (``forward_multimodal`` / ``forward_para_text``):

- image–caption pairs (:meth:`CCLM.image_text_losses`): ITC on the first caption, ITM with in-batch hard negatives
  (X²-VLM's sampling), MLM of the first caption conditioned on the image, box L1 + GIoU for region texts. With a
  translation of each caption in the batch (``input_ids_2``; original CCLM), ITC becomes the mean of ITC(image,
  caption) and ITC(image, translation) and TTC(caption, translation) is added — both with the one temperature and
  ``text_proj`` for every text. (The official CCLM-X2VLM multimodal branch has no translation terms; a batch without
  ``input_ids_2`` gives exactly it.)
- parallel sentences (:meth:`CCLM.parallel_text_losses`): TTC between the two sentences (``text_proj`` both sides);
  TTM — matching with hard negatives where sentence 1 plays the image: sentence 2's text states go through the fusion
  layers cross-attending to sentence 1's text states, negatives sampled from softmax(TTC similarity); MLM of masked
  sentence 1 through the fusion layers cross-attending to sentence 2's (unmasked) text states.

Tasks: retrieval (``retrieval_losses`` / ``retrieval_scores`` from X²-VLM), xGQA as generative VQA over an answer list
(``vqa_loss`` / ``vqa_predict`` with the ``vqa_generative`` head), XVNLI (``xvnli`` classifier — the official
``build_mlp(d, 3)`` — on the fused CLS), MaRVL through X²-VLM's ``nlvr`` head (two fused passes, CLS concatenated).
Note: the original CCLM MaRVL model is X-VLM's NLVR model (fusion layers duplicated, one per image, sharing the
cross-attention key/value) — its checkpoints are not convertible to the ``nlvr`` head and are refused.

The checkpoint converter for both layouts is :mod:`zoo.models.cclm.convert`.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.heads.contrastive import gather_with_grad, itc_loss
from zoo.models.base import CLIP_PREPROCESS, ZooModel
from zoo.heads.matching import hard_negative_matching_loss
from zoo.models.x2vlm import X2VLM
from zoo.modules.outputs import EncoderOutput
from zoo.registry import MODELS
from zoo.spec import ConfigError, Part, check_width

__all__ = [
    "CCLM",
    "XVNLI_LABELS",
]

# the class order of the official XVNLI data (CCLM ``dataset/xvnli_dataset.py``, ``label_mapper``)
XVNLI_LABELS = ("contradiction", "entailment", "neutral")


# ---------------------------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------------------------
@MODELS.register("cclm")
class CCLM(X2VLM):
    """CCLM with the heads its config names (see the module docstring).

    Args:
        vision: ``swin`` (original) or ``beit_v2`` (CCLM-X2VLM); token 0 is the pooled token.
        text: a split text/fusion stack (``split_bert`` with ``fusion_start < num_layers``) when ``fusion`` is None,
            else a text-only encoder (``hf`` XLM-R, or ``split_bert`` with ``fusion_start == num_layers``).
        fusion: the separate cross encoder (``cross_attention``; official ``cross_encoder``) of CCLM-X2VLM; its width
            must equal the text width. Named ``fusion`` as in ``fusion_encoder``, so the optimiser's fusion group
            (official ``cross_lr``) applies to it.
        itc, itm, bbox, mlm: pre-training heads (``temp``, ``vision_proj`` and ``text_proj`` live in ``itc``).
        vqa: ``vqa_generative`` (xGQA) — or ``classifier`` on the fused CLS.
        nlvr: MaRVL (X²-VLM's NLVR head).
        xvnli: ``classifier`` with 3 classes on the fused CLS (XVNLI).
        tie_mlm: share the MLM decoder matrix with the word embeddings (original CCLM: yes; CCLM-X2VLM: no).
    """

    #: the official recipe: CLIP's mean / std, bicubic square resize (CCLM ``dataset/__init__.py``)
    preprocess_defaults = CLIP_PREPROCESS
    #: X²-VLM's official step is not CCLM's (zengyan-97/CCLM has its own code; no harness for it)
    official_train_step = None
    task_heads = {"vqa": ("vqa",), "retrieval": ("itc", "itm"), "ve": ("xvnli",), "nlvr": ("nlvr",),
                  "pretrain": ("itc", "itm")}  # no captioning in CCLM

    def __init__(
        self,
        vision: Part["vision_encoder"],
        text: Part["text_encoder"],
        fusion: Part["fusion"] | None = None,
        itc: Part["head"] | None = None,
        itm: Part["head"] | None = None,
        bbox: Part["head"] | None = None,
        mlm: Part["head"] | None = None,
        vqa: Part["head"] | None = None,
        nlvr: Part["head"] | None = None,
        xvnli: Part["head"] | None = None,
        tie_mlm: bool = True,
    ):
        ZooModel.__init__(self)  # X2VLM.__init__ insists on one split stack; the checks differ here
        if fusion is None:
            if not hasattr(text, "fusion_start") or text.fusion_start >= text.num_layers:
                raise ConfigError(
                    "without a separate 'fusion' (cross) encoder, text must be a split text/fusion stack ('split_bert' "
                    f"with fusion_start < num_layers), got {type(text).__name__}; or add "
                    "fusion: {type: cross_attention}"
                )
            check_width(text, "encoder_width", text.encoder_width, vision, vision.width)
            fusion_width = text.width
        else:
            if hasattr(text, "fusion_start") and text.fusion_start < text.num_layers:
                raise ConfigError(
                    f"text has fusion layers (fusion_start={text.fusion_start} < num_layers={text.num_layers}) and a "
                    "separate 'fusion' (cross) encoder is configured too: set text.fusion_start = text.num_layers"
                )
            check_width(fusion, "encoder_width", fusion.encoder_width, vision, vision.width)
            check_width(fusion, "hidden_size", fusion.width, text, text.width)
            fusion_width = fusion.width
        if itc is not None:
            check_width(itc, "vision_width", itc.vision_width, vision, vision.width)
            check_width(itc, "text_width", itc.text_width, text, text.width)
        for head in (itm, bbox, mlm, xvnli):
            if head is not None:
                check_width(head, "width", head.width, fusion if fusion is not None else text, fusion_width)
        self.vision, self.text, self.fusion = vision, text, fusion
        self.itc, self.itm, self.bbox, self.mlm = itc, itm, bbox, mlm
        self.vqa, self.nlvr, self.xvnli = vqa, nlvr, xvnli
        self.caption, self.caption_prompt = None, ""  # no captioning task in CCLM
        self.tie_mlm = tie_mlm
        if mlm is not None and tie_mlm:
            mlm.tie_to(text.get_input_embeddings())

    # the split stack's parameter parts (``param_part``) are X²-VLM's; a separate cross encoder is ``fusion`` by name
    @staticmethod
    def official_converter(checkpoint: str, out_dir: str, model: str | None = None,
                           task: str | None = None) -> dict[str, Any]:
        """CCLM checkpoints, original (zengyan-97/CCLM) and CCLM-X2VLM layouts.

        The layout, registered model, task and resolution are told from the keys and shapes (``model`` / ``task``
        name them instead); see :func:`zoo.models.cclm.convert.convert_official_checkpoint`."""
        from zoo.models.cclm.convert import convert_official_checkpoint  # noqa: PLC0415

        return convert_official_checkpoint(checkpoint, out_dir, model=model, task=task)

    # -- encoders ------------------------------------------------------------------------------------------------
    @property
    def split_stack(self) -> bool:
        """True for the original layout (one stack with fusion layers), False with a separate cross encoder."""
        return self.fusion is None

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> EncoderOutput:
        """Text-only states (the text layers of the split stack, or the whole text encoder)."""
        if self.split_stack:
            return self.text(input_ids, attention_mask, mode="text")
        if hasattr(self.text, "fusion_start"):
            return self.text(input_ids, attention_mask, mode="text")
        return self.text(input_ids, attention_mask)

    def fuse(self, text_states: Tensor, attention_mask: Tensor, image_tokens: Tensor,
             image_mask: Tensor | None = None) -> EncoderOutput:
        """Text states through the fusion layers, cross-attending to ``image_tokens`` (or another sentence's states)."""
        if self.split_stack:
            return super().fuse(text_states, attention_mask, image_tokens, image_mask)
        return self.fusion(text_states, attention_mask, image_tokens, image_mask)

    def encode_fused(self, input_ids: Tensor, attention_mask: Tensor, context: EncoderOutput) -> EncoderOutput:
        """Text encoder then fusion layers over ``context`` (the official ``get_cross_embeds(text_ids=...)``)."""
        return self.fuse(self.encode_text(input_ids, attention_mask).tokens, attention_mask, context.tokens,
                         context.mask)

    def _question_states(self, image: EncoderOutput, question_ids: Tensor, question_mask: Tensor) -> Tensor:
        return self.encode_fused(question_ids, question_mask, image).tokens

    def _check_text_context(self) -> None:
        width = self.fusion.encoder_width if self.fusion is not None else self.text.encoder_width
        if width != self.text.width:
            raise ValueError(
                "parallel-sentence objectives fuse one sentence with the other's text states (width "
                f"{self.text.width}), but the fusion layers read encoder_width={width}: they need vision width == "
                "text width"
            )

    # -- objectives ----------------------------------------------------------------------------------------------
    def matching_loss(
        self, context: EncoderOutput, context_feat: Tensor, text: EncoderOutput, attention_mask: Tensor,
        text_feat: Tensor, ids: Tensor | None = None, generator: torch.Generator | None = None,
    ) -> Tensor:
        """The official ``get_matching_loss``: positives, (negative context, text), (context, negative text); the
        context is an image (ITM) or, for TTM, the first sentence's text states. Hard negatives from
        softmax(feature similarity / temp) with the positives excluded (:func:`sample_hard_negatives`)."""
        self._require(itc=self.itc, itm=self.itm)
        return hard_negative_matching_loss(self.itm, self.fuse, context, text.tokens, attention_mask, context_feat,
                                           text_feat, self.itc.temperature(), ids, generator)

    def text_contrastive_loss(self, text_feat: Tensor, text_feat_2: Tensor) -> Tensor:
        """TTC: symmetric InfoNCE between the two languages' ``text_proj`` features, the ITC temperature, features
        gathered from every process (the official ``get_contrastive_loss(text_feat, text_feat_2)``)."""
        return itc_loss(gather_with_grad(text_feat), gather_with_grad(text_feat_2), self.itc.temperature())

    def mlm_loss(self, image: EncoderOutput, input_ids_masked: Tensor, attention_mask: Tensor, masked_pos: Tensor,
                 masked_ids: Tensor) -> Tensor:
        """MLM through text + fusion layers, cross-attending to ``image`` (image tokens, or the other sentence's text
        states for parallel text), predicted at ``masked_pos`` (``masked_ids`` -100 = padding)."""
        self._require(mlm=self.mlm)
        states = self.encode_fused(input_ids_masked, attention_mask, image).tokens
        return self.mlm(states, labels=masked_ids, masked_pos=masked_pos)["loss"]

    def image_text_losses(self, batch: Mapping[str, Tensor],
                          generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Image–caption batch: ``images``, ``input_ids``, ``attention_mask``; optional ``image_ids``; translations
        ``input_ids_2`` / ``attention_mask_2`` (→ ITC averaged over both languages + ``ttc``); MLM inputs
        ``input_ids_masked``, ``masked_pos``, ``masked_ids`` (of the first caption); boxes ``target_bbox``,
        ``is_image`` and region views ``image_index``, ``region_mask`` as in X²-VLM. Each loss and ``loss``."""
        image = full = self.encode_image(batch["images"])
        if "region_mask" in batch:
            image, full = self.region_view(image, batch["image_index"], batch["region_mask"])
        text = self.encode_text(batch["input_ids"], batch["attention_mask"])
        losses = self.contrastive_and_matching(image, text, batch["attention_mask"], batch.get("image_ids"), generator)
        if "input_ids_2" in batch:
            if "attention_mask_2" not in batch:
                raise KeyError("the batch has input_ids_2 (translated captions) but no attention_mask_2")
            text_2 = self.encode_text(batch["input_ids_2"], batch["attention_mask_2"])
            image_feat = self.itc.embed_image(image.tokens[:, 0])
            text_feat = self.itc.embed_text(text.tokens[:, 0])
            text_feat_2 = self.itc.embed_text(text_2.tokens[:, 0])
            ids = batch.get("image_ids")
            itc_2 = itc_loss(gather_with_grad(image_feat), gather_with_grad(text_feat_2), self.itc.temperature(),
                             gather_with_grad(ids) if ids is not None else None)
            losses["itc"] = (losses["itc"] + itc_2) / 2
            losses["ttc"] = self.text_contrastive_loss(text_feat, text_feat_2)
        if self.mlm is not None and "input_ids_masked" in batch:
            losses["mlm"] = self.mlm_loss(image, batch["input_ids_masked"], batch["attention_mask"],
                                          batch["masked_pos"], batch["masked_ids"])
        if self.bbox is not None and "target_bbox" in batch:
            losses.update(self.bbox_losses(full, text, batch["attention_mask"], batch["target_bbox"],
                                           batch.get("is_image")))
        losses["loss"] = sum(losses.values())
        return losses

    def retrieval_losses(self, batch: Mapping[str, Tensor], generator: torch.Generator | None = None) -> dict:
        """Retrieval fine-tuning: ITC + ITM (X²-VLM's); a batch with translated captions (``input_ids_2``, data
        option ``translation``) adds the second language's ITC and the text–text contrastive term, as pre-training."""
        if "input_ids_2" in batch:
            return self.image_text_losses(batch, generator)
        return super().retrieval_losses(batch, generator)

    def parallel_text_losses(self, batch: Mapping[str, Tensor],
                             generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Parallel-sentence batch: ``input_ids`` / ``attention_mask`` (sentence 1), ``input_ids_2`` /
        ``attention_mask_2`` (its translation), and MLM inputs of sentence 1 (``input_ids_masked``, ``masked_pos``,
        ``masked_ids``). Returns ``ttc``, ``ttm``, ``mlm`` (when the head and inputs are there) and ``loss``."""
        self._require(itc=self.itc, itm=self.itm)
        self._check_text_context()
        mask, mask_2 = batch["attention_mask"], batch["attention_mask_2"]
        text = self.encode_text(batch["input_ids"], mask)
        text_2 = self.encode_text(batch["input_ids_2"], mask_2)
        text_feat = self.itc.embed_text(text.tokens[:, 0])
        text_feat_2 = self.itc.embed_text(text_2.tokens[:, 0])
        context = EncoderOutput(tokens=text.tokens, pooled=text.tokens[:, 0], mask=mask)
        losses = {
            "ttc": self.text_contrastive_loss(text_feat, text_feat_2),
            "ttm": self.matching_loss(context, text_feat, text_2, mask_2, text_feat_2, generator=generator),
        }
        if self.mlm is not None and "input_ids_masked" in batch:
            context_2 = EncoderOutput(tokens=text_2.tokens, pooled=text_2.tokens[:, 0], mask=mask_2)
            losses["mlm"] = self.mlm_loss(context_2, batch["input_ids_masked"], mask, batch["masked_pos"],
                                          batch["masked_ids"])
        losses["loss"] = sum(losses.values())
        return losses

    def pretrain_losses(self, batch: Mapping[str, Tensor],
                        generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The official ``forward``: a batch with ``images`` is image–caption data (:meth:`image_text_losses`),
        one without is parallel text (:meth:`parallel_text_losses`)."""
        if "images" in batch:
            return self.image_text_losses(batch, generator)
        if "input_ids_2" not in batch:
            raise KeyError("a pre-training batch needs 'images' (image–caption data) or 'input_ids_2' "
                           "(parallel text)")
        return self.parallel_text_losses(batch, generator)

    # -- XVNLI ---------------------------------------------------------------------------------------------------
    def xvnli_logits(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The official ``XVLM4XVNLI``: the fused CLS of (image, hypothesis) → ``build_mlp(d, 3)``."""
        self._require(xvnli=self.xvnli)
        cls = self.encode_fused(input_ids, attention_mask, self.encode_image(images)).tokens[:, 0]
        return self.xvnli(cls)["logits"]

    def xvnli_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Cross-entropy on ``labels`` (0/1/2) for ``images``, ``input_ids``, ``attention_mask``."""
        logits = self.xvnli_logits(batch["images"], batch["input_ids"], batch["attention_mask"])
        return {"loss": F.cross_entropy(logits, batch["labels"].long()), "logits": logits}

    # the ``ve`` task of ``mmzoo train`` (XVNLI is SNLI-VE with translated hypotheses): the same head and loss
    ve_logits = xvnli_logits
    ve_loss = xvnli_loss

    @property
    def ve_labels(self) -> tuple[str, ...]:
        """The class names in the head's order: its ``labels``, else the official ``xvnli_dataset`` order."""
        labels = getattr(self.xvnli, "labels", None)
        return tuple(labels) if labels else XVNLI_LABELS

    @torch.no_grad()
    def xvnli_predict(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> dict[str, Any]:
        logits = self.xvnli_logits(images, input_ids, attention_mask)
        index = logits.argmax(-1)
        labels = getattr(self.xvnli, "labels", None)
        return {"index": index, "prob": logits.softmax(-1).gather(1, index[:, None])[:, 0],
                "answer": [labels[i] for i in index.tolist()] if labels else None}
