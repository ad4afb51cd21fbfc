"""The LightningModule that fine-tunes and evaluates any registered model on VQA, retrieval, captioning, visual
entailment (``ve``) or two-image reasoning (``nlvr``), or pre-trains it (``pretrain``).

The module is task-generic: the loss comes from the model's task method (``vqa_loss``, ``retrieval_losses``,
``caption_loss``, ``ve_loss``, ``nlvr_loss``, ``pretrain_losses``) and evaluation from its prediction methods
(``vqa_predict``, ``retrieval_scores``, ``generate_captions``, ``ve_logits``, ``nlvr_logits``), scored with the metrics
in :mod:`zoo.metrics` (``ve`` / ``nlvr``: accuracy in percent, and per class; ``pretrain``: zero-shot retrieval).
A model family plugs in by offering those methods with the batch keys the collators in :mod:`zoo.data.collate`
produce.

Evaluation sets named in the data config (``data.test: {en: ..., de: ...}`` or ``data.languages``: the
cross-lingual protocol) are separate loaders; each is scored on its own and logged as ``{split}/{name}/{metric}``
(``last_metrics``: ``{"de/img_r1": ...}``). VQA with a model whose ``open_ended_vqa`` is true (eP-ALM, generating
answers) calls ``vqa_predict(images, question_ids, question_mask, questions=batch["questions"])`` without building
the answer list. ``setup`` hands the model to the data module (:meth:`zoo.train.data.TaskDataModule.
configure_for_model`: e.g. ``causal_captioning`` models get captioning batches without masked-LM inputs).

A loss that is NaN or infinite stops the run with :class:`NonFiniteLossError` naming the step; checkpoints already
written stay the latest (the checkpoint callback writes atomically, see :mod:`zoo.train.run`).
"""

from __future__ import annotations

from typing import Any, Mapping

import lightning as L
import torch

from zoo.train.optim import linear_warmup_decay, param_groups, warmup_steps_for

__all__ = ["TaskModule", "NonFiniteLossError", "TASKS", "TASK_HEADS", "has_task_head", "task_problem"]

TASKS = ("vqa", "retrieval", "captioning", "ve", "nlvr", "pretrain")


class NonFiniteLossError(FloatingPointError):
    """A NaN or infinite training loss (the message names the step)."""


_LOSS_METHOD = {"vqa": "vqa_loss", "retrieval": "retrieval_losses", "captioning": "caption_loss", "ve": "ve_loss",
                "nlvr": "nlvr_loss", "pretrain": "pretrain_losses"}
# the head attributes a task needs (the families name them differently); a model built for another task lacks them
TASK_HEADS: dict[str, tuple[str, ...]] = {"ve": ("ve_head", "xvnli"), "nlvr": ("nlvr_head", "nlvr")}


def has_task_head(model: torch.nn.Module, task: str) -> bool:
    """Whether ``model`` holds a built head for ``task`` (always true for tasks not in :data:`TASK_HEADS`)."""
    names = TASK_HEADS.get(task)
    return names is None or any(getattr(model, name, None) is not None for name in names)


def task_problem(model: torch.nn.Module, task: str) -> tuple[str, str] | None:
    """Why ``model`` cannot be trained on ``task``, as ``(key to change, what is missing)``: ``"task"`` when the family
    has no loss method for it, ``"model.task"`` when it has one but was built for another task (no head); None when
    it can."""
    method = _LOSS_METHOD[task]
    if not hasattr(model, method):
        return "task", f"has no {method}(): it cannot be trained on task {task!r}"
    if not has_task_head(model, task):
        return "model.task", f"has no {task} head (one of {', '.join(TASK_HEADS[task])})"
    return None


_ID_KEY = {"vqa": "question_id", "captioning": "image_id", "retrieval": "index", "ve": "index", "nlvr": "index",
           "pretrain": "index"}
_RETRIEVAL_EVAL = ("retrieval", "pretrain")  # pre-training is evaluated by zero-shot retrieval


def rng_states() -> dict[str, Any]:
    """The random generators' states (torch CPU and CUDA, Python's ``random``, NumPy's global generator) in types that
    ``torch.load(weights_only=True)`` reads back: a run resumed from a checkpoint draws the same augmentations and
    dropout masks as the uninterrupted run would have (data loaded in the main process; worker processes are seeded
    per epoch by the loader)."""
    import random  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                              "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                                        "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_states` saved (a generator it does not hold is left as it is)."""
    import random  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in states:
        n = states["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


class TaskModule(L.LightningModule):
    """Fine-tuning of ``model`` on ``task`` with the optimiser settings ``optim`` and evaluation settings ``evaluation``."""

    def __init__(self, model: torch.nn.Module, task: str, optim: Mapping[str, Any] | None = None,
                 evaluation: Mapping[str, Any] | None = None):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task {task!r}: expected one of {', '.join(TASKS)}")
        problem = task_problem(model, task)
        if problem is not None:
            raise TypeError(f"{type(model).__name__} {problem[1]}")
        self.model, self.task = model, task
        self.optim = dict(optim or {})
        self.evaluation = dict(evaluation or {})
        self._outputs: dict[int, list[dict]] = {}
        self.skipped = 0

    def setup(self, stage: str) -> None:
        dm = getattr(getattr(self, "_trainer", None), "datamodule", None)
        if dm is not None and hasattr(dm, "configure_for_model"):
            dm.configure_for_model(self.model)

    # -- training ------------------------------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return getattr(self.model, _LOSS_METHOD[self.task])(batch)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        side = {}
        if "task" in batch:  # side streams (data.parallel, data.language): one of their batches with each task batch
            side = {k: v for k, v in batch.items() if k != "task"}
            batch = batch["task"]
        self.skipped += int(batch.get("num_skipped", 0) or 0)
        losses = self(batch)
        if side:
            from zoo.train.data import SIDE_STREAMS  # noqa: PLC0415

            cfg = self.trainer.datamodule.cfg
            for key, side_batch in side.items():
                extra = getattr(self.model, SIDE_STREAMS[key][0])(side_batch)
                weight = 1.0 if cfg.get(f"{key}_weight") is None else float(cfg[f"{key}_weight"])
                losses = {**losses, **{f"{key}_{k}": v for k, v in extra.items()},
                          "loss": losses["loss"] + weight * extra["loss"]}
        loss = losses["loss"]
        if not torch.isfinite(loss.detach()).all():
            parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items()
                              if torch.is_tensor(v) and v.dim() == 0)
            raise NonFiniteLossError(
                f"training loss is {float(loss.detach())} at global step {self.global_step} (epoch "
                f"{self.current_epoch}, batch {batch_idx}); losses: {parts}. Stopped; the last good checkpoint is kept."
            )
        bs = _batch_size(batch)
        for key, value in losses.items():
            if torch.is_tensor(value) and value.dim() == 0:
                self.log(f"train/{key}", value.detach(), prog_bar=key == "loss", batch_size=bs)
        return loss

    def on_train_epoch_end(self) -> None:
        if self.skipped:
            self.print(f"epoch {self.current_epoch}: skipped {self.skipped} bad sample(s) (data.on_bad_sample=skip)")
            self.log("train/skipped_samples", float(self.skipped))
            self.skipped = 0

    def configure_optimizers(self):
        o = self.optim
        lr = _float_or_none(o, "lr")
        groups = param_groups(
            self.model, lr=1e-4 if lr is None else lr, weight_decay=float(o.get("weight_decay", 0.01)),
            vision_lr=_float_or_none(o, "vision_lr"), text_lr=_float_or_none(o, "text_lr"),
            fusion_lr=_float_or_none(o, "fusion_lr"),
            new_params=o.get("new_params") or (), new_param_lr_mult=float(o.get("new_param_lr_mult", 1.0)),
        )
        for g in groups:
            g.pop("param_names")
        optimizer = torch.optim.AdamW(groups, betas=tuple(o.get("betas", (0.9, 0.98))), eps=float(o.get("eps", 1e-8)),
                                      fused=_use_fused(groups, o.get("fused"), self.trainer))
        total = int(self.trainer.estimated_stepping_batches)
        warmup = float(o.get("warmup", 0.1))
        if warmup >= 1 and warmup > total:  # a step count the run never reaches: the learning rate would never peak
            from zoo.spec import ConfigError  # noqa: PLC0415

            raise ConfigError(f"{int(warmup)} warm-up steps, but this run makes only {total} optimiser steps: give "
                              "fewer steps, or a fraction of the run such as 0.05", "optim.warmup")
        scheduler = linear_warmup_decay(optimizer, total, warmup_steps_for(total, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the model's full config travels with every checkpoint, so `mmzoo export` / `mmzoo eval` can rebuild it
        checkpoint["zoo_config"] = dict(getattr(self.model, "zoo_config", None) or {})
        checkpoint["zoo_task"] = self.task
        checkpoint["rng_states"] = rng_states()
        # the logs reach the disk with every checkpoint: a run killed later and resumed from this one keeps them
        trainer = getattr(self, "_trainer", None)
        for logger in (trainer.loggers if trainer is not None else ()):
            logger.save()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])

    # -- evaluation ----------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._outputs = {}

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._outputs.setdefault(dataloader_idx, []).append(self._predict_batch(batch))

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", prog_bar=("vqa_acc", "r_mean", "CIDEr", "acc"))
        self.validated_step = self.global_step  # `mmzoo train` validates the final weights if no epoch did

    on_test_epoch_start = on_validation_epoch_start
    test_step = validation_step

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _eval_names(self, split: str) -> list[str | None]:
        dm = getattr(getattr(self, "_trainer", None), "datamodule", None)
        return dm.eval_names(split) if dm is not None and hasattr(dm, "eval_names") else [None]

    def _log_metrics(self, split: str, prog_bar: tuple[str, ...] = ()) -> None:
        names = self._eval_names(split)
        all_metrics: dict[str, float] = {}
        for idx, name in enumerate(names):
            metrics = self.compute_metrics(self._gathered_outputs(self._outputs.get(idx, [])), name=name)
            for key, value in metrics.items():
                # every process computed the same value from the gathered predictions: nothing left to reduce
                if name is None:
                    self.log(f"{split}/{key}", float(value), prog_bar=key in prog_bar)
                    all_metrics[key] = metrics[key]
                else:
                    self.log(f"{split}/{name}/{key}", float(value))
                    all_metrics[f"{name}/{key}"] = metrics[key]
        self.last_metrics = all_metrics
        self._outputs = {}

    def _gathered_outputs(self, outputs: list[dict] | None = None) -> list[dict]:
        """This process's prediction outputs (of one evaluation set), or under distributed evaluation every
        process's, with the samples the distributed sampler repeated (to give every process the same count) kept
        once, so metrics are computed over the whole evaluation set exactly as in a single process."""
        import torch.distributed as dist  # noqa: PLC0415

        if outputs is None:
            outputs = [o for idx in sorted(self._outputs) for o in self._outputs[idx]]
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return outputs
        everyone: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, [_to_cpu(o) for o in outputs])
        key = _ID_KEY.get(self.task)
        merged, seen = [], set()
        for rank_outputs in everyone:
            for o in rank_outputs:
                ids = o[key].tolist() if torch.is_tensor(o[key]) else list(o[key])
                keep = [i for i, x in enumerate(ids) if x not in seen]
                seen.update(ids[i] for i in keep)
                if keep:
                    merged.append({k: (v[keep] if torch.is_tensor(v) else [v[i] for i in keep]) for k, v in o.items()})
        return merged

    @torch.no_grad()
    def _predict_batch(self, batch: Mapping[str, Any]) -> dict:
        m, ev = self.model, self.evaluation
        if self.task == "vqa":
            dm = self.trainer.datamodule
            if getattr(m, "open_ended_vqa", False):  # answers are generated: no answer list to rank
                options = {"num_beams": ev["num_beams"]} if "num_beams" in ev else {}
                out = m.vqa_predict(batch["images"], batch["question_ids"], batch["question_mask"],
                                    questions=batch.get("questions"), **options)
            elif getattr(m, "generative_vqa", False):
                answer_ids, answer_mask = dm.answer_list_tokens
                out = m.vqa_predict(batch["images"], batch["question_ids"], batch["question_mask"],
                                    answer_ids.to(self.device), answer_mask.to(self.device), k=ev.get("k_test"),
                                    answers=dm.answer_list)
            else:
                out = m.vqa_predict(batch["images"], batch["question_ids"], batch["question_mask"],
                                    answers=dm.answer_vocab)
            return {"question_id": list(batch["question_id"]), "prediction": out["answer"],
                    "answers": list(batch["all_answers"])}
        if self.task == "captioning":
            decoding = {k: ev[k] for k in ("num_beams", "max_length", "min_length") if k in ev}
            captions = m.generate_captions(batch["images"], **decoding)
            return {"image_id": list(batch["image_id"]), "prediction": captions, "references": list(batch["captions"])}
        if self.task in _RETRIEVAL_EVAL:
            return {"images": batch["images"].detach().cpu(), "index": batch["index"].detach().cpu()}
        if self.task == "ve":
            logits = m.ve_logits(batch["images"], batch["input_ids"], batch["attention_mask"])
        elif self.task == "nlvr":
            logits = m.nlvr_logits(batch["images_a"], batch["images_b"], batch["input_ids"], batch["attention_mask"])
        else:
            return {}
        return {"index": batch["index"].detach().cpu(), "prediction": logits.argmax(-1).cpu(),
                "label": batch["labels"].detach().cpu()}

    def compute_metrics(self, outputs: list[dict], name: str | None = None) -> dict[str, float]:
        """Metrics of one evaluation set's outputs (``name``: the data module's named set, for retrieval's texts)."""
        if not outputs:
            return {}
        if self.task == "vqa":
            from zoo.metrics.vqa import vqa_accuracy  # noqa: PLC0415

            scores = [vqa_accuracy(p, a) for o in outputs for p, a in zip(o["prediction"], o["answers"])]
            return {"vqa_acc": 100.0 * sum(scores) / len(scores)}
        if self.task == "captioning":
            from zoo.metrics.caption import caption_scores, tokenize_caption  # noqa: PLC0415

            gts, res = {}, {}
            for o in outputs:
                for i, pred, refs in zip(o["image_id"], o["prediction"], o["references"]):
                    gts[i] = [tokenize_caption(r) for r in refs]
                    res[i] = [tokenize_caption(pred)]
            return caption_scores(gts, res)
        if self.task in _RETRIEVAL_EVAL:
            from zoo.metrics.retrieval import retrieval_recall  # noqa: PLC0415

            dm = self.trainer.datamodule
            index = torch.cat([o["index"] for o in outputs])
            order = index.argsort()
            images = torch.cat([o["images"] for o in outputs])[order].to(self.device)
            stage = self.trainer.state.stage
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
            i2t, t2i = self.model.retrieval_scores(images, ids.to(self.device), mask.to(self.device),
                                                   k=int(self.evaluation.get("k_test", 128)))
            return retrieval_recall(i2t.cpu(), t2i.cpu(), txt2img, img2txt)
        if self.task in ("ve", "nlvr"):
            from zoo.metrics.classification import accuracy_by_class  # noqa: PLC0415

            predictions = torch.cat([o["prediction"] for o in outputs])
            labels = torch.cat([o["label"] for o in outputs])
            return accuracy_by_class(predictions, labels, self.trainer.datamodule.class_names)
        return {}


def _use_fused(groups: list[dict], setting: Any, trainer: Any = None) -> bool | None:
    """``optim.fused``: torch's fused AdamW kernel (one kernel over all tensors; the same update as the default
    per-tensor loop, about 6× faster on CPU for a model whose parameters are mostly embeddings). ``None`` (default):
    on when every parameter is a floating-point tensor on the CPU or a CUDA device, which the kernel supports, and
    the precision is not mixed (Lightning's mixed-precision plugin refuses gradient clipping with an optimizer that
    unscales gradients itself, as the fused one does)."""
    if setting is not None:
        if not isinstance(setting, bool):
            from zoo.spec import ConfigError  # noqa: PLC0415

            raise ConfigError(f"expected true, false or null, got {setting!r}", "optim.fused")
        return setting or None
    if "mixed" in str(getattr(trainer, "precision", "")):
        return None
    params = [p for g in groups for p in g["params"]]
    ok = bool(params) and all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params)
    return True if ok else None


def _float_or_none(optim: Mapping[str, Any], key: str) -> float | None:
    """``optim[key]`` as a float (YAML reads ``2e-3`` as a string), None when absent; a clear error otherwise."""
    value = optim.get(key)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        from zoo.spec import ConfigError  # noqa: PLC0415

        raise ConfigError(f"expected a number, got {value!r}", f"optim.{key}") from None


def _to_cpu(output: dict) -> dict:
    return {k: (v.detach().cpu() if torch.is_tensor(v) else v) for k, v in output.items()}


def _batch_size(batch: Mapping[str, Any]) -> int:
    for key in ("images", "input_ids", "question_ids"):
        value = batch.get(key)
        if torch.is_tensor(value):
            return int(value.shape[0])
    return 1
