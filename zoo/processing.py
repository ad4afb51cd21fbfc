"""What a model takes from data: its image preprocessing and, per task, how its batches are built
(``model.processor(task)``).

**Preprocessing** (:class:`PreprocessConfig`: size, mean, std, interpolation, resize mode) is the model's, as timm's
``pretrained_cfg`` and open_clip's ``preprocess_cfg`` are; nothing in the framework assumes a normalisation. It is
resolved once per model, each layer over the one before (:meth:`zoo.models.base.ZooModel.preprocess_config`):

1. the vision part's own (``vision.preprocess_defaults()``: a ``timm`` encoder's ``pretrained_cfg``, an ``open_clip``
   tower's ``preprocess_cfg``);
2. the family's official recipe (the class attribute ``preprocess_defaults``: X²-VLM, CCLM, DaVinci and eP-ALM
   normalise with CLIP's statistics and resize to a square, MultiModal-GPT resizes the shorter side and centre-crops
   as open_clip does);
3. the model file's ``preprocess:`` section (``{mean, std, interpolation, resize_mode}``), checked here with errors
   naming ``preprocess.KEY``.

The size is the model's input resolution. A model for which no layer gives a mean and a standard deviation is a
config error naming ``preprocess`` (no silent default). The same values build the training and evaluation transforms
(:meth:`Processor.image_transform`; the training augmentation is the data section's choice) and are written into an
export's ``preprocessor.json``, which :func:`zoo.predict.predict` reads back.

**Batches**: :meth:`Processor.collator` gives the task's own collator (:meth:`zoo.tasks.Task.collator`) unless the
family's processor builds its batches itself (the language-model families receive text: questions, answers and
captions as strings, tokenised by the model with its own template).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["INTERPOLATIONS", "RESIZE_MODES", "PreprocessConfig", "Processor", "check_preprocess_section",
           "resolve_preprocess"]

INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos")
#: ``squash``: resize to size × size whatever the aspect (the official recipes of the fusion-encoder families);
#: ``shortest``: resize the shorter side to size, then centre-crop (open_clip's default)
RESIZE_MODES = ("squash", "shortest")
_KEYS = ("mean", "std", "interpolation", "resize_mode")


@dataclass(frozen=True)
class PreprocessConfig:
    """A model's image preprocessing: ``image_size`` (the side of the model's input), per-channel ``mean`` / ``std``
    of ``Normalize`` (on [0, 1] pixels), ``interpolation`` and ``resize_mode`` (:data:`RESIZE_MODES`)."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "squash"

    def to_json(self) -> dict[str, Any]:
        """The ``preprocessor.json`` of an export (lists, not tuples)."""
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out


def _checked(values: Mapping[str, Any], where: str | None) -> dict[str, Any]:
    """``values`` (a subset of mean, std, interpolation, resize_mode) checked and normalised; a bad one raises
    :class:`zoo.spec.ConfigError` at ``{where}.{key}`` (``where`` None: at the key itself)."""
    from zoo.spec import ConfigError  # noqa: PLC0415

    out: dict[str, Any] = {}
    for key, value in values.items():
        at = key if where is None else f"{where}.{key}"
        if key not in _KEYS:
            import difflib  # noqa: PLC0415

            close = difflib.get_close_matches(str(key), _KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key{hint} Known keys: {', '.join(_KEYS)}", at)
        if key in ("mean", "std"):
            if not (isinstance(value, (list, tuple)) and len(value) == 3
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                raise ConfigError(f"expected three numbers (one per RGB channel), got {value!r}", at)
            if key == "std" and not all(v > 0 for v in value):
                raise ConfigError(f"expected positive standard deviations, got {list(value)}", at)
            out[key] = tuple(float(v) for v in value)
        elif key == "interpolation":
            if value not in INTERPOLATIONS:
                raise ConfigError(f"expected one of {', '.join(INTERPOLATIONS)}, got {value!r}", at)
            out[key] = value
        else:
            if value not in RESIZE_MODES:
                raise ConfigError(f"expected one of {', '.join(RESIZE_MODES)}, got {value!r}", at)
            out[key] = value
    return out


def check_preprocess_section(section: Any, file: str | None = None) -> None:
    """A model file's ``preprocess:`` section: a mapping of known keys with valid values, else a ConfigError naming
    ``preprocess.KEY`` in ``file``."""
    resolve_preprocess(1, [("preprocess", section)], file, complete=False)


def resolve_preprocess(image_size: int, layers: list[tuple[str, Mapping[str, Any] | None]],
                       file: str | None = None, *, model: str | None = None,
                       complete: bool = True) -> PreprocessConfig | None:
    """The :class:`PreprocessConfig` of ``layers`` ``[(where, values), ...]`` applied in order (later wins); each
    layer's values are checked (a model file's ``preprocess:`` section with its ``where`` = ``"preprocess"``).
    ``complete=False``: only the checks (returns None)."""
    from zoo.spec import ConfigError  # noqa: PLC0415

    merged: dict[str, Any] = {}
    for where, values in layers:
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise ConfigError(f"expected a mapping, got {type(values).__name__}", where, file)
        try:
            merged.update(_checked(values, where))
        except ConfigError as exc:
            raise ConfigError(exc.message, exc.path, file) from None
    if not complete:
        return None
    missing = [k for k in ("mean", "std") if k not in merged]
    if missing:
        raise ConfigError(f"no image normalisation is known for {model or 'this model'} (neither its vision part nor "
                          f"its family declares one): give preprocess.{' and preprocess.'.join(missing)} in its model "
                          "file", "preprocess", file)
    return PreprocessConfig(image_size=int(image_size), **merged)


class Processor:
    """A model's data processing for one task (``model.processor(task)``): the image transform built from its
    :class:`PreprocessConfig` and the collate function of its batches. Families that build their own batches
    subclass it and override :meth:`collator`."""

    def __init__(self, config: PreprocessConfig, task: str | None = None):
        self.config, self.task = config, task

    def image_transform(self, train: bool, *, randaugment: bool = True, hflip: bool = False,
                        crop_scale: tuple[float, float] | None = None,
                        randaugment_impl: str = "official") -> Callable[[Any], Any]:
        """PIL image → normalised tensor at the model's size (:func:`zoo.data.transforms.build_image_transform`
        with this model's mean, std, interpolation and resize mode; augmentation as asked)."""
        from zoo.data.transforms import TRAIN_CROP_SCALE, build_image_transform  # noqa: PLC0415

        c = self.config
        return build_image_transform(c.image_size, train, randaugment=randaugment, hflip=hflip,
                                     randaugment_impl=randaugment_impl,
                                     crop_scale=TRAIN_CROP_SCALE if crop_scale is None else crop_scale,
                                     mean=c.mean, std=c.std, interpolation=c.interpolation,
                                     resize_mode=c.resize_mode)

    def normalize(self, images: Any) -> Any:
        """``(..., 3, H, W)`` pixels in [0, 1] → the model's input (the transform's last step)."""
        mean = images.new_tensor(self.config.mean).view(3, 1, 1)
        std = images.new_tensor(self.config.std).view(3, 1, 1)
        return (images - mean) / std

    def denormalize(self, images: Any) -> Any:
        """The model's input → pixels in [0, 1] (clamped): what the normalisation took away."""
        mean = images.new_tensor(self.config.mean).view(3, 1, 1)
        std = images.new_tensor(self.config.std).view(3, 1, 1)
        return (images * std + mean).clamp(0.0, 1.0)

    def collator(self, datamodule: Any, split: str) -> Callable:
        """The collate function of ``split``'s batches: by default the task's own
        (:meth:`zoo.tasks.Task.collator`)."""
        return datamodule.task_spec.collator(datamodule, split)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task!r}, {self.config})"
