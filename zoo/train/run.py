"""``mmzoo train``: one config file → fine-tuned, evaluated and exported model.

A task config (a YAML file, or the name of one under ``zoo/configs/tasks/``: ``mmzoo train vqa-shapes``) has five
sections::

    task: vqa | retrieval | captioning | ve | nlvr
    model:   {name: x2vlm-tiny, task: vqa, pretrained: null, pretrained_strict: true, pretrained_parts: null,
              overrides: {}}
    data:    {root: shapes | FOLDER, train: [...], val: ..., test: ..., answer_list: ..., batch_size: ..., ...}
    optim:   {lr, weight_decay, vision_lr, text_lr, fusion_lr, new_params, new_param_lr_mult, warmup, betas, eps}
    trainer: {max_epochs, precision, accumulate_grad_batches, gradient_clip_val, strategy, devices, accelerator, ...}
    train:   {seed, output_dir, name, freeze, grad_checkpointing, compile, export, loggers, wandb, mlflow}
    evaluation: {k_test, num_beams, max_length, min_length}

Outputs go to ``{output_dir}/{name}/``: ``checkpoints/`` (``last.ckpt`` and per-epoch files, written atomically),
``logs/`` (CSV and TensorBoard; ``train.loggers`` picks them and adds W&B or MLflow: :mod:`zoo.train.loggers`),
``curves.png``, ``results.json`` and ``export/`` (``save_pretrained`` + tokenizer).
``--resume`` continues from ``checkpoints/last.ckpt`` with the optimiser, scheduler, step counter and data order;
``--overwrite`` replaces the run (the old one kept aside until the new one has finished); without either, a folder
that already holds a run is an error naming it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from zoo.catalog import task_config_path
from zoo.spec import ConfigError, load_config

__all__ = ["train", "load_task_config", "AtomicCheckpointIO", "TASK_CONFIG_KEYS"]

TASK_CONFIG_KEYS = {
    "task": None,
    "model": {"name", "task", "pretrained", "pretrained_strict", "pretrained_parts", "overrides"},
    "data": None,  # its keys come with the side streams: zoo.train.config_checks.data_checks
    "optim": {"lr", "weight_decay", "vision_lr", "text_lr", "fusion_lr", "new_params", "new_param_lr_mult", "warmup",
              "betas", "eps", "fused"},
    "trainer": {"max_epochs", "max_steps", "precision", "accumulate_grad_batches", "gradient_clip_val", "strategy",
                "devices", "accelerator", "num_nodes", "log_every_n_steps", "val_check_interval",
                "check_val_every_n_epoch", "limit_train_batches", "limit_val_batches", "limit_test_batches",
                "num_sanity_val_steps", "enable_progress_bar", "deterministic"},
    "train": {"seed", "output_dir", "name", "freeze", "grad_checkpointing", "compile", "export", "save_every_n_steps",
              "keep_last", "monitor", "loggers", "wandb", "mlflow"},
    "evaluation": {"k_test", "num_beams", "max_length", "min_length"},
}


def load_task_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> dict:
    """Load and check a task config (a YAML file, or a task config name such as ``vqa-shapes``:
    :func:`zoo.catalog.task_config_path`): unknown sections or keys, and every value against
    :data:`zoo.train.config_checks.CHECKS`, are errors naming the file and the dotted key. A relative model file
    (``model.name: mine.yaml``) not found from the current folder is looked for next to the task config."""
    import difflib  # noqa: PLC0415

    from zoo.train.config_checks import unknown_key  # noqa: PLC0415

    path = task_config_path(path)
    cfg = load_config(path, overrides)
    for section, value in cfg.items():
        if section not in TASK_CONFIG_KEYS:
            close = difflib.get_close_matches(str(section), list(TASK_CONFIG_KEYS), n=1)
            hint = f"; did you mean {close[0]!r}? Expected" if close else "; expected"
            raise ConfigError(f"unknown section {section!r}{hint} {', '.join(TASK_CONFIG_KEYS)}", section, path)
        allowed = TASK_CONFIG_KEYS[section]
        if allowed is None:
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a mapping, got {type(value).__name__}", section, path)
        for key in value:
            if key not in allowed:
                raise unknown_key(section, key, allowed, path)
    from zoo.train.config_checks import check_task_config  # noqa: PLC0415
    from zoo.tasks import list_tasks  # noqa: PLC0415

    tasks = list_tasks()
    if cfg.get("task") not in tasks:
        close = difflib.get_close_matches(str(cfg.get("task")), tasks, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"expected one of {', '.join(tasks)}, got {cfg.get('task')!r}{hint}", "task", path)
    if not isinstance(cfg.get("model"), Mapping) or "name" not in cfg["model"]:
        raise ConfigError("missing model.name (a registered model: mmzoo list shows them)", "model", path)
    name = cfg["model"]["name"]
    if isinstance(name, str) and name.endswith((".yaml", ".yml")) and not os.path.isabs(name) \
            and not os.path.isfile(name) and (Path(path).parent / name).is_file():
        cfg["model"]["name"] = str(Path(path).parent / name)  # a model file next to the task config
    check_task_config(cfg, path)  # every value of the model/data/optim/trainer/train/evaluation sections
    cfg["_file"] = str(path)
    return cfg


class NonFiniteWeightsError(FloatingPointError):
    """A checkpoint about to be written holds a NaN or infinite weight or optimiser value (the message names it)."""


def _first_non_finite(obj: Any, where: str) -> str | None:
    """The dotted name of the first floating tensor in ``obj`` (nested dicts / lists) holding a NaN or an infinity."""
    import torch  # noqa: PLC0415

    if torch.is_tensor(obj):
        if obj.is_floating_point() or obj.is_complex():
            return None if bool(torch.isfinite(obj).all()) else where
        return None
    if isinstance(obj, Mapping):
        items: Iterable = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = _first_non_finite(value, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files that are whole, finite and safe to read.

    - Saving writes to a temporary file in the same folder and renames it into place, so a killed run never leaves a
      truncated file under a checkpoint's name (``last.ckpt`` stays the previous good one); orphans of killed
      writers are removed by the next write (:func:`zoo.hub.remove_orphans`).
    - Saving refuses a checkpoint whose weights or optimiser state hold a NaN or an infinity
      (:class:`NonFiniteWeightsError`, naming the tensor): a step that produced them must not replace the last good
      checkpoint, whatever the loss said.
    - Loading reads with ``torch.load(weights_only=True)`` (nothing but tensors and containers is unpickled) and turns
      every failure into a :class:`zoo.hub.WeightsError` naming the file.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        import torch  # noqa: PLC0415

        from zoo.hub import atomic_path  # noqa: PLC0415

        for key in ("state_dict", "optimizer_states"):
            bad = _first_non_finite(checkpoint.get(key), key)
            if bad is not None:
                raise NonFiniteWeightsError(
                    f"not writing {path}: {bad} holds NaN or infinite values after global step "
                    f"{checkpoint.get('global_step')} (epoch {checkpoint.get('epoch')}); the run is stopped and the "
                    "checkpoints already written are kept (resume with --resume, perhaps at a lower optim.lr)")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return read_checkpoint(path, map_location=map_location or "cpu")


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """A training checkpoint read with ``torch.load(weights_only=True)``; a file that is missing, truncated, empty,
    holds a pickled object other than tensors and containers, or is not a checkpoint raises
    :class:`zoo.hub.WeightsError` naming it."""
    import torch  # noqa: PLC0415

    from zoo.hub import WeightsError, load_failure  # noqa: PLC0415

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: empty file (0 bytes), not a checkpoint")
    try:
        ckpt = torch.load(str(path), map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - every reader failure is one named error
        raise WeightsError(f"{path}: cannot be read as a training checkpoint with torch.load(weights_only=True) "
                           f"({load_failure(exc)})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise WeightsError(f"{path}: not a training checkpoint (expected a mapping with a 'state_dict')")
    return ckpt


#: the file of the best validation score (``train.monitor``) in a run's ``checkpoints/``
BEST_CHECKPOINT = "best.ckpt"


def run_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The checkpoint files of a run folder (``checkpoints/*.ckpt``: last, per epoch, per step)."""
    folder = Path(run_dir) / "checkpoints"
    return sorted(folder.glob("*.ckpt")) if folder.is_dir() else []


def newest_checkpoint(run_dir: str | os.PathLike, log: Any = print, what: str = "--resume") -> Path:
    """The newest readable checkpoint of a run folder (``last.ckpt`` or a per-epoch or per-step file; newest = most
    optimiser steps, then most recently written), so a run killed while writing its first ``last.ckpt`` still has
    ``epoch000.ckpt``. Unreadable files are skipped with a warning naming each (through ``log``); orphan temporary
    files of killed writers are removed first. Raises FileNotFoundError when none is readable."""
    from zoo.hub import WeightsError, remove_orphans  # noqa: PLC0415

    folder = Path(run_dir) / "checkpoints"
    for orphan in remove_orphans(folder):
        log(f"{what}: removed {orphan}, a temporary file of a writer that was stopped")
    found: list[tuple[int, float, Path]] = []
    # the best checkpoint is written after a validation, in the middle of the loop, and holds an epoch's weights
    # that a later file has gone past: a run continues from the end of its newest epoch or step
    for path in (p for p in run_checkpoints(run_dir) if p.name != BEST_CHECKPOINT):
        try:
            ckpt = read_checkpoint(path, mmap=True)
        except WeightsError as exc:
            log(f"warning: {what} skips {exc}")
            continue
        found.append((int(ckpt.get("global_step") or 0), path.stat().st_mtime, path))
        del ckpt
    if not found:
        purpose = "no checkpoint to resume from" if what == "--resume" else "no readable checkpoint"
        raise FileNotFoundError(f"{what}: {purpose} in {folder}")
    return max(found)[2]


def resume_checkpoint(run_dir: str | os.PathLike, log: Any = print) -> Path:
    """The checkpoint ``--resume`` continues from (:func:`newest_checkpoint`); says which."""
    path = newest_checkpoint(run_dir, log)
    log(f"resuming from {path}")
    return path


def _check_writable(folder: Path) -> None:
    """The run folder can be made and written (its nearest existing parent is a writable folder), checked before
    anything is built: a read-only output folder is one named error at the start, not a failure after the data check
    and the model build."""
    import errno  # noqa: PLC0415

    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder (train.output_dir / train.name)",
                                 str(existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        code = errno.EROFS if _read_only(existing) else errno.EACCES
        raise OSError(code, f"{os.strerror(code)}: the run folder {folder} cannot be written (train.output_dir)",
                      str(existing))


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # pragma: no cover - platforms without statvfs
        return False


def _resumed_csv_logger(run_dir: Path, upto: int):
    """Lightning's CSV logger for a resumed run, keeping ``logs/metrics.csv``: Lightning's own deletes the file when
    its folder is not empty, losing the curves of the epochs before the interruption. The rows the interrupted run
    logged after the checkpoint's step ``upto`` are dropped (the resumed run logs those steps again); the rest stay,
    and the resumed run appends to them."""
    import csv  # noqa: PLC0415

    from lightning.pytorch.loggers import CSVLogger  # noqa: PLC0415
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter  # noqa: PLC0415
    from lightning.pytorch.loggers.logger import rank_zero_experiment  # noqa: PLC0415

    from zoo.hub import atomic_write  # noqa: PLC0415

    class _KeptWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            if not os.path.isfile(self.metrics_file_path):
                return
            with open(self.metrics_file_path, encoding="utf-8", newline="") as fh:
                reader = csv.DictReader(fh)
                header, rows = list(reader.fieldnames or []), list(reader)
            kept = [r for r in rows if float(r.get("step") or 0) <= upto]
            with atomic_write(self.metrics_file_path, "w") as fh:
                writer = csv.DictWriter(fh, fieldnames=header)
                writer.writeheader()
                writer.writerows(kept)
            self.metrics_keys = header

    class _KeptCSVLogger(CSVLogger):
        @property
        @rank_zero_experiment
        def experiment(self):
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = _KeptWriter(log_dir=self.log_dir)
            return self._experiment

    return _KeptCSVLogger(run_dir, name="logs", version="")


def _plot_curves(metrics_csv: Path, out_png: Path) -> None:
    import csv  # noqa: PLC0415

    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = list(csv.DictReader(open(metrics_csv, encoding="utf-8")))
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        step = float(row.get("step") or 0)
        for key, value in row.items():
            if key in ("step", "epoch") or value in ("", None):
                continue
            series.setdefault(key, []).append((step, float(value)))
    train = {k: v for k, v in series.items() if k.startswith("train/") and "skipped" not in k}
    val = {k: v for k, v in series.items() if k.startswith(("val/", "test/"))}
    lr = series.get("lr")
    fig, axes = plt.subplots(1, 3 if lr else 2, figsize=(16 if lr else 11, 4))
    if lr:
        axes[2].plot(*zip(*lr))
        axes[2].set_title("learning rate (base group)")
        axes[2].set_xlabel("step")
    for key, points in sorted(train.items()):
        axes[0].plot(*zip(*points), label=key.split("/", 1)[1])
    axes[0].set_title("training losses")
    axes[0].set_xlabel("step")
    if train:
        axes[0].legend(fontsize=7)
    for key, points in sorted(val.items()):
        axes[1].plot(*zip(*points), marker="o", label=key)
    axes[1].set_title("evaluation metrics")
    axes[1].set_xlabel("step")
    if val:
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    from zoo.hub import atomic_path  # noqa: PLC0415

    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def resolve_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """The data section with ``root: shapes`` (``shapes-video``) replaced by the embedded dataset's folder (generated
    on first use)."""
    data = dict(data)
    if data.get("root") == "shapes":
        from zoo.data.shapes import generate_shapes  # noqa: PLC0415

        data["root"] = str(generate_shapes())
    elif data.get("root") == "shapes-video":
        from zoo.data.shapes_video import generate_shapes_video  # noqa: PLC0415

        data["root"] = str(generate_shapes_video())
    return data


def _check_model_for_task(model, task: str, mcfg: Mapping[str, Any], file: str | None) -> None:
    """A model that cannot be trained on ``task`` (:func:`zoo.tasks.task_problem`) is a config error naming the key to
    change, before anything runs. ``model``: the built model, or its resolved config tree (``{type: ...}``), checked
    before it is built (:func:`zoo.tasks.config_problem`)."""
    from zoo.tasks import get_task  # noqa: PLC0415

    spec = get_task(task)
    problem = spec.config_problem(model) if isinstance(model, Mapping) else spec.problem(model)
    if problem is None:
        return
    key, missing = problem
    name = mcfg.get("name")
    if key == "task":
        family = model["type"] if isinstance(model, Mapping) else type(model).__name__
        raise ConfigError(f"{name} ({family}) {missing}", key, file)
    raise ConfigError(f"{name} built for task {mcfg.get('task')!r} {missing}: set model.task to the variant that builds "
                      f"it (see `mmzoo info {name}`)", key, file)


def _dotted_keys(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The leaf keys of a (possibly nested, possibly dotted) override mapping, dotted: ``{"text": {"vocab_size": 1},
    "vqa.pad_token_id": 0}`` → ``["text.vocab_size", "vqa.pad_token_id"]``."""
    keys: list[str] = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        keys += _dotted_keys(value, path + ".") if isinstance(value, Mapping) and value else [path]
    return keys


def _datamodule(task: str, cfg: Mapping[str, Any], model, tokenizer):
    """The data module for ``model``: the config's data section at the model's resolution and VQA head kind."""
    from zoo.models.base import input_resolution  # noqa: PLC0415
    from zoo.train.data import TaskDataModule  # noqa: PLC0415

    vqa_mode = "generative" if getattr(model, "generative_vqa", True) else "classifier"
    data = resolve_data(cfg.get("data") or {})
    # pre-extracted video features (data.video_features) replace pictures: no image preprocessing is asked for (the
    # data module needs no image side then either)
    pixels = not data.get("video_features")
    preprocess = model.preprocess_config() if pixels and callable(getattr(model, "preprocess_config", None)) else None
    dm = TaskDataModule(task, data, tokenizer, vqa_mode=vqa_mode, image_size=input_resolution(model),
                        preprocess=preprocess)
    dm.task_spec.check_model(model, dm, cfg.get("_file"))
    return dm


def model_and_data(cfg: Mapping[str, Any], run_dir: str | os.PathLike) -> tuple[Any, Any]:
    """The model and the checked data module ``mmzoo train`` trains for the loaded task config ``cfg`` (seeded by the
    caller): the model built from the config as written (every model-config error — widths, weights, the parameter
    names of ``optim`` / ``train`` — before any data is read), the data checked (every record and media file, before
    the run folder is written), and with ``tokenizer: data`` the data's tokenizer resolved from the checked records
    (into ``run_dir`` when one is built), the config values the family's ``tokenizer_fields`` name set from it and
    the model built again to its size after reseeding (``train.seed``: the same random stream as a single build);
    the pretrained weights then load into that second build only (a vocabulary transfer needs the model's
    tokenizer), after the data check."""
    import lightning as L  # noqa: PLC0415

    import zoo  # noqa: PLC0415
    from zoo.factory import resolve_config  # noqa: PLC0415
    from zoo.registry import MODELS  # noqa: PLC0415
    from zoo.train.config_checks import check_against_model  # noqa: PLC0415
    from zoo.train.data import TaskDataModule, prepare_data_tokenizer, wants_data_tokenizer  # noqa: PLC0415

    task, mcfg = cfg["task"], cfg["model"]

    def blame_overrides(exc: ConfigError) -> ConfigError:
        from zoo.hub import WeightsError  # noqa: PLC0415

        if not mcfg.get("overrides") or isinstance(exc, WeightsError):
            return exc
        # the error names the model's own file and key; the change that caused it is this config's
        return ConfigError(f"{exc.message} (the model as changed by the model.overrides of "
                           f"{cfg.get('_file') or 'the task config'})", exc.path, exc.file)

    try:
        resolved = resolve_config(mcfg["name"], mcfg.get("task"), model_overrides=dict(mcfg.get("overrides") or {}))
    except ConfigError as exc:
        raise blame_overrides(exc) from None
    # what the model can do, told from the very config built below, before building it
    _check_model_for_task(resolved["model"], task, mcfg, cfg.get("_file"))

    from zoo.weights import tag_export  # noqa: PLC0415

    pretrained = mcfg.get("pretrained")
    whole = mcfg.get("pretrained_parts") is None and mcfg.get("pretrained_strict") is not False
    try:  # an official checkpoint by tag: its converted export, fetched once
        tagged = tag_export(mcfg["name"], pretrained, mcfg.get("task"), whole)
    except ConfigError as exc:
        raise ConfigError(exc.message, "model.pretrained", cfg.get("_file")) from None
    if tagged is not None:
        pretrained = str(tagged[0])

    def build(model_cfg: dict, load: bool = True):
        try:
            built = zoo.create_model(model_cfg, pretrained=pretrained if load else None,
                                     pretrained_strict=mcfg.get("pretrained_strict"),
                                     pretrained_parts=mcfg.get("pretrained_parts"))
        except ConfigError as exc:
            raise blame_overrides(exc) from None
        _check_model_for_task(built, task, mcfg, cfg.get("_file"))
        check_against_model(built, cfg)  # the values again; optim.new_params and train.freeze name its parameters
        return built

    cls = MODELS.get(resolved["model"]["type"])
    data_tokenizer = wants_data_tokenizer(resolved["model"], cls)
    # with the data's tokenizer the weights load into the model built to its size below (a vocabulary transfer needs
    # the model's tokenizer)
    model = build(resolved, load=not data_tokenizer)
    data = resolve_data(cfg.get("data") or {})  # `root: shapes` → the generated folder (made on first use)
    checked = None
    if data_tokenizer:
        # the data's word-level tokenizer comes from checked records, and a built one is written into the run folder:
        # the data is checked first, by a data module that needs no model (the model's own one below reads the
        # records again for its transforms; no media file is opened twice)
        checked = TaskDataModule(task, data, None, vqa_mode="classifier", image_size=1)
        print(checked.check())
        prepare_data_tokenizer(resolved["model"], cls, data, run_dir, task,
                               explicit=_dotted_keys(mcfg.get("overrides") or {}), file=cfg.get("_file"),
                               datamodule=checked)
        del model
        L.seed_everything(int((cfg.get("train") or {}).get("seed", 0)), workers=True, verbose=False)
        model = build(resolved)
    report = getattr(model, "load_report", None)
    if report:
        print(f"initialised from {mcfg['pretrained']} part by part: new {', '.join(report['new']) or 'none'}; "
              f"left out of the file {', '.join(report['left_out']) or 'none'}")
        if report.get("vocabulary"):
            v = report["vocabulary"]
            print(f"vocabulary: {v['copied']:,} of the model's {v['tokens']:,} tokens copied from the file's by "
                  f"token; new: {' '.join(v['new']) or 'none'}{' ...' if len(v['new']) >= 20 else ''}")
    dm = _datamodule(task, {**cfg, "data": data}, model, None)
    report = dm.check(media=checked.media_results if checked is not None else None)
    if checked is None:
        print(report)
    dm.tokenizer = model.text.get_tokenizer()
    dm.task_spec.prepare_model(model, dm, cfg.get("_file"))  # e.g. VQA: the answers travel with the checkpoints
    return model, dm


def train(config: str | os.PathLike | Mapping, overrides: Iterable[str] = (), resume: bool = False,
          overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune, evaluate and export as the config says; returns the results (also written to results.json).

    A run folder that already holds a run (checkpoints) is an error naming ``train.name`` unless ``resume``
    (continue it) or ``overwrite`` (replace it: the old folder is moved aside, removed once the new run has finished,
    and put back if the new run fails before its first checkpoint)."""
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: continue the run or replace it")
    cfg = load_task_config(config, overrides) if not isinstance(config, Mapping) else dict(config)
    tcfg = dict(cfg.get("train") or {})
    run_dir = Path(tcfg.get("output_dir", "runs")) / str(tcfg.get("name", f"{cfg['model']['name']}-{cfg['task']}"))
    aside = None
    if not resume and run_checkpoints(run_dir):
        if not overwrite:
            raise ConfigError(f"{run_dir} already holds a run: pass --resume to continue it, --overwrite to replace "
                              "it, or give this run another train.name", "train.name", cfg.get("_file"))
        aside = run_dir.with_name(f".{run_dir.name}.replaced-{os.getpid()}")
        run_dir.rename(aside)
        print(f"--overwrite: the run in {run_dir} is replaced (kept in {aside} until this run has finished)")
    try:
        results = _train(cfg, run_dir, resume)
    except BaseException:
        if aside is not None and not run_checkpoints(run_dir):
            import shutil  # noqa: PLC0415

            shutil.rmtree(run_dir, ignore_errors=True)
            aside.rename(run_dir)
            print(f"--overwrite: this run stopped before its first checkpoint; the old run is back in {run_dir}")
        raise
    if aside is not None:
        import shutil  # noqa: PLC0415

        shutil.rmtree(aside, ignore_errors=True)
    return results


def _train(cfg: dict, run_dir: Path, resume: bool) -> dict[str, Any]:
    import lightning as L  # noqa: PLC0415
    from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: PLC0415
    from lightning.pytorch.loggers import CSVLogger  # noqa: PLC0415

    from zoo.models.base import count_parameters  # noqa: PLC0415
    from zoo.train.loggers import build_loggers, check_loggers, close_loggers
    from zoo.train.module import TaskModule  # noqa: PLC0415
    from zoo.train.optim import apply_freeze  # noqa: PLC0415
    from zoo.train.progress import ProgressBar, ProgressLines, quiet_lightning  # noqa: PLC0415

    t0 = time.monotonic()
    quiet_lightning()
    task = cfg["task"]
    _check_strategy({"accelerator": "cpu", **dict(cfg.get("trainer") or {})}, cfg.get("_file"))
    tcfg = dict(cfg.get("train") or {})
    logger_names = check_loggers(cfg)  # train.loggers: before anything is built
    start = resume_checkpoint(run_dir) if resume else None
    start_step = int(read_checkpoint(start, mmap=True).get("global_step") or 0) if start is not None else 0
    _check_writable(run_dir)
    L.seed_everything(int(tcfg.get("seed", 0)), workers=True, verbose=False)

    model, dm = model_and_data(cfg, run_dir)
    tokenizer = dm.tokenizer
    if tcfg.get("freeze"):
        apply_freeze(model, list(tcfg["freeze"]))
    if tcfg.get("grad_checkpointing"):
        from zoo.models.base import enable_grad_checkpointing  # noqa: PLC0415

        enable_grad_checkpointing(model)
    if tcfg.get("compile"):
        from zoo.models.base import compile_parts  # noqa: PLC0415

        spec = tcfg["compile"]
        spec = {} if spec is True else {"parts": spec} if isinstance(spec, list) else dict(spec)
        compiled = compile_parts(model, spec.get("parts"), mode=spec.get("mode"), dynamic=spec.get("dynamic"))
        print(f"torch.compile: {', '.join(compiled)} (the first steps compile them; cache "
              f"{os.environ.get('TORCHINDUCTOR_CACHE_DIR')})")
    mcfg = cfg["model"]
    module = TaskModule(model, task, cfg.get("optim"), cfg.get("evaluation"))

    trainer_cfg = {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "log_every_n_steps": 5,
                   "num_sanity_val_steps": 0, "enable_model_summary": False, **dict(cfg.get("trainer") or {})}
    # a bar redrawn in place on a terminal; plain timestamped lines when the output goes to a file
    if trainer_cfg.get("enable_progress_bar") is None:
        trainer_cfg["enable_progress_bar"] = sys.stdout.isatty()
    # one checkpoint per epoch, written when the training epoch ends: Lightning would otherwise save only after
    # validations, so with `check_val_every_n_epoch: N` an interrupted run lost up to N epochs
    # names never get Lightning's "-v1" suffix: a resumed run writes over a file it skipped as unreadable (a new run
    # never shares a folder with an old one), and --resume takes the newest readable file whatever its name, so the
    # step callback needs no last.ckpt of its own
    # retention (train.keep_last, default 1): the newest epoch files besides last.ckpt, which stays (a run killed while
    # writing last.ckpt still has the epoch's own file); -1 keeps every epoch
    keep = int(tcfg.get("keep_last", 1))
    callbacks = [ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="epoch{epoch:03d}",
                                 auto_insert_metric_name=False, save_last=True, save_top_k=keep,
                                 monitor="epoch" if keep > 0 else None, mode="max", every_n_epochs=1,
                                 save_on_train_epoch_end=True, enable_version_counter=False)]
    monitor = _monitor(tcfg, dm)
    best = None
    if monitor is not None:  # best.ckpt: the weights of the best validation score so far
        best = _best_checkpoint_class()(
            required=tcfg.get("monitor") is not None, dirpath=run_dir / "checkpoints",
            filename=BEST_CHECKPOINT[:-5], auto_insert_metric_name=False, save_last=False, save_top_k=1,
            monitor=monitor, mode="min" if "loss" in monitor else "max", save_on_train_epoch_end=False,
            enable_version_counter=False)
        callbacks.append(best)
    if tcfg.get("save_every_n_steps"):
        callbacks.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step{step:07d}",
                                         auto_insert_metric_name=False, save_last=False, save_top_k=1,
                                         monitor="step", mode="max", enable_version_counter=False,
                                         every_n_train_steps=int(tcfg["save_every_n_steps"])))
    callbacks.append(ProgressBar() if trainer_cfg["enable_progress_bar"] else ProgressLines())
    print(f"model: {type(model).__name__}, {count_parameters(model):,} parameters "
          f"({count_parameters(model, trainable_only=True):,} trainable)")
    csv_logger = _resumed_csv_logger(run_dir, start_step) if start is not None else CSVLogger(run_dir, name="logs",
                                                                                                 version="")
    loggers = build_loggers(cfg, run_dir, logger_names, csv_logger)
    if trainer_cfg.get("strategy") == "model_parallel":  # torch's fully_shard through Lightning, CPU (gloo) or CUDA
        from lightning.pytorch.strategies import ModelParallelStrategy  # noqa: PLC0415

        devices = trainer_cfg.get("devices", 1)
        if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
            raise ConfigError(f"trainer.strategy model_parallel shards over trainer.devices processes per node: give "
                              f"their number, got {devices!r}", "trainer.devices", cfg.get("_file"))
        # every process one data-parallel shard (no tensor parallelism); one checkpoint file (the full state dict,
        # written by rank 0) as with every other strategy
        world = devices * int(trainer_cfg.get("num_nodes", 1) or 1)
        trainer_cfg["strategy"] = ModelParallelStrategy(data_parallel_size=world, tensor_parallel_size=1,
                                                        save_distributed_checkpoint=False)
    trainer = L.Trainer(default_root_dir=run_dir, logger=loggers, callbacks=callbacks,
                        plugins=[AtomicCheckpointIO()], **trainer_cfg)
    began = time.monotonic()
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(start) if start is not None else None)
        fit_s = time.monotonic() - began
        if dm.has_split("val") and trainer_cfg.get("limit_val_batches", 1) != 0 \
                and getattr(module, "validated_step", None) != trainer.global_step:
            trainer.validate(module, datamodule=dm)  # the last epoch was no validation epoch (check_val_every_n_epoch)
        results: dict[str, Any] = {"task": task, "model": mcfg["name"], "run_dir": str(run_dir),
                                   "val": getattr(module, "last_metrics", {})}
        if dm.has_split("test"):
            trainer.test(module, datamodule=dm)
            results["test"] = getattr(module, "last_metrics", {})
    except BaseException:
        close_loggers(loggers, failed=True)
        raise
    close_loggers(loggers)
    if module.sharded:  # the export needs whole tensors: gathered from every process (a collective call), kept by rank 0
        model = _unsharded(model, trainer.is_global_zero)
    if trainer.is_global_zero:
        csv_file = run_dir / "logs" / "metrics.csv"
        if csv_file.is_file():
            _plot_curves(csv_file, run_dir / "curves.png")
            results["curves"] = str(run_dir / "curves.png")
        if best is not None and best.best_model_path:
            results["best"] = {"checkpoint": best.best_model_path, "monitor": monitor,
                               "score": float(best.best_model_score)}
        steps = trainer.global_step - start_step
        batch = int(dm.cfg.get("batch_size") or 0) * int(trainer_cfg.get("accumulate_grad_batches") or 1)
        results["time"] = {"fit_s": round(fit_s, 1), "total_s": round(time.monotonic() - t0, 1),
                           "optimizer_steps": steps,
                           "samples_per_s": round(steps * batch / fit_s, 2) if fit_s > 0 and batch else None}
        results["config"] = {k: v for k, v in cfg.items() if k != "_file"}
        results["config_file"] = cfg.get("_file")
        results["versions"] = _versions()
        results["skipped"] = dm.skipped_counts()  # {split: {reason: count}} (data.on_bad_sample: skip)
        if tcfg.get("export", True):  # its model card lists the run's data and scores
            export_dir = run_dir / "export"
            model.save_pretrained(export_dir, tokenizer=tokenizer, run=results)  # one folder, swapped in whole
            results["export"] = str(export_dir)
        if dm.cfg["on_bad_sample"] == "skip":
            print(f"skipped samples (data.on_bad_sample: skip):\n{dm.skipped_report()}")
        from zoo.hub import atomic_write  # noqa: PLC0415

        with atomic_write(run_dir / "results.json", "w") as fh:
            json.dump(results, fh, indent=2, default=float)
    return results


def _versions() -> dict[str, str | None]:
    """The versions a result depends on: Python, the main libraries, mmzoo, and the git commit of the source tree
    the package runs from (None when it is not a git checkout, as for an installed wheel)."""
    import platform  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("mmzoo", "torch", "lightning", "transformers", "timm", "open_clip_torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    source = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=False)
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=False)
        out["git_commit"] = done.stdout.strip() if done.returncode == 0 else None
        out["git_dirty"] = bool(dirty.stdout.strip()) if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = out["git_dirty"] = None
    return out


def _best_checkpoint_class():
    from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: PLC0415

    class BestCheckpoint(ModelCheckpoint):
        """Lightning's checkpoint of the best monitored score; when the metric is the task's default and a run's
        validation does not log it (a cross-lingual run logs ``val/en/acc``, ``val/de/acc``, ... instead of
        ``val/acc``), no best file is kept instead of an error; a ``train.monitor`` the run never logs stays one."""

        def __init__(self, *args: Any, required: bool = True, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.required = required

        def _save_topk_checkpoint(self, trainer: Any, monitor_candidates: dict) -> None:
            if not self.required and self.monitor not in monitor_candidates:
                return
            super()._save_topk_checkpoint(trainer, monitor_candidates)

    return BestCheckpoint


def _monitor(tcfg: Mapping[str, Any], dm: Any) -> str | None:
    """The metric of the best checkpoint: ``train.monitor`` (``val/NAME``; a bare name gets the ``val/`` prefix;
    null: no best checkpoint), by default the task's first progress metric on validation (``val/vqa_acc``,
    ``val/r_mean``, ``val/CIDEr``, ...); None without a validation split."""
    if "monitor" in tcfg and tcfg["monitor"] is None:
        return None
    name = tcfg.get("monitor")
    if name is None:
        metrics = getattr(dm.task_spec, "progress_metrics", ()) or ()
        name = metrics[0] if metrics else None
    if name is None or not dm.has_split("val"):
        return None
    return name if "/" in name else f"val/{name}"


def _unsharded(model, keep: bool):
    """A plain copy of a model sharded with ``fully_shard`` (every process must call it: the tensors are gathered);
    None on the processes that do not ``keep`` it."""
    import zoo  # noqa: PLC0415
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # noqa: PLC0415

    from zoo.hub import load_weights  # noqa: PLC0415

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not keep:
        return None
    config = {k: v for k, v in model.zoo_config.items() if k not in ("pretrained", "pretrained_parts")}
    plain = zoo.create_model(config)
    load_weights(plain, state, what="the gathered sharded model")
    return plain


def _check_strategy(trainer_cfg: Mapping[str, Any], file: str | None) -> None:
    """Strategies Lightning cannot run on the chosen accelerator are config errors naming the key, not Lightning
    tracebacks: FSDP and DeepSpeed need CUDA (ddp runs everywhere), and DeepSpeed needs its package."""
    strategy = str(trainer_cfg.get("strategy") or "auto")
    family = next((f for f in ("fsdp", "deepspeed") if strategy.startswith(f)), None)
    if family is None:
        return
    accelerator = str(trainer_cfg.get("accelerator", "cpu"))
    if accelerator not in ("gpu", "cuda", "auto"):
        raise ConfigError(f"strategy {strategy!r} runs on CUDA devices only (Lightning's {family} has no CPU path); "
                          f"set trainer.accelerator=gpu on a GPU machine, or on CPU use trainer.strategy=model_parallel "
                          f"(torch's fully_shard, sharded on gloo) or ddp",
                          "trainer.strategy", file)
    if family == "deepspeed":
        import importlib.util  # noqa: PLC0415

        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError(f"strategy {strategy!r} needs the deepspeed package (pip install deepspeed)",
                              "trainer.strategy", file)


def model_from_checkpoint(source: str | os.PathLike, trust_imports: bool = False):
    """A model from an export folder, a run folder (its newest readable checkpoint, :func:`newest_checkpoint`) or a
    training checkpoint file.

    Checkpoints are read with ``torch.load(weights_only=True)``: nothing is unpickled beyond tensors and containers;
    the modules a saved config's ``imports`` names are imported only with ``trust_imports``
    (:func:`zoo.hub.from_pretrained`).
    """
    import sys  # noqa: PLC0415

    import zoo  # noqa: PLC0415
    from zoo.hub import CONFIG_NAME, WeightsError, load_weights  # noqa: PLC0415

    path = Path(source)
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        return zoo.from_pretrained(path, trust_imports=trust_imports)
    if path.is_dir():
        if not run_checkpoints(path):
            raise FileNotFoundError(f"{source}: neither an export folder (no {CONFIG_NAME}) nor a run folder with "
                                    "checkpoints/*.ckpt")
        path = newest_checkpoint(path, log=lambda m: print(m, file=sys.stderr), what=str(source))
    if not path.is_file():
        raise FileNotFoundError(f"{source}: neither an export folder, a run folder with checkpoints, nor a "
                                "checkpoint file")
    ckpt = read_checkpoint(path)
    config = ckpt.get("zoo_config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise WeightsError(f"{path}: not an mmzoo training checkpoint (no zoo_config with a model)")
    config = {**config, "_file": str(path), "_trust_imports": trust_imports}
    config.pop("pretrained", None)  # every weight is in the checkpoint
    model = zoo.create_model(config)
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if isinstance(k, str) and k.startswith("model.")}
    load_weights(model, state, what=str(path))
    return model


def export_checkpoint(source: str | os.PathLike, out_dir: str | os.PathLike, trainable_only: bool = False,
                      trust_imports: bool = False, formats: Sequence[str] = (), graphs: Sequence[str] | None = None
                      ) -> Path:
    """``mmzoo export``: a run folder or checkpoint → a ``save_pretrained`` export (written whole, then swapped in;
    its model card lists the run's scores when ``source`` is a run folder with ``results.json``), and with
    ``formats`` (``onnx``, ``torchscript``, ``exported``) the deployable graphs in ``out_dir/graphs/``, each checked
    against the eager model (:func:`zoo.deploy.export_graphs`)."""
    from zoo.hub import read_json  # noqa: PLC0415

    model = model_from_checkpoint(source, trust_imports=trust_imports)
    results = Path(source) / "results.json"
    run = read_json(results) if results.is_file() else None
    out = model.save_pretrained(out_dir, trainable_only=trainable_only, run=run if isinstance(run, dict) else None)
    if formats:
        from zoo.deploy import GRAPHS, export_graphs  # noqa: PLC0415

        export_graphs(model, Path(out) / "graphs", formats, graphs or GRAPHS)
    return out


def evaluate(source: str | os.PathLike, config: str | os.PathLike, overrides: Iterable[str] = (),
             split: str = "test", output: str | os.PathLike | None = None,
             trust_imports: bool = False) -> dict[str, float]:
    """``mmzoo eval``: score an export or checkpoint on a split of a task config's data; writes a JSON of results."""
    import lightning as L  # noqa: PLC0415

    from zoo.train.module import TaskModule  # noqa: PLC0415

    cfg = load_task_config(config, overrides)
    model = model_from_checkpoint(source, trust_imports=trust_imports).eval()
    dm = _datamodule(cfg["task"], cfg, model, model.text.get_tokenizer())
    if not dm.has_split(split):
        raise ConfigError(f"the data config has no {split!r} split", f"data.{split}", cfg.get("_file"))
    print(dm.check([split]))  # the split's records and media files, before evaluation starts
    module = TaskModule(model, cfg["task"], cfg.get("optim"), cfg.get("evaluation"))
    limits = {k: v for k, v in (cfg.get("trainer") or {}).items()
              if k in ("limit_val_batches", "limit_test_batches", "precision")}
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, **limits)
    (trainer.test if split == "test" else trainer.validate)(module, datamodule=dm)
    metrics = {k: float(v) for k, v in getattr(module, "last_metrics", {}).items()}
    out = Path(output) if output else Path(source if Path(source).is_dir() else Path(source).parent) / \
        f"eval_{cfg['task']}_{split}.json"
    from zoo.hub import atomic_write  # noqa: PLC0415

    with atomic_write(out, "w") as fh:
        json.dump({"source": str(source), "config": str(config), "split": split, "metrics": metrics}, fh, indent=2)
    return {**metrics, "_output": str(out)}
