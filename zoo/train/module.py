"""The LightningModule that fine-tunes and evaluates any registered model on any registered task
(:mod:`zoo.tasks`: ``vqa``, ``retrieval``, ``captioning``, ``ve``, ``nlvr``, ``pretrain``, and plug-in tasks).

The module is task-generic: it holds the task object (:func:`zoo.tasks.get_task`), calls the model's method the task
names (``task.loss_method``) for the loss, and the task's ``predict_batch`` and ``compute_metrics`` for evaluation;
the progress bar shows the task's ``progress_metrics`` and distributed evaluation keeps each sample once by the task's
``id_key``. Whether the model can do the task is checked when the module is made (:func:`zoo.tasks.task_problem`).

Evaluation sets named in the data config (``data.test: {en: ..., de: ...}`` or ``data.languages``: the
cross-lingual protocol) are separate loaders; each is scored on its own and logged as ``{split}/{name}/{metric}``
(``last_metrics``: ``{"de/img_r1": ...}``). ``setup`` hands the model to the data module
(:meth:`zoo.train.data.TaskDataModule.configure_for_model`: e.g. ``causal_captioning`` models get captioning batches
without masked-LM inputs).

A loss that is NaN or infinite stops the run with :class:`NonFiniteLossError` naming the step; checkpoints already
written stay the latest (the checkpoint callback writes atomically, see :mod:`zoo.train.run`).
"""

from __future__ import annotations

from typing import Any, Mapping

import lightning as L
import torch

from zoo.tasks import get_task
from zoo.train.optim import linear_warmup_decay, param_groups, warmup_steps_for

__all__ = ["TaskModule", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """A NaN or infinite training loss (the message names the step)."""


def __getattr__(name: str) -> Any:
    # names this module had before tasks became registered units (zoo.tasks)
    if name == "TASKS":
        from zoo.tasks import list_tasks  # noqa: PLC0415

        return tuple(list_tasks())
    if name == "task_problem":
        def task_problem(model: torch.nn.Module, task: str) -> tuple[str, str] | None:
            from zoo.tasks import get_task  # noqa: PLC0415

            return get_task(task).problem(model)

        return task_problem
    if name in ("TASK_HEADS", "has_task_head"):
        raise AttributeError(f"zoo.train.module.{name} is gone: a model declares the heads each task needs in its "
                             "task_heads, and zoo.tasks.supported_tasks(model) / model.supported_tasks() say what it "
                             "can do")
    raise AttributeError(f"module 'zoo.train.module' has no attribute {name!r}")


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
        from zoo.registry import UnknownNameError  # noqa: PLC0415

        try:
            self.task_spec = get_task(task)
        except UnknownNameError as exc:
            raise ValueError(str(exc)) from None
        problem = self.task_spec.problem(model)
        if problem is not None:
            raise TypeError(f"{type(model).__name__} {problem[1]}")
        self.model, self.task = model, task
        self.optim = dict(optim or {})
        self.evaluation = dict(evaluation or {})
        self._outputs: dict[int, list[dict]] = {}
        self.skipped = 0

    #: the model's blocks and encoder parts are sharded across the processes (trainer.strategy: model_parallel)
    sharded = False

    def configure_model(self) -> None:
        """Under Lightning's ``ModelParallelStrategy`` (``trainer.strategy: model_parallel``): shard the model over
        the data-parallel mesh (:func:`zoo.train.sharding.shard_model`, torch's ``fully_shard``) before the optimiser
        is built; the replicated heads' gradients are averaged after each backward."""
        from lightning.pytorch.strategies import ModelParallelStrategy  # noqa: PLC0415

        if not isinstance(getattr(getattr(self, "_trainer", None), "strategy", None), ModelParallelStrategy) \
                or self.sharded:
            return
        from zoo.train.sharding import shard_model  # noqa: PLC0415

        shard_model(self.model, self.device_mesh["data_parallel"])
        self.sharded = True

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if not self.sharded or not gradient_clip_val:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        from zoo.train.sharding import clip_grad_norm  # noqa: PLC0415

        if gradient_clip_algorithm not in (None, "norm"):
            raise ValueError("trainer.strategy model_parallel clips by norm only (trainer.gradient_clip_algorithm)")
        clip_grad_norm(self.model, gradient_clip_val)
        return None

    def on_after_backward(self) -> None:
        if self.sharded:
            from zoo.train.sharding import average_replicated_gradients  # noqa: PLC0415

            average_replicated_gradients(self.model)

    def setup(self, stage: str) -> None:
        dm = getattr(getattr(self, "_trainer", None), "datamodule", None)
        if dm is not None and hasattr(dm, "configure_for_model"):
            dm.configure_for_model(self.model)

    # -- training ------------------------------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return getattr(self.model, self.task_spec.loss_method)(batch)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        side = {}
        if "task" in batch:  # side streams (zoo.data.side): one of their batches with each task batch
            side = {k: v for k, v in batch.items() if k != "task"}
            batch = batch["task"]
        self.skipped += int(batch.get("num_skipped", 0) or 0)
        losses = self(batch)
        if side:
            from zoo.data.side import side_stream  # noqa: PLC0415

            cfg = self.trainer.datamodule.cfg
            for key, side_batch in side.items():
                extra = getattr(self.model, side_stream(key).loss_method)(side_batch)
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
        if getattr(getattr(self, "_trainer", None), "optimizers", None):
            # the learning rate of the first parameter group (the base rate; the others are fixed multiples of it)
            self.log("lr", float(self.trainer.optimizers[0].param_groups[0]["lr"]), batch_size=bs)
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
        self._log_metrics("val", prog_bar=self.task_spec.progress_metrics)
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
        key = self.task_spec.id_key
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
        return self.task_spec.predict_batch(self, batch)

    def compute_metrics(self, outputs: list[dict], name: str | None = None) -> dict[str, float]:
        """Metrics of one evaluation set's outputs (``name``: the data module's named set, for retrieval's texts)."""
        if not outputs:
            return {}
        return self.task_spec.compute_metrics(self, outputs, name)


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
