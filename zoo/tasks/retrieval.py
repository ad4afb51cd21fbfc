"""Image–text retrieval: ITC + ITM training (in-batch hard negatives), evaluated by ranking every text for every image
and every image for every text (ITC similarity, the top ``k_test`` re-ranked by ITM); scored by recall at 1, 5, 10
both ways and their mean ``r_mean``. Training items may carry a translated caption (``data.translation``, CCLM)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from zoo.registry import TASKS
from zoo.tasks.base import Task


@runtime_checkable
class RetrievalModel(Protocol):
    """``retrieval_losses(batch) -> {"loss", ...}``; ``retrieval_scores(images, input_ids, attention_mask, k=) ->
    (score_i2t, score_t2i)``."""

    def retrieval_losses(self, batch: Mapping[str, Any]) -> dict[str, Tensor]: ...

    def retrieval_scores(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor,
                         k: int = 128) -> tuple[Tensor, Tensor]: ...


def predict_images(batch: Mapping[str, Any]) -> dict:
    """Retrieval evaluation collects the images and their indices; the scores are computed over the whole set."""
    return {"images": batch["images"].detach().cpu(), "index": batch["index"].detach().cpu()}


def retrieval_metrics(module: Any, outputs: list[dict], name: str | None = None) -> dict[str, float]:
    """Recall@K of one evaluation set: every text of the set ranked for every image collected, and back."""
    from zoo.metrics.retrieval import retrieval_recall  # noqa: PLC0415

    dm = module.trainer.datamodule
    index = torch.cat([o["index"] for o in outputs])
    order = index.argsort()
    images = torch.cat([o["images"] for o in outputs])[order].to(module.device)
    stage = module.trainer.state.stage
    ids, mask = dm.eval_text_tokens(stage, name) if name is not None else dm.eval_text_tokens(stage)
    txt2img, img2txt = dm.eval_text_index(stage, name) if name is not None else dm.eval_text_index(stage)
    present = index[order].tolist()
    if len(present) < len(img2txt):  # a partial evaluation (limit_*_batches): the images seen, their texts
        texts, kept = [], []
        for i in present:
            kept.append(list(range(len(texts), len(texts) + len(img2txt[i]))))
            texts.extend(img2txt[i])
        img2txt, txt2img = kept, [n for n, caps in enumerate(kept) for _ in caps]
        ids, mask = ids[texts], mask[texts]
    i2t, t2i = module.model.retrieval_scores(images, ids.to(module.device), mask.to(module.device),
                                             k=int(module.evaluation.get("k_test", 128)))
    return retrieval_recall(i2t.cpu(), t2i.cpu(), txt2img, img2txt)


@TASKS.register("retrieval")
class RetrievalTask(Task):
    name = "retrieval"
    description = "image-text retrieval (COCO / Flickr30K / Multi30K format); recall@1/5/10 both ways"
    protocol = RetrievalModel
    loss_method = "retrieval_losses"
    readers = ("retrieval_train", "retrieval_eval")
    progress_metrics = ("r_mean",)
    reads_translations = True

    def collator(self, dm: Any, split: str) -> Callable:
        from zoo.data.collate import RetrievalCollator  # noqa: PLC0415

        return RetrievalCollator(dm.tokenizer, dm.cfg["max_tokens"])

    def predict_batch(self, module: Any, batch: Mapping[str, Any]) -> dict:
        return predict_images(batch)

    def compute_metrics(self, module: Any, outputs: list[dict], name: str | None = None) -> dict[str, float]:
        return retrieval_metrics(module, outputs, name)
