"""The official MSRVTT and YouCookII annotations of UniVL (microsoft/UniVL) → the framework's record layout
(``mmzoo data convert msrvtt|youcook``), to be read with ``data.video_features`` (:mod:`zoo.data.features`).

Layouts written (the readers of :mod:`zoo.data.datasets`): training ``[{video, caption, video_id}]`` (retrieval and
captioning training), evaluation ``[{video, caption: [...], video_id}]`` (retrieval and captioning evaluation). The
``video`` of a record is its video's name (MSRVTT ``video123.mp4``, the official file; YouCookII the YouTube id: its
files' folders and extensions vary), which the features replace.

MSRVTT (UniVL ``dataloader_msrvtt_retrieval.py``, ``dataloader_msrvtt_caption.py``): ``MSRVTT_data.json`` holds
``videos`` (``{video_id, ...}``, 10,000) and ``sentences`` (``{video_id, caption}``, 20 a video). The split is:

- a csv of video ids (column ``video_id``): retrieval training ``MSRVTT_train.9k.csv`` (or ``train.7k``) → one
  training record per sentence of those videos, in ``sentences`` order (``--expand_msrvtt_sentences``, the README's
  fine-tuning command); ``MSRVTT_JSFUSION_test.csv`` (columns ``key, vid_key, video_id, sentence``) → one evaluation
  record per row with its one sentence (1,000: the 1k-A test);
- without a csv, the official captioning split by position in ``videos``: the first 6,513 train, the next 497 val, the
  other 2,990 test; training records per sentence, evaluation records per video with all its sentences as references.

YouCookII (``dataloader_youcook_retrieval.py``, ``dataloader_youcook_caption.py``): the pickle ``youcookii_data.pickle``
``{video_id: {start, end, text, transcript}}`` (arrays, one entry per annotated clip; read with the restricted
unpickler of :func:`zoo.data.features.safe_load_pickle`) holds training and validation videos; ``youcookii_train.csv`` /
``youcookii_val.csv`` (``video_id, feature_file``) pick a split's videos and name each one's entry in the features
pickle. Every clip is one example (as the official loaders iterate ``(video, clip)`` pairs): ``video_id``
``"{video}_{clip}"`` (each clip its own example: retrieval training takes records of one ``video_id`` as matching
one another's captions), ``feature_id`` the ``feature_file`` (the video's features), ``start`` / ``end`` seconds (the
clip's rows: ``int(start * rate) : int(end * rate) + 1``), ``caption`` the clip's ``text``, and ``transcript`` (the ASR
text the official captioning model also reads) unless it is the placeholder ``"NONE"``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zoo.data.datasets import DataError

__all__ = ["MSRVTT_CAPTION_SPLIT", "convert_msrvtt", "convert_youcook", "msrvtt_records", "read_csv",
           "youcook_records"]

#: the official MSRVTT captioning split by position in ``MSRVTT_data.json``'s ``videos`` (train, val; test the rest)
MSRVTT_CAPTION_SPLIT = (6513, 497)
SPLITS = ("train", "val", "test")


def read_csv(path: str | os.PathLike, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of the csv file ``path`` (a header line, then rows), which must have ``columns``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(path, None, "file not found")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, None, f"not a readable csv file ({exc})") from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(path, None, f"expected the column(s) {', '.join(missing)} in the header, got "
                                    f"{', '.join(header) or 'no header'}")
    return rows


def _split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {', '.join(SPLITS)}")
    return split


def _msrvtt_json(path: str) -> tuple[list[str], list[tuple[str, str]]]:
    """``(video ids, (video id, sentence) pairs)`` of ``MSRVTT_data.json``, in file order."""
    with open(path, encoding="utf-8") as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise DataError(path, None, f"not valid JSON ({exc})") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("videos"), list) \
            or not isinstance(data.get("sentences"), list):
        raise DataError(path, None, "expected MSRVTT_data.json's layout: {videos: [{video_id, ...}], sentences: "
                                    "[{video_id, caption}]}")
    videos = []
    for i, v in enumerate(data["videos"]):
        if not isinstance(v, Mapping) or not isinstance(v.get("video_id"), str):
            raise DataError(path, None, f"videos[{i}]: expected an object with a string 'video_id'")
        videos.append(v["video_id"])
    pairs = []
    for i, s in enumerate(data["sentences"]):
        if not isinstance(s, Mapping) or not isinstance(s.get("video_id"), str) \
                or not isinstance(s.get("caption"), str):
            raise DataError(path, None, f"sentences[{i}]: expected an object with string 'video_id' and 'caption'")
        pairs.append((s["video_id"], s["caption"]))
    return videos, pairs


def msrvtt_records(data_json: str | os.PathLike | None, csv_file: str | os.PathLike | None = None,
                   split: str = "train") -> list[dict[str, Any]]:
    """The records of one MSRVTT split (see the module docstring): training records for ``split="train"``,
    evaluation records otherwise; the videos of ``csv_file`` (its ``sentence`` column, when it has one, gives each
    evaluation record its one caption, and then ``data_json`` may be None), else the official captioning split."""
    split = _split(split)
    rows = read_csv(csv_file, ["video_id"]) if csv_file is not None else None
    one_sentence = rows is not None and split != "train" and rows and "sentence" in rows[0]
    if one_sentence:
        return [{"video": f"{r['video_id']}.mp4", "caption": [r["sentence"]], "video_id": r["video_id"]} for r in rows]
    if data_json is None:
        raise ValueError("MSRVTT_data.json is needed for the sentences (only a csv with a 'sentence' column holds "
                         "its own)")
    data_json = os.fspath(data_json)
    if not os.path.isfile(data_json):
        raise DataError(data_json, None, "file not found")
    videos, pairs = _msrvtt_json(data_json)
    sentences: dict[str, list[str]] = {}
    for vid, cap in pairs:
        sentences.setdefault(vid, []).append(cap)
    if rows is not None:
        chosen = [r["video_id"] for r in rows]
        for n, vid in enumerate(chosen):
            if vid not in sentences:
                raise DataError(os.fspath(csv_file), n, f"video {vid!r} has no sentences in {data_json}")
    else:
        train, val = MSRVTT_CAPTION_SPLIT
        chosen = {"train": videos[:train], "val": videos[train:train + val], "test": videos[train + val:]}[split]
        for vid in chosen:
            if vid not in sentences:
                raise DataError(data_json, None, f"video {vid!r} has no sentences")
    if split == "train":  # every sentence of the split's videos, in the json's order
        wanted = set(chosen)
        return [{"video": f"{vid}.mp4", "caption": cap, "video_id": vid} for vid, cap in pairs if vid in wanted]
    return [{"video": f"{vid}.mp4", "caption": list(sentences[vid]), "video_id": vid} for vid in chosen]


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def youcook_records(data_pickle: str | os.PathLike, split: str = "train",
                    csv_file: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The records of YouCookII's clips (see the module docstring): training records for ``split="train"``,
    evaluation records otherwise; the videos of ``csv_file`` (``youcookii_train.csv`` / ``youcookii_val.csv``) in its
    order, else every video of the pickle."""
    from zoo.data.features import safe_load_pickle  # noqa: PLC0415

    split = _split(split)
    data_pickle = os.fspath(data_pickle)
    data = safe_load_pickle(data_pickle, what="YouCookII annotations")
    if not isinstance(data, Mapping):
        raise DataError(data_pickle, None, "expected the official layout {video_id: {start, end, text, transcript}}, "
                                           f"got {type(data).__name__}")
    if csv_file is not None:
        rows = read_csv(csv_file, ["video_id"])
        chosen = [(r["video_id"], r.get("feature_file") or r["video_id"]) for r in rows]
        for n, (vid, _) in enumerate(chosen):
            if vid not in data:
                raise DataError(os.fspath(csv_file), n, f"video {vid!r} is not in {data_pickle}")
    else:
        chosen = [(str(vid), str(vid)) for vid in data]
    out = []
    for vid, feature_file in chosen:
        entry = data[vid]
        if not isinstance(entry, Mapping) or any(k not in entry for k in ("start", "end", "text")):
            raise DataError(data_pickle, None, f"video {vid!r}: expected {{start, end, text[, transcript]}}")
        starts, ends, texts = list(entry["start"]), list(entry["end"]), list(entry["text"])
        transcripts = list(entry["transcript"]) if "transcript" in entry else None
        if not (len(starts) == len(ends) == len(texts)) or transcripts is not None and len(transcripts) != len(texts):
            raise DataError(data_pickle, None, f"video {vid!r}: start, end, text (and transcript) differ in length")
        for k, (start, end, text) in enumerate(zip(starts, ends, texts)):
            try:
                start, end = float(start), float(end)
            except (TypeError, ValueError):
                raise DataError(data_pickle, None, f"video {vid!r} clip {k}: start / end {start!r} / {end!r} are not "
                                                   "numbers of seconds") from None
            rec: dict[str, Any] = {"video": vid, "caption": _text(text) if split == "train" else [_text(text)],
                                   "video_id": f"{vid}_{k}", "feature_id": feature_file, "start": start, "end": end}
            if transcripts is not None and _text(transcripts[k]) != "NONE":
                rec["transcript"] = _text(transcripts[k])
            out.append(rec)
    return out


def _write(records: list[dict[str, Any]], path: Path) -> None:
    from zoo.hub import atomic_write  # noqa: PLC0415

    with atomic_write(path, "w") as fh:
        json.dump(records, fh, ensure_ascii=False)
        fh.write("\n")


def convert_msrvtt(data_json: str | os.PathLike, out_dir: str | os.PathLike, *,
                   train_csv: str | os.PathLike | None = None, val_csv: str | os.PathLike | None = None,
                   test_csv: str | os.PathLike | None = None) -> dict[str, int]:
    """Write ``msrvtt_{split}.json`` into ``out_dir`` (each file whole or not at all): the splits whose csv is given
    (retrieval: ``train_csv`` ``MSRVTT_train.9k.csv`` and ``test_csv`` ``MSRVTT_JSFUSION_test.csv``), or with no csv
    all three of the official captioning split. Returns ``{file name: records}``."""
    csvs = {"train": train_csv, "val": val_csv, "test": test_csv}
    splits = [s for s in SPLITS if csvs[s] is not None] or list(SPLITS)
    records = {s: msrvtt_records(data_json, csvs[s], s) for s in splits}  # all read before anything is written
    return _write_all(records, "msrvtt", out_dir)


def convert_youcook(data_pickle: str | os.PathLike, out_dir: str | os.PathLike, *,
                    train_csv: str | os.PathLike | None = None,
                    val_csv: str | os.PathLike | None = None) -> dict[str, int]:
    """Write ``youcook_train.json`` / ``youcook_val.json`` into ``out_dir`` for the splits whose csv is given
    (``youcookii_train.csv``, ``youcookii_val.csv``: the pickle holds both splits). Returns ``{file name: records}``."""
    csvs = {"train": train_csv, "val": val_csv}
    if not any(csvs.values()):
        raise ValueError("give the csv of a split (youcookii_train.csv and / or youcookii_val.csv): the pickle holds "
                         "the videos of both")
    records = {s: youcook_records(data_pickle, s, f) for s, f in csvs.items() if f is not None}
    return _write_all(records, "youcook", out_dir)


def _write_all(records: Mapping[str, list[dict[str, Any]]], prefix: str, out_dir: str | os.PathLike) -> dict[str, int]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, recs in records.items():
        _write(recs, out / f"{prefix}_{split}.json")
        written[f"{prefix}_{split}.json"] = len(recs)
    return written
