"""A generic fusion-encoder model: vision encoder + text encoder + cross-attention fusion + optional heads.

The smallest complete assembly of the zoo's contracts (TorchMultimodal's LateFusion in spirit): every part comes from
a registry by name, widths are checked between parts at build time, and each head is optional. Published families
(X²-VLM, CCLM, ...) have their own model files; this one serves demos, plugins and quick experiments — and trains on
the framework's tasks with the heads it has: retrieval (ITC on the pooled vectors + ITM with one in-batch hard
negative each way; evaluation ranks by ITC and re-scores the top ``k`` with ITM, the X²-VLM recipe) and VQA as
classification over the answer vocabulary (the classifier on the fused CLS state).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from zoo.heads.matching import hard_negative_matching_loss
from zoo.models.base import ZooModel
from zoo.modules.outputs import EncoderOutput, register_output
from zoo.registry import MODELS
from zoo.spec import Part, check_width

__all__ = ["FusionEncoderModel", "FusionEncoderOutput"]


@register_output
@dataclass
class FusionEncoderOutput:
    vision: EncoderOutput
    text: EncoderOutput
    fused: EncoderOutput
    similarity: Tensor | None = None  # (B_images, B_texts) ITC cosine similarity
    match_prob: Tensor | None = None  # (B,) ITM probability that text and image match
    answer_logits: Tensor | None = None  # (B, num_answers)
    extras: dict[str, Any] = field(default_factory=dict)


@MODELS.register("fusion_encoder")
class FusionEncoderModel(ZooModel):
    task_heads = {"retrieval": ("itc", "itm"), "vqa": ("vqa",)}
    generative_vqa = False  # the VQA head is a classifier over the data's answer vocabulary

    def __init__(
        self,
        vision: Part["vision_encoder"],
        text: Part["text_encoder"],
        fusion: Part["fusion"],
        itc: Part["head"] | None = None,
        itm: Part["head"] | None = None,
        vqa: Part["head"] | None = None,
    ):
        super().__init__()
        check_width(fusion, "encoder_width", fusion.encoder_width, vision, vision.width)
        check_width(fusion, "width", fusion.width, text, text.width)
        if itc is not None:
            check_width(itc, "vision_width", itc.vision_width, vision, vision.width)
            check_width(itc, "text_width", itc.text_width, text, text.width)
        for head in (itm, vqa):
            if head is not None:
                check_width(head, "width", head.width, fusion, fusion.width)
        self.vision, self.text, self.fusion = vision, text, fusion
        self.itc, self.itm, self.vqa = itc, itm, vqa

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor | None = None) -> FusionEncoderOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        v = self.vision(images)
        t = self.text(input_ids, attention_mask)
        f = self.fusion(t.tokens, attention_mask, v.tokens, v.mask)
        out = FusionEncoderOutput(vision=v, text=t, fused=f)
        if self.itc is not None:
            out.similarity = self.itc.predict(v.pooled, t.pooled)
        cls = f.tokens[:, 0]
        if self.itm is not None:
            out.match_prob = self.itm.predict(cls)
        if self.vqa is not None:
            out.answer_logits = self.vqa(cls)["logits"]
        return out

    # -- tasks ---------------------------------------------------------------------------------------------------
    def _fused_cls(self, text_tokens: Tensor, attention_mask: Tensor, image: EncoderOutput) -> Tensor:
        return self.fusion(text_tokens, attention_mask, image.tokens, image.mask).tokens[:, 0]

    def retrieval_losses(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict:
        """ITC + ITM with hard negatives on :class:`~zoo.data.collate.RetrievalCollator` batches (``image_ids`` mark
        repeated images: not negatives of each other)."""
        self._require(itc=self.itc, itm=self.itm)
        image = self.vision(batch["images"])
        mask = batch["attention_mask"]
        text = self.text(batch["input_ids"], mask)
        image_ids = batch.get("image_ids")
        itc = self.itc(image.pooled, text.pooled, image_ids)
        itm = hard_negative_matching_loss(self.itm, self.fusion, image, text.tokens, mask, itc["image_feat"],
                                          itc["text_feat"], self.itc.temperature(), image_ids, generator)
        return {"itc": itc["loss"], "itm": itm, "loss": itc["loss"] + itm}

    @torch.no_grad()
    def retrieval_scores(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor, k: int = 128,
                         batch_size: int = 64) -> tuple[Tensor, Tensor]:
        """ITC similarity picks the top ``k`` candidates per query, the ITM match logit re-scores them. Returns
        (image→text, text→image) score matrices for :func:`zoo.metrics.retrieval.retrieval_recall`."""
        from zoo.metrics.retrieval import rerank_scores  # noqa: PLC0415

        self._require(itc=self.itc, itm=self.itm)
        image = [self.vision(x) for x in images.split(batch_size)]
        text = [self.text(i, m) for i, m in zip(input_ids.split(batch_size), attention_mask.split(batch_size))]
        tokens = torch.cat([o.tokens for o in image])
        masks = torch.cat([o.mask if o.mask is not None else torch.ones(o.tokens.shape[:2], dtype=torch.long,
                                                                        device=o.tokens.device) for o in image])
        states = torch.cat([o.tokens for o in text])
        sim = self.itc.embed_image(torch.cat([o.pooled for o in image])) @ \
            self.itc.embed_text(torch.cat([o.pooled for o in text])).t()

        def itm(image_idx: Tensor, text_idx: Tensor) -> Tensor:
            cls = self.fusion(states[text_idx], attention_mask[text_idx], tokens[image_idx], masks[image_idx]).tokens
            return self.itm(cls[:, 0])["logits"][:, 1]

        return rerank_scores(sim, None, k, itm, batch_size=batch_size)

    def vqa_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The classifier's loss on :class:`~zoo.data.collate.VQACollator` batches (``targets``: answer scores)."""
        self._require(vqa=self.vqa)
        mask = batch["question_mask"]
        cls = self._fused_cls(self.text(batch["question_ids"], mask).tokens, mask, self.vision(batch["images"]))
        return self.vqa(cls, batch["targets"])

    @torch.no_grad()
    def vqa_predict(self, images: Tensor, question_ids: Tensor, question_mask: Tensor, *args: Any,
                    answers: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        """The classifier's best answer per question: ``{"index", "prob", "answer"}``."""
        self._require(vqa=self.vqa)
        cls = self._fused_cls(self.text(question_ids, question_mask).tokens, question_mask, self.vision(images))
        prob, index = self.vqa.predict(cls, k=1)
        labels = answers or getattr(self.vqa, "labels", None)
        return {"index": index[:, 0], "prob": prob[:, 0],
                "answer": [labels[i] for i in index[:, 0].tolist()] if labels else None}
