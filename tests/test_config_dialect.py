"""One dialect for every section of a task config: the data section is checked by the same table-driven checker as
the optim, trainer, train and evaluation sections, when the file is loaded (before any model is built), with the
same message: file, dotted key, what was expected, what was given, did-you-mean."""

from __future__ import annotations

import pytest

from zoo.spec import ConfigError
from zoo.train.run import load_task_config


def _load(tmp_path, data: str, extra: str = "") -> dict:
    path = tmp_path / "job.yaml"
    path.write_text(f"task: vqa\nmodel: {{name: x2vlm-tiny}}\ndata: {data}\n{extra}", encoding="utf-8")
    return load_task_config(path)


@pytest.mark.parametrize(("data", "key", "message"), [
    ("{root: shapes, batch_size: 0}", "data.batch_size", "expected an integer >= 1 or null, got int 0"),
    ("{root: shapes, on_bad_sample: ignore}", "data.on_bad_sample",
     "expected 'error' or 'skip' or null, got str 'ignore'"),
    ("{root: shapes, crop_scale: [0.8, 0.5]}", "data.crop_scale",
     "expected [low, high] with 0 < low <= high <= 1 or null, got list [0.8, 0.5]"),
    ("{root: shapes, mask_prob: 1.5}", "data.mask_prob", "expected a number in [0, 1] or null, got float 1.5"),
    ("{root: shapes, train: []}", "data.train", "expected a file or a list of files or null, got list []"),
    ("{root: shapes, languages: [de, de]}", "data.languages",
     "expected a list of distinct language codes such as ['en', 'de'] or null, got list ['de', 'de']"),
    ("{root: shapes, parallel_weight: heavy}", "data.parallel_weight", "expected a number or null, got str 'heavy'"),
])
def test_data_values_are_errors_at_load_naming_file_and_key(tmp_path, data, key, message):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, data)
    assert (str(err.value.file), err.value.path, err.value.message) == (str(tmp_path / "job.yaml"), key, message)


def test_an_unknown_data_key_is_named_with_the_same_did_you_mean_as_other_sections(tmp_path):
    with pytest.raises(ConfigError) as data_err:
        _load(tmp_path, "{root: shapes, batchsize: 4}")
    with pytest.raises(ConfigError) as optim_err:
        _load(tmp_path, "{root: shapes}", "optim: {lrr: 0.1}\n")
    assert data_err.value.path == "data.batchsize" and optim_err.value.path == "optim.lrr"
    assert data_err.value.message.startswith("unknown key 'batchsize'; did you mean 'batch_size'? Accepted: ")
    assert optim_err.value.message.startswith("unknown key 'lrr'; did you mean 'lr'? Accepted: ")
    accepted = data_err.value.message.split("Accepted: ", 1)[1].split(", ")
    assert accepted == sorted(accepted) and {"parallel", "language_weight", "batch_size"} <= set(accepted)


def test_null_means_the_default_and_good_values_load(tmp_path):
    cfg = _load(tmp_path, "{root: shapes, batch_size: null, crop_scale: [1.0, 1.0], translation: [de, fr], "
                          "val: {en: a.json, de: [b.json]}}")
    assert cfg["data"]["batch_size"] is None and cfg["data"]["val"] == {"en": "a.json", "de": ["b.json"]}
