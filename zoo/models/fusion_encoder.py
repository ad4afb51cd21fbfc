"""A generic fusion-encoder model: vision encoder + text encoder + cross-attention fusion + optional heads.

The smallest complete assembly of the zoo's contracts (TorchMultimodal's LateFusion in spirit): every part comes from
a registry by name, widths are checked between parts at build time, and each head is optional. Published families
(X²-VLM, CCLM, ...) have their own model files; this one serves demos, plugins and quick experiments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from zoo.models.base import ZooModel
from zoo.modules.outputs import EncoderOutput
from zoo.registry import MODELS
from zoo.spec import Part, check_width

__all__ = ["FusionEncoderModel", "FusionEncoderOutput"]


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
