"""Pre-extracted video features, UniVL's input: the official features file read safely, the official frame selection
and padding, what the data sets read with ``data.video_features``, and ``mmzoo features``, which writes such a file.

**The official layout** (microsoft/UniVL ``dataloaders/dataloader_{msrvtt,youcook}_{retrieval,caption}.py``): videos
are not decoded; one pickle ``{video_id: float array (T, D)}`` (``--features_path``) holds S3D clip features, one
1024-d vector per second (``feature_framerate`` 1.0), and ``_get_video`` builds each example from it:

- a YouCookII clip is cut out of its video's rows: ``rows[int(start * rate) : int(end * rate) + 1]`` (``start`` /
  ``end`` in seconds; MSRVTT takes the whole video);
- of more than ``max_frames`` rows, UniVL always keeps the first ``max_frames`` (``video_slice[:max_frames]``); the
  UniVL-derived CLIP4Clip (ArrowLuo/CLIP4Clip) made this ``slice_framepos``: 0 the head, 1 the tail
  (``[-max_frames:]``), 2 uniform (``np.linspace(0, T - 1, num=max_frames, dtype=int)``: evenly spaced, the float
  positions truncated toward zero). :func:`frame_indices` with ``head`` (the default, UniVL's own), ``tail``,
  ``uniform``;
- the kept rows are written into a zero ``(max_frames, D)`` array, with ``video_mask`` 1 over them (the fine-tuning
  commands use ``--max_frames 48``; 96 for YouCookII captioning).

Here an item's ``image`` is that zero-padded ``(max_frames, D)`` float32 tensor and no mask travels with it: **the model
tells padding from content by all-zero rows** (:func:`frame_mask`). A real row of zeros would read as padding; S3D
(and any ReLU network's pooled) features are never all zero in practice, and a zero-row video is refused by the check.

**Reading** (:func:`load_features`): a pickle file (any name but ``.npz``) through a restricted unpickler that resolves
only the names numpy arrays need and refuses every other global with a :class:`zoo.data.datasets.DataError` naming
the file and the global, before anything is called (a pickle can otherwise run any code it names); a ``.npz`` file;
or a folder of ``<video_id>.npy`` files (``np.load`` with ``allow_pickle=False``, memory-mapped, read per video).
A file is read once per process and shared by every data set that names it (cached by its real path, modification
time and size): the official MSRVTT pickle is a few GB. Loader workers started by ``fork`` (Linux) share the parent's
arrays; spawned ones read the file again (the arrays never travel with the data set).

**What a record reads** (:class:`VideoFeatures`): the features of its ``feature_id`` if it has one (the official
YouCookII ``feature_file`` column), else of its ``video_id``, else of its ``video`` file name without the extension
(MSRVTT: ``video123.mp4`` → ``video123``); ids compare as strings. A record with ``start`` and ``end`` (seconds) reads
that clip of the video's rows at ``rate`` rows per second. The data check looks every record's id up: a missing id,
an array that is not 2-D numeric with the width the file's videos share, or a clip with no rows is a
:class:`~zoo.data.datasets.DataError` naming the annotation file, the record and the id (skipped and counted with
``on_bad_sample: skip``).

**Extraction** (:func:`extract_features`, ``mmzoo features``): a frozen image encoder (``timm:NAME``,
``open_clip:NAME``, or the vision part of a registered model or model file) over one frame per second (or per
``1 / fps`` s: the middle frame of each window, :func:`zoo.data.video.second_frame_indices`), the model's evaluation
preprocessing, its pooled output per frame → ``{video_id: float32 (T, D)}`` written in the official layout.
"""

from __future__ import annotations

import codecs
import math
import os
import pickle
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zoo.data.datasets import DataError, _Problem, _type_name, read_annotations
from zoo.spec import ConfigError

__all__ = ["FRAME_SLICES", "FeatureStore", "VideoFeatures", "check_extraction", "clear_feature_cache",
           "extract_features", "feature_key", "frame_encoder", "frame_indices", "frame_mask", "load_features",
           "pad_frames", "safe_load_pickle", "videos_of", "write_features"]

#: ``data.frame_slice``: which ``max_frames`` rows of a longer video are kept (CLIP4Clip's ``slice_framepos`` 0, 1, 2)
FRAME_SLICES = ("head", "tail", "uniform")


# ---------------------------------------------------------------------------------------------------------------------
# frame selection and padding
# ---------------------------------------------------------------------------------------------------------------------
def frame_indices(num_rows: int, max_frames: int, frame_slice: str = "head") -> np.ndarray:
    """The rows kept of a video with ``num_rows`` feature rows: all of them when ``num_rows <= max_frames``, else
    ``head`` the first ``max_frames`` (UniVL), ``tail`` the last ones, ``uniform`` ``np.linspace(0, num_rows - 1,
    num=max_frames, dtype=int)`` (CLIP4Clip's ``slice_framepos`` 2)."""
    if frame_slice not in FRAME_SLICES:
        raise ValueError(f"frame_slice={frame_slice!r}: expected one of {', '.join(FRAME_SLICES)}")
    if num_rows <= max_frames:
        return np.arange(num_rows)
    if frame_slice == "head":
        return np.arange(max_frames)
    if frame_slice == "tail":
        return np.arange(num_rows - max_frames, num_rows)
    return np.linspace(0, num_rows - 1, num=max_frames, dtype=int)


def pad_frames(rows: Tensor, max_frames: int) -> Tensor:
    """``rows`` ``(n, D)`` (``n <= max_frames``) followed by zero rows: ``(max_frames, D)``."""
    if rows.shape[0] > max_frames:
        raise ValueError(f"{rows.shape[0]} rows do not fit max_frames={max_frames}")
    out = rows.new_zeros((max_frames, rows.shape[1]))
    out[: rows.shape[0]] = rows
    return out


def frame_mask(features: Tensor) -> Tensor:
    """``(..., T, D)`` padded features → ``(..., T)`` long mask, 1 for a real row, 0 for padding (a row of zeros)."""
    return features.ne(0).any(dim=-1).long()


# ---------------------------------------------------------------------------------------------------------------------
# the restricted unpickler
# ---------------------------------------------------------------------------------------------------------------------
class _ArrayClass:
    """What ``numpy.ndarray`` resolves to in a features pickle: only the class argument of the array reconstructor
    (numpy pickles an array as ``_reconstruct(ndarray, (0,), b'b')`` + its state). Not callable, so a pickle cannot
    call ``ndarray(shape, object, buffer)``, which would read object pointers from the file's bytes."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


_ARRAY_CLASS = _ArrayClass()


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The globals numpy 1.x and 2.x pickles of arrays, dtypes and numpy scalars name (both module spellings:
    ``numpy.core`` before 2.0, ``numpy._core`` since), mapped to the installed numpy's; and ``_codecs.encode``, which
    protocol-2 pickles use for bytes."""
    try:
        from numpy._core import multiarray, numeric  # noqa: PLC0415
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # noqa: PLC0415

    def reconstruct(cls: Any, shape: Any, dtype: Any) -> np.ndarray:
        if cls is not _ARRAY_CLASS:
            raise pickle.UnpicklingError(f"an array reconstructed as {cls!r}: only numpy.ndarray is read")
        return multiarray._reconstruct(np.ndarray, shape, dtype)

    def encode(text: Any, encoding: Any = "latin1") -> bytes:  # protocol 2 writes bytes as encode(str, 'latin1')
        if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
            raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r}): only latin1 text is "
                                         "read")
        return codecs.encode(text, "latin1")

    out: dict[tuple[str, str], Any] = {("numpy", "ndarray"): _ARRAY_CLASS, ("numpy", "dtype"): np.dtype,
                                       ("_codecs", "encode"): encode}
    for pkg in ("numpy.core", "numpy._core"):
        out[(f"{pkg}.multiarray", "_reconstruct")] = reconstruct
        out[(f"{pkg}.multiarray", "scalar")] = multiarray.scalar  # refuses object dtypes from bytes itself
        if hasattr(numeric, "_frombuffer"):  # protocol 5 (refuses object dtypes itself)
            out[(f"{pkg}.numeric", "_frombuffer")] = numeric._frombuffer
    return out


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, fh: Any, path: str, what: str):
        super().__init__(fh)
        self._path, self._what, self._allowed = path, what, _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise DataError(self._path, None, f"refused to load: the pickle names the global {module}.{name}, which "
                                              f"{self._what} never need (a pickle runs the code it names; only numpy "
                                              "arrays, dtypes and scalars, dicts, lists, strings and numbers are read)")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(self._path, None, f"refused to load: the pickle asks for the external object {pid!r}, which "
                                          f"{self._what} never need")


def safe_load_pickle(path: str | os.PathLike, what: str = "video features") -> Any:
    """The object in the pickle file ``path``, built with no code run but numpy's array, dtype and scalar constructors
    (dicts, lists, tuples, strings, numbers and numpy arrays of them). Another global, a missing file or a corrupt one
    raises :class:`zoo.data.datasets.DataError` naming the file (and the global)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(path, None, f"file not found ({what}: a pickle, a .npz file or a folder of .npy files)")
    try:
        with open(path, "rb") as fh:
            return _SafeUnpickler(fh, path, what).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            UnicodeDecodeError, MemoryError) as exc:
        raise DataError(path, None, f"not a readable pickle of {what} ({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------------------------------------------------------------
# the store: one features source, read once per process
# ---------------------------------------------------------------------------------------------------------------------
class _Unreadable(Exception):
    pass


def _numeric(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)


class FeatureStore:
    """The arrays of one features source by video id (a string): a pickle ``{video_id: array (T, D)}`` or a ``.npz``
    (held in memory), or a folder of ``<video_id>.npy`` (memory-mapped when read). Use :func:`load_features`, which
    reads each source once per process."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._arrays: dict[str, Any] | None = None
        self._files: dict[str, str] = {}
        self._shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._width: int | None = None
        self._mean: np.ndarray | None = None
        self._lock = threading.Lock()  # width and mean_row pass over every array once, whichever thread asks first
        if os.path.isdir(self.path):
            self.kind = "npy folder"
            self._files = {name[:-4]: os.path.join(self.path, name) for name in sorted(os.listdir(self.path))
                           if name.endswith(".npy")}
            if not self._files:
                raise DataError(self.path, None, "no <video_id>.npy files in this folder (video features)")
        elif self.path.endswith(".npz"):
            self.kind = "npz"
            try:
                with np.load(self.path, allow_pickle=False) as z:
                    self._arrays = {str(k): z[k] for k in z.files}
            except (OSError, ValueError, EOFError) as exc:
                raise DataError(self.path, None, f"not a readable .npz of video features ({exc})") from None
        else:
            self.kind = "pickle"
            data = safe_load_pickle(self.path)
            if not isinstance(data, Mapping):
                raise DataError(self.path, None, "expected the official features layout, a dict {video_id: array "
                                                 f"(T, D)}}, got {type(data).__name__}")
            self._arrays = {str(k): v for k, v in data.items()}

    def __contains__(self, key: object) -> bool:
        return key in (self._arrays if self._arrays is not None else self._files)

    def __len__(self) -> int:
        return len(self._arrays if self._arrays is not None else self._files)

    def keys(self) -> list[str]:
        return list(self._arrays if self._arrays is not None else self._files)

    def _npy(self, key: str) -> np.ndarray:
        path = self._files[key]
        name = os.path.basename(path)
        try:
            try:
                return np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError:  # an empty array or one of Python objects cannot be memory-mapped
                return np.load(path, allow_pickle=False)
        except ValueError as exc:
            if "allow_pickle" in str(exc):
                raise _Unreadable(f"{name} holds Python objects, not numbers (not unpickled)") from None
            raise _Unreadable(f"{name}: {exc}") from None
        except (OSError, EOFError) as exc:
            raise _Unreadable(f"{name}: {exc}") from None

    def info(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        """``(shape, dtype)`` of the entry ``key`` (raises :class:`_Unreadable` for an entry that is not an array)."""
        if key not in self._shapes:
            value = self._arrays[key] if self._arrays is not None else self._npy(key)
            if not isinstance(value, np.ndarray):
                raise _Unreadable(f"expected a numpy array (T, D), got {_type_name(value)[:80]}")
            self._shapes[key] = (tuple(value.shape), value.dtype)
        return self._shapes[key]

    def rows(self, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of the entry ``key`` (a copy for a memory-mapped file)."""
        value = self._arrays[key] if self._arrays is not None else self._npy(key)
        return np.array(value[start:stop]) if self._arrays is None else value[start:stop]

    def _valid(self) -> Iterable[tuple[str, tuple[int, ...]]]:
        for key in self.keys():
            try:
                shape, dtype = self.info(key)
            except _Unreadable:
                continue
            if len(shape) == 2 and _numeric(dtype):
                yield key, shape

    @property
    def width(self) -> int | None:
        """The row width most of the source's 2-D numeric arrays share (None: there is none)."""
        with self._lock:
            if self._width is None:
                counts = Counter(shape[1] for _, shape in self._valid())
                self._width = counts.most_common(1)[0][0] if counts else None
        return self._width

    def mean_row(self) -> np.ndarray:
        """The mean of every row of every array of the common :attr:`width` (float32); a vector of ones when that
        mean is zero or there are no rows."""
        width = self.width or 1
        with self._lock:
            if self._mean is None:
                total, count = np.zeros(width, dtype=np.float64), 0
                for key, shape in self._valid():
                    if shape[1] == width and shape[0]:
                        total += np.asarray(self.rows(key), dtype=np.float64).sum(axis=0)
                        count += shape[0]
                mean = (total / max(count, 1)).astype(np.float32)
                self._mean = mean if count and np.any(mean) and np.all(np.isfinite(mean)) else \
                    np.ones(width, dtype=np.float32)
        return self._mean

    def __repr__(self) -> str:
        return f"FeatureStore({self.path!r}, {self.kind}, {len(self)} videos)"


_STORES: dict[str, tuple[tuple[int, int], FeatureStore]] = {}
_STORES_LOCK = threading.Lock()


def load_features(path: str | os.PathLike) -> FeatureStore:
    """The :class:`FeatureStore` of ``path``, read once per process: the same object for every data set (and
    thread) naming the file, until the file changes (modification time or size)."""
    real = os.path.realpath(os.fspath(path))
    try:
        st = os.stat(real)
    except OSError:
        raise DataError(os.fspath(path), None, "not found (video features: a pickle, a .npz file or a folder of "
                                               ".npy files)") from None
    stamp = (st.st_mtime_ns, st.st_size)
    with _STORES_LOCK:
        cached = _STORES.get(real)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        _STORES.pop(real, None)  # a changed file: the old arrays go
        store = FeatureStore(real)
        _STORES[real] = (stamp, store)
        return store


def clear_feature_cache() -> None:
    """Forget every features source read in this process."""
    with _STORES_LOCK:
        _STORES.clear()


# ---------------------------------------------------------------------------------------------------------------------
# what the data sets read
# ---------------------------------------------------------------------------------------------------------------------
def feature_key(rec: Mapping) -> tuple[str, str]:
    """``(id, where it came from)`` of a record's features: its ``feature_id``, else ``video_id``, else the file name
    of its ``video`` without the extension."""
    for field in ("feature_id", "video_id"):
        if field in rec and rec[field] is not None:
            return str(rec[field]), f"its {field}"
    return Path(str(rec.get("video", ""))).stem, "its video file name"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class VideoFeatures:
    """How records read pre-extracted features (``data.video_features``; the module docstring has the rules).

    Args:
        path: a pickle ``{video_id: array (T, D)}``, a ``.npz`` or a folder of ``<video_id>.npy``.
        max_frames: rows per item (official fine-tuning: 48); longer videos are cut by ``frame_slice``, shorter ones
            padded with zero rows.
        frame_slice: ``head`` (UniVL), ``tail`` or ``uniform`` (:func:`frame_indices`).
        rate: feature rows per second of video (official 1.0), for records with ``start`` / ``end``.
        blank: every item the same ``(max_frames, D)`` input, each row the mean row of the whole source
            (:meth:`FeatureStore.mean_row`): the video-free ablation (``data.blank_images``). Not zeros, which mean
            padding (the model would see an empty video, an input it never trained on), and every row filled, so
            that neither the content nor the length of a video (the number of real rows) reaches the model; the mean
            of real features keeps the input in the range the video encoder's normalisation and projection see.
    """

    def __init__(self, path: str | os.PathLike, max_frames: int = 48, frame_slice: str = "head", rate: float = 1.0,
                 blank: bool = False):
        if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
            raise ConfigError(f"expected a positive integer, got {max_frames!r}", "max_frames")
        if frame_slice not in FRAME_SLICES:
            raise ConfigError(f"expected one of {', '.join(FRAME_SLICES)}, got {frame_slice!r}", "frame_slice")
        if not _is_number(rate) or rate <= 0:
            raise ConfigError(f"expected a number > 0 (feature rows per second), got {rate!r}", "feature_rate")
        self.path, self.max_frames, self.frame_slice = os.fspath(path), max_frames, frame_slice
        self.rate, self.blank = float(rate), bool(blank)
        self._store: FeatureStore | None = None
        self._blank: Tensor | None = None

    def __getstate__(self) -> dict[str, Any]:  # loader workers read the file through their own process's cache
        return {**self.__dict__, "_store": None, "_blank": None}

    @property
    def store(self) -> FeatureStore:
        if self._store is None:
            self._store = load_features(self.path)
        return self._store

    def _segment(self, rec: Mapping) -> tuple[int, int | None] | _Problem:
        """The record's rows ``(start, stop)``: the whole video, or its ``start`` / ``end`` seconds at ``rate``."""
        if "start" not in rec and "end" not in rec:
            return 0, None
        for key in ("start", "end"):
            if key not in rec:
                return _Problem(f"a clip needs both 'start' and 'end' (seconds); missing {key!r}", "missing key")
            if not _is_number(rec[key]) or rec[key] < 0:
                return _Problem(f"{key!r} must be a number of seconds >= 0, got {_type_name(rec[key])}", "bad value")
        if rec["end"] < rec["start"]:
            return _Problem(f"'end' {rec['end']} is before 'start' {rec['start']}", "bad value")
        return int(rec["start"] * self.rate), int(rec["end"] * self.rate) + 1  # official feature_framerate rule

    def check_key(self, rec: Mapping) -> str:
        """What the data check opens for ``rec`` (one check per distinct key): the source, the id and the clip."""
        key, _ = feature_key(rec)
        clip = f"@{rec.get('start')!r}-{rec.get('end')!r}" if "start" in rec or "end" in rec else ""
        return f"{self.path}::{key}{clip}"

    def problem(self, rec: Mapping) -> _Problem | None:
        """Why ``rec`` cannot read its features (None: it can)."""
        key, source = feature_key(rec)
        store = self.store
        if key not in store:
            return _Problem(f"no video features for {key!r} ({source}) in {self.path} (data.video_features)",
                            "missing media")
        try:
            shape, dtype = store.info(key)
        except _Unreadable as exc:
            return _Problem(f"video features {key!r} in {self.path}: {exc}", "unreadable media")
        if len(shape) != 2 or not _numeric(dtype):
            return _Problem(f"video features {key!r} in {self.path}: expected a 2-D numeric array (T, D), got shape "
                            f"{shape} of {dtype}", "unreadable media")
        if shape[1] != store.width:
            return _Problem(f"video features {key!r} in {self.path} have rows of {shape[1]} values, but the other "
                            f"videos' rows have {store.width}", "unreadable media")
        if shape[0] == 0:
            return _Problem(f"video features {key!r} in {self.path} hold no rows", "unreadable media")
        segment = self._segment(rec)
        if isinstance(segment, _Problem):
            return segment
        start, stop = segment
        if stop is not None and min(stop, shape[0]) <= start:
            return _Problem(f"the clip start={rec['start']} end={rec['end']} s selects rows {start}..{stop - 1} of "
                            f"video features {key!r}, which has {shape[0]} ({self.rate:g} per second)", "bad value")
        return None

    def blank_features(self) -> Tensor:
        """The ``blank`` input: ``(max_frames, D)``, every row the source's mean row."""
        if self._blank is None:
            row = torch.from_numpy(self.store.mean_row())
            self._blank = row.unsqueeze(0).expand(self.max_frames, -1).contiguous()
        return self._blank.clone()

    def read(self, file: str, idx: int, rec: Mapping, ablate: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """The ``(max_frames, D)`` float32 features of ``rec``: its rows (clip), the kept ones (``frame_slice``),
        ``ablate`` applied to them (the frame ablations act on real rows only), zero rows after. A record that
        cannot be read raises :class:`zoo.data.datasets.DataError` naming ``file``, the record ``idx`` and the id."""
        problem = self.problem(rec)
        if problem is not None:
            raise DataError(file, idx, problem)
        if self.blank:
            return self.blank_features()
        start, stop = self._segment(rec)
        rows = self.store.rows(feature_key(rec)[0], start, stop)
        rows = rows[frame_indices(len(rows), self.max_frames, self.frame_slice)]
        out = torch.from_numpy(np.array(rows, dtype=np.float32))
        if ablate is not None:
            out = ablate(out)
        return pad_frames(out, self.max_frames)

    def __repr__(self) -> str:
        return (f"VideoFeatures({self.path!r}, max_frames={self.max_frames}, frame_slice={self.frame_slice!r}, "
                f"rate={self.rate:g}, blank={self.blank})")


# ---------------------------------------------------------------------------------------------------------------------
# extraction (mmzoo features)
# ---------------------------------------------------------------------------------------------------------------------
def frame_encoder(spec: str, pretrained: str | None = None, image_size: int | None = None) -> tuple[Any, Any]:
    """``(image encoder, PreprocessConfig)`` of ``spec``: ``REGISTRY_NAME:MODEL`` for a vision encoder that takes a
    ``model_name`` (``timm:vit_base_patch16_224``, ``open_clip:ViT-B-16``; ``pretrained`` its local checkpoint, the
    normalisation its own), or a registered model name or model file, whose vision part (the per-frame image encoder
    of a video part) and preprocessing are used (``pretrained``: its weights file or export folder), or an export
    folder (the model it holds, with its weights: the vision part of a fine-tuned run). ``image_size``
    overrides the resolution. The encoder is in evaluation mode with gradients off."""
    import dataclasses  # noqa: PLC0415

    from zoo.processing import resolve_preprocess  # noqa: PLC0415
    from zoo.registry import VISION_ENCODERS  # noqa: PLC0415

    prefix, sep, name = spec.partition(":")
    if sep and prefix in VISION_ENCODERS:
        try:
            encoder = VISION_ENCODERS.get(prefix)(model_name=name, pretrained=pretrained, img_size=image_size)
        except TypeError as exc:  # a registered encoder without a model name
            raise ConfigError(f"{spec}: the {prefix!r} vision encoder takes no model name ({exc}); use timm:NAME, "
                              "open_clip:NAME or a model name / file", "encoder") from None
        except ConfigError as exc:
            from zoo.hub import WeightsError  # noqa: PLC0415

            if exc.path or exc.file or isinstance(exc, WeightsError):  # a weights error names the --pretrained file
                raise
            raise ConfigError(exc.message, "encoder") from None
        size = image_size or getattr(encoder, "image_size", None)
        if not size:
            raise ConfigError(f"{spec} names no input resolution: give --image-size", "--image-size")
        part = encoder.preprocess_defaults() if callable(getattr(encoder, "preprocess_defaults", None)) else None
        pre = resolve_preprocess(int(size), [("vision", part)], model=spec)
    else:
        import zoo  # noqa: PLC0415
        from zoo.hub import CONFIG_NAME  # noqa: PLC0415

        if os.path.isfile(os.path.join(spec, CONFIG_NAME)):  # an export folder: the model it holds, its weights
            if pretrained is not None:
                raise ConfigError(f"{spec} is an export (its own weights): --pretrained is for a model name or file",
                                  "--pretrained")
            model = zoo.from_pretrained(spec)
        else:
            model = zoo.create_model(spec, pretrained=pretrained)
        encoder = getattr(model, "vision", None)
        if encoder is None:
            raise ConfigError(f"{spec} has no vision part to extract frame features with", "encoder")
        encoder = getattr(encoder, "image_encoder", encoder)  # a video part: its per-frame image encoder
        pre = model.preprocess_config()
        if image_size:
            pre = dataclasses.replace(pre, image_size=int(image_size))
    encoder.eval().requires_grad_(False)
    return encoder, pre


def videos_of(ann_files: str | os.PathLike | Iterable[str | os.PathLike],
              media_root: str | os.PathLike | None = None) -> dict[str, tuple[str, str, int]]:
    """``{feature id: (video path, annotation file, record index)}`` of the video records of ``ann_files`` (the id as
    :func:`feature_key` gives it; paths relative to ``media_root``), in first-seen order. A record that is not a video
    record, or an id naming two different videos, raises :class:`zoo.data.datasets.DataError`."""
    files = [ann_files] if isinstance(ann_files, (str, os.PathLike)) else list(ann_files)
    out: dict[str, tuple[str, str, int]] = {}
    for file, idx, rec in read_annotations(files):
        if not isinstance(rec, Mapping) or not isinstance(rec.get("video"), str) or not rec["video"].strip():
            raise DataError(file, idx, "expected a video record with a 'video' file name (mmzoo features reads "
                                       "videos)")
        key, _ = feature_key(rec)
        path = rec["video"] if media_root is None else os.path.join(os.fspath(media_root), rec["video"])
        if key in out and out[key][0] != path:
            first = out[key]
            raise DataError(file, idx, f"feature id {key!r} names {path}, but record {first[2]} of {first[1]} gave "
                                       f"it to {first[0]}")
        out.setdefault(key, (path, file, idx))
    return out


def check_extraction(fps: Any, batch_size: Any) -> None:
    """The arguments of :func:`extract_features` (``mmzoo features --fps``, ``--batch-size``), or a ConfigError."""
    if not _is_number(fps) or fps <= 0:
        raise ConfigError(f"expected frames per second > 0, got {fps!r}", "--fps")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"expected a positive integer, got {batch_size!r}", "--batch-size")


def grid_pool(tokens: Tensor, patch_grid: int, grid: int) -> Tensor:
    """``(B, N, D)`` encoder tokens whose last ``patch_grid²`` are the patches in row-major order -> ``(B, grid² · D)``:
    the mean patch token of each cell of a ``grid × grid`` partition (cells row-major, each cell's D values
    together), so that a frame's vector keeps where things are. ``patch_grid`` must be a multiple of ``grid``."""
    n = patch_grid * patch_grid
    if tokens.dim() != 3 or tokens.shape[1] < n:
        raise ValueError(f"expected (B, N, D) tokens ending in {n} patch tokens ({patch_grid} x {patch_grid}), got "
                         f"shape {tuple(tokens.shape)}")
    if grid < 1 or patch_grid % grid:
        raise ValueError(f"the {patch_grid} x {patch_grid} patch grid does not split into {grid} x {grid} cells")
    cell = patch_grid // grid
    x = tokens[:, tokens.shape[1] - n:].unflatten(1, (grid, cell, grid, cell))  # (B, gy, cy, gx, cx, D)
    return x.mean(dim=(2, 4)).flatten(1)  # (B, gy, gx, D) -> (B, gy·gx·D)


def extract_features(encoder: Any, preprocess: Any, videos: Mapping[str, str | tuple[str, str, int]], *,
                     fps: float = 1.0, batch_size: int = 64, device: str | torch.device = "cpu",
                     backend: str = "decord", progress: bool | None = None,
                     grid: int | None = None) -> dict[str, np.ndarray]:
    """``{video id: float32 (T, D)}``: ``encoder``'s pooled output for one frame per ``1 / fps`` seconds of each
    video (:func:`zoo.data.video.read_frames_per_second`), each frame through the evaluation transform of
    ``preprocess`` (:class:`zoo.processing.PreprocessConfig`), ``batch_size`` frames per forward pass on ``device``.
    ``videos``: ``{id: path}`` or :func:`videos_of`'s ``{id: (path, annotation file, record index)}`` (then a video
    that cannot be read raises :class:`zoo.data.datasets.DataError` naming the record). ``grid``: instead of the
    pooled vector, :func:`grid_pool` of the patch tokens (``grid² · D`` values a frame; the encoder needs a square
    patch size, read as the video encoder reads it)."""
    from PIL import Image  # noqa: PLC0415
    from tqdm.auto import tqdm  # noqa: PLC0415

    from zoo.data.video import VideoReadError, read_frames_per_second  # noqa: PLC0415
    from zoo.processing import Processor  # noqa: PLC0415

    check_extraction(fps, batch_size)
    patch_grid = None
    if grid is not None:
        from zoo.modules.vision.video import _patch_size  # noqa: PLC0415

        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
            raise ConfigError(f"expected a positive integer, got {grid!r}", "--grid")
        patch = _patch_size(encoder)
        if patch is None or preprocess.image_size % patch:
            raise ConfigError(f"{type(encoder).__name__} has no square patch size dividing the {preprocess.image_size} "
                              "px input: a cell grid needs a ViT-like encoder", "--grid")
        patch_grid = preprocess.image_size // patch
        if patch_grid % grid:
            raise ConfigError(f"the {patch_grid} x {patch_grid} patch grid does not split into {grid} x {grid} cells "
                              f"(give a divisor of {patch_grid})", "--grid")
    transform = Processor(preprocess).image_transform(False)
    encoder = encoder.to(device).eval()
    parts: dict[str, list[np.ndarray]] = {key: [] for key in videos}
    pending: list[tuple[str, Tensor]] = []

    def run() -> None:
        if not pending:
            return
        batch = torch.stack([t for _, t in pending]).to(device)
        with torch.inference_mode():
            out = encoder(batch)
        if patch_grid is not None:
            pooled = grid_pool(out if isinstance(out, Tensor) else out.tokens, patch_grid, grid)
        else:
            pooled = out if isinstance(out, Tensor) else out.pooled if getattr(out, "pooled", None) is not None \
                else out.tokens.mean(dim=1)
        if pooled.dim() == 3:
            pooled = pooled.mean(dim=1)
        rows = pooled.float().cpu().numpy()
        for (key, _), row in zip(pending, rows):
            parts[key].append(row)
        pending.clear()

    show = len(videos) > 1 if progress is None else bool(progress)
    for key, where in tqdm(videos.items(), desc="extracting features", unit="video", disable=not show):
        path = where[0] if isinstance(where, tuple) else where
        try:
            frames = read_frames_per_second(path, fps, backend=backend)
        except VideoReadError as exc:
            if isinstance(where, tuple):
                raise DataError(where[1], where[2], f"cannot read video: {exc}") from None
            raise
        for frame in frames:
            pending.append((key, transform(Image.fromarray(frame.numpy()))))
            if len(pending) >= batch_size:
                run()
    run()
    return {key: np.stack(rows).astype(np.float32) for key, rows in parts.items()}


def _npy_name(key: str) -> str:
    if not key or key in (".", "..") or any(c in key for c in "/\\\0"):
        raise ValueError(f"video id {key!r} cannot be a file name <video_id>.npy")
    return f"{key}.npy"


def write_features(features: Mapping[str, np.ndarray], out: str | os.PathLike | None,
                   npy_dir: str | os.PathLike | None = None) -> None:
    """Write ``features`` in the official layout: the pickle ``out`` (``{video_id: float32 (T, D)}``, protocol 4,
    which the official loaders' ``pickle.load`` reads) and/or the folder ``npy_dir`` of ``<video_id>.npy``; each
    written whole or not at all (:func:`zoo.hub.atomic_write`, :func:`zoo.hub.atomic_dir`)."""
    from zoo.hub import atomic_dir, atomic_write  # noqa: PLC0415

    arrays = {str(k): np.ascontiguousarray(v, dtype=np.float32) for k, v in features.items()}
    if npy_dir is not None:
        names = {key: _npy_name(key) for key in arrays}
    if out is not None:
        with atomic_write(out, "wb") as fh:
            pickle.dump(arrays, fh, protocol=4)
    if npy_dir is not None:
        with atomic_dir(npy_dir) as tmp:
            for key, value in arrays.items():
                np.save(tmp / names[key], value, allow_pickle=False)
