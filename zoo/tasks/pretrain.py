"""Pre-training: image–caption pairs in the retrieval layout with masked-LM inputs (the X²-VLM / CCLM objectives:
ITC, ITM, MLM and, with region boxes, the box losses; DaVinci builds its own prefix-LM inputs through
``pretrain_inputs``), evaluated by zero-shot retrieval on retrieval evaluation files. Masking defaults follow the
official pre-training configs (``mask_prob`` 0.5, ``max_masks`` 12)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

from torch import Tensor

from zoo.registry import TASKS
from zoo.spec import ConfigError
from zoo.tasks.base import Task
from zoo.tasks.retrieval import predict_images, retrieval_metrics


@runtime_checkable
class PretrainModel(Protocol):
    """``pretrain_losses(batch) -> {"loss", ...}``; evaluation needs ``retrieval_scores`` as well."""

    def pretrain_losses(self, batch: Mapping[str, Any]) -> dict[str, Tensor]: ...


@TASKS.register("pretrain")
class PretrainTask(Task):
    name = "pretrain"
    description = "pre-training on image-caption pairs (ITC, ITM, MLM, boxes); zero-shot retrieval"
    protocol = PretrainModel
    loss_method = "pretrain_losses"
    readers = ("retrieval_train", "retrieval_eval")  # evaluated by zero-shot retrieval
    data_defaults: ClassVar[Mapping[str, Any]] = {"mask_prob": 0.5, "max_masks": 12}
    progress_metrics = ("r_mean",)
    reads_translations = True

    def check_model(self, model: Any, datamodule: Any, file: str | None = None) -> None:
        if hasattr(model, "retrieval_scores"):
            return
        split = next((s for s in ("val", "test") if datamodule.has_split(s)), None)
        if split is not None:
            raise ConfigError(f"pre-training is evaluated by zero-shot retrieval, and {type(model).__name__} has no "
                              f"retrieval_scores(): leave data.val and data.test out", f"data.{split}", file)

    def collator(self, dm: Any, split: str) -> Callable:
        from zoo.data import collate as C  # noqa: PLC0415

        c = dm.cfg
        if split != "train":
            return C.RetrievalCollator(dm.tokenizer, c["max_tokens"])
        inputs = getattr(dm.model, "pretrain_inputs", None)
        if inputs is not None:  # the model builds its own pre-training inputs (DaVinci: caption splits, code images)
            return C.ModelInputsCollator(C.RetrievalCollator(dm.tokenizer, c["max_tokens"]), inputs, dm.tokenizer,
                                         c["max_tokens"])
        return C.RetrievalCollator(dm.tokenizer, c["max_tokens"], mlm={"mask_prob": float(c["mask_prob"]),
                                                                      "max_masks": c["max_masks"]})

    def predict_batch(self, module: Any, batch: Mapping[str, Any]) -> dict:
        return predict_images(batch)

    def compute_metrics(self, module: Any, outputs: list[dict], name: str | None = None) -> dict[str, float]:
        return retrieval_metrics(module, outputs, name)
