"""Two-image reasoning (NLVR2, MaRVL): a left and a right image and a statement → true or false; scored by accuracy in
percent, overall and per class (``acc``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from zoo.registry import TASKS
from zoo.tasks.base import Task
from zoo.tasks.ve import classification_metrics, classification_outputs, sentence_label_collator


@runtime_checkable
class NLVRModel(Protocol):
    """``nlvr_loss(batch) -> {"loss", ...}``; ``nlvr_logits(images_a, images_b, input_ids, attention_mask) -> (B, 2)``
    (false, true)."""

    def nlvr_loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]: ...

    def nlvr_logits(self, images_a: Tensor, images_b: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor: ...


@TASKS.register("nlvr")
class NLVRTask(Task):
    name = "nlvr"
    description = "two-image reasoning (NLVR2, MaRVL); accuracy overall and per class"
    protocol = NLVRModel
    loss_method = "nlvr_loss"
    readers = ("nlvr", "nlvr")
    progress_metrics = ("acc",)

    def class_names(self, dm: Any) -> list[str] | None:
        return ["false", "true"]

    def collator(self, dm: Any, split: str) -> Callable:
        return sentence_label_collator(dm, split)

    def predict_batch(self, module: Any, batch: Mapping[str, Any]) -> dict:
        return classification_outputs(batch, module.model.nlvr_logits(batch["images_a"], batch["images_b"],
                                                                      batch["input_ids"], batch["attention_mask"]))

    def compute_metrics(self, module: Any, outputs: list[dict], name: str | None = None) -> dict[str, float]:
        return classification_metrics(module, outputs)
