"""VQA: a question about an image (or video) → an answer; scored by the VQAv2 accuracy (``vqa_acc``, percent), and
per question type (``vqa_acc_{type}``) when the records carry a ``question_type`` (the shapes-video questions do).

Three kinds of model answer (declared by the model, never probed from the data): an answer **classifier** over a
fixed vocabulary (``generative_vqa`` false: the data's answer vocabulary is the head's classes), a **generative head
that ranks an answer list** (``generative_vqa`` true: the official X²-VLM / DaVinci evaluation ranks
``data.answer_list``, or the training answers), and a language model that **generates answers freely**
(``open_ended_vqa`` true: eP-ALM, MultiModal-GPT; no list is ranked).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from zoo.registry import TASKS
from zoo.spec import ConfigError
from zoo.tasks.base import Task


@runtime_checkable
class VQAModel(Protocol):
    """``vqa_loss(batch) -> {"loss", ...}`` on :class:`zoo.data.collate.VQACollator` batches;
    ``vqa_predict(images, question_ids, question_mask, ...) -> {"answer": [str], "prob": Tensor}``."""

    def vqa_loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]: ...

    def vqa_predict(self, images: Tensor, question_ids: Tensor, question_mask: Tensor, *args: Any,
                    **kwargs: Any) -> dict[str, Any]: ...


@TASKS.register("vqa")
class VQATask(Task):
    name = "vqa"
    description = "visual question answering (VQAv2, GQA, video QA); VQA accuracy"
    protocol = VQAModel
    loss_method = "vqa_loss"
    readers = ("vqa", "vqa")
    id_key = "question_id"
    progress_metrics = ("vqa_acc",)

    def check_data(self, cfg: Mapping[str, Any], vqa_mode: str) -> None:
        if vqa_mode == "generative" and not cfg.get("answer_list") and not cfg.get("train") \
                and (cfg.get("val") or cfg.get("test")):
            raise ConfigError("generative VQA evaluation ranks an answer list: give data.answer_list (or training data "
                              "to take the answers from)", "data.answer_list")

    def prepare_model(self, model: Any, dm: Any, file: str | None = None) -> None:
        head = getattr(model, "vqa", None)
        config = getattr(model, "zoo_config", None)
        if not getattr(model, "generative_vqa", True):  # a classifier over the data's answer vocabulary
            vocab = dm.answer_vocab
            if hasattr(head, "num_classes") and head.num_classes != len(vocab):
                raise ConfigError(f"the VQA classifier has num_classes={head.num_classes} but the data's answer "
                                  f"vocabulary has {len(vocab)} answers: set 'vqa.num_classes: {len(vocab)}' in "
                                  "model.overrides, or data.top_k_answers to the head's size", "model.overrides", file)
            if hasattr(head, "labels"):
                # the classifier's answers travel with checkpoints and exports (`mmzoo predict` names the class)
                head.labels = list(vocab)
                vqa_config = ((config or {}).get("model") or {}).get("vqa")
                if isinstance(vqa_config, dict):
                    vqa_config["labels"] = list(head.labels)
        elif getattr(model, "generative_vqa", False) and not getattr(model, "open_ended_vqa", False) \
                and config is not None:
            # the answers the head learns to rank travel with checkpoints and exports (`mmzoo predict` ranks them)
            config["answers"] = list(dm.answer_list)

    def collator(self, dm: Any, split: str) -> Callable:
        from zoo.data.collate import VQACollator  # noqa: PLC0415

        c, train = dm.cfg, split == "train"
        return VQACollator(dm.tokenizer, c["max_tokens"], mode=dm.vqa_mode, answers=train,
                           answer_vocab=dm.answer_vocab if dm.vqa_mode == "classifier" and train else None,
                           classifier_targets=c["classifier_targets"])

    def predict_batch(self, module: Any, batch: Mapping[str, Any]) -> dict:
        m, ev, dm = module.model, module.evaluation, module.trainer.datamodule
        if getattr(m, "open_ended_vqa", False):  # answers are generated: no answer list to rank
            options = {"num_beams": ev["num_beams"]} if "num_beams" in ev else {}
            out = m.vqa_predict(batch["images"], batch.get("question_ids"), batch.get("question_mask"),
                                questions=batch.get("questions"), **options)
        elif getattr(m, "generative_vqa", False):
            answer_ids, answer_mask = dm.answer_list_tokens
            out = m.vqa_predict(batch["images"], batch["question_ids"], batch["question_mask"],
                                answer_ids.to(module.device), answer_mask.to(module.device), k=ev.get("k_test"),
                                answers=dm.answer_list)
        else:
            out = m.vqa_predict(batch["images"], batch["question_ids"], batch["question_mask"],
                                answers=dm.answer_vocab)
        out = {"question_id": list(batch["question_id"]), "prediction": out["answer"],
               "answers": list(batch["all_answers"])}
        if "question_type" in batch:
            out["question_type"] = list(batch["question_type"])
        return out

    def compute_metrics(self, module: Any, outputs: list[dict], name: str | None = None) -> dict[str, float]:
        from zoo.metrics.vqa import vqa_accuracy  # noqa: PLC0415

        scores, by_type = [], {}
        for o in outputs:
            types = o.get("question_type") or [None] * len(o["prediction"])
            for p, a, kind in zip(o["prediction"], o["answers"], types):
                scores.append(vqa_accuracy(p, a))
                if kind is not None:
                    by_type.setdefault(kind, []).append(scores[-1])
        metrics = {"vqa_acc": 100.0 * sum(scores) / len(scores)}
        for kind in sorted(by_type):  # records with a question_type: the accuracy of each type
            metrics[f"vqa_acc_{kind}"] = 100.0 * sum(by_type[kind]) / len(by_type[kind])
        return metrics
