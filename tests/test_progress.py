"""What a run prints and records: plain progress lines when the output is not a terminal, none of Lightning's
advertising or FLOPs noise, and results.json with time, throughput, the config and the versions."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
from conftest import task_config

from zoo.data.shapes import generate_shapes
from zoo.train.progress import ProgressLines, format_duration
from zoo.train.run import load_task_config, train


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.4, 61, 3599, 3600, 3725)] == \
        ["0:00", "0:59", "1:01", "59:59", "1:00:00", "1:02:05"]


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_lines_report_rate_eta_and_loss_every_interval():
    """A line at the first batch after ``every_s`` seconds: 40 batches in 20 s are 2 it/s, 60 left take 30 s."""
    import io

    import torch

    clock, out = _Clock(), io.StringIO()
    cb = ProgressLines(every_s=10, stream=out, clock=clock)
    trainer = SimpleNamespace(num_training_batches=100, max_epochs=3, current_epoch=1, is_global_zero=True,
                              callback_metrics={"train/loss": torch.tensor(2.5)}, sanity_checking=False)
    cb.on_train_epoch_start(trainer, None)
    for i in range(40):
        clock.now += 0.5
        cb.on_train_batch_end(trainer, None, None, None, i)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # at 10 s and at 20 s
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] epoch 2/3  step 40/100 \(40%\)  2\.00 it/s  ETA 0:30  loss 2\.5000",
                        lines[1]), lines[1]


def test_a_run_to_a_file_prints_lines_and_records_what_it_did(tmp_path, capsys):
    shapes = generate_shapes(tmp_path / "shapes", num_train_images=16, num_val_images=6, num_test_images=6,
                             image_size=64, num_videos=0)
    cfg = load_task_config(task_config("vqa-shapes"), [
        f"data.root={shapes}", "data.batch_size=8", "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1",
        f"train.output_dir={tmp_path}", "train.name=run"])
    results = train(cfg)
    out = capsys.readouterr().out  # captured: not a terminal, so no bar (93 questions: 11 full batches of 8)
    assert re.search(r"^\[\d\d:\d\d:\d\d\] epoch 2/2  step 11/11 \(100%\)  .* it/s  ETA 0:00  loss \d+\.\d{4}  "
                     r"\(epoch took \d+:\d\d\)$", out, re.M), out
    assert re.search(r"^\[\d\d:\d\d:\d\d\] validation  vqa_acc \d+\.\d\d$", out, re.M)
    assert "model: X2VLM, " in out and "Tip:" not in out and "FLOPs" not in out and "v_num" not in out
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["time"]["optimizer_steps"] == 22 and saved["time"]["fit_s"] > 0
    fit = saved["time"]["fit_s"]  # rounded to 0.1 s: the rate (from the unrounded time) lies within that interval
    assert 22 * 8 / (fit + 0.05) - 0.01 <= saved["time"]["samples_per_s"] <= 22 * 8 / max(fit - 0.05, 1e-9) + 0.01
    assert saved["config"]["data"]["root"] == str(shapes) and saved["config"]["trainer"]["max_epochs"] == 2
    import torch

    assert saved["versions"]["torch"] == torch.__version__.split("+")[0] or \
        saved["versions"]["torch"] == torch.__version__
    assert results["best"]["monitor"] == "val/vqa_acc"
    # the learning rate of the base group as the schedule gives it: 22 steps, warmup ceil(0.05 * 22) = 2 steps, then
    # linear to 0 (optim.lr 1e-3): step s >= 2 runs at 1e-3 * (22 - s) / 20
    import csv

    rows = [r for r in csv.DictReader(open(tmp_path / "run" / "logs" / "metrics.csv")) if r.get("lr")]
    assert [int(r["step"]) for r in rows] == [4, 9, 14, 19]
    for r in rows:
        assert float(r["lr"]) == pytest.approx(1e-3 * (22 - int(r["step"])) / 20, rel=1e-6)
