"""Readers of the official fine-tuning annotations: VQA, image/video–text retrieval, captioning (X²-VLM), visual
entailment (SNLI-VE, XVNLI) and two-image reasoning (NLVR2, MaRVL).

Formats and rules (zengyan-97/X2-VLM ``dataset/vqa_dataset.py``, ``retrieval_dataset.py``, ``captioning_dataset.py``,
``dataset/utils.py``); every file is a JSON list of records (``.jsonl``: one record a line), media paths are relative
to ``media_root`` (an absolute path in a record is used as it is):

- VQA ``{question_id, question, answer, image | video, dataset}``; ``answer`` is a list (VQA v2: 10 annotators) or one
  string. Training targets are the distinct answers in first-seen order, each weighted ``count / len(answer)``; a
  Visual Genome record (``dataset: "vg"``, one string) gets the single answer with weight 0.5. Questions go through
  :func:`pre_question` with 30 words at most in training and 50 in evaluation (official ``max_ques_words``).
- Retrieval training ``{image | video, caption, image_id | video_id}``; each distinct id gets a dense index in
  first-seen order (the official ``img_ids``), which the ITC loss uses to treat captions of one image as positives.
  Evaluation ``{image | video, caption: [...]}``: all captions flattened (:func:`pre_caption`, 30 words) into
  ``texts`` with ``img2txt`` / ``txt2img``.
- Captioning (Karpathy) training as retrieval training (40 words, the captioning config's ``max_words``);
  evaluation ``{image, caption: [...]}`` yields the raw reference captions and an ``image_id``: the record's
  ``image_id`` when every record has one, else the number ending the file name (official:
  ``COCO_val2014_000000391895.jpg`` → 391895) when those are unique, else the record's position.
- Visual entailment (:class:`VEDataset`) ``{image, sentence, label}`` (ALBEF / DaVinci ``ve_dataset.py``) or XVNLI's
  ``{Flikr30kID, sentence2, gold_label}`` (CCLM); NLVR (:class:`NLVRDataset`) ``{images: [left, right], sentence,
  label}`` (X²-VLM / CCLM ``nlvr_dataset.py``).

The official MLM captioning trainer tokenises the *raw* caption; ``caption_train`` applies :func:`pre_caption` by
default (lower case, no punctuation, as the official non-MLM captioning and retrieval readers) — pass ``clean=False``
for the raw text.

Differences from the official readers, on purpose: one ``media_root`` instead of per-source roots (put Visual Genome
images under it); the careful horizontal flip (skipped when the question, an answer or the caption contains "left" or
"right") is off by default (``hflip``), and also covers retrieval and captioning, which the official flips blindly; a
video's frames share one flip and one set of random transform parameters (:func:`zoo.data.transforms.transform_frames`);
videos are files read with decord or PyAV (:mod:`zoo.data.video`), not JSON lists of base64 frames, or pre-extracted
clip features (:meth:`_AnnotationDataset.set_video_features`, :mod:`zoo.data.features`: UniVL's input), looked up by
the record's ``feature_id``, ``video_id`` or video file name.

Bad data never makes a silent wrong batch. A malformed record (not an object, a missing key, a wrong type, empty
answers or captions, a question or caption with nothing left after the official clean-up, text that is not valid
Unicode such as a lone surrogate) is found when the files are read; a missing or unreadable image or video by
:meth:`_AnnotationDataset.check_media` (which the training data module's check calls before training) or else when
the item is read. Both raise :class:`DataError` naming the annotation file, the record's position in it and the
problem. With ``on_bad_sample="skip"`` malformed records are left out of the data set, records whose media the check
cannot open too, and media that fail later make ``__getitem__`` return ``None`` (the collators drop it and count it);
every skip is recorded in ``skipped`` as ``(file, index, reason)`` and counted in ``num_skipped`` (in the process that
met it: a ``DataLoader`` worker's skips are reported by the batches' ``num_skipped`` and a warning); the reason's kind
(:func:`problem_kind`, one of :data:`SKIP_REASONS`) is what skips are counted by. Retrieval evaluation cannot skip an
image once the index is built (the text↔image ground truth would shift), so its media errors raise after the check
(the check leaves such records out before the index is used, and rebuilds it).

Records and media may also come from memory instead of files: :class:`Records` in place of the annotation files, and
:meth:`_AnnotationDataset.item_from_media` building an item from a record and its media bytes (the WebDataset shard
reader's path, :mod:`zoo.data.shards`): the same item, transform and text clean-up as reading the files.

Images of every PIL mode are read as the RGB image they show (:func:`zoo.data.transforms.to_rgb`: 16-bit grey scaled
to 8 bits, transparency over white).

Everything is hand-written; :func:`pre_question` and :func:`pre_caption` reproduce the official text clean-up rules.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import sys
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from zoo.data.transforms import build_image_transform, to_rgb, transform_frames
from zoo.registry import DATASETS
from zoo.spec import ConfigError

__all__ = [
    "CaptionEvalDataset",
    "CaptionTrainDataset",
    "DataError",
    "FRAME_ABLATIONS",
    "NLVRDataset",
    "Records",
    "SKIP_REASONS",
    "RetrievalEvalDataset",
    "RetrievalTrainDataset",
    "VEDataset",
    "VE_LABELS",
    "VQADataset",
    "answer_vocabulary",
    "answer_weights",
    "pre_caption",
    "pre_question",
    "problem_kind",
    "read_annotations",
]

_PUNCT = re.compile(r"[,.'!?\"()*#:;~]")
_MULTI_SPACE = re.compile(r"\s{2,}")
_LEFT_RIGHT = ("left", "right")


class DataError(ValueError):
    """A bad annotation file, record or media file; the message names the file, the record and the problem.

    ``DataError(file, index, problem)``; ``DataError(message)`` alone is a ready message (how a ``DataLoader``
    re-raises an error from a worker process, which keeps its type that way).
    """

    def __init__(self, file: str | os.PathLike, index: int | None = None, problem: str | None = None):
        if problem is None:
            self.file, self.index, self.problem = None, index, str(file)
            super().__init__(str(file))
            return
        self.file, self.index, self.problem = str(file), index, problem
        where = f"{self.file}: record {index}" if index is not None else self.file
        super().__init__(f"{where}: {problem}")

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):  # picklable across processes with its parts
        return (DataError, (self.file, self.index, self.problem) if self.file is not None else (self.problem,))


FRAME_ABLATIONS = ("one_frame", "shuffled")  # _AnnotationDataset.set_frame_ablation
#: the kinds of bad sample that ``on_bad_sample="skip"`` counts (:func:`problem_kind`)
SKIP_REASONS = ("not an object", "missing key", "wrong type", "empty text", "invalid text", "bad value",
                "missing media", "unreadable media")


class _Problem(str):
    """The problem of a record or media file (the text of a :class:`DataError`) and its kind, one of
    :data:`SKIP_REASONS`, by which skipped samples are counted."""

    kind: str

    def __new__(cls, text: str, kind: str) -> _Problem:
        obj = super().__new__(cls, text)
        obj.kind = kind
        return obj

    def __reduce__(self):  # picklable (data sets travel to DataLoader workers with their ``skipped`` lists)
        return (_Problem, (str(self), self.kind))


def problem_kind(problem: str) -> str:
    """The kind (:data:`SKIP_REASONS`) of a problem a record check or the media check found; ``"bad value"`` for a
    problem without one."""
    return getattr(problem, "kind", "bad value")


def _text_problem(key: str, value: str) -> _Problem | None:
    """A string that cannot be written as UTF-8: a lone surrogate (JSON ``"\\ud800"`` without its pair), which the
    tokenizers reject."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return _Problem(f"{key!r} is not valid Unicode text: a lone surrogate {value[exc.start]!r} at character "
                        f"{exc.start} (a \\ud800-style escape in the JSON without its pair)", "invalid text")
    return None


# ---------------------------------------------------------------------------------------------------------------------
# text clean-up (official dataset/utils.py rules)
# ---------------------------------------------------------------------------------------------------------------------
def _strip_punctuation(text: str) -> str:
    return _PUNCT.sub(" ", text.lower()).replace("-", " ").replace("/", " ")


def pre_question(question: str, max_words: int) -> str:
    """Official question clean-up: lower case; ``,.'!?"()*#:;~``, ``-`` and ``/`` become spaces; trailing spaces
    removed; cut to ``max_words`` space-separated pieces (runs of spaces are kept and count as empty words)."""
    text = _strip_punctuation(question).rstrip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


def pre_caption(caption: str, max_words: int) -> str:
    """Official caption clean-up: as :func:`pre_question`, plus ``<person>`` → ``person``, runs of two or more white
    space characters → one space, surrounding spaces stripped; ``ValueError`` when nothing is left."""
    text = _strip_punctuation(caption).replace("<person>", "person")
    text = _MULTI_SPACE.sub(" ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    if len(words) > max_words:
        text = " ".join(words[:max_words])
    if not text:
        raise ValueError(f"the caption is empty after clean-up (raw: {caption!r})")
    return text


def _mentions_left_right(texts: Iterable[str]) -> bool:
    return any(word in t for t in texts for word in _LEFT_RIGHT)


# ---------------------------------------------------------------------------------------------------------------------
# answers
# ---------------------------------------------------------------------------------------------------------------------
def answer_weights(answer: str | Sequence[str], dataset: str | None = None) -> tuple[list[str], list[float]]:
    """Distinct answers (first-seen order) and their official weights ``count / number of answers``; a single
    Visual Genome answer (``dataset="vg"``) weighs 0.5."""
    if isinstance(answer, str):
        return [answer], [0.5 if dataset == "vg" else 1.0]
    counts = Counter(answer)
    return list(counts), [c / len(answer) for c in counts.values()]


def answer_vocabulary(answer_list_file: str | os.PathLike | None = None,
                      train_records: Iterable[Mapping[str, Any]] | None = None,
                      top_k: int | None = None) -> list[str]:
    """The answer vocabulary: the answer list file (a JSON list of strings, or ``{answer: index}`` as the official
    ``ans2label`` files, ordered by index), or without one the training answers, most frequent first (ties in
    first-seen order; every annotation counts); ``top_k`` keeps the first ``k``.

    ``train_records`` are annotation records (mappings with ``answer``) or a :class:`VQADataset`.
    """
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be positive, got {top_k}")
    if answer_list_file is not None:
        path = str(answer_list_file)
        data = _load_json(path)
        if isinstance(data, Mapping):
            bad = [k for k, v in data.items() if not isinstance(v, int) or isinstance(v, bool)]
            if bad:
                raise DataError(path, None, f"an answer-to-index mapping needs int values; {bad[0]!r} has "
                                            f"{data[bad[0]]!r}")
            answers = [a for a, _ in sorted(data.items(), key=lambda kv: kv[1])]
        elif isinstance(data, list):
            for i, a in enumerate(data):
                if isinstance(a, Mapping):
                    raise DataError(path, i, "expected an answer string, got an object (data.answer_list is a JSON "
                                             "list of answers or an {answer: index} mapping, not a file of records)")
                if not isinstance(a, str):
                    raise DataError(path, i, f"expected an answer string, got {_type_name(a)}")
                problem = _text_problem("answer", a)
                if problem:
                    raise DataError(path, i, problem)
            answers = list(data)
        else:
            raise DataError(path, None, f"expected a JSON list of answers, got {type(data).__name__}")
        if len(set(answers)) != len(answers):
            dup = next(a for a, c in Counter(answers).items() if c > 1)
            raise DataError(path, None, f"answer {dup!r} appears more than once")
    elif train_records is not None:
        if isinstance(train_records, VQADataset):
            train_records = [rec for _, _, rec in train_records.records]
        counts: Counter[str] = Counter()
        for rec in train_records:
            ans = rec.get("answer") if isinstance(rec, Mapping) else None
            if isinstance(ans, str):
                counts[ans] += 1
            elif isinstance(ans, list):
                counts.update(a for a in ans if isinstance(a, str))
        answers = [a for a, _ in counts.most_common()]
    else:
        raise ValueError("answer_vocabulary needs an answer list file or training records")
    if not answers:
        raise ValueError("the answer vocabulary is empty")
    return answers[:top_k] if top_k is not None else answers


# ---------------------------------------------------------------------------------------------------------------------
# annotation files
# ---------------------------------------------------------------------------------------------------------------------
def _load_json(path: str) -> Any:
    if not os.path.isfile(path):
        raise DataError(path, None, "file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            if path.endswith(".jsonl"):
                out = []
                for n, line in enumerate(fh):
                    if line.strip():
                        try:
                            out.append(json.loads(line))
                        except json.JSONDecodeError as exc:
                            raise DataError(path, None, f"line {n + 1} is not valid JSON ({exc})") from None
                return out
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(path, None, f"not valid JSON ({exc})") from None
    except UnicodeDecodeError as exc:
        raise DataError(path, None, f"not UTF-8 text ({exc})") from None


class Records(list):
    """Records ``(file, index in file, record)`` given to a reader in place of annotation files: a reader built from
    them checks and indexes them as if read from ``files`` (e.g. records read from WebDataset shards)."""

    def __init__(self, records: Iterable[tuple[str, int | None, Any]] = (), files: Sequence[str] = ()):
        super().__init__(records)
        self.files = [os.fspath(f) for f in files]


def read_annotations(ann_files: str | os.PathLike | Sequence[str | os.PathLike]) -> list[tuple[str, int, Any]]:
    """``(file, index in file, record)`` for every record of the files, in order."""
    files = [ann_files] if isinstance(ann_files, (str, os.PathLike)) else list(ann_files)
    if not files:
        raise ValueError("no annotation files given")
    out = []
    for f in files:
        path = os.fspath(f)
        data = _load_json(path)
        if not isinstance(data, list):
            raise DataError(path, None, f"expected a JSON list of records, got {type(data).__name__}")
        out.extend((path, i, rec) for i, rec in enumerate(data))
    return out


def _clean_problem(text: str, max_words: int) -> str | None:
    """Why :func:`pre_caption` cannot clean ``text`` (e.g. nothing left after the clean-up), or None."""
    try:
        pre_caption(text, max_words)
    except ValueError as exc:
        return _Problem(str(exc), "empty text")
    return None


def _check_box(rec: Mapping) -> str | None:
    """A region record's ``bbox`` ``[x, y, w, h]`` in pixels inside an ``image_w`` × ``image_h`` image."""
    for key in ("image_w", "image_h"):
        value = rec.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            return _Problem(f"a record with a 'bbox' needs {key!r} (the image size the box is in), a positive "
                            f"number; got {_type_name(value) if key in rec else 'nothing'}",
                            "missing key" if key not in rec else "bad value")
    box = rec["bbox"]
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                            for v in box)):
        return _Problem(f"'bbox' must be [x, y, w, h] (four numbers), got {_type_name(box)}", "wrong type")
    x, y, w, h = box
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > rec["image_w"] or y + h > rec["image_h"]:
        return f"'bbox' {box} is not a box inside the {rec['image_w']}×{rec['image_h']} image"
    return None


def _type_name(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


def _missing(key: str) -> _Problem:
    return _Problem(f"missing key {key!r}", "missing key")


def _check_str(rec: Mapping, key: str) -> str | None:
    if key not in rec:
        return _missing(key)
    if not isinstance(rec[key], str):
        return _Problem(f"{key!r} must be a string, got {_type_name(rec[key])}", "wrong type")
    if not rec[key].strip():
        return _Problem(f"{key!r} is empty", "empty text")
    return _text_problem(key, rec[key])


def _check_transcript(rec: Mapping) -> str | None:
    """An optional ``transcript`` (a video's speech as text, UniVL's caption input): a string, which may be empty."""
    if "transcript" not in rec or isinstance(rec["transcript"], str):
        return None
    return _Problem(f"'transcript' must be a string, got {_type_name(rec['transcript'])}", "wrong type")


def _check_id(rec: Mapping, key: str) -> str | None:
    if key not in rec:
        return _missing(key)
    value = rec[key]
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return _Problem(f"{key!r} must be an int or a string, got {_type_name(value)}", "wrong type")
    return None


def _check_str_list(rec: Mapping, key: str, allow_empty: bool, allow_str: bool = False) -> str | None:
    if key not in rec:
        return _missing(key)
    value = rec[key]
    if allow_str and isinstance(value, str):
        return _text_problem(key, value) if value.strip() else _Problem(f"{key!r} is empty", "empty text")
    if not isinstance(value, list):
        kind = "a string or a list of strings" if allow_str else "a list of strings"
        return _Problem(f"{key!r} must be {kind}, got {_type_name(value)}", "wrong type")
    if not value and not allow_empty:
        return _Problem(f"{key!r} is an empty list", "empty text")
    for j, item in enumerate(value):
        if not isinstance(item, str):
            return _Problem(f"{key}[{j}] must be a string, got {_type_name(item)}", "wrong type")
        problem = _text_problem(f"{key}[{j}]", item)
        if problem:
            return problem
    return None


# ---------------------------------------------------------------------------------------------------------------------
# base class
# ---------------------------------------------------------------------------------------------------------------------
class _AnnotationDataset(Dataset):
    """Records of annotation files + media loading + bad-data policy; subclasses check records and build items."""

    _skip_media_errors = True  # retrieval evaluation cannot skip images

    def __init__(
        self,
        ann_files: str | list[str],
        media_root: str | None = None,
        image_size: int = 384,
        train: bool = True,
        video: bool | None = None,
        num_frames: int = 3,
        video_backend: Literal["decord", "av"] = "decord",
        on_bad_sample: Literal["error", "skip"] = "error",
        hflip: bool = False,
        randaugment: bool = True,
        transform: Any = None,
    ):
        if on_bad_sample not in ("error", "skip"):
            raise ConfigError(f"on_bad_sample={on_bad_sample!r}: expected 'error' or 'skip'")
        if video_backend not in ("decord", "av"):
            raise ConfigError(f"video_backend={video_backend!r}: expected 'decord' or 'av'")
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ConfigError(f"num_frames must be a positive int, got {num_frames!r}")
        if isinstance(ann_files, Records):  # records already read (from shards): checked and indexed as from files
            self.ann_files, raw = list(ann_files.files), list(ann_files)
        else:
            self.ann_files = [os.fspath(f) for f in ([ann_files] if isinstance(ann_files, (str, os.PathLike))
                                                     else ann_files)]
            raw = read_annotations(self.ann_files)
        self.media_root = os.fspath(media_root) if media_root is not None else None
        self.image_size, self.train = image_size, bool(train)
        self.num_frames, self.video_backend, self.on_bad_sample = num_frames, video_backend, on_bad_sample
        self.hflip = bool(hflip)
        if video is None:
            first = next((r for _, _, r in raw if isinstance(r, Mapping)), {})
            video = "video" in first and "image" not in first
        self.video = bool(video)
        self.skipped: list[tuple[str, int, str]] = []
        self.records: list[tuple[str, int, dict]] = []
        for file, idx, rec in raw:
            reason = self._check_record(rec) if isinstance(rec, Mapping) else \
                _Problem(f"expected a JSON object, got {_type_name(rec)}", "not an object")
            if reason is None:
                self.records.append((file, idx, rec))
            elif on_bad_sample == "skip":
                self.skipped.append((file, idx, reason))
            else:
                raise DataError(file, idx, reason)
        self.num_malformed = len(self.skipped)
        self.num_bad_media = 0  # records left out by check_media (on_bad_sample="skip")
        self._after_load()
        self.transform = transform if transform is not None else build_image_transform(
            image_size, self.train, randaugment=randaugment)
        self._image_cache: dict[str, Any] | None = None

    def cache_images(self, enable: bool = True) -> None:
        """Keep images in memory after their first read (for small data sets read many times, as the embedded one).

        With a deterministic transform (evaluation; training without crop, flip or augmentation — see
        :func:`zoo.data.transforms.build_image_transform`) the transformed tensor is kept, otherwise the decoded image
        and the random transform runs on each read. A video is kept as every one of its decoded frames
        (:func:`zoo.data.video.read_video_clip`; about ``frames × H × W × 3`` bytes per clip: for short, small
        clips), from which each read samples its frames as from the file (the same frames for the same random
        state). Each loader worker process holds its own cache.
        """
        self._image_cache = {} if enable else None

    #: see :meth:`set_frame_ablation`
    frame_ablation: str | None = None
    #: the data check's shortest acceptable video, in frames (``data.min_frames``; a shorter one is a bad sample: a
    #: DataError naming the file and record, or with ``on_bad_sample="skip"`` a counted "unreadable media" skip).
    #: The default 1 refuses only empty videos: a clip with fewer frames than ``num_frames`` is otherwise sampled with
    #: repeated frames, the official rule (:func:`zoo.data.video.sample_frame_indices`).
    min_frames: int = 1

    def set_frame_ablation(self, ablation: str | None) -> None:
        """Take the order or the number of a video's frames away, to measure what a model gets from time:

        - ``"one_frame"``: one of the sampled frames, repeated ``num_frames`` times (training: a uniformly random one
          of them; evaluation: the middle one, ``frames[T // 2]``) — what a single-image model sees;
        - ``"shuffled"``: the sampled frames in a random order (training: from torch's generator, as the other
          augmentations; evaluation: a permutation drawn from a generator seeded with the item's index, so every
          evaluation of the set sees the same orders);
        - None: the frames as sampled, in time order.

        Blank frames are ``data.blank_images`` (the transform). Images are left as they are."""
        if ablation not in (None, *FRAME_ABLATIONS):
            raise ValueError(f"frame_ablation={ablation!r}: expected one of {', '.join(FRAME_ABLATIONS)} or None")
        self.frame_ablation = ablation

    #: see :meth:`set_video_features`
    video_features: Any = None

    def set_video_features(self, features: Any) -> None:
        """Read each video record's pre-extracted features (a :class:`zoo.data.features.VideoFeatures`) instead of
        decoding its file: the item's ``image`` is then a ``(max_frames, D)`` float32 tensor whose rows after the
        video's own are zeros (padding), and the data check looks each record's id up in the features instead of
        opening its video. The frame ablations act on the real rows; flips and augmentation do not apply. None: decode
        frames again."""
        if features is not None and not self.video:
            raise ValueError("video features replace the frames of videos, but these records name images")
        self.video_features = features

    def _ablate_frames(self, i: int, frames: Tensor) -> Tensor:
        t = frames.shape[0]
        if self.frame_ablation == "one_frame":
            k = int(torch.randint(t, ())) if self.train else t // 2
            return frames[k:k + 1].expand_as(frames).clone()
        if self.frame_ablation == "shuffled":
            generator = None if self.train else torch.Generator().manual_seed(i)
            return frames[torch.randperm(t, generator=generator)]
        return frames

    # -- the data check ------------------------------------------------------------------------------------------
    def media_files(self, rec: Mapping) -> list[str]:
        """The media files a (checked) record names, as they are opened."""
        return [self.media_path(rec)]

    def check_media(self, progress: bool | None = None, desc: str | None = None,
                    seen: dict[str, str | None] | None = None) -> int:
        """Open every media file the records name before any is read for a batch: an image's header and chunks
        (``Image.open`` + ``verify()``, no decoding), a video's container (its video stream, or decord's frame
        count). A missing or unreadable file raises :class:`DataError` naming the annotation file, the record and the
        media file (the first such record in file order); with ``on_bad_sample="skip"`` the records naming one are
        left out (also from retrieval evaluation: the text index is rebuilt before anything used it), recorded in
        ``skipped`` and counted in ``num_bad_media``.

        ``progress``: a tqdm bar on stderr (None: when more than 2,000 distinct files are opened and stderr is a
        terminal); ``seen``: results
        by path shared between data sets (a file named by several records or splits is opened once). Returns the
        number of distinct media files this call opened. With :meth:`set_video_features` each record's features are
        looked up instead (:meth:`zoo.data.features.VideoFeatures.problem`: the id is there, a 2-D array of the
        file's row width, a clip with rows), one check per distinct id and clip."""
        seen = {} if seen is None else seen
        feats = self.video_features
        files = self.media_files if feats is None else (lambda rec: [feats.check_key(rec)])
        todo: dict[str, Mapping] = {}  # what to open (a file, or an id in the video features) → a record naming it
        for _, _, rec in self.records:
            for p in files(rec):
                if p not in seen:
                    todo.setdefault(p, rec)
        probe = (lambda p: feats.problem(todo[p])) if feats is not None else \
            self._probe_video if self.video else _probe_image
        if todo:
            from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

            from tqdm.auto import tqdm  # noqa: PLC0415

            # a bar on a terminal only: in a log file its redraws are one long line (the data check line follows)
            show = (len(todo) > 2000 and sys.stderr.isatty()) if progress is None else bool(progress)
            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool, \
                    tqdm(total=len(todo), desc=desc or "checking media", unit="file", disable=not show,
                         leave=False) as bar:
                for path, problem in zip(todo, pool.map(probe, todo)):
                    seen[path] = problem
                    bar.update(1)
        bad: dict[int, str] = {}
        for pos, (file, idx, rec) in enumerate(self.records):
            problem = next((seen[p] for p in files(rec) if seen.get(p)), None)
            if problem is None:
                continue
            if self.on_bad_sample == "error":
                raise DataError(file, idx, problem)
            bad[pos] = problem
        if bad:
            self._leave_out(bad, malformed=False)
        return len(todo)

    def _leave_out(self, bad: Mapping[int, str], malformed: bool) -> None:
        """Drop the records at positions ``bad`` (→ their problem) before anything used the data set: recorded in
        ``skipped`` (before any skip met when reading items) and counted in ``num_malformed`` or ``num_bad_media``;
        the per-record indexes (``_after_load``) are rebuilt."""
        at = self.num_malformed + self.num_bad_media
        for pos in sorted(bad):
            file, idx, _ = self.records[pos]
            self.skipped.insert(at, (file, idx, bad[pos]))
            at += 1
        self.records = [r for pos, r in enumerate(self.records) if pos not in bad]
        if malformed:
            self.num_malformed += len(bad)
        else:
            self.num_bad_media += len(bad)
        self._after_load()

    def _probe_video(self, path: str) -> str | None:
        from zoo.data.video import VideoReadError, _av_open, _check_file, _decord_reader  # noqa: PLC0415

        try:
            _check_file(path)
        except VideoReadError as exc:
            return _Problem(f"cannot read video: {exc}", "missing media")
        try:
            if self.video_backend == "decord":
                found = len(_decord_reader(path))
            else:
                with _av_open(path) as container:
                    if not container.streams.video:
                        raise VideoReadError(f"{path}: the file holds no video stream")
                    found = 0  # decoded up to min_frames: a container's frame count may be missing or wrong
                    for _ in container.decode(video=0):
                        found += 1
                        if found >= self.min_frames:
                            break
            if found == 0:
                raise VideoReadError(f"{path}: the video has no frames")
            if found < self.min_frames:
                raise VideoReadError(f"{path}: the video is too short: {found} frame(s), fewer than "
                                     f"data.min_frames={self.min_frames}")
        except VideoReadError as exc:
            return _Problem(f"cannot read video: {exc}", "unreadable media")
        except Exception as exc:  # noqa: BLE001 - container libraries raise their own errors
            return _Problem(f"cannot read video: {path}: {exc}", "unreadable media")
        return None

    # -- to override ---------------------------------------------------------------------------------------------
    def _check_record(self, rec: Mapping) -> str | None:
        """The problem of a record (None when it is usable)."""
        return self._check_media(rec)

    def _after_load(self) -> None:
        pass

    def _item(self, i: int, file: str, idx: int, rec: Mapping) -> dict[str, Any]:
        raise NotImplementedError

    # -- common --------------------------------------------------------------------------------------------------
    @property
    def media_key(self) -> str:
        return "video" if self.video else "image"

    def _media_field(self, rec: Mapping) -> str:
        return "video" if self.video and "video" in rec else "image"

    def _check_media(self, rec: Mapping) -> str | None:
        key = self._media_field(rec)
        return _check_str(rec, key) if key in rec else _missing(self.media_key)

    def media_path(self, rec: Mapping) -> str:
        rel = rec[self._media_field(rec)]
        return os.path.join(self.media_root, rel) if self.media_root else rel

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    # -- items from memory (WebDataset shards, zoo.data.shards) --------------------------------------------------------
    #: while :meth:`item_from_media` builds an item: media name → its bytes, read instead of files
    _media: Mapping[str, bytes] | None = None
    #: while :meth:`item_from_media` builds an item: the values that depend on the whole data set (:meth:`item_context`)
    _context: Mapping[str, Any] | None = None

    def item_context(self, i: int) -> dict[str, Any]:
        """The values of record ``i``'s item that depend on the other records (none here; a retrieval or captioning
        pair's dense image index, a captioning evaluation record's ``image_id``): stored beside the record in a shard,
        so that a reader without the other records builds the same item (:meth:`item_from_media`)."""
        return {}

    def with_media_names(self, rec: Mapping, names: Sequence[str]) -> dict:
        """A copy of ``rec`` whose media field(s) name ``names`` instead (one per :meth:`media_files` entry, in its
        order); every other field kept."""
        out = dict(rec)
        out[self._media_field(rec)] = names[0]
        return out

    def item_from_media(self, i: int, rec: Mapping, media: Mapping[str, bytes],
                        context: Mapping[str, Any] | None = None, file: str = "<memory>",
                        idx: int | None = None) -> dict[str, Any]:
        """The item of record ``rec`` at position ``i`` with its media read from ``media`` (the names the record's media
        fields give, as :meth:`media_files` returns them → the files' bytes) instead of files: the same item
        ``__getitem__`` builds for the record read from disk. ``context``: :meth:`item_context` of the record in the
        data set it came from (None: computed from this data set's records). A missing or unreadable medium raises
        :class:`DataError` for ``file`` / ``idx``. Not for concurrent use from several threads."""
        self._media, self._context = media, context
        try:
            return self._item(i, file, idx, rec)
        finally:
            self._media = self._context = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        file, idx, rec = self.records[i]
        try:
            return self._item(i, file, idx, rec)
        except DataError as exc:
            if self.on_bad_sample == "error" or not self._skip_media_errors:
                raise
            self.skipped.append((exc.file, exc.index, exc.problem))
            warnings.warn(f"skipped a bad sample: {exc}", RuntimeWarning, stacklevel=2)
            return None

    def _visual(self, file: str, idx: int, rec: Mapping, texts: Iterable[str] = (), i: int = 0) -> Tensor:
        """The transformed image ``(3, H, W)`` or video ``(T, 3, H, W)``; the careful flip when ``hflip`` is on; a
        video's features ``(max_frames, D)`` with :meth:`set_video_features`."""
        if self.video and self.video_features is not None:
            return self.video_features.read(file, idx, rec, lambda rows: self._ablate_frames(i, rows))
        flip = self.train and self.hflip and float(torch.rand(())) < 0.5 and not _mentions_left_right(texts)
        path = self.media_path(rec)
        if self.video:
            from zoo.data.video import VideoReadError, read_video_clip, read_video_frames  # noqa: PLC0415

            rng = random.Random(int(torch.randint(2**62, ())))
            cache = self._image_cache
            data = self._media_bytes(file, idx, path, "video")
            try:
                clip = None
                if cache is not None:
                    clip = cache.get(path)
                    if clip is None:
                        clip = cache[path] = read_video_clip(path, backend=self.video_backend, data=data)
                frames = read_video_frames(path, self.num_frames, training=self.train, backend=self.video_backend,
                                           rng=rng, clip=clip, data=data)
            except VideoReadError as exc:
                raise DataError(file, idx, f"cannot read video: {exc}") from None
            images = [Image.fromarray(f.numpy()) for f in self._ablate_frames(i, frames)]
            if flip:
                images = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in images]
            return transform_frames(self.transform, images)
        cache = self._image_cache
        image = cache.get(path) if cache is not None else None
        if isinstance(image, Tensor):
            return image.clone()
        if image is None:
            data = self._media_bytes(file, idx, path, "image")
            image = self._read_image(file, idx, path, data)
        keep_tensor = getattr(self.transform, "deterministic", False) and not (self.train and self.hflip)
        if cache is not None and not keep_tensor:
            cache[path] = image
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out = self.transform(image)
        if cache is not None and keep_tensor:
            cache[path] = out.clone()
        return out

    def _media_bytes(self, file: str, idx: int | None, name: str, kind: str) -> bytes | None:
        """The bytes of medium ``name`` while :meth:`item_from_media` runs (None otherwise: read the file)."""
        if self._media is None:
            return None
        data = self._media.get(name)
        if data is None:
            raise DataError(file, idx, _Problem(f"{kind} {name!r} is missing (the sample holds "
                                                f"{', '.join(sorted(self._media)) or 'no media'})", "missing media"))
        return data

    @staticmethod
    def _read_image(file: str, idx: int | None, path: str, data: bytes | None = None) -> Image.Image:
        """The image at ``path`` — or, given ``data``, those bytes of the medium named ``path`` (a shard's member) — as
        8-bit RGB (:func:`zoo.data.transforms.to_rgb`: 16-bit and float images scaled, transparency over white)."""
        if data is None and not os.path.isfile(path):
            raise DataError(file, idx, f"image file not found: {path}")
        try:
            with Image.open(path if data is None else io.BytesIO(data)) as im:
                return to_rgb(im)
        except Exception as exc:  # noqa: BLE001 - PIL raises several error types for corrupt files
            problem = f"cannot read image {path}: {exc}"
            raise DataError(file, idx, problem if data is None else _Problem(problem, "unreadable media")) from None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} records from {len(self.ann_files)} file(s), "
                f"{'video' if self.video else 'image'}, train={self.train}, skipped={self.num_skipped})")


_COMMON_DOC = """
    Args:
        ann_files: one annotation file or a list (records concatenated in order).
        media_root: folder the media paths are relative to (None: paths used as written).
        image_size: output side of the official transform (ignored with ``transform``).
        train: training transform, frame sampling and text limits, or evaluation ones.
        video: records name videos (``video`` key); None = detect from the first record.
        num_frames: frames sampled per video (segment rule of :mod:`zoo.data.video`).
        video_backend: ``"decord"`` or ``"av"``.
        on_bad_sample: ``"error"`` raises :class:`DataError`; ``"skip"`` drops and counts (see the module docstring).
        hflip: careful horizontal flip in training (off by default).
        randaugment: the official ``RandomAugment(2, 7)`` in training.
        transform: a PIL → tensor callable replacing the official transform.
"""


# ---------------------------------------------------------------------------------------------------------------------
# VQA
# ---------------------------------------------------------------------------------------------------------------------
@DATASETS.register("vqa")
class VQADataset(_AnnotationDataset):
    __doc__ = ("""VQA / video QA records → ``{image, question, answers, weights, question_id, all_answers,
    question_type}``.

    ``answers`` are the distinct answers, ``weights`` their official weights (:func:`answer_weights`),
    ``all_answers`` the raw annotation list (for VQA accuracy; ``[]`` for a record without answers, allowed in
    evaluation only); ``question_type`` the record's optional ``question_type`` string (None without: evaluation
    reports the accuracy of each type present). ``max_words`` defaults to the official 30 (training) / 50
    (evaluation).
    """ + _COMMON_DOC)

    def __init__(
        self,
        ann_files: str | list[str],
        media_root: str | None = None,
        image_size: int = 384,
        train: bool = True,
        video: bool | None = None,
        num_frames: int = 3,
        video_backend: Literal["decord", "av"] = "decord",
        on_bad_sample: Literal["error", "skip"] = "error",
        hflip: bool = False,
        randaugment: bool = True,
        transform: Any = None,
        max_words: int | None = None,
    ):
        self.max_words = max_words if max_words is not None else (30 if train else 50)
        super().__init__(ann_files, media_root, image_size, train, video, num_frames, video_backend, on_bad_sample,
                         hflip, randaugment, transform)

    def _check_record(self, rec: Mapping) -> str | None:
        problem = _check_str(rec, "question") or self._check_media(rec)
        if problem:
            return problem
        if not pre_question(rec["question"], self.max_words).strip():  # what the model would read: nothing
            return _Problem(f"'question' is empty after clean-up (raw: {rec['question']!r})", "empty text")
        if "answer" in rec:
            problem = _check_str_list(rec, "answer", allow_empty=False, allow_str=True)
            if problem:
                return problem
        elif self.train:
            return _Problem("missing key 'answer' (training records need answers)", "missing key")
        if "question_id" in rec or not self.train:
            problem = _check_id(rec, "question_id")
        for key in ("dataset", "question_type"):
            if problem is None and key in rec and not isinstance(rec[key], str):
                problem = _Problem(f"'{key}' must be a string, got {_type_name(rec[key])}", "wrong type")
        return problem

    def _item(self, i: int, file: str, idx: int, rec: Mapping) -> dict[str, Any]:
        raw = rec.get("answer")
        all_answers = [] if raw is None else ([raw] if isinstance(raw, str) else list(raw))
        answers, weights = answer_weights(raw, rec.get("dataset")) if raw is not None else ([], [])
        image = self._visual(file, idx, rec, [rec["question"], *all_answers], i=i)
        return {"image": image, "question": pre_question(rec["question"], self.max_words), "answers": answers,
                "weights": weights, "question_id": rec.get("question_id", i), "all_answers": all_answers,
                "question_type": rec.get("question_type")}


# ---------------------------------------------------------------------------------------------------------------------
# visual entailment and two-image reasoning (sentence + label)
# ---------------------------------------------------------------------------------------------------------------------
VE_LABELS = ("contradiction", "neutral", "entailment")  # the label names a VE record may hold
_VE_KEYS = (("image", "sentence", "label"), ("Flikr30kID", "sentence2", "gold_label"))  # SNLI-VE / XVNLI layouts
_NLVR_LABELS = {True: 1, "True": 1, "true": 1, False: 0, "False": 0, "false": 0}


@DATASETS.register("ve")
class VEDataset(_AnnotationDataset):
    __doc__ = ("""Visual entailment records → ``{image, sentence, label, index}`` (``label`` a name of
    :data:`VE_LABELS`; the class index is the model's business: DaVinci and CCLM order the classes differently).

    Layouts: SNLI-VE as ALBEF / DaVinci read it (``dataset/ve_dataset.py``): ``{image, sentence, label}``, where an
    ``image`` without a file extension is a Flickr30k id and ``.jpg`` is appended, as the official reader does; XVNLI as
    CCLM reads it (``xvnli_dataset.py``, one record a line): ``{Flikr30kID, sentence2, gold_label}``. A label outside
    the three (SNLI's ``"-"``: no annotator majority) makes the record malformed; the official XVNLI reader drops
    those silently, here ``on_bad_sample="skip"`` drops and counts them. The hypothesis goes through
    :func:`pre_caption` with ``max_words`` (official 30; CCLM's XVNLI uses 80). Images only: ``video`` is accepted
    with the common signature and ignored.
    """ + _COMMON_DOC)

    def __init__(
        self,
        ann_files: str | list[str],
        media_root: str | None = None,
        image_size: int = 384,
        train: bool = True,
        video: bool | None = False,
        num_frames: int = 3,
        video_backend: Literal["decord", "av"] = "decord",
        on_bad_sample: Literal["error", "skip"] = "error",
        hflip: bool = False,
        randaugment: bool = True,
        transform: Any = None,
        max_words: int = 30,
    ):
        self.max_words = max_words
        super().__init__(ann_files, media_root, image_size, train, False, num_frames, video_backend, on_bad_sample,
                         hflip, randaugment, transform)

    @staticmethod
    def _keys(rec: Mapping) -> tuple[str, str, str]:
        return _VE_KEYS[1] if "Flikr30kID" in rec and "image" not in rec else _VE_KEYS[0]

    def _check_record(self, rec: Mapping) -> str | None:
        image, sentence, label = self._keys(rec)
        problem = _check_str(rec, image) or _check_str(rec, sentence) or _check_str(rec, label)
        if problem is None and rec[label] not in VE_LABELS:
            problem = _Problem(f"{label!r} is {rec[label]!r}; expected one of {', '.join(VE_LABELS)}", "bad value")
        return problem or _clean_problem(rec[sentence], self.max_words)

    def with_media_names(self, rec: Mapping, names: Sequence[str]) -> dict:
        out = dict(rec)
        out[self._keys(rec)[0]] = names[0]
        return out

    def media_path(self, rec: Mapping) -> str:
        rel = rec[self._keys(rec)[0]]
        rel = rel if os.path.splitext(rel)[1] else f"{rel}.jpg"  # official SNLI-VE / XVNLI: a Flickr30k id
        return os.path.join(self.media_root, rel) if self.media_root else rel

    def _item(self, i: int, file: str, idx: int, rec: Mapping) -> dict[str, Any]:
        _, sentence, label = self._keys(rec)
        return {"image": self._visual(file, idx, rec, [rec[sentence]]),
                "sentence": pre_caption(rec[sentence], self.max_words), "label": rec[label], "index": i}


@DATASETS.register("nlvr")
class NLVRDataset(_AnnotationDataset):
    __doc__ = ("""NLVR2 / MaRVL records ``{images: [left, right], sentence, label}`` (X²-VLM / CCLM
    ``dataset/nlvr_dataset.py``; ``label`` ``true`` / ``false`` or the strings ``"True"`` / ``"False"``) → items
    ``{image_a, image_b, sentence, label, index}`` with ``label`` 1 for true. The sentence goes through
    :func:`pre_caption` with ``max_words`` (official 30). The careful flip (``hflip``) never applies: the sentences
    talk about the left and right image. Images only: ``video`` is accepted with the common signature and ignored.
    """ + _COMMON_DOC)

    def __init__(
        self,
        ann_files: str | list[str],
        media_root: str | None = None,
        image_size: int = 384,
        train: bool = True,
        video: bool | None = False,
        num_frames: int = 3,
        video_backend: Literal["decord", "av"] = "decord",
        on_bad_sample: Literal["error", "skip"] = "error",
        hflip: bool = False,
        randaugment: bool = True,
        transform: Any = None,
        max_words: int = 30,
    ):
        self.max_words = max_words
        super().__init__(ann_files, media_root, image_size, train, False, num_frames, video_backend, on_bad_sample,
                         False, randaugment, transform)

    def _check_record(self, rec: Mapping) -> str | None:
        problem = _check_str_list(rec, "images", allow_empty=False) or _check_str(rec, "sentence")
        if problem is None and len(rec["images"]) != 2:
            problem = _Problem(f"'images' must name two images, got {len(rec['images'])}", "bad value")
        label = rec.get("label")
        if problem is None and not (isinstance(label, (bool, str)) and label in _NLVR_LABELS):
            problem = (_missing("label") if "label" not in rec else
                       _Problem(f"'label' is {_type_name(label)}; expected true / false or \"True\" / \"False\"",
                                "bad value"))
        return problem or _clean_problem(rec["sentence"], self.max_words)

    def media_files(self, rec: Mapping) -> list[str]:
        return [self.media_path({"image": path}) for path in rec["images"]]

    def with_media_names(self, rec: Mapping, names: Sequence[str]) -> dict:
        return {**rec, "images": list(names)}

    def _item(self, i: int, file: str, idx: int, rec: Mapping) -> dict[str, Any]:
        a, b = (self._visual(file, idx, {"image": path}, [rec["sentence"]]) for path in rec["images"])
        return {"image_a": a, "image_b": b, "sentence": pre_caption(rec["sentence"], self.max_words),
                "label": _NLVR_LABELS[rec["label"]], "index": i}


# ---------------------------------------------------------------------------------------------------------------------
# image/video–text pairs (retrieval and captioning training)
# ---------------------------------------------------------------------------------------------------------------------
class _PairDataset(_AnnotationDataset):
    def __init__(self, *args: Any, max_words: int, clean: bool = True, **kwargs: Any):
        self.max_words, self.clean = max_words, clean
        super().__init__(*args, **kwargs)

    def _id_key(self, rec: Mapping) -> str:
        return "video_id" if self.video and "video_id" in rec and "image_id" not in rec else "image_id"

    def _check_record(self, rec: Mapping) -> str | None:
        problem = self._check_media(rec) or _check_str(rec, "caption") or _check_id(rec, self._id_key(rec)) \
            or _check_transcript(rec)
        if problem is None and "bbox" in rec:
            problem = _check_box(rec)
        if problem is None and self.clean:
            problem = _clean_problem(rec["caption"], self.max_words)
        return problem

    def _after_load(self) -> None:
        self.img_ids: dict[Any, int] = {}
        for _, _, rec in self.records:
            self.img_ids.setdefault(rec[self._id_key(rec)], len(self.img_ids))

    @property
    def num_images(self) -> int:
        return len(self.img_ids)

    def item_context(self, i: int) -> dict[str, Any]:
        rec = self.records[i][2]
        return {"image_index": self.img_ids[rec[self._id_key(rec)]]}

    def _item(self, i: int, file: str, idx: int, rec: Mapping) -> dict[str, Any]:
        image = self._visual(file, idx, rec, [rec["caption"]], i=i)
        caption = pre_caption(rec["caption"], self.max_words) if self.clean else rec["caption"]
        context = self._context
        image_id = context["image_index"] if context is not None and "image_index" in context else \
            self.img_ids[rec[self._id_key(rec)]]
        item = {"image": image, "caption": caption, "image_id": image_id}
        if "transcript" in rec:
            item["transcript"] = rec["transcript"]
        if "bbox" in rec:  # a region phrase: its box, normalised (cx, cy, w, h) as the box head predicts
            x, y, w, h = (float(v) for v in rec["bbox"])
            iw, ih = float(rec["image_w"]), float(rec["image_h"])
            item["bbox"] = [(x + w / 2) / iw, (y + h / 2) / ih, w / iw, h / ih]
        return item


_PAIR_DOC = """
    Items ``{image, caption, image_id}``: ``caption`` through :func:`pre_caption` (``max_words``) unless
    ``clean=False``; ``image_id`` the dense index of the record's ``image_id`` (``video_id``) in first-seen order.
    A record's optional ``transcript`` (a string: the clip's speech, which UniVL's captioner reads beside the video;
    :mod:`zoo.data.video_annotations` takes it from the YouCookII pickle) is passed on as it is.
    A region record (X²-VLM's region data: a phrase with ``bbox`` ``[x, y, w, h]`` in pixels of an ``image_w`` ×
    ``image_h`` image) adds ``bbox``, normalised ``(cx, cy, w, h)``: the box head's target.
"""


@DATASETS.register("retrieval_train")
class RetrievalTrainDataset(_PairDataset):
    __doc__ = "Image/video–text retrieval training pairs." + _PAIR_DOC + _COMMON_DOC

    def __init__(
        self,
        ann_files: str | list[str],
        media_root: str | None = None,
        image_size: int = 384,
        train: bool = True,
        video: bool | None = None,
        num_frames: int = 3,
        video_backend: Literal["decord", "av"] = "decord",
        on_bad_sample: Literal["error", "skip"] = "error",
        hflip: bool = False,
        randaugment: bool = True,
        transform: Any = None,
        max_words: int = 30,
        clean: bool = True,
    ):
        super().__init__(ann_files, media_root, image_size, train, video, num_frames, video_backend, on_bad_sample,
                         hflip, randaugment, transform, max_words=max_words, clean=clean)


@DATASETS.register("caption_train")
class CaptionTrainDataset(_PairDataset):
    __doc__ = "Captioning (Karpathy) training pairs." + _PAIR_DOC + _COMMON_DOC

    def __init__(
        self,
        ann_files: str | list[str],
        media_root: str | None = None,
        image_size: int = 384,
        train: bool = True,
        video: bool | None = None,
        num_frames: int = 3,
        video_backend: Literal["decord", "av"] = "decord",
        on_bad_sample: Literal["error", "skip"] = "error",
        hflip: bool = False,
        randaugment: bool = True,
        transform: Any = None,
        max_words: int = 40,
        clean: bool = True,
    ):
        super().__init__(ann_files, media_root, image_size, train, video, num_frames, video_backend, on_bad_sample,
                         hflip, randaugment, transform, max_words=max_words, clean=clean)


# ---------------------------------------------------------------------------------------------------------------------
# evaluation sets
# ---------------------------------------------------------------------------------------------------------------------
@DATASETS.register("retrieval_eval")
class RetrievalEvalDataset(_AnnotationDataset):
    __doc__ = ("""Retrieval evaluation: images (or videos) with several captions each.

    Attributes ``texts`` (every caption, :func:`pre_caption`, in record order), ``img2txt`` (per image, the indices of
    its texts), ``txt2img`` (per text, its image); items ``{image, index}``. Media errors always raise (see the
    module docstring); malformed records may be skipped before the index is built.
    """ + _COMMON_DOC)

    _skip_media_errors = False

    def __init__(
        self,
        ann_files: str | list[str],
        media_root: str | None = None,
        image_size: int = 384,
        train: bool = False,
        video: bool | None = None,
        num_frames: int = 3,
        video_backend: Literal["decord", "av"] = "decord",
        on_bad_sample: Literal["error", "skip"] = "error",
        hflip: bool = False,
        randaugment: bool = True,
        transform: Any = None,
        max_words: int = 30,
    ):
        self.max_words = max_words
        super().__init__(ann_files, media_root, image_size, train, video, num_frames, video_backend, on_bad_sample,
                         hflip, randaugment, transform)

    def _check_record(self, rec: Mapping) -> str | None:
        problem = self._check_media(rec) or _check_str_list(rec, "caption", allow_empty=True)
        if problem is None:
            for j, cap in enumerate(rec["caption"]):
                cap_problem = _clean_problem(cap, self.max_words)
                if cap_problem:
                    return _Problem(f"caption[{j}]: {cap_problem}", problem_kind(cap_problem))
        return problem

    def _after_load(self) -> None:
        self.texts: list[str] = []
        self.img2txt: list[list[int]] = []
        self.txt2img: list[int] = []
        for img, (_, _, rec) in enumerate(self.records):
            ids = []
            for cap in rec["caption"]:
                ids.append(len(self.texts))
                self.texts.append(pre_caption(cap, self.max_words))
                self.txt2img.append(img)
            self.img2txt.append(ids)

    def _item(self, i: int, file: str, idx: int, rec: Mapping) -> dict[str, Any]:
        return {"image": self._visual(file, idx, rec, rec["caption"], i=i), "index": i}


@DATASETS.register("caption_eval")
class CaptionEvalDataset(_AnnotationDataset):
    __doc__ = ("""Captioning evaluation: items ``{image, image_id, captions}`` with the raw reference captions.

    ``caption`` may be a list or one string (``[]`` when absent: generation without references); ``image_id`` as the
    module docstring says; an optional ``transcript`` string is passed on as the training pairs pass it.
    """ + _COMMON_DOC)

    def __init__(
        self,
        ann_files: str | list[str],
        media_root: str | None = None,
        image_size: int = 384,
        train: bool = False,
        video: bool | None = None,
        num_frames: int = 3,
        video_backend: Literal["decord", "av"] = "decord",
        on_bad_sample: Literal["error", "skip"] = "error",
        hflip: bool = False,
        randaugment: bool = True,
        transform: Any = None,
    ):
        super().__init__(ann_files, media_root, image_size, train, video, num_frames, video_backend, on_bad_sample,
                         hflip, randaugment, transform)

    def _check_record(self, rec: Mapping) -> str | None:
        problem = self._check_media(rec)
        if problem is None and "caption" in rec:
            problem = _check_str_list(rec, "caption", allow_empty=True, allow_str=True)
        if problem is None and "image_id" in rec:
            problem = _check_id(rec, "image_id")
        return problem or _check_transcript(rec)

    def _after_load(self) -> None:
        recs = [rec for _, _, rec in self.records]
        if recs and all("image_id" in r for r in recs):
            ids = [r["image_id"] for r in recs]
        else:
            ids = [_id_from_file_name(r[self._media_field(r)]) for r in recs]
            if None in ids or len(set(ids)) != len(ids):
                ids = list(range(len(recs)))
        self.image_ids: list[Any] = ids

    def item_context(self, i: int) -> dict[str, Any]:
        return {"image_id": self.image_ids[i]}

    def _item(self, i: int, file: str, idx: int, rec: Mapping) -> dict[str, Any]:
        caps = rec.get("caption", [])
        caps = [caps] if isinstance(caps, str) else list(caps)
        context = self._context
        image_id = context["image_id"] if context is not None and "image_id" in context else self.image_ids[i]
        item = {"image": self._visual(file, idx, rec, caps, i=i), "image_id": image_id, "captions": caps}
        if "transcript" in rec:
            item["transcript"] = rec["transcript"]
        return item


def _probe_image(path: str) -> str | None:
    """Why the image at ``path`` cannot be read (missing, not an image, truncated or corrupt chunks), or None; reads
    the header and (``verify()``) the file's structure without decoding the pixels."""
    if not os.path.isfile(path):
        return _Problem(f"image file not found: {path}", "missing media")
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as exc:  # noqa: BLE001 - PIL raises several error types for corrupt files
        return _Problem(f"cannot read image {path}: {exc}", "unreadable media")
    return None


def _id_from_file_name(path: str) -> int | None:
    last = Path(path).stem.split("_")[-1]
    return int(last) if last.isdigit() else None
