"""Visual entailment (SNLI-VE, XVNLI): an image and a hypothesis → entailment, neutral or contradiction; scored by
accuracy in percent, overall and per class (``acc``). The class order is the model's (``ve_labels``: DaVinci's
contradiction / neutral / entailment, CCLM's XVNLI label mapper), so record labels map onto its logits."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from zoo.registry import TASKS
from zoo.tasks.base import Task


@runtime_checkable
class VEModel(Protocol):
    """``ve_loss(batch) -> {"loss", ...}``; ``ve_logits(images, input_ids, attention_mask) -> (B, 3)`` in the order
    of the model's ``ve_labels``."""

    def ve_loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]: ...

    def ve_logits(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor: ...


def sentence_label_collator(dm: Any, split: str) -> Callable:
    from zoo.data.collate import SentenceLabelCollator  # noqa: PLC0415

    return SentenceLabelCollator(dm.tokenizer, dm.cfg["max_tokens"], class_names=dm.class_names)


def classification_outputs(batch: Mapping[str, Any], logits: Tensor) -> dict:
    return {"index": batch["index"].detach().cpu(), "prediction": logits.argmax(-1).cpu(),
            "label": batch["labels"].detach().cpu()}


def classification_metrics(module: Any, outputs: list[dict]) -> dict[str, float]:
    import torch  # noqa: PLC0415

    from zoo.metrics.classification import accuracy_by_class  # noqa: PLC0415

    predictions = torch.cat([o["prediction"] for o in outputs])
    labels = torch.cat([o["label"] for o in outputs])
    return accuracy_by_class(predictions, labels, module.trainer.datamodule.class_names)


@TASKS.register("ve")
class VETask(Task):
    name = "ve"
    description = "visual entailment (SNLI-VE, XVNLI); accuracy overall and per class"
    protocol = VEModel
    loss_method = "ve_loss"
    readers = ("ve", "ve")
    progress_metrics = ("acc",)

    def class_names(self, dm: Any) -> list[str] | None:
        labels = getattr(dm.model, "ve_labels", None)
        if labels:
            return list(labels)
        from zoo.data.datasets import VE_LABELS  # noqa: PLC0415

        return list(VE_LABELS)  # without a model: the official SNLI-VE order of ALBEF and DaVinci

    def collator(self, dm: Any, split: str) -> Callable:
        return sentence_label_collator(dm, split)

    def predict_batch(self, module: Any, batch: Mapping[str, Any]) -> dict:
        return classification_outputs(batch, module.model.ve_logits(batch["images"], batch["input_ids"],
                                                                    batch["attention_mask"]))

    def compute_metrics(self, module: Any, outputs: list[dict], name: str | None = None) -> dict[str, float]:
        return classification_metrics(module, outputs)
