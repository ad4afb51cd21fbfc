"""The Lightning DataModule of fine-tuning: a task's data sets, collators and loaders from the ``data:`` config section.

``TaskDataModule(task, data, tokenizer)`` with ``task`` one of ``vqa``, ``retrieval``, ``captioning``, ``ve`` (visual
entailment: SNLI-VE, XVNLI), ``nlvr`` (two images and a sentence: NLVR2, MaRVL) or ``pretrain`` (image–caption
pairs in the retrieval layout with MLM inputs, the X²-VLM / CCLM pre-training objectives; evaluated by zero-shot
retrieval on retrieval evaluation files) builds the
readers of :mod:`zoo.data.datasets` and the collators of :mod:`zoo.data.collate` for the batches the model's task
methods read. The ``data`` mapping is validated before anything is read: unknown keys, wrong types and missing
files raise :class:`zoo.spec.ConfigError` naming the key (``data.train[1]``) and the file.

Data keys (defaults in brackets): ``root`` (media folder; annotation paths are relative to it unless absolute;
``~``, ``$VARS`` and ``pkg:`` paths are resolved), ``train`` (a file or a list), ``val``, ``test`` (a file or a list),
``answer_list`` (VQA: the answers ranked at evaluation, or the classifier's vocabulary), ``image_size`` [the
``image_size`` argument: the model's resolution], ``max_tokens`` [40], ``batch_size`` [32], ``eval_batch_size``
[``batch_size``], ``num_workers`` [0], ``video`` [detected from the records], ``num_frames`` [3], ``video_backend``
[decord], ``on_bad_sample`` [error], ``seed`` [0]; and ``hflip`` [false], ``randaugment`` [true], ``max_words``
[official per reader], ``drop_last`` [true, as the official training loaders], ``prompt`` ["a picture of "],
``max_masks`` [18; pre-training 12], ``mask_prob`` [0.6; pre-training 0.5] (captioning and pre-training MLM),
``top_k_answers`` [all] and ``classifier_targets``
[vqa_score] (VQA classifier); ``crop_scale`` [[0.5, 1.0], the official fine-tuning ``RandomResizedCrop`` scale;
``[1.0, 1.0]`` keeps the whole image, which synthetic scenes whose answers depend on every object need] and
``blank_images`` [false: true replaces every image or video frame by a constant grey one, in training and evaluation
alike — the question-only (or text-only) ablation that shows what a model gets from the pixels]; ``frame_ablation``
[none: ``one_frame`` repeats one of a video's sampled frames, ``shuffled`` puts them in a random order, in training and
evaluation alike — the ablations that show what a video model gets from time;
:meth:`zoo.data.datasets._AnnotationDataset.set_frame_ablation`]; ``min_frames`` [1: the data check refuses videos with
fewer frames — by default only empty ones; a clip shorter than ``num_frames`` is otherwise sampled with repeated frames,
the official rule]; ``cache_images`` [false: true keeps each image in memory after its first read, transformed when
the transform has no randomness, and each video as its decoded frames — for small data sets read for many epochs; see
:meth:`zoo.data.datasets._AnnotationDataset.cache_images`].

Pre-extracted video features (UniVL's input, :mod:`zoo.data.features`): ``video_features`` [none: frames are decoded]
is the official features pickle ``{video_id: array (T, D)}`` (read with a restricted unpickler that runs no code), a
``.npz`` or a folder of ``<video_id>.npy``, resolved as the other paths; every video record then reads its features
(by its ``feature_id``, ``video_id`` or video file name; ``start`` / ``end`` seconds cut a clip) and an item's
``image`` is a ``(max_frames, D)`` float32 tensor, zero rows after the video's own (the model tells padding by them).
``max_frames`` [48, the official fine-tuning value] rows at most; of a longer video ``frame_slice`` [head: the first,
as UniVL; ``tail``; ``uniform``: evenly spaced, CLIP4Clip's ``slice_framepos``] keeps those; ``feature_rate`` [1.0:
rows per second, the official ``feature_framerate``] places a clip's rows. The data check looks every record's id
up. ``blank_images`` makes every item the same input (each row the file's mean row, none padding), ``frame_ablation``
acts on the real rows; ``num_frames``, ``video_backend``, ``hflip`` and the image augmentation do not apply.

Cross-lingual data (the zero-shot / few-shot protocol of CCLM, IGLUE): ``val`` and ``test`` may be a mapping
``{name: file or list}`` (e.g. ``{en: retrieval_test.json, de: retrieval_test.de.json}``): each entry is evaluated on
its own and the metrics are logged as ``test/de/img_r1`` (results ``{"de/img_r1": ...}``). ``languages`` [none]
(e.g. ``[en, de, fr]``) is the short form: every evaluation file ``x.json`` becomes ``{lang: x.{lang}.json}`` (the
file itself for a language without such a file, allowed only for the first language: the source language).
``few_shot`` [none] (``{de: 100}``) adds that many training records in that language, drawn with ``seed`` from the
``x.{lang}.json`` translations of the training files (one data set, so an image keeps one id across languages).
``translation`` [none] (a language, or a list: one drawn per item) adds to each retrieval training item the record's
``caption_{lang}`` as ``caption_2`` → ``input_ids_2`` / ``attention_mask_2`` (CCLM's ITC over both languages + TTC;
e.g. ``retrieval_train_multilingual.json`` of the shapes data).

WebDataset shards (:mod:`zoo.data.shards`, written by ``mmzoo data shard``): ``shards`` [none] ``{train: ..., val:
..., test: ...}`` reads those splits from shards instead of annotation files and media: each a manifest
(``train.shards.json``), a shard path with brace patterns (``train-{000000..000009}.tar``), an http(s) URL, or a list
of those; paths as the other paths (relative to ``root``, which is optional when every split comes from shards); a
local shard or manifest that is missing is a config error naming the key. ``buffer`` [1000] is the training shuffle
buffer in samples. A split comes from files or from shards, not both. The items are those of the same records read
from files; the tokenizer, the answer list and the other splits are unchanged (records the tokenizer or the answer list
need are read from the shards' JSON members). The training stream is shuffled per epoch from ``seed``, split over
processes and loader workers without duplicates (every process gets the same number of samples, as the distributed
sampler pads) and resumes mid-epoch from the trainer's progress, as the file reader does. Not with ``video_features``,
``few_shot`` or ``translation`` (which read annotation files); ``cache_images`` applies to files only. The data check
opens each local shard (every sample is checked when it is read: a bad one is a DataError naming the shard and the
sample key).

Models: :meth:`TaskDataModule.configure_for_model` reads ``causal_captioning`` (captioning training batches without
masked-LM inputs, for causal LMs) and ``ve_labels`` (the model's order of the visual-entailment classes, which maps the
records' label names to class indices); the training module calls it in ``setup``.

Data order: the training sampler is a ``DistributedSampler`` (one replica outside distributed runs) whose permutation
depends only on ``seed`` and the epoch (Lightning calls ``set_epoch``), so two runs with one seed see the same order,
and a run resumed from a checkpoint continues it: after a mid-epoch checkpoint the sampler skips the batches that
epoch already completed (read from the trainer's progress counters when the epoch's iterator is made), so the resumed
run sees exactly the batches the uninterrupted run would have seen. Augmentation and caption masking draw from torch's
generator (seeded per worker by the ``DataLoader``; from ``seed`` via the loader's generator).

The data check (:meth:`TaskDataModule.check`, which ``mmzoo train`` and ``mmzoo eval`` call before anything else
reads the data, builds the data tokenizer, makes the Trainer or writes the run folder): the answer list, every record
of every split, named evaluation set and side stream is read and validated by its reader, and every media file the
records name is opened (an image's header and structure, a video's container; each distinct file once, with a
progress bar above 2,000 files). A fault raises :class:`zoo.data.datasets.DataError` naming the annotation file, the
record's index and the problem. The data tokenizer (``text.tokenizer: data``) is built from the records the check
accepted (:meth:`TaskDataModule.tokenizer_texts`).

Skipped samples (``on_bad_sample: skip``): malformed records are left out when a data set is read, records whose media
the check cannot open are left out by the check, and media that fail later are dropped from their batch, which says so
under ``num_skipped``; :meth:`TaskDataModule.on_before_batch_transfer` adds those counts up per split.
:meth:`TaskDataModule.skipped_counts` gives ``{split: {reason: count}}`` (reasons:
:data:`zoo.data.datasets.SKIP_REASONS`, and ``"dropped from a batch"``), which ``mmzoo train`` prints after the check
and at the end and writes into ``results.json`` under ``skipped``; :meth:`TaskDataModule.skipped_report` lists the
records.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from zoo.data.side import side_stream, side_stream_names
from zoo.spec import ConfigError

__all__ = ["VOCAB_MULTIPLE", "DataReport", "TaskDataModule", "data_keys", "prepare_data_tokenizer",
           "resolve_data_tokenizer", "tokenizer_facts", "wants_data_tokenizer"]

# names that moved: the side-stream readers, into the families that read them (zoo.data.side), by stream
_MOVED = {"read_parallel": "parallel", "read_instructions": "language"}


def __getattr__(name: str) -> Any:
    import importlib  # noqa: PLC0415

    if name == "TASK_NAMES":  # the task list before tasks became registered units
        from zoo.tasks import list_tasks  # noqa: PLC0415

        return tuple(list_tasks())
    if name == "SIDE_STREAMS":  # the side-stream table before side streams became registered units
        from zoo.registry import SIDE_STREAMS  # noqa: PLC0415

        return SIDE_STREAMS
    if name == "DATA_KEYS":  # the fixed keys → what they expect (config_checks.DATA_CHECKS)
        from zoo.train.config_checks import DATA_CHECKS  # noqa: PLC0415

        return {key.split(".", 1)[1]: check.expected for key, check in DATA_CHECKS.items()}
    if name in _MOVED:
        return getattr(importlib.import_module(side_stream(_MOVED[name]).__module__), name)
    raise AttributeError(f"module 'zoo.train.data' has no attribute {name!r}")


SPLITS = ("train", "val", "test")


def data_keys() -> dict[str, str]:
    """Every key of the data section → what it expects (:func:`zoo.train.config_checks.data_checks`: the fixed keys
    and those of the registered side streams)."""
    return {key.split(".", 1)[1]: check.expected for key, check in _data_checks().items()}


#: the keys of ``data.shards``: a split's shard source, and the training shuffle buffer
SHARD_KEYS = (*SPLITS, "buffer")


def _data_checks() -> dict[str, Any]:
    """:func:`zoo.train.config_checks.data_checks` (``data.shards`` among them)."""
    from zoo.train.config_checks import data_checks  # noqa: PLC0415

    return data_checks()


class _ShardSplit(list):
    """A split read from shards: its resolved shard sources (manifests, patterns, URLs), in place of its files."""


_DEFAULTS: dict[str, Any] = {"max_tokens": 40, "batch_size": 32, "num_workers": 0, "video": None, "num_frames": 3,
                             "video_backend": "decord", "on_bad_sample": "error", "seed": 0, "hflip": False,
                             "randaugment": True, "drop_last": True, "prompt": "a picture of ", "max_masks": 18,
                             "mask_prob": 0.6, "classifier_targets": "vqa_score",
                             "crop_scale": [0.5, 1.0], "blank_images": False,
                             "frame_ablation": None, "min_frames": 1, "cache_images": False, "video_features": None,
                             "max_frames": 48, "frame_slice": "head", "feature_rate": 1.0}
# a task's own defaults over these: its data_defaults (zoo.tasks; pre-training masks as the official configs)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _language_files(files: list[str], lang: str, source: bool, where: str) -> list[str]:
    """``x.{lang}.json`` for each ``x.json`` of ``files``; the file itself when there is no such file and ``source``
    (the source language's files carry no suffix)."""
    out = []
    for f in files:
        stem, ext = os.path.splitext(f)
        candidate = f"{stem}.{lang}{ext}"
        if os.path.isfile(candidate):
            out.append(candidate)
        elif source:
            out.append(f)
        else:
            raise ConfigError(f"no {lang!r} version of {f}: expected {candidate}", where)
    return out


def _validate(task: str, data: Any, vqa_mode: str, image_size: int | None) -> dict[str, Any]:
    """The checked, resolved data config (absolute file lists, defaults filled in)."""
    from zoo.hub import resolve_path  # noqa: PLC0415

    spec = _task(task)
    if vqa_mode not in ("generative", "classifier"):
        raise ConfigError(f"vqa_mode={vqa_mode!r}: expected 'generative' or 'classifier'")
    from zoo.train.config_checks import check_section, unknown_key  # noqa: PLC0415

    shards = data.get("shards") if isinstance(data, Mapping) else None
    if isinstance(shards, Mapping):
        for name in shards:
            if name not in SHARD_KEYS:
                raise unknown_key("data.shards", name, SHARD_KEYS)
    check_section("data", data, _data_checks())  # keys and values, as mmzoo train checks them when it loads the file
    cfg = {**_DEFAULTS, **spec.data_defaults,
           **{k: v for k, v in data.items() if v is not None or k == "video"}}
    scale = cfg["crop_scale"]
    cfg["crop_scale"] = [float(v) for v in scale]
    shard_splits = {k: v for k, v in (cfg.get("shards") or {}).items() if k in SPLITS}
    if "root" not in cfg and (not shard_splits or any(cfg.get(s) for s in SPLITS)):
        raise ConfigError("missing: the media folder the annotation paths are relative to", "data.root")
    root = None
    if "root" in cfg:
        try:
            root = resolve_path(cfg["root"])
        except FileNotFoundError as exc:
            raise ConfigError(str(exc), "data.root") from None
        if not root.is_dir():
            raise ConfigError(f"media root folder not found: {root}", "data.root")
        cfg["root"] = str(root)
    else:
        cfg["root"] = None
    base = root if root is not None else Path.cwd()  # every split from shards: paths relative to the current folder

    def local(value: str) -> str:
        path = resolve_path(value) if value.startswith(("pkg:", "~", "$")) else None
        path = path if path is not None else (base / value if not os.path.isabs(value) else None)
        return str(path) if path is not None else value

    def resolve(key: str, value: str, index: int | None = None, folder: bool = False) -> str:
        where = f"data.{key}" + (f"[{index}]" if index is not None else "")
        full = local(value)
        if not (os.path.isfile(full) or folder and os.path.isdir(full)):
            raise ConfigError(f"{'file or folder' if folder else 'file'} not found: {full}", where)
        return full

    def resolve_shard_source(split: str, value: str, index: int | None = None) -> str:
        from zoo.data.datasets import DataError
        from zoo.data.shards import expand_braces, resolve_shards

        where = f"data.shards.{split}" + (f"[{index}]" if index is not None else "")
        if value.startswith(("http://", "https://", "file://")):
            return value
        full = local(value)
        try:
            if full.endswith(".json"):
                if not os.path.isfile(full):
                    raise ConfigError(f"shard manifest not found: {full}", where)
                found = resolve_shards(full)[0]
            else:
                found = expand_braces(full)
        except (DataError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(str(exc), where) from None
        missing = [u for u in found if not u.startswith(("http://", "https://", "file://")) and not os.path.isfile(u)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ConfigError(f"shard not found: {missing[0]}{more}", where)
        if not found:
            raise ConfigError(f"no shards in {full}", where)
        return full

    for split, value in shard_splits.items():
        if cfg.get(split):
            raise ConfigError(f"data.{split} and data.shards.{split} both give the {split} split: keep one",
                              f"data.shards.{split}")
        values = [value] if isinstance(value, str) else list(value)
        cfg[split] = _ShardSplit(resolve_shard_source(split, v, None if isinstance(value, str) else i)
                                 for i, v in enumerate(values))
    if shard_splits:
        for key, what in (("video_features", "pre-extracted video features are looked up by the records' files"),
                          ("few_shot", "few-shot records are drawn from annotation files"),
                          ("translation", "translations are added to the records of annotation files")):
            if cfg.get(key) is not None and (key == "video_features" or "train" in shard_splits):
                raise ConfigError(f"{what}: not with data.shards (read those splits from files)", f"data.{key}")
    if not any(cfg.get(s) for s in SPLITS):
        raise ConfigError("no data: give at least one of train, val, test", "data")

    def resolve_files(key: str, value: str | list[str]) -> list[str]:
        if isinstance(value, str):
            return [resolve(key, value)]
        return [resolve(key, f, i) for i, f in enumerate(value)]

    for split in SPLITS:
        value = cfg.get(split)
        if value is None or isinstance(value, _ShardSplit):
            continue
        if isinstance(value, Mapping):
            cfg[split] = {str(name): resolve_files(f"{split}.{name}", files) for name, files in value.items()}
        elif split != "train" and cfg.get("languages"):
            files = resolve_files(split, value)
            cfg[split] = {lang: _language_files(files, lang, i == 0, f"data.{split}")
                          for i, lang in enumerate(cfg["languages"])}
        else:
            cfg[split] = resolve_files(split, value)
    if cfg.get("few_shot"):
        if not cfg.get("train"):
            raise ConfigError("few-shot records are added to the training data: give data.train", "data.few_shot")
        cfg["few_shot"] = {lang: (int(n), _language_files(cfg["train"], lang, False, "data.few_shot"))
                           for lang, n in cfg["few_shot"].items()}
    if cfg.get("translation") is not None:
        if not spec.reads_translations:
            from zoo.tasks import get_task, list_tasks  # noqa: PLC0415

            readers = " and ".join(n for n in list_tasks() if get_task(n).reads_translations)
            raise ConfigError(f"translations (caption_2) are read for {readers} only, not task {task!r}",
                              "data.translation")
        if cfg.get("few_shot"):
            raise ConfigError("few-shot records (in one language) have no translation field: use either "
                              "data.translation or data.few_shot", "data.translation")
        cfg["translation"] = [cfg["translation"]] if isinstance(cfg["translation"], str) else list(cfg["translation"])
    for key in side_stream_names():
        if cfg.get(key) is not None:
            if not cfg.get("train"):
                raise ConfigError(f"data.{key} batches join the training batches: give data.train", f"data.{key}")
            cfg[key] = resolve_files(key, cfg[key])
    if cfg.get("answer_list") is not None:
        cfg["answer_list"] = resolve("answer_list", cfg["answer_list"])
    if cfg.get("video_features") is None:
        for key in ("max_frames", "frame_slice", "feature_rate"):
            if data.get(key) is not None:
                raise ConfigError("applies to pre-extracted video features: set data.video_features (or leave "
                                  f"data.{key} out; decoded videos take data.num_frames)", f"data.{key}")
    elif cfg["video"] is False:
        raise ConfigError("video features replace the frames of videos, but data.video is false",
                          "data.video_features")
    else:
        cfg["video_features"] = resolve("video_features", cfg["video_features"], folder=True)
    size = cfg.get("image_size", image_size)
    if size is None and cfg["video_features"] is not None:  # features replace pixels: no image side to know
        size = 1
    if size is None:
        raise ConfigError("not set: give data.image_size (or build the data module with the model's resolution)",
                          "data.image_size")
    if not (_is_int(size) and size > 0):
        raise ConfigError(f"expected a positive int, got {size!r}", "data.image_size")
    cfg["image_size"] = size
    cfg.setdefault("eval_batch_size", cfg["batch_size"])
    spec.check_data(cfg, vqa_mode)
    return cfg


def _task(name: str) -> Any:
    """The registered task ``name`` (:mod:`zoo.tasks`); an unknown name is a ConfigError on ``task``."""
    from zoo.registry import UnknownNameError  # noqa: PLC0415
    from zoo.tasks import get_task  # noqa: PLC0415

    try:
        return get_task(name)
    except UnknownNameError as exc:
        raise ConfigError(str(exc), "task") from None


class _EpochSampler(DistributedSampler):
    """A shuffling ``DistributedSampler`` (``seed + epoch`` permutation) that skips the batches the current epoch has
    already completed when it resumes from a mid-epoch checkpoint."""

    def __init__(self, dataset: Any, num_replicas: int, rank: int, seed: int, batch_size: int,
                 completed_batches: Callable[[], int]):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.batch_size, self._completed_batches = batch_size, completed_batches

    def __iter__(self):
        indices = list(super().__iter__())
        skip = self._completed_batches() * self.batch_size
        return iter(indices[skip:])


class _SeededLoader(DataLoader):
    """A training ``DataLoader``, stateful for Lightning: resuming needs no state beyond the data seed (the epoch's
    progress comes from the trainer), so ``state_dict`` holds the seed and ``load_state_dict`` checks it."""

    def _seed(self) -> int:
        raise NotImplementedError

    def state_dict(self) -> dict[str, int]:
        return {"seed": self._seed()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "seed" in state and int(state["seed"]) != self._seed():
            warnings.warn(f"resuming with data.seed={self._seed()}, but the checkpoint was trained with seed "
                          f"{state['seed']}: the remaining batches differ from the interrupted run's", stacklevel=2)


class _TrainLoader(_SeededLoader):
    """The training loader of files: its sampler reads the epoch's progress from the trainer."""

    def _seed(self) -> int:
        return int(self.sampler.seed)


class _ShardLoader(_SeededLoader):
    """A loader of a :class:`zoo.data.shards.ShardDataset`. ``progress`` (the training loader's): a callable giving
    ``(epoch, batches the epoch has completed)`` from the trainer when an epoch's iteration starts (at its first
    batch, after Lightning has restored or reset its progress), which sets the stream's epoch and resume point; None
    (evaluation): the stream as it is. ``state_dict`` holds the seed, as the file loader's."""

    progress: Callable[[], tuple[int, int] | None] | None = None

    def __iter__(self):
        point = self.progress() if self.progress is not None else None
        if point is not None:
            epoch, batches = point
            self.dataset.load_state_dict({"epoch": epoch, "consumed": batches * int(self.batch_size or 1)})
        yield from super().__iter__()

    def _seed(self) -> int:
        return int(self.dataset.seed)


class _RefuseBoxes:
    """The training check of region boxes under crops and flips, for records streamed from shards (picklable)."""

    def __call__(self, rec: Mapping[str, Any]) -> None:
        if "bbox" in rec:
            raise ConfigError("the training data has region boxes (bbox), which crops and flips would move: set "
                              "data.crop_scale: [1.0, 1.0] and data.hflip: false", "data.crop_scale")


class _CyclingLoader(DataLoader):
    """An endless loader: pass after pass over its data, its distributed sampler drawing a new order each pass. Paired
    with the task loader in a ``min_size`` ``CombinedLoader``, the task data sets the epoch's length."""

    def __len__(self) -> int:
        return 2**62

    def __iter__(self):
        passes = getattr(self, "_passes", -1)
        while True:
            passes += 1
            self._passes = passes
            self.sampler.set_epoch(passes)
            yield from super().__iter__()


class _BlankImage:
    """The ``blank_images`` transform: any image → the normalised constant mid-grey image (picklable for workers);
    ``mean`` / ``std``: the model's normalisation."""

    def __init__(self, image_size: int, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        from zoo.data.transforms import CLIP_MEAN, CLIP_STD  # noqa: PLC0415

        grey = (0.5 - torch.tensor(mean or CLIP_MEAN)) / torch.tensor(std or CLIP_STD)
        self.image = grey.view(3, 1, 1).expand(3, image_size, image_size).contiguous()

    deterministic = True

    def __call__(self, image: Any) -> torch.Tensor:
        return self.image.clone()


class _NoPixels:
    """The transform of a data module whose videos are pre-extracted features (``data.video_features``): never called
    on a record of such data; a picture reaching it is a bug, said so (picklable for workers)."""

    deterministic = True

    def __call__(self, image: Any) -> torch.Tensor:
        raise RuntimeError("data.video_features is set: the records' videos are read as feature rows, not pictures")


def _split_of(stage: Any) -> str:
    value = str(getattr(stage, "value", stage))
    if value in ("test", "testing", "predict"):
        return "test"
    if value in ("val", "validate", "validation", "validating", "sanity_check"):
        return "val"
    if value in ("train", "fit", "training"):
        return "train"
    raise ValueError(f"stage {stage!r}: expected train, val (validate) or test")


class TaskDataModule(L.LightningDataModule):
    """Data of one fine-tuning task (see the module docstring for the ``data`` keys).

    Args:
        task: a registered task (:func:`zoo.tasks.list_tasks`): ``"vqa"``, ``"retrieval"``, ``"captioning"``,
            ``"ve"``, ``"nlvr"``, ``"pretrain"``, or a plug-in's.
        data: the ``data:`` section of a task config.
        tokenizer: the model's tokenizer (``model.text.get_tokenizer()``).
        vqa_mode: ``"generative"`` (answer decoder) or ``"classifier"`` (answer vocabulary).
        image_size: the model's resolution, used unless ``data.image_size`` is set.
        answer_vocab: VQA classifier labels in the head's order (default: ``answer_list`` or the training answers).
        causal_captioning: captioning training batches for a causal LM (no masked-LM inputs, no [MASK] needed).
        preprocess: the model's :class:`zoo.processing.PreprocessConfig` (its normalisation, interpolation and resize
            mode; the size is ``image_size``); None: :func:`zoo.data.transforms.build_image_transform`'s own defaults
            until :meth:`configure_for_model` gives the model's.
    """

    def __init__(self, task: str, data: Mapping[str, Any], tokenizer: Any, *, vqa_mode: str = "generative",
                 image_size: int | None = None, answer_vocab: Sequence[str] | None = None,
                 causal_captioning: bool = False, preprocess: Any = None):
        super().__init__()
        self.task, self.vqa_mode, self.tokenizer = task, vqa_mode, tokenizer
        self.causal_captioning = bool(causal_captioning)
        self.cfg = _validate(task, data, vqa_mode, image_size)
        self.task_spec = _task(task)
        self.image_size: int = self.cfg["image_size"]
        self.preprocess = None if preprocess is None else dataclasses.replace(preprocess, image_size=self.image_size)
        self._processor: Any = None
        self._answer_vocab = list(answer_vocab) if answer_vocab is not None else None
        self._datasets: dict[str, Any] = {}
        self._answer_list: list[str] | None = None
        self._answer_tokens: tuple[torch.Tensor, torch.Tensor] | None = None
        self._text_tokens: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._batch_skips: dict[str, int] = {s: 0 for s in SPLITS}
        self._side: dict[str, list[dict[str, Any]]] = {}
        self._side_skipped: dict[str, list[tuple[str, int, str]]] = {}
        self._checked: dict[str, int] = {}  # data set key -> distinct media files its check opened (shards: shards)
        self._shard_keys: set[str] = set()  # data set keys read from shards
        self._checking: tuple[bool | None, dict[str, Any]] | None = None  # (progress, seen) while check() builds
        #: media file → its problem (None: it opened) for every file :meth:`check` opened
        self.media_results: dict[str, str | None] = {}
        self._model: Any = None
        self._video_features: Any = None

    @property
    def model(self) -> Any:
        """The model :meth:`configure_for_model` was given (None before)."""
        return self._model

    @property
    def class_names(self) -> list[str] | None:
        """The classes of a classification task in the model's order (:meth:`zoo.tasks.Task.class_names`: VE label
        names from the model's ``ve_labels``, without a model the official SNLI-VE order; NLVR false, true); None for
        other tasks."""
        return self.task_spec.class_names(self)

    def configure_for_model(self, model: Any) -> None:
        """Batch options the model asks for: ``causal_captioning`` (see the class docstring); a side stream
        (:mod:`zoo.data.side`: ``data.parallel``, ``data.language``, ...) needs the model's loss for it."""
        if getattr(model, "causal_captioning", False):
            self.causal_captioning = True
        self._model = model
        if callable(getattr(model, "processor", None)) and self.cfg["video_features"] is None:
            self._processor = model.processor(self.task)
            if self.preprocess is None and not self._datasets:  # no data set has taken a transform yet
                self.preprocess = dataclasses.replace(self._processor.config, image_size=self.image_size)
        for key in self._side_keys():
            stream = side_stream(key)
            if not hasattr(model, stream.loss_method):
                raise ConfigError(f"{type(model).__name__} has no {stream.loss_method}(): data.{key} batches are "
                                  f"{stream.what}", f"data.{key}")

    def _side_keys(self) -> list[str]:
        """The side streams this data section gives (``data.{key}`` set), in registry order."""
        return [key for key in side_stream_names() if self.cfg.get(key)]

    # -- data sets -----------------------------------------------------------------------------------------------
    def has_split(self, split: str) -> bool:
        return bool(self.cfg.get(_split_of(split)))

    def eval_names(self, split: str) -> list[str | None]:
        """The named evaluation sets of ``split`` (languages, in config order), or ``[None]`` for a single one."""
        value = self.cfg.get(_split_of(split))
        return list(value) if isinstance(value, Mapping) else [None]

    def dataset(self, split: str, name: str | None = None) -> Any:
        """The data set of ``split`` (``train``, ``val``/``validate``, ``test``), read on first use; ``name``: one
        of :meth:`eval_names` (default: the first)."""
        split = _split_of(split)
        if not self.cfg.get(split):
            raise ConfigError(f"the data config has no {split!r} split", f"data.{split}")
        files = self.cfg[split]
        if isinstance(files, Mapping):
            name = next(iter(files)) if name is None else name
            if name not in files:
                raise KeyError(f"data.{split} has no evaluation set {name!r}; it has {', '.join(files)}")
            files = files[name]
        elif name is not None:
            raise KeyError(f"data.{split} is a single evaluation set; no {name!r}")
        key = split if name is None else f"{split}/{name}"
        if key not in self._datasets:
            self._datasets[key] = self._build(split, files, key)
        return self._datasets[key]

    def _build_shards(self, split: str, sources: list[str], key: str) -> Any:
        """The :class:`zoo.data.shards.ShardDataset` of a split read from shards: the task's reader with the options
        ``_build`` gives it; training shuffled with ``data.seed``, evaluation in shard order with every record read
        first (what evaluation sets index)."""
        from zoo.data.shards import ShardDataset

        c, train = self.cfg, split == "train"
        options = {"image_size": self.image_size, "train": train, "video": c["video"], "num_frames": c["num_frames"],
                   "video_backend": c["video_backend"], "hflip": c["hflip"], "randaugment": c["randaugment"],
                   "transform": self.image_transform(train)}
        if c.get("max_words") is not None:
            options["max_words"] = c["max_words"]
        buffer = int((c.get("shards") or {}).get("buffer") or 1000)
        dataset = ShardDataset(list(sources), self.task_spec.readers[0 if train else 1], seed=int(c["seed"]),
                               shuffle=train, buffer=buffer, full=not train, on_bad_sample=c["on_bad_sample"],
                               **options)
        dataset.template.min_frames = c["min_frames"]
        if c["frame_ablation"]:
            if not dataset.template.video:
                raise ConfigError(f"data.frame_ablation={c['frame_ablation']!r} takes time away from videos, but the "
                                  f"{key} records name images", "data.frame_ablation")
            dataset.set_frame_ablation(c["frame_ablation"])
        if train and (c["hflip"] or c["crop_scale"] != [1.0, 1.0]):
            dataset.sample_check = _RefuseBoxes()
        self._shard_keys.add(key)
        # Lightning warns of any IterableDataset with a length under loader workers; this one splits itself over them
        warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
        if self._checking is not None:
            self._checked[key] = dataset.check()
        return dataset

    def _build(self, split: str, files: list[str], key: str | None = None) -> Any:
        from zoo.registry import DATASETS  # noqa: PLC0415

        if isinstance(files, _ShardSplit):
            return self._build_shards(split, files, key or split)
        c, train, key = self.cfg, split == "train", key or split
        common = {"media_root": c["root"], "image_size": self.image_size, "train": train, "video": c["video"],
                  "num_frames": c["num_frames"], "video_backend": c["video_backend"],
                  "on_bad_sample": c["on_bad_sample"], "hflip": c["hflip"], "randaugment": c["randaugment"]}
        if c.get("max_words") is not None:
            common["max_words"] = c["max_words"]
        common["transform"] = self.image_transform(train)
        cls = DATASETS.get(self.task_spec.readers[0 if train else 1])  # the task's readers of the official formats
        few_shot = c.get("few_shot") if train else None
        extra = [f for _, lang_files in few_shot.values() for f in lang_files] if few_shot else []
        dataset = cls(list(files) + extra, **common)
        dataset.min_frames = c["min_frames"]
        if c["video_features"]:
            if not dataset.video:
                raise ConfigError(f"video features replace the frames of videos, but the {key} records name images",
                                  "data.video_features")
            dataset.set_video_features(self.video_features)
        if self._checking is not None:  # check(): every media file opened before the views below pick records
            progress, seen = self._checking
            self._checked[key] = dataset.check_media(progress, desc=f"checking {key} media", seen=seen)
        if few_shot:
            dataset = _few_shot_subset(dataset, list(files), few_shot, int(c["seed"]))
        if train and (c["hflip"] or c["crop_scale"] != [1.0, 1.0]) \
                and any("bbox" in rec for _, _, rec in dataset.records):
            raise ConfigError("the training data has region boxes (bbox), which crops and flips would move: set "
                              "data.crop_scale: [1.0, 1.0] and data.hflip: false", "data.crop_scale")
        if c["cache_images"]:
            dataset.cache_images()
        if c["frame_ablation"]:
            if not dataset.video:
                raise ConfigError(f"data.frame_ablation={c['frame_ablation']!r} takes time away from videos, but the "
                                  f"{key} records name images", "data.frame_ablation")
            dataset.set_frame_ablation(c["frame_ablation"])
        if train and c.get("translation"):
            dataset = _WithTranslation(dataset, c["translation"])
        return dataset

    @property
    def video_features(self) -> Any:
        """The :class:`zoo.data.features.VideoFeatures` every split's video records read (``data.video_features``;
        None without), one for the data module: the features file is read once."""
        if self.cfg["video_features"] is None:
            return None
        if self._video_features is None:
            from zoo.data.features import VideoFeatures  # noqa: PLC0415

            c = self.cfg
            self._video_features = VideoFeatures(c["video_features"], max_frames=c["max_frames"],
                                                 frame_slice=c["frame_slice"], rate=float(c["feature_rate"]),
                                                 blank=c["blank_images"])
        return self._video_features

    def image_transform(self, train: bool) -> Callable[[Any], torch.Tensor]:
        """PIL image → tensor of one split: the model's preprocessing (:attr:`preprocess`) with the data section's
        augmentation (``randaugment``, ``crop_scale``), or the constant grey image of ``blank_images``."""
        from zoo.data.transforms import build_image_transform  # noqa: PLC0415

        c, pre = self.cfg, self.preprocess
        if c["video_features"] is not None:  # every record reads feature rows: no picture is transformed
            return _NoPixels()
        if c["blank_images"]:
            return _BlankImage(self.image_size, *((pre.mean, pre.std) if pre is not None else ()))
        if pre is None:
            return build_image_transform(self.image_size, train, randaugment=c["randaugment"],
                                         crop_scale=tuple(c["crop_scale"]))
        from zoo.processing import Processor  # noqa: PLC0415

        return Processor(pre).image_transform(train, randaugment=c["randaugment"], crop_scale=tuple(c["crop_scale"]))

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}.get(
            str(getattr(stage, "value", stage)), SPLITS)
        for split in wanted:
            if self.cfg.get(split):
                for name in self.eval_names(split) if split != "train" else [None]:
                    self.dataset(split, name)

    # -- VQA answers ---------------------------------------------------------------------------------------------
    @property
    def answer_list(self) -> list[str]:
        """Answers ranked by generative VQA evaluation: ``answer_list`` or the training answers (most frequent
        first)."""
        if self._answer_list is None:
            from zoo.data.datasets import answer_vocabulary  # noqa: PLC0415

            if self.cfg.get("answer_list"):
                self._answer_list = answer_vocabulary(self.cfg["answer_list"])
            elif self.cfg.get("train"):
                ds = self.dataset("train")
                self._answer_list = answer_vocabulary(
                    train_records=[rec for _, _, rec in ds.records] if "train" in self._shard_keys else ds)
            else:
                raise ConfigError("no answer list: give data.answer_list or training data", "data.answer_list")
        return self._answer_list

    @property
    def answer_vocab(self) -> list[str]:
        """Classifier labels: the ``answer_vocab`` argument, else the answer list cut to ``top_k_answers``."""
        if self._answer_vocab is not None:
            return self._answer_vocab
        top_k = self.cfg.get("top_k_answers")
        return self.answer_list[:top_k] if top_k else self.answer_list

    @property
    def answer_list_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(answer_ids, answer_mask)`` of :attr:`answer_list` (``[CLS] answer [SEP]``, padded)."""
        if self._answer_tokens is None:
            from zoo.data.collate import encode_answer_list  # noqa: PLC0415

            self._answer_tokens = encode_answer_list(self.tokenizer, self.answer_list)
        return self._answer_tokens

    # -- retrieval evaluation ------------------------------------------------------------------------------------
    def eval_texts(self, stage: Any, name: str | None = None) -> list[str]:
        return self.dataset(_eval_split(stage), name).texts

    def eval_text_tokens(self, stage: Any, name: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` of every caption of the retrieval evaluation set of ``stage`` (``name``:
        one of :meth:`eval_names`)."""
        split = _eval_split(stage)
        key = split if name is None else f"{split}/{name}"
        if key not in self._text_tokens:
            from zoo.data.collate import tokenize_texts  # noqa: PLC0415

            self._text_tokens[key] = tokenize_texts(self.tokenizer, self.dataset(split, name).texts,
                                                    self.cfg["max_tokens"])
        return self._text_tokens[key]

    def eval_text_index(self, stage: Any, name: str | None = None) -> tuple[list[int], list[list[int]]]:
        """``(txt2img, img2txt)`` of the retrieval evaluation set of ``stage``."""
        ds = self.dataset(_eval_split(stage), name)
        return ds.txt2img, ds.img2txt

    # -- loaders -------------------------------------------------------------------------------------------------
    def collator(self, split: str) -> Callable:
        """The collate function of ``split``'s batches: the model's processor's (:meth:`zoo.processing.Processor.
        collator`: the task's own unless the family builds its batches), or the task's before a model is given."""
        if self._processor is not None:
            return self._processor.collator(self, _split_of(split))
        return self.task_spec.collator(self, _split_of(split))

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(getattr(trainer, "world_size", 1) or 1), int(getattr(trainer, "global_rank", 0) or 0)

    def _completed_batches(self) -> int:
        """Batches the current training epoch has completed (non-zero only when resuming mid-epoch)."""
        trainer = getattr(self, "trainer", None)
        try:
            return int(trainer.fit_loop.epoch_loop.batch_progress.current.completed) if trainer is not None else 0
        except AttributeError:
            return 0

    def _shard_progress(self) -> tuple[int, int] | None:
        """``(epoch, batches it has completed)`` from the trainer's progress (None without a trainer): where the
        training shard stream starts (see :class:`_ShardLoader`)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return None
        try:
            epoch = int(trainer.fit_loop.epoch_progress.current.processed)
        except AttributeError:
            epoch = int(getattr(trainer, "current_epoch", 0) or 0)
        return epoch, self._completed_batches()

    def train_dataloader(self) -> DataLoader:
        ds, c = self.dataset("train"), self.cfg
        world, rank = self._world()
        shards = "train" in self._shard_keys
        if shards:  # the stream's share of this process, in whole batches per loader worker
            ds.world_size, ds.rank, ds.batch_size = world, rank, c["batch_size"]
            total = sum(ds.counts)
        else:
            total = len(ds)
        per_rank = -(-total // world)
        if c["drop_last"] and per_rank < c["batch_size"]:
            raise ConfigError(f"the training set has {total} samples ({per_rank} per process), fewer than one "
                              f"batch of {c['batch_size']} with drop_last: lower data.batch_size or set "
                              "data.drop_last: false", "data.batch_size")
        if shards:
            loader = self._loader(ds, "train", c["batch_size"], sampler=None, drop_last=c["drop_last"],
                                  cls=_ShardLoader)
            loader.progress = self._shard_progress
        else:
            sampler = _EpochSampler(ds, world, rank, c["seed"], c["batch_size"], self._completed_batches)
            loader = self._loader(ds, "train", c["batch_size"], sampler=sampler, drop_last=c["drop_last"],
                                  cls=_TrainLoader)
        streams = self._side_keys()
        if not streams:
            return loader
        from lightning.pytorch.utilities import CombinedLoader  # noqa: PLC0415

        return CombinedLoader({"task": loader, **{key: self._side_loader(key) for key in streams}}, mode="min_size")

    def _side_loader(self, key: str) -> DataLoader:
        """A side stream of training batches (:mod:`zoo.data.side`): every task batch comes with one batch of it
        (``{"task": ..., key: ...}``, Lightning's ``CombinedLoader``: the task data sets the epoch, the side data
        cycles, reshuffled each pass), and the training module adds the model's loss for it times
        ``data.{key}_weight`` (default 1); ``data.{key}_batch_size`` (default ``data.batch_size``) sets the ratio of
        side to task examples. The stream's collator builds its batches."""
        c = self.cfg
        records = self._side_records(key)
        world, rank = self._world()
        size = int(c.get(f"{key}_batch_size") or c["batch_size"])
        if -(-len(records) // world) < size:
            raise ConfigError(f"{len(records)} records in data.{key}: fewer than one batch of {size} per process",
                              f"data.{key}_batch_size")
        collate = side_stream(key).collator(self._model, self.tokenizer, c)
        sampler = DistributedSampler(records, num_replicas=world, rank=rank, shuffle=True, seed=c["seed"],
                                     drop_last=True)
        return _CyclingLoader(records, batch_size=size, sampler=sampler, collate_fn=collate, drop_last=True,
                              num_workers=c["num_workers"], persistent_workers=c["num_workers"] > 0)

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader | list:
        """One loader, or one per named evaluation set (languages) in :meth:`eval_names` order."""
        if not self.cfg.get(split):
            return []
        loaders = []
        for name in self.eval_names(split):
            ds, cls = self.dataset(split, name), DataLoader
            if split in self._shard_keys:  # this process's share of the shards, in shard order
                ds.world_size, ds.rank = self._world()
                ds.batch_size, cls = self.cfg["eval_batch_size"], _ShardLoader
            loaders.append(self._loader(ds, split, self.cfg["eval_batch_size"], sampler=None, drop_last=False,
                                        cls=cls))
        return loaders if isinstance(self.cfg[split], Mapping) else loaders[0]

    def _loader(self, ds: Any, split: str, batch_size: int, sampler: Any, drop_last: bool,
                cls: type = DataLoader) -> DataLoader:
        workers = self.cfg["num_workers"]
        generator = torch.Generator().manual_seed(int(self.cfg["seed"]))
        return cls(ds, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
                          collate_fn=self.collator(split), drop_last=drop_last, generator=generator,
                          pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)

    def tokenizer_texts(self) -> list[str]:
        """The texts a data tokenizer is built from (``text.tokenizer: data``): of the answer list and of every split's
        files, the records' questions, captions (and their ``caption_*`` translations), sentences, parallel texts and
        answers, each raw and as :func:`zoo.data.datasets.pre_caption` cleans it, distinct, in the order of
        :func:`zoo.data.shapes._tokenizer_corpus` (files by ``"{position}:{file name}"``). Only records the readers
        accepted count (the data sets are read here if :meth:`check` has not read them; a malformed record raises
        :class:`zoo.data.datasets.DataError` or, with ``on_bad_sample: skip``, is left out)."""
        from zoo.data.datasets import _load_json, pre_caption  # noqa: PLC0415

        sources: list[tuple[str, list[Any]]] = []
        if self.cfg.get("answer_list"):
            answers = self._answer_list
            if answers is None:
                from zoo.data.datasets import answer_vocabulary  # noqa: PLC0415

                answers = answer_vocabulary(self.cfg["answer_list"])
            if self._answer_list is None:
                self._answer_list = answers
            raw = _load_json(self.cfg["answer_list"])
            sources.append((self.cfg["answer_list"], list(raw) if isinstance(raw, list) else list(answers)))
        for split in SPLITS:
            value = self.cfg.get(split)
            if not value:
                continue
            sets = value.items() if isinstance(value, Mapping) else [(None, value)]
            for name, files in sets:
                records = self.dataset(split, name).records
                if isinstance(files, _ShardSplit):  # the annotation files the shards were written from, in order
                    files = list(dict.fromkeys(file for file, _, _ in records))
                for f in files:
                    sources.append((f, [rec for file, _, rec in records if file == f]))
        texts: list[str] = []
        for _, (_, recs) in sorted((f"{i}:{Path(path).name}", (path, recs)) for i, (path, recs) in
                                   enumerate(sources)):
            for rec in recs:
                if isinstance(rec, str):  # answer list
                    texts.append(rec)
                    continue
                for key, value in rec.items():
                    if key in ("question", "text", "text_2", "sentence", "answer") or key == "caption" \
                            or key.startswith("caption_"):
                        texts.extend([value] if isinstance(value, str) else
                                     [v for v in value if isinstance(v, str)] if isinstance(value, list) else [])
        out = []
        for t in texts:
            try:
                t.encode("utf-8")
            except UnicodeEncodeError:  # a field no reader checks (a translation nobody asked for)
                continue
            out.append(t)
            try:
                out.append(pre_caption(t, 10_000))
            except ValueError:  # nothing left after the clean-up (an answer "?")
                pass
        return list(dict.fromkeys(out))

    # -- the data check and skipped samples ----------------------------------------------------------------------
    def _side_records(self, key: str) -> list[dict[str, Any]]:
        """The records of side stream ``key`` (read once; with ``on_bad_sample: skip`` malformed ones left out and
        counted)."""
        if key not in self._side:
            skipped: list[tuple[str, int, str]] | None = [] if self.cfg["on_bad_sample"] == "skip" else None
            self._side[key] = side_stream(key).read(self.cfg[key], skipped=skipped)
            self._side_skipped[key] = skipped or []
        return self._side[key]

    def check(self, splits: Sequence[str] | None = None, progress: bool | None = None,
              media: Mapping[str, str | None] | None = None) -> DataReport:
        """Check all the data before training starts: the answer list, every record of every split (``splits``:
        default all; each named evaluation set) and of the side streams (``data.parallel``, ``data.language``, with
        the training split), and every media file the records name, opened (:meth:`zoo.data.datasets.
        _AnnotationDataset.check_media`: an image's header and structure, a video's container; each distinct file
        once, a tqdm bar on stderr above 2,000 files or with ``progress=True``). A bad record or file raises
        :class:`zoo.data.datasets.DataError` naming the annotation file, the record's index and the problem; with
        ``on_bad_sample: skip`` it is left out and counted per split and reason (:meth:`skipped_counts`). The data
        sets stay built for training and evaluation (no file is read twice). ``media``: the :attr:`media_results` of
        an earlier check of the same data (another data module's, before the model was built), not opened again.
        Returns what was checked."""
        from zoo.data.datasets import answer_vocabulary  # noqa: PLC0415

        wanted = SPLITS if splits is None else tuple(dict.fromkeys(_split_of(s) for s in splits))
        report = DataReport(on_bad_sample=self.cfg["on_bad_sample"])
        if self.cfg.get("answer_list"):
            answers = answer_vocabulary(self.cfg["answer_list"])  # DataError naming the file and the entry
            if self._answer_list is None:
                self._answer_list = answers
            report.answers = len(answers)
        seen = self.media_results
        seen.update(media or {})
        for split in wanted:
            if not self.cfg.get(split):
                continue
            for name in self.eval_names(split) if split != "train" else [None]:
                key = split if name is None else f"{split}/{name}"
                if key not in self._checked or key not in self._datasets:
                    self._datasets.pop(key, None)  # built before the check: read again, with the media check
                    self._checking = (progress, seen)
                    try:
                        self.dataset(split, name)
                    finally:
                        self._checking = None
                if key in self._shard_keys:
                    report.records[key] = sum(self._datasets[key].counts)
                    report.shards[key] = self._checked[key]
                else:
                    report.records[key] = len(self._datasets[key])
                    report.media[key] = self._checked[key]
            if split == "train":
                for side in self._side_keys():
                    report.records[side] = len(self._side_records(side))
        report.skipped = {k: v for k, v in self.skipped_counts(batches=False).items()
                          if k in report.records}
        return report

    def _skip_sources(self) -> list[tuple[str, Any, list[tuple[str, int, str]]]]:
        """``(key, data set or None, skips left out before any batch)`` for every data set and side stream read."""
        out = []
        for key, ds in self._datasets.items():
            n = int(getattr(ds, "num_malformed", 0)) + int(getattr(ds, "num_bad_media", 0))
            out.append((key, ds, list(getattr(ds, "skipped", []))[:n]))
        out += [(key, None, skipped) for key, skipped in self._side_skipped.items()]
        return out

    def skipped_counts(self, batches: bool = True) -> dict[str, dict[str, int]]:
        """Samples skipped with ``on_bad_sample: skip``: ``{split: {reason: count}}`` for the splits (``train``,
        ``val``, ``test``, ``val/de`` for a named evaluation set, ``parallel`` / ``language`` for side streams) that
        skipped any. Reasons are :data:`zoo.data.datasets.SKIP_REASONS` for records left out when read or by the
        data check, and ``"dropped from a batch"`` for samples whose media failed when read for a batch (counted
        from the batches, in any loader process; with ``batches=False`` left out)."""
        from zoo.data.datasets import SKIP_REASONS, problem_kind  # noqa: PLC0415

        out: dict[str, dict[str, int]] = {}
        for key, _, skipped in self._skip_sources():
            for _, _, reason in skipped:
                kind = problem_kind(reason)
                out.setdefault(key, {})[kind] = out.get(key, {}).get(kind, 0) + 1
        if batches:
            for split, n in self._batch_skips.items():
                if n:
                    out.setdefault(split, {})["dropped from a batch"] = n
        order = {reason: i for i, reason in enumerate(SKIP_REASONS)}
        return {key: dict(sorted(reasons.items(), key=lambda kv: order.get(kv[0], len(order))))
                for key, reasons in out.items()}

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        task_batch = batch.get("task") if isinstance(batch, Mapping) and "task" in batch else batch  # side streams
        if isinstance(task_batch, Mapping) and task_batch.get("num_skipped"):
            trainer = getattr(self, "trainer", None)
            stage = getattr(getattr(trainer, "state", None), "stage", None)
            try:
                split = _split_of(stage) if stage is not None else "train"
            except ValueError:
                split = "train"
            self._batch_skips[split] += int(task_batch["num_skipped"])
        return batch

    def skipped_report(self) -> str:
        """Skipped samples per split and reason (:meth:`skipped_counts`): malformed records left out at load,
        records whose media the data check could not open, samples dropped from batches, and up to 20 of the records
        with their problems (those met in loader workers went to warnings)."""
        from zoo.data.datasets import problem_kind  # noqa: PLC0415

        lines = []
        counts = self.skipped_counts()
        sources = {key: (ds, skipped) for key, ds, skipped in self._skip_sources()}
        for key in sorted(set(counts) | set(sources), key=lambda k: (_SPLIT_ORDER.get(k.split("/")[0], 1), k)):
            ds, skipped = sources.get(key, (None, []))
            malformed = int(getattr(ds, "num_malformed", 0)) if ds is not None else len(skipped)
            media = int(getattr(ds, "num_bad_media", 0)) if ds is not None else 0
            dropped = self._batch_skips.get(key, 0)
            if not (malformed or media or dropped):
                continue
            line = f"{key}: {malformed} malformed record(s) left out at load"
            if media:
                line += f", {media} record(s) with unreadable media left out by the data check"
            lines.append(f"{line}, {dropped} sample(s) dropped from batches (unreadable media)")
            lines.append("  by reason: " + ", ".join(f"{reason} {n}" for reason, n in counts.get(key, {}).items()))
            details = list(getattr(ds, "skipped", skipped)) if ds is not None else skipped
            for file, index, reason in details[:20]:
                lines.append(f"  {file}: record {index}: {reason} [{problem_kind(reason)}]")
            if len(details) > 20:
                lines.append(f"  ... and {len(details) - 20} more")
        return "\n".join(lines) if lines else "no samples skipped"


_SPLIT_ORDER = {"train": 0, "val": 2, "test": 3}  # side streams (1) between training and evaluation


class DataReport:
    """What :meth:`TaskDataModule.check` checked: ``records`` kept per split (``train``, ``val``, ``val/de``, side
    streams), distinct ``media`` files opened per split (a file shared with an earlier split counts there), ``shards``
    per split read from shards, ``answers`` in the answer list (None without one), and ``skipped`` ``{split: {reason:
    count}}``
    (``on_bad_sample: skip``). ``str()`` is the summary ``mmzoo train`` prints before training."""

    def __init__(self, on_bad_sample: str = "error"):
        self.on_bad_sample = on_bad_sample
        self.records: dict[str, int] = {}
        self.media: dict[str, int] = {}
        self.shards: dict[str, int] = {}
        self.answers: int | None = None
        self.skipped: dict[str, dict[str, int]] = {}

    @property
    def num_skipped(self) -> int:
        return sum(n for reasons in self.skipped.values() for n in reasons.values())

    def __str__(self) -> str:
        parts = [f"{key} {n:,} records" + (f" ({self.media[key]:,} media files)" if key in self.media else
                                           f" ({self.shards[key]:,} shards)" if key in self.shards else "")
                 for key, n in self.records.items()]
        if self.answers is not None:
            parts.append(f"answer list {self.answers:,} answers")
        text = "data check: " + ("; ".join(parts) if parts else "nothing to check")
        if self.skipped:
            text += f"\nskipped {self.num_skipped:,} bad sample(s) (data.on_bad_sample: skip): " + "; ".join(
                f"{key}: " + ", ".join(f"{reason} {n}" for reason, n in reasons.items())
                for key, reasons in self.skipped.items())
        return text

    def __repr__(self) -> str:
        return f"DataReport(records={self.records}, media={self.media}, skipped={self.skipped})"


def _eval_split(stage: Any) -> str:
    split = _split_of(stage)
    return "test" if split == "test" else "val"


class _DatasetView(torch.utils.data.Dataset):
    """A view of an annotation data set (a subset, or items with extra keys) that forwards every other attribute
    (``records``, ``skipped``, ``num_malformed``, ``cache_images``, ...) to it."""

    def __init__(self, dataset: Any, indices: Sequence[int] | None = None):
        self.dataset = dataset
        self.indices = list(indices) if indices is not None else None

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.dataset)

    def _index(self, i: int) -> int:
        return self.indices[i] if self.indices is not None else i

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self._index(i)]

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "indices"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _few_shot_subset(dataset: Any, source_files: list[str], few_shot: Mapping[str, tuple[int, list[str]]],
                     seed: int) -> _DatasetView:
    """Every record of ``source_files`` + ``n`` records (drawn with ``seed``) of each language's files."""
    import random  # noqa: PLC0415

    by_file: dict[str, list[int]] = {}
    for i, (file, _, _) in enumerate(dataset.records):
        by_file.setdefault(file, []).append(i)
    keep = [i for f in dict.fromkeys(source_files) for i in by_file.get(f, [])]
    for lang, (n, files) in few_shot.items():
        pool = [i for f in dict.fromkeys(files) for i in by_file.get(f, [])]
        if n > len(pool):
            raise ConfigError(f"{n} few-shot records asked for in {lang!r}, but {', '.join(files)} hold {len(pool)}",
                              f"data.few_shot.{lang}")
        keep += sorted(random.Random(f"{seed}:{lang}").sample(pool, n))
    return _DatasetView(dataset, keep)


class _WithTranslation(_DatasetView):
    """Retrieval training items + ``caption_2``: the record's ``caption_{lang}`` (cleaned as the caption), ``lang``
    drawn from torch's generator per item when several are given."""

    def __init__(self, dataset: Any, languages: Sequence[str]):
        super().__init__(dataset)
        self.languages = list(languages)
        from zoo.data.datasets import DataError, _check_str, _clean_problem, _Problem, problem_kind  # noqa: PLC0415

        bad: dict[int, str] = {}
        for pos, (file, idx, rec) in enumerate(dataset.records):
            for lang in self.languages:
                key = f"caption_{lang}"
                problem = _check_str(rec, key) or (_clean_problem(rec[key], dataset.max_words)
                                                   if getattr(dataset, "clean", True) else None)
                if problem is None:
                    continue
                problem = _Problem(f"data.translation: {problem} (the record's caption in {lang!r})",
                                   problem_kind(problem))
                if dataset.on_bad_sample != "skip":
                    raise DataError(file, idx, problem)
                bad.setdefault(pos, problem)
        if bad:
            dataset._leave_out(bad, malformed=True)

    def __getitem__(self, i: int) -> Any:
        from zoo.data.datasets import pre_caption  # noqa: PLC0415

        item = self.dataset[i]
        if item is None:
            return None
        lang = self.languages[int(torch.randint(len(self.languages), ())) if len(self.languages) > 1 else 0]
        rec = self.dataset.records[i][2]
        text = rec[f"caption_{lang}"]
        item = dict(item)
        item["caption_2"] = pre_caption(text, self.dataset.max_words) if getattr(self.dataset, "clean", True) else text
        return item


def _vocab_rows(text: Any) -> int:
    """Rows of a text part's word embedding (split_bert, hf encoders)."""
    for get in (lambda t: t.embeddings.word_embeddings, lambda t: t.model.get_input_embeddings()):
        try:
            return int(get(text).num_embeddings)
        except AttributeError:
            continue
    raise ConfigError(f"text.tokenizer: data needs a text part with word embeddings, got {type(text).__name__}",
                      "model.text.tokenizer")


def _data_texts(task: str, data: Mapping[str, Any]) -> list[str]:
    """Every text of the data section's files (:meth:`TaskDataModule.tokenizer_texts`), from records the readers
    checked: a malformed record is a :class:`zoo.data.datasets.DataError` naming the file and record (with
    ``on_bad_sample: skip`` it is left out). Media files are not opened here (:meth:`TaskDataModule.check`)."""
    return TaskDataModule(task, data, None, image_size=1).tokenizer_texts()


def _knows_every_word(folder: Path, texts: Sequence[str]) -> bool:
    """Whether the word-level tokenizer in ``folder`` has a token for every word of the cleaned ``texts`` (a word it
    does not know is spelled letter by letter)."""
    from tokenizers import Tokenizer  # noqa: PLC0415

    from zoo.data.datasets import pre_caption  # noqa: PLC0415

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    words = sorted({w for t in texts for w in pre_caption(t, 10_000).split()})
    return all(len(ids) == 1 for ids in (e.ids for e in tok.encode_batch(words, add_special_tokens=False)))


#: a data-built tokenizer's embedding rows are its length rounded up to this multiple (Megatron-LM's default
#: ``make-vocab-size-divisible-by``: matrix sizes the kernels tile evenly); the shapes tokenizer's 408 tokens → 512
VOCAB_MULTIPLE = 128


def _data_tokenizer_folder(data: Mapping[str, Any], corpus: Sequence[str], model_texts: Sequence[str],
                           out_dir: str | os.PathLike, vocab_size: int | None) -> Path:
    """The folder of the data's own tokenizer: the data folder's ``tokenizer_xlmr/`` when there is one, it knows every
    word of ``corpus`` and the model writes no texts of its own (``model_texts``), else one built from ``corpus`` and
    ``model_texts`` into ``out_dir/tokenizer_data`` (``vocab_size``: its cap; None: every word), once per run."""
    from zoo.data.shapes import TOKENIZER_DIR  # noqa: PLC0415

    root = data.get("root")
    folder = Path(root) / TOKENIZER_DIR if root else None
    if folder is not None and (folder / "tokenizer.json").is_file() and not model_texts \
            and _knows_every_word(folder, corpus):
        return folder
    from zoo.data.multilingual_tokenizer import build_multilingual_tokenizer  # noqa: PLC0415

    if not corpus:
        raise ConfigError("text.tokenizer: data needs texts in the data files (questions, captions, answers)",
                          "data.train")
    folder = Path(out_dir) / "tokenizer_data"
    if not (folder / "tokenizer.json").is_file():  # built once per run (deterministic), then renamed into place
        import shutil  # noqa: PLC0415
        import tempfile  # noqa: PLC0415

        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tokenizer_data.", dir=folder.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; it is an ordinary output folder
        build_multilingual_tokenizer(list(corpus) + list(model_texts), tmp, vocab_size=vocab_size, model="words")
        try:
            tmp.rename(folder)
        except OSError:  # another process (a distributed rank) put the same tokenizer there first
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def resolve_data_tokenizer(model: Any, data: Mapping[str, Any], out_dir: str | os.PathLike,
                           task: str = "vqa", datamodule: TaskDataModule | None = None) -> None:
    """``text.tokenizer: data`` (alias ``shapes``) for a model already built: the data's own word-level tokenizer,
    for models trained from scratch on a small closed vocabulary. It is the data folder's ``tokenizer_xlmr/`` when
    there is one (the shapes generator writes it, :func:`zoo.data.shapes.shapes_tokenizer`) and it has a token for
    every word of the data's texts (the shapes tokenizer knows the words of the captions and questions, not those of
    the visual-entailment and NLVR sentences), else one built from the texts of the data section's files (questions,
    captions, sentences, answers, the answer list; :func:`zoo.data.multilingual_tokenizer.
    build_multilingual_tokenizer` with ``model="words"``) into ``out_dir/tokenizer_data``, sized to the text part's
    ``vocab_size``. A model with ``tokenizer_texts()`` (text it writes around the data, e.g. a prompt template) always
    gets one built from the data's texts and those. The texts come from records the readers checked
    (:meth:`TaskDataModule.tokenizer_texts`; ``datamodule``: the data module :meth:`TaskDataModule.check` has checked,
    whose records are used as they are, else one is made from ``data`` and ``task``). Call before
    ``model.text.get_tokenizer()``; the model config then names the folder. ``mmzoo train`` resolves the tokenizer
    before it builds the model instead, and sizes the model to it (:func:`prepare_data_tokenizer`)."""
    text = getattr(model, "text", None)
    if getattr(text, "tokenizer", None) not in ("data", "shapes"):
        return
    # texts the model writes around the data (MultiModal-GPT's instruction template): their words join the vocabulary,
    # else a word-level tokenizer spells them letter by letter (the template alone was 120 tokens)
    model_texts = list(model.tokenizer_texts()) if hasattr(model, "tokenizer_texts") else []
    corpus = datamodule.tokenizer_texts() if datamodule is not None else _data_texts(task, data)
    # room for <mask> and the tokens the model adds itself (eP-ALM's </a>, MultiModal-GPT's <image>, ...)
    extra = 1 + len(getattr(text, "special_tokens", None) or ())
    text.tokenizer = str(_data_tokenizer_folder(data, corpus, model_texts, out_dir, _vocab_rows(text) - extra))
    if hasattr(text, "_tokenizer_cache"):
        text._tokenizer_cache = None
    key = getattr(model, "tokenizer_part", "text")  # the part's key in the model config (e.g. `lm` for an LM family)
    config = getattr(model, "zoo_config", None)
    if isinstance(config, dict) and isinstance(config.get("model"), dict) \
            and isinstance(config["model"].get(key), dict):
        config["model"][key]["tokenizer"] = text.tokenizer  # checkpoints name the real folder


def tokenizer_facts(folder: str | os.PathLike, added: Sequence[str] = ()) -> dict[str, int]:
    """What a model's config takes from the tokenizer in ``folder`` with the tokens ``added`` (those it lacks): its
    embedding ``rows`` (its length, rounded up to a multiple of :data:`VOCAB_MULTIPLE`), ``tokens`` (its length) and
    the ids of its special tokens (``pad``, ``bos``, ``eos``, ``mask``; the XLM-R layout's ``<s>``, ``<pad>``,
    ``</s>``, ``<mask>``)."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    tok = AutoTokenizer.from_pretrained(str(folder))
    vocab = tok.get_vocab()
    tokens = len(tok) + len({t for t in added if t not in vocab})
    facts = {"tokens": tokens, "rows": -(-tokens // VOCAB_MULTIPLE) * VOCAB_MULTIPLE}
    for name in ("pad", "bos", "eos", "mask"):
        value = getattr(tok, f"{name}_token_id", None)
        if value is not None:
            facts[name] = int(value)
    return facts


def wants_data_tokenizer(model_tree: Mapping[str, Any], cls: Any) -> bool:
    """Whether the model config ``model_tree`` of the family ``cls`` asks for the data's own tokenizer (``tokenizer:
    data``, alias ``shapes``, in its ``tokenizer_part``)."""
    part = model_tree.get(cls.tokenizer_part)
    return isinstance(part, Mapping) and part.get("tokenizer") in ("data", "shapes")


def prepare_data_tokenizer(model_tree: dict, cls: Any, data: Mapping[str, Any], out_dir: str | os.PathLike,
                           task: str = "vqa", explicit: Sequence[str] = (), file: str | None = None,
                           datamodule: TaskDataModule | None = None) -> Path | None:
    """``tokenizer: data`` (alias ``shapes``) in the tokenizer part (``cls.tokenizer_part``) of the model config
    ``model_tree``, resolved before the model is built: the data's own tokenizer (:func:`_data_tokenizer_folder`,
    every word of the checked records and of the model's template texts, no cap), written into the part's
    ``tokenizer``, and the values of ``cls.tokenizer_fields`` (vocabulary rows, special ids) set from it
    (:meth:`zoo.models.base.ZooModel.tokenizer_settings`). A path in ``explicit`` (set by the task config's
    ``model.overrides``) keeps its value if the tokenizer fits: rows at least its length, ids equal to its own; else
    a ConfigError naming the key and ``file``. Returns the folder (None: the part names another tokenizer; nothing
    changes). ``model_tree`` is changed in place."""
    if not wants_data_tokenizer(model_tree, cls):
        return None
    part = model_tree[cls.tokenizer_part]
    template = list(cls.tokenizer_template_texts(model_tree))
    corpus = datamodule.tokenizer_texts() if datamodule is not None else _data_texts(task, data)
    folder = _data_tokenizer_folder(data, corpus, template, out_dir, None)
    part["tokenizer"] = str(folder)
    added = list(cls.tokenizer_added_tokens(model_tree)) + list(part.get("special_tokens") or [])
    facts = tokenizer_facts(folder, added)
    for path, value in cls.tokenizer_settings(model_tree, facts).items():
        *parents, leaf = path.split(".")
        node = model_tree
        for name in parents:
            node = node.setdefault(name, {})
        if path in explicit and node.get(leaf) != value:
            given, least = node.get(leaf), value - (facts["rows"] - facts["tokens"])  # rows: no rounding needed
            if not (leaf == "vocab_size" and isinstance(given, int) and not isinstance(given, bool)
                    and given >= least):
                need = f"at least {least} rows" if leaf == "vocab_size" else f"its id {value}"
                raise ConfigError(f"{given!r} does not fit the data's tokenizer ({folder}): expected {need}, or "
                                  "leave the key out to derive it", f"model.{path}", file)
            continue
        node[leaf] = value
    return folder
