"""The value checks of a task config: one table, key → what the value must be.

:func:`check_task_config` runs from :func:`zoo.train.run.load_task_config`, before anything is built: every key of the
``model``, ``optim``, ``trainer``, ``train`` and ``evaluation`` sections has an entry in :data:`CHECKS` (a test holds
the table to :data:`zoo.train.run.TASK_CONFIG_KEYS`), and a few rules relate two keys (``evaluation.min_length`` ≤
``evaluation.max_length``; the run folder stays inside ``train.output_dir``; ``model.task`` builds a variant for the
config's ``task``). :func:`check_against_model` runs in ``mmzoo train`` right after the model is built, before the data
and Lightning: the ``optim.new_params`` and ``train.freeze`` patterns must each name parameters of that model.

Every problem is a :class:`zoo.spec.ConfigError` naming the file, the dotted key, what was expected and what was given.
A missing key is never an error here (the code's default applies); ``null`` is accepted only where it means "the
default" to the code that reads the key.
"""

from __future__ import annotations

import difflib
import math
import re
import typing
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, Callable, Mapping

from zoo.spec import ConfigError

__all__ = ["Check", "CHECKS", "DATA_CHECKS", "check_section", "check_task_config", "check_against_model",
           "check_value", "data_checks", "run_name_problem", "lightning_precisions", "lightning_names", "unknown_key"]

SEED_MAX = 2**32 - 1  # numpy's seed range, which Lightning's seed_everything enforces
LOGGER_NAMES = ("csv", "tensorboard", "wandb", "mlflow")  # train.loggers: Lightning's loggers (zoo.train.loggers)


@dataclass(frozen=True)
class Check:
    """A value test; ``expected`` says what a good value is, ``suggest`` (optional) lists the names a misspelt value
    is compared with for a "did you mean"."""

    test: Callable[[Any], bool]
    expected: str
    suggest: Callable[[], list[str]] | None = None

    def __or__(self, other: "Check") -> "Check":
        return Check(lambda v: self.test(v) or other.test(v), f"{self.expected} or {other.expected}",
                     self.suggest or other.suggest)


# ---------------------------------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(low: int | None = None, high: int | None = None, what: str = "") -> Check:
    """An int (not a bool) with ``low`` <= v <= ``high``."""
    bounds = f" in [{low}, {high}]" if low is not None and high is not None else \
        f" >= {low}" if low is not None else f" <= {high}" if high is not None else ""
    return Check(lambda v: _is_int(v) and (low is None or v >= low) and (high is None or v <= high),
                 f"an integer{bounds}{what}")


def number(low: float | None = None, high: float | None = None, *, above: bool = False, below: bool = False,
           what: str = "") -> Check:
    """A finite int or float within ``[low, high]``; ``above`` / ``below`` make the bounds strict."""

    def test(v: Any) -> bool:
        return _is_number(v) and (low is None or (v > low if above else v >= low)) \
            and (high is None or (v < high if below else v <= high))

    if low is not None and high is not None:
        bounds = f" in {'(' if above else '['}{low:g}, {high:g}{')' if below else ']'}"
    elif low is not None:
        bounds = f" {'>' if above else '>='} {low:g}"
    elif high is not None:
        bounds = f" {'<' if below else '<='} {high:g}"
    else:
        bounds = ""
    return Check(test, f"a number{bounds}{what}")


def exactly(*values: Any) -> Check:
    """One of ``values``, compared with their types (``1`` is not ``True``, ``"32"`` is not ``32``)."""
    return Check(lambda v: _among(v, values), " or ".join(_show(x) for x in values))


def _among(v: Any, values: typing.Iterable[Any]) -> bool:
    return any(type(v) is type(x) and v == x for x in values)


NULL = Check(lambda v: v is None, "null")
BOOL = Check(lambda v: isinstance(v, bool), "true or false")
TEXT = Check(lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")
MAPPING = Check(lambda v: isinstance(v, Mapping), "a mapping")


def strings(example: str) -> Check:
    """A list of non-empty strings (a lone string is refused: it would be read letter by letter)."""
    return Check(lambda v: isinstance(v, (list, tuple)) and all(isinstance(s, str) and s for s in v),
                 f"a list of strings such as [{example!r}]")


def names_from(names: typing.Sequence[str], example: str) -> Check:
    """A list of names, each one of ``names`` (a misspelt one gets a "did you mean")."""
    return Check(lambda v: isinstance(v, (list, tuple)) and all(isinstance(s, str) and s in names for s in v),
                 f"a list of names from {', '.join(names)}, such as {example}", lambda: list(names))


def _show(v: Any) -> str:
    return "null" if v is None else repr(v)


def _given(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, (list, tuple, dict)) and len(repr(v)) > 80:
        return f"a {type(v).__name__} of {len(v)} items"
    return f"{type(v).__name__} {v!r}"


# ---------------------------------------------------------------------------------------------------------------------
# values from Lightning itself
# ---------------------------------------------------------------------------------------------------------------------
def _literal_values(ann: Any) -> list[Any]:
    if typing.get_origin(ann) is typing.Literal:
        return list(typing.get_args(ann))
    return [x for arg in typing.get_args(ann) for x in _literal_values(arg)]


def lightning_precisions() -> list[Any]:
    """The ``precision`` values the installed Lightning accepts: its ``_PRECISION_INPUT`` (64, 32, 16, "64", "32",
    "16", "bf16", "32-true", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true", "transformer-engine",
    "transformer-engine-float16" in Lightning 2.6)."""
    try:
        from lightning.fabric.connector import _PRECISION_INPUT  # noqa: PLC0415

        values = _literal_values(_PRECISION_INPUT)
    except ImportError:  # pragma: no cover - a Lightning that moved the name: the values of Lightning 2.x
        values = []
    return values or [64, 32, 16, "64", "32", "16", "bf16", "transformer-engine", "transformer-engine-float16",
                      "16-true", "16-mixed", "bf16-true", "bf16-mixed", "32-true", "64-true"]


def lightning_names(kind: str) -> list[str]:
    """The strategy or accelerator names the installed Lightning registers (plus ``auto``; ``gpu`` for
    accelerators), looked up when a config is checked, so names that plug-ins register count."""
    try:
        if kind == "strategy":
            from lightning.pytorch.strategies import StrategyRegistry  # noqa: PLC0415

            # model_parallel: Lightning's ModelParallelStrategy (torch's fully_shard), built by the training run
            return ["auto", *StrategyRegistry.available_strategies(), "model_parallel"]
        from lightning.pytorch.accelerators import AcceleratorRegistry  # noqa: PLC0415

        return ["auto", "gpu", *AcceleratorRegistry.available_accelerators()]
    except ImportError:  # pragma: no cover
        return []


def lightning_name(kind: str, example: str) -> Check:
    def test(v: Any) -> bool:
        names = lightning_names(kind)
        return isinstance(v, str) and (not names or v in names)

    return Check(test, f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} name Lightning knows, such as {example} (or "
                       "auto)",
                 lambda: lightning_names(kind))


PRECISION = Check(lambda v: _among(v, lightning_precisions()),
                  "one of Lightning's precisions: 32-true, 16-mixed, bf16-mixed, 16-true, bf16-true, 64-true, "
                  "transformer-engine, transformer-engine-float16, or the short forms 64, 32, 16, bf16",
                  lambda: [str(p) for p in lightning_precisions()])


def _devices_test(v: Any) -> bool:
    if _is_int(v):
        return v >= 1 or v == -1
    if isinstance(v, str):
        return v.strip() in ("auto", "-1") or re.fullmatch(r"\s*[0-9]+\s*(,\s*[0-9]+\s*)*,?\s*", v) is not None \
            and v.strip() != "0"
    return isinstance(v, (list, tuple)) and bool(v) and all(_is_int(x) and x >= 0 for x in v)


DEVICES = Check(_devices_test, "a number of devices >= 1, -1 (all of them), 'auto', or device indices such as [0, 1]")


def _time_interval_test(v: Any) -> bool:
    """Lightning's time-based ``val_check_interval``: "DD:HH:MM:SS" or a mapping of timedelta arguments."""
    if isinstance(v, str):
        return re.fullmatch(r"\d+:\d+:\d+:\d+", v.strip()) is not None
    units = {"weeks", "days", "hours", "minutes", "seconds", "milliseconds", "microseconds"}
    return isinstance(v, Mapping) and bool(v) and all(k in units and _is_number(x) and x >= 0 for k, x in v.items())


VAL_CHECK_INTERVAL = (integer(1, what=" (batches)") | number(0.0, 1.0, above=True, what=" (a fraction of the epoch)")
                      | Check(_time_interval_test, "a time 'DD:HH:MM:SS' or {minutes: N}") | NULL)


def _warmup_test(v: Any) -> bool:
    return _is_number(v) and v >= 0 and (v < 1 or float(v).is_integer())


WARMUP = Check(_warmup_test, "a fraction of the optimiser steps in [0, 1) such as 0.05, or a whole number of warm-up "
                             "steps >= 1 such as 500")
BETAS = Check(lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v),
              "a list of two numbers in [0, 1) such as [0.9, 0.98]")
BATCH_LIMIT = integer(0, what=" (batches)") | number(0.0, 1.0, what=" (a fraction of the batches)") | NULL
LEARNING_RATE = number(0.0, above=True)
_COMPILE_KEYS = {"parts", "mode", "dynamic"}


def _compile_modes() -> tuple[str, ...]:
    from zoo.models.base import COMPILE_MODES  # noqa: PLC0415 - the modes compile_parts takes (imports torch)

    return COMPILE_MODES


COMPILE = Check(lambda v: isinstance(v, Mapping) and set(v) <= _COMPILE_KEYS and all(
    isinstance(s, str) and s for s in (v.get("parts") or [])) and isinstance(v.get("parts") or [], list)
    and (v.get("mode") is None or v["mode"] in _compile_modes())
    and v.get("dynamic") in (None, True, False),
    "a mapping {parts: [vision, text, fusion], mode: default | reduce-overhead | max-autotune, dynamic: true or false}")


def _is_files(v: Any) -> bool:
    return isinstance(v, str) and v != "" or (isinstance(v, list) and bool(v) and all(isinstance(f, str) and f
                                                                                      for f in v))


def _is_lang(v: Any) -> bool:
    return isinstance(v, str) and bool(v) and v.replace("-", "").replace("_", "").isalnum()


def _is_crop_scale(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(x) for x in v) and 0.0 < v[0] <= v[1] <= 1.0


FILES = Check(_is_files, "a file or a list of files")
NAMED_FILES = Check(lambda v: isinstance(v, Mapping) and bool(v) and all(isinstance(n, str) and _is_files(f)
                                                                          for n, f in v.items()),
                    "a mapping {name: file or list of files}")
SHARDS = Check(lambda v: isinstance(v, Mapping) and bool(v) and all(
    (k in ("train", "val", "test") and _is_files(x)) or (k == "buffer" and _is_int(x) and x >= 1)
    for k, x in v.items()),
    "a mapping {train / val / test: a shard manifest, pattern or URL, or a list of them; buffer: samples}")
LANGUAGE = Check(_is_lang, "a language code such as 'de'")
LANGUAGES = Check(lambda v: isinstance(v, list) and bool(v) and all(_is_lang(x) for x in v) and len(set(v)) == len(v),
                  "a list of distinct language codes such as ['en', 'de']")
FEW_SHOT = Check(lambda v: isinstance(v, Mapping) and all(_is_lang(k) and _is_int(n) and n > 0 for k, n in v.items()),
                 "a mapping {language: number of records} such as {de: 100}")
ANY_TEXT = Check(lambda v: isinstance(v, str), "a string")
POSITIVE = integer(1)

# the data section (zoo.train.data: read, resolved and checked against the files by the data module); null: the
# default. Side streams add their keys (data_checks).
DATA_CHECKS: dict[str, Check] = {
    "data.root": TEXT | NULL,
    "data.train": FILES | NULL,
    "data.val": FILES | NAMED_FILES | NULL,
    "data.test": FILES | NAMED_FILES | NULL,
    "data.answer_list": TEXT | NULL,
    "data.image_size": POSITIVE | NULL,
    "data.max_tokens": POSITIVE | NULL,
    "data.batch_size": POSITIVE | NULL,
    "data.eval_batch_size": POSITIVE | NULL,
    "data.num_workers": integer(0) | NULL,
    "data.video": BOOL | NULL,
    "data.num_frames": POSITIVE | NULL,
    "data.video_backend": exactly("decord", "av") | NULL,
    "data.on_bad_sample": exactly("error", "skip") | NULL,
    "data.seed": integer() | NULL,
    "data.hflip": BOOL | NULL,
    "data.randaugment": BOOL | NULL,
    "data.max_words": POSITIVE | NULL,
    "data.drop_last": BOOL | NULL,
    "data.prompt": ANY_TEXT | NULL,
    "data.max_masks": POSITIVE | NULL,
    "data.mask_prob": number(0.0, 1.0) | NULL,
    "data.top_k_answers": POSITIVE | NULL,
    "data.classifier_targets": exactly("vqa_score", "weights") | NULL,
    "data.crop_scale": Check(_is_crop_scale, "[low, high] with 0 < low <= high <= 1") | NULL,
    "data.blank_images": BOOL | NULL,
    "data.frame_ablation": exactly("one_frame", "shuffled") | NULL,
    "data.min_frames": POSITIVE | NULL,
    "data.cache_images": BOOL | NULL,
    "data.video_features": TEXT | NULL,
    "data.shards": SHARDS | NULL,  # WebDataset shards (zoo.data.shards) in place of a split's files
    "data.max_frames": POSITIVE | NULL,
    "data.frame_slice": exactly("head", "tail", "uniform") | NULL,
    "data.feature_rate": number(0.0, above=True, what=" (feature rows per second)") | NULL,
    "data.languages": LANGUAGES | NULL,
    "data.few_shot": FEW_SHOT | NULL,
    "data.translation": LANGUAGE | LANGUAGES | NULL,
}


def data_checks() -> dict[str, Check]:
    """:data:`DATA_CHECKS` and, for each registered side stream (:mod:`zoo.data.side`), ``data.{key}`` (files),
    ``data.{key}_weight`` (a number) and ``data.{key}_batch_size`` (a positive int)."""
    from zoo.data.side import side_stream_names  # noqa: PLC0415

    out = dict(DATA_CHECKS)
    for key in side_stream_names():
        out.update({f"data.{key}": FILES | NULL, f"data.{key}_weight": number() | NULL,
                    f"data.{key}_batch_size": POSITIVE | NULL})
    return out


def unknown_key(section: str, key: Any, allowed: typing.Iterable[str], file: Any = None) -> ConfigError:
    """The error of a key ``section`` does not accept: did-you-mean and the accepted keys."""
    allowed = sorted(allowed)
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"; did you mean {close[0]!r}? Accepted" if close else "; accepted"
    return ConfigError(f"unknown key {key!r}{hint}: {', '.join(allowed)}", f"{section}.{key}", file)


def check_section(section: str, values: Any, checks: Mapping[str, Check], file: Any = None) -> None:
    """``values`` (the mapping of ``section``) against ``checks`` (``"section.key"`` → :class:`Check`): a non-mapping,
    an unknown key or a bad value is a :class:`ConfigError` naming ``file`` and the dotted key."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"expected a mapping, got {type(values).__name__}", section, file)
    allowed = {k.split(".", 1)[1] for k in checks if k.split(".", 1)[0] == section}
    for name, value in values.items():
        if name not in allowed:
            raise unknown_key(section, name, allowed, file)
        key = f"{section}.{name}"
        if not checks[key].test(value):
            _fail(key, checks[key], value, file)


# ---------------------------------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------------------------------
CHECKS: dict[str, Check] = {
    # model (the model tree itself is validated against the parts' signatures when it is built)
    "model.name": TEXT,
    "model.task": TEXT | NULL,
    "model.pretrained": TEXT | NULL,
    "model.pretrained_strict": BOOL | NULL,
    "model.pretrained_parts": strings("vision") | NULL,
    "model.overrides": MAPPING | NULL,
    # optim (AdamW parameter groups and the warm-up/decay schedule, zoo.train.optim)
    "optim.lr": LEARNING_RATE | NULL,
    "optim.vision_lr": LEARNING_RATE | NULL,
    "optim.text_lr": LEARNING_RATE | NULL,
    "optim.fusion_lr": LEARNING_RATE | NULL,
    "optim.weight_decay": number(0.0),
    "optim.new_params": strings("vqa.*") | NULL,
    "optim.new_param_lr_mult": number(0.0, above=True),
    "optim.warmup": WARMUP,
    "optim.betas": BETAS,
    "optim.eps": number(0.0, above=True),
    "optim.fused": BOOL | NULL,
    # trainer (Lightning's Trainer arguments)
    "trainer.max_epochs": integer(1) | exactly(-1) | NULL,
    "trainer.max_steps": integer(-1, what=" (-1: no limit)"),
    "trainer.precision": PRECISION,
    "trainer.accumulate_grad_batches": integer(1),
    "trainer.gradient_clip_val": number(0.0) | NULL,
    "trainer.strategy": lightning_name("strategy", "ddp"),
    "trainer.accelerator": lightning_name("accelerator", "cpu or gpu"),
    "trainer.devices": DEVICES,
    "trainer.num_nodes": integer(1),
    "trainer.log_every_n_steps": integer(1) | NULL,
    "trainer.val_check_interval": VAL_CHECK_INTERVAL,
    "trainer.check_val_every_n_epoch": integer(1) | NULL,
    "trainer.limit_train_batches": BATCH_LIMIT,
    "trainer.limit_val_batches": BATCH_LIMIT,
    "trainer.limit_test_batches": BATCH_LIMIT,
    "trainer.num_sanity_val_steps": integer(-1, what=" (-1: all)") | NULL,
    "trainer.enable_progress_bar": BOOL | NULL,
    "trainer.deterministic": BOOL | exactly("warn") | NULL,
    # train (run folder, seed, freezing)
    "train.seed": integer(0, SEED_MAX),
    "train.output_dir": TEXT,
    "train.name": TEXT | integer(0),
    "train.freeze": strings("vision.*") | NULL,
    "train.grad_checkpointing": BOOL,
    # torch.compile of the model's parts (zoo.models.base.compile_parts): true (vision, text, fusion), a list of parts,
    # or {parts, mode, dynamic}
    "train.compile": BOOL | strings("vision") | COMPILE | NULL,
    "train.export": BOOL,
    "train.save_every_n_steps": integer(1) | NULL,
    "train.keep_last": integer(1) | Check(lambda v: v == -1 and not isinstance(v, bool), "-1 (every epoch)"),
    "train.monitor": TEXT | NULL,
    # Lightning's loggers (zoo.train.loggers): csv is always on; wandb / mlflow take their arguments from their section
    "train.loggers": names_from(LOGGER_NAMES, "[csv, tensorboard, mlflow]") | NULL,
    "train.wandb": MAPPING | NULL,
    "train.mlflow": MAPPING | NULL,
    # evaluation (ranking and decoding)
    "evaluation.k_test": integer(1) | NULL,
    "evaluation.num_beams": integer(1) | NULL,
    "evaluation.max_length": integer(1) | NULL,
    "evaluation.min_length": integer(0) | NULL,
}


def _fail(key: str, check: Check, value: Any, file: Any) -> None:
    hint = ""
    if check.suggest is not None and isinstance(value, str):
        close = difflib.get_close_matches(value, check.suggest(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close and close[0] != value else ""
    elif check.suggest is not None and isinstance(value, (list, tuple)):  # the first item that is not a name
        known = check.suggest()
        wrong = next((x for x in value if isinstance(x, str) and x not in known), None)
        close = difflib.get_close_matches(wrong, known, n=1) if wrong is not None else []
        hint = f"; {wrong!r}: did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"expected {check.expected}, got {_given(value)}{hint}", key, file)


def check_value(key: str, value: Any, file: Any = None) -> None:
    """``value`` against the table entry of the dotted ``key``; raise :class:`ConfigError` when it fails."""
    if not CHECKS[key].test(value):
        _fail(key, CHECKS[key], value, file)


def check_task_config(cfg: Mapping[str, Any], file: Any = None) -> None:
    """Check every value of ``cfg``'s table-checked sections and the rules relating keys; raise :class:`ConfigError`.

    Keys outside :data:`CHECKS` are left alone (:func:`zoo.train.run.load_task_config` refuses unknown keys); the
    data section is checked whole (:func:`data_checks`: unknown keys too)."""
    if "data" in cfg:
        check_section("data", cfg["data"], data_checks(), file)
    for section in {key.split(".", 1)[0] for key in CHECKS}:
        values = cfg.get(section)
        if not isinstance(values, Mapping):
            continue
        for name, value in values.items():
            key = f"{section}.{name}"
            check = CHECKS.get(key)
            if check is not None and not check.test(value):
                _fail(key, check, value, file)
    _check_related(cfg, file)


def _section(cfg: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = cfg.get(name)
    return value if isinstance(value, Mapping) else {}


def _check_related(cfg: Mapping[str, Any], file: Any) -> None:
    ev, trainer, train = _section(cfg, "evaluation"), _section(cfg, "trainer"), _section(cfg, "train")
    lo, hi = ev.get("min_length"), ev.get("max_length")
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(f"expected at most evaluation.max_length={hi}, got {lo}", "evaluation.min_length", file)
    if "check_val_every_n_epoch" in trainer and trainer["check_val_every_n_epoch"] is None \
            and isinstance(trainer.get("val_check_interval"), float):
        raise ConfigError("with trainer.check_val_every_n_epoch=null validation is counted in batches across epochs: "
                          "expected an integer number of batches or a time, got float "
                          f"{trainer['val_check_interval']!r}", "trainer.val_check_interval", file)
    if trainer.get("max_epochs") == -1 and trainer.get("max_steps", -1) == -1:
        raise ConfigError("max_epochs=-1 (no epoch limit) needs trainer.max_steps >= 1: the learning rate decays to "
                          "zero at the run's last step, so the run needs an end", "trainer.max_epochs", file)
    if "name" in train:
        problem = run_name_problem(str(train["name"]))
        if problem:
            raise ConfigError(f"expected a folder name inside train.output_dir, got {train['name']!r}: {problem}",
                              "train.name", file)
    _check_model_task(cfg, file)


def run_name_problem(name: str) -> str | None:
    """Why the run name ``name`` would put the run folder outside ``train.output_dir`` (or on it); None when fine.

    Sub-folders (``sweep/lr-1e-3``) are fine; an absolute path, a drive, ``..`` or a name that is only ``.`` are not."""
    if not name.strip():
        return "it is empty"
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive \
            or name.startswith(("/", "\\", "~")):
        return "it is an absolute path"
    parts = [p for p in re.split(r"[/\\]", name) if p not in ("", ".")]
    if ".." in parts:
        return "'..' leads out of the output folder"
    if not parts:
        return "it names the output folder itself"
    return None


def _check_model_task(cfg: Mapping[str, Any], file: Any) -> None:
    """``model.name`` is a registered model (or a model file), and ``model.task`` one of its task variants that suits
    the config's ``task``: a variant named after another training task (``model.task: retrieval`` under ``task: vqa``)
    builds heads the task cannot use, and its task-specific ``model.overrides`` then fail deep in the model tree."""
    from zoo.tasks import list_tasks  # noqa: PLC0415

    tasks = list_tasks()

    model, task = _section(cfg, "model"), cfg.get("task")
    name, variant = model.get("name"), model.get("task")
    if isinstance(variant, str) and variant in tasks and task in tasks and variant != task:
        raise ConfigError(f"the config's task is {task!r} but model.task is {variant!r}, which builds the model for "
                          f"{variant}: set model.task to a {task} variant (or leave it out), or task to {variant!r}",
                          "model.task", file)
    if not isinstance(name, str):
        return
    from zoo.catalog import load_model_config  # noqa: PLC0415
    from zoo.registry import UnknownNameError  # noqa: PLC0415

    try:
        mcfg = load_model_config(name)
    except UnknownNameError as exc:
        raise ConfigError(str(exc), "model.name", file) from None
    variants = sorted(mcfg.get("tasks") or {})
    if isinstance(variant, str) and variant not in variants:
        close = difflib.get_close_matches(variant, variants, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{name} has no task variant {variant!r}{hint} Its variants: "
                          f"{', '.join(variants) or '(none)'}", "model.task", file)


# ---------------------------------------------------------------------------------------------------------------------
# checks that need the built model
# ---------------------------------------------------------------------------------------------------------------------
def check_against_model(model: Any, cfg: Mapping[str, Any]) -> None:
    """After the model is built and before data or Lightning: the values again (a config given as a mapping to
    :func:`zoo.train.run.train` skipped :func:`zoo.train.run.load_task_config`), then every ``optim.new_params`` and
    ``train.freeze`` pattern must name parameters of ``model``, and freezing must leave something to train."""
    from zoo.train.optim import check_patterns, matches  # noqa: PLC0415

    file = cfg.get("_file")
    check_task_config(cfg, file)
    check_patterns(model, list(_section(cfg, "optim").get("new_params") or []), "optim.new_params", file)
    freeze = list(_section(cfg, "train").get("freeze") or [])
    check_patterns(model, freeze, "train.freeze", file)
    if freeze and not any(p.requires_grad and not matches(n, freeze) for n, p in model.named_parameters()):
        raise ConfigError(f"{freeze} freezes every trainable parameter of the model: nothing is left to train",
                          "train.freeze", file)
