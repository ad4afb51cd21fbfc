"""Bad data is found before training starts: every record of every split and every media file is checked by
``TaskDataModule.check`` (called by ``mmzoo train`` before the data tokenizer and the run folder), each fault is a
``DataError`` naming the annotation file and the record, or with ``on_bad_sample: skip`` a counted skip; images of
every PIL mode become the RGB image they show."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from conftest import task_config

from zoo.data.datasets import SKIP_REASONS, DataError, VQADataset
from zoo.data.transforms import to_rgb
from zoo.spec import ConfigError
from zoo.train.data import TaskDataModule, resolve_data_tokenizer

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 20)}


def _q(i: int, colour: str) -> dict:
    return {"question_id": i, "question": "what colour is the square?", "answer": [colour] * 3,
            "image": f"images/{colour}.png", "dataset": "vqa"}


def _write(path: Path, obj) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return str(path)


def _png_bytes(colour=(200, 10, 10), size=16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture()
def root(tmp_path) -> Path:
    """Four colour squares, a corrupt, a truncated and an empty 'image', and good train / val / test files."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    for name, rgb in COLOURS.items():
        (root / "images" / f"{name}.png").write_bytes(_png_bytes(rgb))
    (root / "images" / "corrupt.png").write_bytes(b"this is not an image")
    (root / "images" / "truncated.png").write_bytes(_png_bytes()[:40])
    (root / "images" / "empty.png").write_bytes(b"")
    (root / "images" / "folder.png").mkdir()
    names = list(COLOURS)
    _write(root / "train.json", [_q(i, names[i % 4]) for i in range(16)])
    _write(root / "val.json", [_q(100 + i, names[i % 4]) for i in range(4)])
    _write(root / "test.json", [_q(200 + i, names[i % 4]) for i in range(4)])
    _write(root / "answers.json", names)
    return root


def _data(root: Path, **extra) -> dict:
    return {"root": str(root), "train": ["train.json"], "val": "val.json", "test": "test.json",
            "answer_list": "answers.json", "batch_size": 4, "eval_batch_size": 4, "randaugment": False,
            "crop_scale": [1.0, 1.0], **extra}


def _plant(root: Path, split: str, record, at: int = 2) -> str:
    """``record`` as record ``at`` of the split's file (the records after it move up by one); the file's path."""
    path = root / f"{split}.json"
    records = json.loads(path.read_text())
    records.insert(at, record)
    return _write(path, records)


# ------------------------------------------------------------------------------------------------ the fault table
GOOD = _q(7, "red")
# (case id, split, bad record, the problem the DataError names, the reason a skip is counted under)
RECORD_FAULTS = [
    # the five that crashed in the data tokenizer before any check ran
    ("answer-int", "train", {**GOOD, "answer": 42}, "'answer' must be a string or a list of strings, got int 42",
     "wrong type"),
    ("answer-list-of-ints", "train", {**GOOD, "answer": [1, 2, 3]}, r"answer\[0\] must be a string, got int 1",
     "wrong type"),
    ("lone-surrogate", "train", {**GOOD, "question": "what colour is \ud800 the square?"},
     "'question' is not valid Unicode text: a lone surrogate '\\\\ud800' at character 15", "invalid text"),
    ("question-of-blanks", "train", {**GOOD, "question": "    "}, "'question' is empty", "empty text"),
    ("question-of-punctuation", "train", {**GOOD, "question": "?!..."},
     r"'question' is empty after clean-up \(raw: '\?!\.\.\.'\)", "empty text"),
    # the rest of the malformed records
    ("not-an-object", "train", ["what", "colour"], "expected a JSON object, got list", "not an object"),
    ("null-record", "val", None, "expected a JSON object, got NoneType None", "not an object"),
    ("no-question", "train", {k: v for k, v in GOOD.items() if k != "question"}, "missing key 'question'",
     "missing key"),
    ("question-int", "test", {**GOOD, "question": 5}, "'question' must be a string, got int 5", "wrong type"),
    ("question-empty", "val", {**GOOD, "question": ""}, "'question' is empty", "empty text"),
    ("no-image", "train", {k: v for k, v in GOOD.items() if k != "image"}, "missing key 'image'", "missing key"),
    ("image-null", "train", {**GOOD, "image": None}, "'image' must be a string, got NoneType None", "wrong type"),
    ("no-answer-in-training", "train", {k: v for k, v in GOOD.items() if k != "answer"},
     r"missing key 'answer' \(training records need answers\)", "missing key"),
    ("answer-empty-list", "train", {**GOOD, "answer": []}, "'answer' is an empty list", "empty text"),
    ("answer-object", "val", {**GOOD, "answer": {"red": 3}}, "'answer' must be a string or a list of strings, got dict",
     "wrong type"),
    ("answer-surrogate", "test", {**GOOD, "answer": ["red", "\udfff"]},
     r"'answer\[1\]' is not valid Unicode text", "invalid text"),
    ("question-id-float", "train", {**GOOD, "question_id": 1.5}, "'question_id' must be an int or a string, got float",
     "wrong type"),
    ("no-question-id-in-evaluation", "test", {k: v for k, v in GOOD.items() if k != "question_id"},
     "missing key 'question_id'", "missing key"),
    ("dataset-int", "train", {**GOOD, "dataset": 5}, "'dataset' must be a string, got int 5", "wrong type"),
]
MEDIA_FAULTS = [
    ("image-missing", "train", "images/nope.png", "image file not found: .*nope.png", "missing media"),
    ("image-is-a-folder", "val", "images/folder.png", "image file not found: .*folder.png", "missing media"),
    ("image-corrupt", "train", "images/corrupt.png", "cannot read image .*corrupt.png", "unreadable media"),
    ("image-truncated", "test", "images/truncated.png", "cannot read image .*truncated.png", "unreadable media"),
    ("image-empty-file", "train", "images/empty.png", "cannot read image .*empty.png", "unreadable media"),
]
FAULTS = RECORD_FAULTS + [(case, split, {**GOOD, "image": image}, problem, reason)
                          for case, split, image, problem, reason in MEDIA_FAULTS]


def test_the_table_uses_the_documented_reasons():
    # "bad value" (a label or box outside what is allowed) has no VQA record: test_a_bad_value_is_counted_as_such
    assert {reason for *_, reason in FAULTS} == set(SKIP_REASONS) - {"bad value"}


def test_a_bad_value_is_counted_as_such(root):
    """SNLI's "-" label (no annotator majority) and an NLVR record naming three images: 'bad value'."""
    ve = [{"image": "images/red.png", "sentence": "a red square", "label": "entailment"},
          {"image": "images/blue.png", "sentence": "a red square", "label": "-"}]
    nlvr = [{"images": ["images/red.png", "images/blue.png"], "sentence": "the left one is red", "label": True},
            {"images": ["images/red.png"] * 3, "sentence": "all are red", "label": True},
            {"images": ["images/red.png", "images/nope.png"], "sentence": "the left one is red", "label": False}]
    _write(root / "ve.json", ve)
    _write(root / "nlvr.json", nlvr)
    with pytest.raises(DataError, match=r"ve.json: record 1: 'label' is '-'; expected one of contradiction, neutral"):
        TaskDataModule("ve", {"root": str(root), "train": "ve.json"}, None, image_size=32).check()
    dm = TaskDataModule("ve", {"root": str(root), "train": "ve.json", "on_bad_sample": "skip"}, None, image_size=32)
    assert dm.check().skipped == {"train": {"bad value": 1}}
    with pytest.raises(DataError, match=r"nlvr.json: record 1: 'images' must name two images, got 3"):
        TaskDataModule("nlvr", {"root": str(root), "train": "nlvr.json"}, None, image_size=32).check()
    dm = TaskDataModule("nlvr", {"root": str(root), "train": "nlvr.json", "on_bad_sample": "skip"}, None,
                        image_size=32)
    report = dm.check()  # both images of a pair are opened: the right one of record 2 is missing
    assert report.skipped == {"train": {"bad value": 1, "missing media": 1}} and report.records == {"train": 1}


@pytest.mark.parametrize("mode", ["error", "skip"])
@pytest.mark.parametrize("case, split, record, problem, reason", FAULTS, ids=[f[0] for f in FAULTS])
def test_each_fault_is_found_by_the_check(root, case, split, record, problem, reason, mode):
    """error: one DataError naming the file, the record's index and the problem, from check() — no batch read;
    skip: the record is left out and counted once, under its split and reason; the other records stay."""
    file = _plant(root, split, record)
    dm = TaskDataModule("vqa", _data(root, on_bad_sample=mode), None, image_size=32)
    if mode == "error":
        with pytest.raises(DataError, match=rf"^{re.escape(file)}: record 2: {problem}") as info:
            dm.check()
        assert (info.value.file, info.value.index) == (file, 2)
        assert "\n" not in str(info.value)
        return
    report = dm.check()
    assert report.skipped == {split: {reason: 1}}
    assert report.records == {"train": 16, "val": 4, "test": 4}  # the bad one left out, every good one kept
    assert dm.skipped_counts() == {split: {reason: 1}}
    assert len(dm.dataset(split)) == {"train": 16, "val": 4, "test": 4}[split]
    assert f"{file}: record 2: " in dm.skipped_report() and f"[{reason}]" in dm.skipped_report()
    assert f"skipped 1 bad sample(s) (data.on_bad_sample: skip): {split}: {reason} 1" in str(report)


def test_every_bad_record_of_every_split_is_counted_once(root):
    """All faults at once, with skip: the counts per split and reason equal what was planted; the check opens each
    distinct image once; a file shared by records is opened once."""
    planted: dict[str, dict[str, int]] = {}
    for _, split, record, _, reason in FAULTS:
        _plant(root, split, record, at=1)
        planted.setdefault(split, {}).setdefault(reason, 0)
        planted[split][reason] += 1
    dm = TaskDataModule("vqa", _data(root, on_bad_sample="skip"), None, image_size=32)
    report = dm.check()
    assert report.skipped == planted and dm.skipped_counts() == planted
    assert report.num_skipped == len(FAULTS)
    assert report.records == {"train": 16, "val": 4, "test": 4}
    # train opens the 4 squares + nope, corrupt, empty (nope counts as checked); val the folder; test truncated
    assert report.media == {"train": 7, "val": 1, "test": 1}
    assert report.answers == 4


def test_named_evaluation_sets_and_side_streams_are_checked(root):
    """Every named evaluation set (val: {en, de}) and the side streams (data.language) are read by the check."""
    _write(root / "val_de.json", [_q(300, "red"), {**_q(301, "blue"), "image": "images/nope.png"}])
    _write(root / "lang.json", [{"instruction": "name a colour", "input": "", "output": "red"},
                                {"instruction": "name a colour"}, "not a record"])
    data = _data(root, val={"en": "val.json", "de": "val_de.json"})
    with pytest.raises(DataError, match=rf"{re.escape(str(root / 'val_de.json'))}: record 1: image file not found"):
        TaskDataModule("vqa", data, None, image_size=32).check()
    data["language"] = "lang.json"
    dm = TaskDataModule("vqa", {**data, "on_bad_sample": "skip"}, None, image_size=32)
    report = dm.check()
    assert report.skipped == {"val/de": {"missing media": 1}, "language": {"missing key": 1, "not an object": 1}}
    assert report.records == {"train": 16, "language": 1, "val/en": 4, "val/de": 1, "test": 4}
    _write(root / "lang.json", [{"instruction": "name a colour", "output": "red"}, {"instruction": "x"}])
    with pytest.raises(DataError, match=rf"{re.escape(str(root / 'lang.json'))}: record 1: expected an object with "
                                        "strings 'instruction' and 'output'"):
        TaskDataModule("vqa", {**data, "val": "val.json"}, None, image_size=32).check()


def test_the_answer_list_is_checked(root):
    """An answer list that is a file of records (a list of objects) is a DataError naming the file and entry."""
    _write(root / "answers.json", [_q(0, "red"), _q(1, "blue")])
    for mode in ("error", "skip"):
        dm = TaskDataModule("vqa", _data(root, on_bad_sample=mode), None, image_size=32)
        with pytest.raises(DataError, match=rf"^{re.escape(str(root / 'answers.json'))}: record 0: expected an answer "
                                            r"string, got an object \(data.answer_list is a JSON list of answers"):
            dm.check()
    _write(root / "answers.json", ["red", "\ud800"])
    with pytest.raises(DataError, match=r"answers.json: record 1: 'answer' is not valid Unicode text"):
        TaskDataModule("vqa", _data(root), None, image_size=32).check()


def test_a_missing_answer_list_names_the_key_and_the_file(root):
    """A data.answer_list that names no file is a ConfigError at data.answer_list that gives the path it looked at."""
    with pytest.raises(ConfigError, match=rf"^data\.answer_list: file not found: {re.escape(str(root / 'gone.json'))}$"):
        TaskDataModule("vqa", _data(root, answer_list="gone.json"), None, image_size=32)


@pytest.mark.parametrize("case", ["answer-int", "answer-list-of-ints", "lone-surrogate", "question-of-blanks",
                                  "question-of-punctuation"])
def test_the_data_tokenizer_reads_checked_records_only(root, tmp_path, case):
    """The five records that crashed the data tokenizer: a DataError naming the file and record when the tokenizer
    is built from the data (with or without a checked data module); with skip a tokenizer without their words."""
    _, split, record, problem, _ = next(f for f in FAULTS if f[0] == case)
    record = {**record, "question_id": 99}
    if isinstance(record.get("question"), str) and record["question"].strip(" ?!."):
        record["question"] = record["question"].replace("square", "zebra")
    else:
        record["answer"] = ["zebra"] if case not in ("answer-int", "answer-list-of-ints") else record["answer"]
    file = _plant(root, split, record)
    text = _text_part()
    with pytest.raises(DataError, match=rf"^{re.escape(file)}: record 2: {problem}"):
        resolve_data_tokenizer(_model(text), _data(root), tmp_path / "run", "vqa")
    assert not (tmp_path / "run").exists()
    dm = TaskDataModule("vqa", _data(root, on_bad_sample="skip"), None, image_size=32)
    dm.check()
    resolve_data_tokenizer(_model(text), _data(root, on_bad_sample="skip"), tmp_path / "run", "vqa", datamodule=dm)
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tmp_path / "run" / "tokenizer_data" / "tokenizer.json")).get_vocab()
    assert "▁square" in vocab and "▁red" in vocab and "▁zebra" not in vocab  # the skipped record's word is not in


def test_the_data_folders_own_tokenizer_is_used_when_it_knows_every_word(root, tmp_path):
    """A data folder with a word-level tokenizer that knows every word of its texts: the model uses it and no
    tokenizer is built into the run folder."""
    import shutil

    from zoo.data.shapes import TOKENIZER_DIR

    text = _text_part()
    resolve_data_tokenizer(_model(text), _data(root), tmp_path / "first", "vqa")  # one built from these texts
    shutil.copytree(tmp_path / "first" / "tokenizer_data", root / TOKENIZER_DIR)
    model = _model(text)
    resolve_data_tokenizer(model, _data(root), tmp_path / "run", "vqa")
    assert model.text.tokenizer == str(root / TOKENIZER_DIR) and not (tmp_path / "run").exists()


def test_a_rank_that_loses_the_tokenizer_race_ignores_a_temp_folder_it_cannot_remove(root, tmp_path, monkeypatch):
    """Two ranks build the data tokenizer at once: the one whose rename finds the folder already there uses it, and
    its own temporary folder is removed as far as the file system lets it (a folder it cannot remove, say on a
    network file system, is left behind; no error)."""
    import os

    import zoo.data.multilingual_tokenizer as mt

    build, run = mt.build_multilingual_tokenizer, tmp_path / "run"

    def both_ranks(texts, out, **kwargs):
        build(texts, run / "tokenizer_data", **kwargs)  # the other rank finishes first
        return build(texts, out, **kwargs)

    rmdir = os.rmdir

    def stubborn(path, *args, **kwargs):
        if os.path.basename(os.fspath(path)).startswith(".tokenizer_data."):
            raise OSError(16, "Device or resource busy", os.fspath(path))
        return rmdir(path, *args, **kwargs)

    monkeypatch.setattr(mt, "build_multilingual_tokenizer", both_ranks)
    monkeypatch.setattr(os, "rmdir", stubborn)
    model = _model(_text_part())
    resolve_data_tokenizer(model, _data(root), run, "vqa")
    assert model.text.tokenizer == str(run / "tokenizer_data")
    left, used = sorted(p.name for p in run.iterdir())
    assert left.startswith(".tokenizer_data.") and used == "tokenizer_data"  # the leftover, and the other rank's
    assert (run / "tokenizer_data" / "tokenizer.json").is_file()


def _text_part():
    import zoo

    return zoo.create_model("x2vlm-tiny", task="vqa", **{"text.tokenizer": "data", "text.vocab_size": 512,
                                                         "text.pad_token_id": 1}).text


def _model(text):
    from types import SimpleNamespace

    text.tokenizer = "data"
    return SimpleNamespace(text=text)


# ---------------------------------------------------------------------------------------------------- end to end
def _config(root: Path, out: Path, **data) -> dict:
    from zoo.train.run import load_task_config

    cfg = load_task_config(task_config("vqa-shapes"))
    cfg["data"] = {**cfg["data"], **_data(root, **data), "cache_images": False}
    cfg["trainer"].update(max_epochs=1, check_val_every_n_epoch=1, enable_progress_bar=False, limit_train_batches=2,
                          limit_val_batches=1, limit_test_batches=1)
    cfg["train"].update(output_dir=str(out), name="run", export=False)
    return cfg


@pytest.mark.parametrize("split, record, problem", [
    ("train", {**GOOD, "answer": 42}, "'answer' must be a string or a list of strings, got int 42"),
    ("test", {**GOOD, "image": "images/corrupt.png"}, "cannot read image .*corrupt.png"),
])
def test_train_stops_before_the_run_folder_exists(root, tmp_path, split, record, problem):
    from zoo.train.run import train

    file = _plant(root, split, record)
    out = tmp_path / "runs"
    with pytest.raises(DataError, match=rf"^{re.escape(file)}: record 2: {problem}"):
        train(_config(root, out))
    assert not out.exists()  # neither the run folder nor its parent: nothing was written


def test_train_with_an_answer_list_of_records_stops_before_the_run_folder_exists(root, tmp_path):
    from zoo.train.run import train

    out = tmp_path / "runs"
    with pytest.raises(DataError, match=rf"^{re.escape(str(root / 'train.json'))}: record 0: expected an answer "
                                        "string, got an object"):
        train(_config(root, out, answer_list="train.json"))
    assert not out.exists()


def test_train_with_skip_reports_the_counts_in_results_json(root, tmp_path, capsys):
    from zoo.train.run import train

    planted = [("train", {**GOOD, "answer": 42}), ("train", {**GOOD, "question": "?!"}),
               ("train", {**GOOD, "image": "images/nope.png"}), ("train", {**GOOD, "image": "images/corrupt.png"}),
               ("val", {**GOOD, "question": "what is \ud800?"}),
               ("test", {k: v for k, v in GOOD.items() if k != "question_id"})]
    for split, record in planted:
        _plant(root, split, record)
    results = train(_config(root, tmp_path, on_bad_sample="skip"))
    expected = {"train": {"wrong type": 1, "empty text": 1, "missing media": 1, "unreadable media": 1},
                "val": {"invalid text": 1}, "test": {"missing key": 1}}
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["skipped"] == expected and results["skipped"] == expected
    printed = capsys.readouterr().out
    assert "data check: train 16 records (6 media files); val 4 records (0 media files); test 4 records (0 media " \
           "files); answer list 4 answers" in printed
    assert "skipped 6 bad sample(s) (data.on_bad_sample: skip): train: wrong type 1, empty text 1, missing media 1, " \
           "unreadable media 1; val: invalid text 1; test: missing key 1" in printed
    assert "skipped samples (data.on_bad_sample: skip):\ntrain: 2 malformed record(s) left out at load, 2 record(s) " \
           "with unreadable media left out by the data check, 0 sample(s) dropped from batches" in printed


# ------------------------------------------------------------------------------------------------- image modes
def test_16_bit_grey_scales_to_8_bit():
    """A 16-bit grey image spans 0..255 (reference: numpy's round(v / 257)), not PIL's clip to white."""
    arr16 = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64 + 7).astype(np.uint16)
    arr16[0, 0], arr16[0, 1] = 0, 65535
    expected = np.round(arr16 / 257.0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr16).save(buf, "PNG")
    with Image.open(io.BytesIO(buf.getvalue())) as png:
        assert png.mode.startswith("I;16")
        rgb = to_rgb(png)
    out = np.asarray(rgb)
    assert rgb.mode == "RGB" and out.shape == (32, 32, 3)
    assert np.array_equal(out[..., 0], expected) and np.array_equal(out[..., 1], expected)
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) > 200
    as_int = Image.fromarray(arr16.astype(np.int32), "I")  # how older PIL opens 16-bit PNG files
    assert np.array_equal(np.asarray(to_rgb(as_int))[..., 2], expected)


def test_16_bit_png_through_the_reader(tmp_path):
    """The reader and the check take a 16-bit PNG, and the model sees its grey (mid-grey stays mid-grey)."""
    arr16 = np.full((16, 16), 32896, dtype=np.uint16)  # round(32896 / 257) = 128
    Image.fromarray(arr16).save(tmp_path / "grey16.png")
    f = _write(tmp_path / "q.json", [{"question_id": 0, "question": "what colour?", "answer": "grey",
                                      "image": "grey16.png"}])
    ds = VQADataset(f, str(tmp_path), 16, train=False)
    assert ds.check_media() == 1
    image = ds._read_image(f, 0, str(tmp_path / "grey16.png"))
    assert np.unique(np.asarray(image)).tolist() == [128]


def test_float_and_alpha_modes():
    rng = np.random.default_rng(0)
    f = rng.random((8, 8), dtype=np.float32)
    f[0, 0], f[0, 1] = -0.5, 1.5  # outside [0, 1]: clipped
    expected = np.round(np.clip(f, 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(f, "F")))[..., 0], expected)
    rgba = Image.fromarray(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), "RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    reference = Image.alpha_composite(white, rgba).convert("RGB")
    assert np.array_equal(np.asarray(to_rgb(rgba)), np.asarray(reference))
    a = np.asarray(rgba).astype(np.float64)  # and the compositing formula itself, within PIL's rounding
    by_hand = a[..., :3] * a[..., 3:] / 255 + 255 * (1 - a[..., 3:] / 255)
    assert np.abs(np.asarray(to_rgb(rgba)).astype(np.float64) - by_hand).max() <= 1.0
    la = Image.fromarray(np.stack([np.full((4, 4), 0, np.uint8), np.full((4, 4), 0, np.uint8)], -1), "LA")
    assert np.unique(np.asarray(to_rgb(la))).tolist() == [255]  # fully transparent black → the white background
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.info["transparency"] = 1
    assert np.unique(np.asarray(to_rgb(pal))).tolist() == [255]  # the transparent index shows white
    del pal.info["transparency"]
    assert np.asarray(to_rgb(pal))[0, 0].tolist() == [10, 20, 30]


@pytest.mark.parametrize("mode", ["1", "L", "P", "CMYK", "RGB"])
def test_other_modes_convert_as_pil_does(mode):
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB").convert(mode)
    out = to_rgb(image)
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(image.convert("RGB")))


def _write_grey_clip(av, path: Path, values) -> None:
    """An mpeg4 clip of 32 px frames, one uniform grey level per frame."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for value in values:
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), value, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("backend", ["av", "decord"])
def test_videos_are_opened_by_the_check(root, backend):
    """A video record's container is opened by the check: a good clip passes, a missing file is 'missing media', a
    file that is no video 'unreadable media' (error: a DataError naming the record)."""
    pytest.importorskip(backend)
    av = pytest.importorskip("av")
    _write_grey_clip(av, root / "clip.mp4", (0, 128, 255))
    qa = {"question_id": 0, "question": "what moves?", "answer": "a square", "video": "clip.mp4"}
    records = [qa, {**qa, "question_id": 1, "video": "nope.mp4"}, {**qa, "question_id": 2, "video": "broken.mp4"}]
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 and then nothing that decodes")
    file = _write(root / "video_qa.json", records)
    data = {"root": str(root), "train": "video_qa.json", "video_backend": backend, "batch_size": 1}
    with pytest.raises(DataError, match=rf"^{re.escape(file)}: record 1: cannot read video: .*nope.mp4"):
        TaskDataModule("vqa", data, None, image_size=32).check()
    dm = TaskDataModule("vqa", {**data, "on_bad_sample": "skip"}, None, image_size=32)
    report = dm.check()
    assert report.skipped == {"train": {"missing media": 1, "unreadable media": 1}}
    assert report.records == {"train": 1} and report.media == {"train": 3}
    assert dm.dataset("train")[0]["image"].shape[1:] == (3, 32, 32)  # the good clip is read: (frames, 3, 32, 32)


@pytest.mark.parametrize("backend", ["av", "decord"])
def test_empty_and_too_short_videos_are_bad_samples(root, backend):
    """An empty video file and a clip with fewer frames than ``data.min_frames`` fail the check with the
    file and record named (skip: counted as unreadable media); without ``min_frames`` the 3-frame clip is sampled."""
    pytest.importorskip(backend)
    av = pytest.importorskip("av")
    (root / "empty.mp4").write_bytes(b"")  # PyAV writes no file for a stream without frames: an empty file
    _write_grey_clip(av, root / "three.mp4", (0, 128, 255))
    qa = {"question_id": 0, "question": "what moves?", "answer": "a square", "video": "three.mp4"}
    file = _write(root / "short_qa.json", [qa, {**qa, "question_id": 1, "video": "empty.mp4"}])
    data = {"root": str(root), "train": "short_qa.json", "video_backend": backend, "batch_size": 1, "num_frames": 4}
    with pytest.raises(DataError, match=rf"^{re.escape(file)}: record 1: cannot read video: .*empty.mp4"):
        TaskDataModule("vqa", data, None, image_size=32).check()
    with pytest.raises(DataError, match=rf"^{re.escape(file)}: record 0: cannot read video: .*three.mp4: the video "
                                        r"is too short: 3 frame\(s\), fewer than data.min_frames=4"):
        TaskDataModule("vqa", {**data, "min_frames": 4}, None, image_size=32).check()
    dm = TaskDataModule("vqa", {**data, "on_bad_sample": "skip"}, None, image_size=32)
    assert dm.check().skipped == {"train": {"unreadable media": 1}}
    assert dm.dataset("train")[0]["image"].shape[:2] == (4, 3)  # 3 frames sampled into 4, one repeated
    dm = TaskDataModule("vqa", {**data, "on_bad_sample": "skip", "min_frames": 4}, None, image_size=32)
    assert dm.check().skipped == {"train": {"unreadable media": 2}}
    with pytest.raises(ConfigError, match="data.min_frames"):
        TaskDataModule("vqa", {**data, "min_frames": 0}, None, image_size=32)


def test_the_media_check_shows_a_progress_bar_when_asked(root, capsys):
    TaskDataModule("vqa", _data(root), None, image_size=32).check(progress=True)
    err = capsys.readouterr().err
    assert "checking train media" in err and "0/4 " in err  # the four squares, each opened once for all splits
    assert "checking val media" not in err  # nothing left to open there
