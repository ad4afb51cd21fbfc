"""Captioning: an image → a sentence; scored by BLEU-1..4, METEOR-free CIDEr-D and ROUGE-L on PTB-tokenized text
(``CIDEr`` in the progress bar). Training batches are the s2s-ft masked-LM inputs of X²-VLM's captioner, or, for a
model whose ``causal_captioning`` is true (a causal language model: eP-ALM, MultiModal-GPT), the caption ids and
raw captions without [MASK] inputs."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from zoo.registry import TASKS
from zoo.tasks.base import Task


@runtime_checkable
class CaptioningModel(Protocol):
    """``caption_loss(batch) -> {"loss", ...}``; ``generate_captions(images, num_beams=, max_length=, min_length=)
    -> [str]``."""

    def caption_loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]: ...

    def generate_captions(self, images: Tensor, *args: Any, **kwargs: Any) -> list[str]: ...


def reads_transcripts(model: Any) -> bool:
    """Whether ``model.generate_captions`` takes ``transcripts`` (a text per video read beside it, UniVL's
    captioning with transcript); its ``caption_loss`` then reads a batch's ``transcripts`` too."""
    try:
        return "transcripts" in inspect.signature(model.generate_captions).parameters
    except (TypeError, ValueError):
        return False


@TASKS.register("captioning")
class CaptioningTask(Task):
    name = "captioning"
    description = "image captioning (COCO Karpathy format); BLEU, CIDEr-D, ROUGE-L"
    protocol = CaptioningModel
    loss_method = "caption_loss"
    readers = ("caption_train", "caption_eval")
    id_key = "image_id"
    progress_metrics = ("CIDEr",)

    def collator(self, dm: Any, split: str) -> Callable:
        from zoo.data.collate import CaptionEvalCollator, CaptionTrainCollator  # noqa: PLC0415

        if split != "train":
            return CaptionEvalCollator()
        c = dm.cfg
        return CaptionTrainCollator(dm.tokenizer, prompt=c["prompt"], max_tokens=c["max_tokens"],
                                    max_masks=c["max_masks"], mask_prob=float(c["mask_prob"]),
                                    causal=dm.causal_captioning)

    def predict_batch(self, module: Any, batch: Mapping[str, Any]) -> dict:
        ev = module.evaluation
        decoding = {k: ev[k] for k in ("num_beams", "max_length", "min_length") if k in ev}
        if batch.get("transcripts") is not None:  # the records' speech: for a model that reads it (UniVL)
            if reads_transcripts(module.model):
                decoding["transcripts"] = batch["transcripts"]
            elif not getattr(self, "_told_transcripts", False):
                self._told_transcripts = True
                warnings.warn(f"the caption records have transcripts, which {type(module.model).__name__} does "
                              "not read: captions are written from the images alone", UserWarning, stacklevel=2)
        captions = module.model.generate_captions(batch["images"], **decoding)
        return {"image_id": list(batch["image_id"]), "prediction": captions, "references": list(batch["captions"])}

    def compute_metrics(self, module: Any, outputs: list[dict], name: str | None = None) -> dict[str, float]:
        from zoo.metrics.caption import caption_scores, tokenize_caption  # noqa: PLC0415

        gts, res = {}, {}
        for o in outputs:
            for i, pred, refs in zip(o["image_id"], o["prediction"], o["references"]):
                gts[i] = [tokenize_caption(r) for r in refs]
                res[i] = [tokenize_caption(pred)]
        return caption_scores(gts, res)
