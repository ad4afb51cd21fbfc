"""The command line answers every expected failure with one line (exit status 2) naming the file and key or record,
before anything is written; ``--debug`` shows the traceback instead."""

from __future__ import annotations

import json

import pytest
from conftest import task_config

from zoo.cli import main
from zoo.data.datasets import DataError
from zoo.data.shapes import generate_shapes
from zoo.spec import ConfigError

CONFIG = task_config("vqa-shapes")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train_images=8, num_val_images=4,
                           num_test_images=4, image_size=64, num_videos=2, video_frames=4)


def _bad_train_file(shapes, tmp_path):
    records = json.loads((shapes / "vqa_train.json").read_text())[:10]
    records[3]["answer"] = 42
    path = tmp_path / "bad_train.json"
    path.write_text(json.dumps(records))
    return path


def _fails(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mmzoo {argv[0]}: error: "), err
    return err[0]


def test_a_bad_record_is_one_line_and_no_run_folder(shapes, tmp_path, capsys):
    bad = _bad_train_file(shapes, tmp_path)
    line = _fails(capsys, ["train", CONFIG, f"data.root={shapes}", f"data.train=[{bad}]", "data.val=vqa_val.json",
                           f"train.output_dir={tmp_path / 'runs'}"])
    assert line.startswith(f"mmzoo train: error: {bad}: record 3: ")
    assert not (tmp_path / "runs").exists()


def test_debug_shows_the_traceback(shapes, tmp_path):
    bad = _bad_train_file(shapes, tmp_path)
    with pytest.raises(DataError, match="record 3"):
        main(["--debug", "train", CONFIG, f"data.root={shapes}", f"data.train=[{bad}]",
              f"train.output_dir={tmp_path / 'runs'}"])
    with pytest.raises(ConfigError, match="optim.lr"):
        main(["--debug", "train", CONFIG, "optim.lr=-1"])


@pytest.mark.parametrize("override, names", [
    ("optim.lr=-1", "optim.lr"),
    ("trainer.precision=13", "trainer.precision"),
    ("train.name=../../..", "train.name"),
    ("optim.betas=[0.9]", "optim.betas"),
    ("model.task=retrieval", "model.task"),
])
def test_bad_values_are_one_line_naming_the_key(override, names, tmp_path, capsys):
    line = _fails(capsys, ["train", CONFIG, override, f"train.output_dir={tmp_path / 'runs'}"])
    assert f"{CONFIG}: {names}: " in line
    assert not (tmp_path / "runs").exists()


def test_a_duplicate_key_is_one_line_naming_the_file(tmp_path, capsys):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text(open(CONFIG, encoding="utf-8").read() + "\noptim:\n  lr: 5.0e-4\n")
    line = _fails(capsys, ["train", str(cfg), f"train.output_dir={tmp_path / 'runs'}"])
    assert f"{cfg}" in line and "optim" in line and "duplicate" in line.lower()


def test_mmzoo_config_prints_what_a_run_would_use(capsys):
    """``mmzoo config`` prints the task config with the overrides applied and the model config it builds: emptying
    ``model.overrides`` reaches the model (x2vlm-tiny's own 16 px patches instead of the shapes config's 8), and a
    value replaces what it names. ``mmzoo train`` without a config names only the config as missing."""
    import yaml

    assert main(["config", "vqa-shapes", "model.overrides={}", "trainer.max_epochs=3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# ") and out.splitlines()[0].endswith("vqa-shapes.yaml with model.overrides={} "
                                                                  "trainer.max_epochs=3")
    cfg = yaml.safe_load(out)
    assert cfg["model"]["overrides"] == {} and cfg["trainer"]["max_epochs"] == 3
    assert cfg["resolved_model"]["model"]["vision"]["patch_size"] == 16
    assert main(["config", "vqa-shapes"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["resolved_model"]["model"]["vision"]["patch_size"] == 8
    with pytest.raises(SystemExit):
        main(["train"])
    assert capsys.readouterr().err.strip().endswith("the following arguments are required: config")
