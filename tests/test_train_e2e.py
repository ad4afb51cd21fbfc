"""End to end on a tiny generated shapes dataset: train → evaluate → export → reload, resuming, and bad data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import predicted_answers, shapes_subset, task_config

import zoo
from zoo.data.shapes import generate_shapes
from zoo.train.run import evaluate, export_checkpoint, load_task_config, model_from_checkpoint, train


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train_images=16, num_val_images=4,
                           num_test_images=4, image_size=64, num_videos=4, video_frames=4)


def _config(shapes, out, **trainer):
    cfg = load_task_config(task_config("vqa-shapes"))
    cfg["data"].update(root=str(shapes), batch_size=8, eval_batch_size=8)
    cfg["trainer"].update({"max_epochs": 1, "enable_progress_bar": False, **trainer})
    cfg["train"].update(output_dir=str(out), name="run")
    return cfg


# The learning job: the main job's config (x2vlm-tiny, generative VQA ranking the answer list) on the colour questions
# ("what colour is the circle?", "what colour is the small square?") about the scenes of one or two shapes, 5 epochs
# of 338 questions at batch 16 (105 steps, lr 2e-3). With the image the colour is one look away; without it the best
# guess is a common colour. Measured (seed 0; the run is deterministic, the same numbers twice): images val 70.55 /
# test 73.53, `data.blank_images=true` val 18.22 / test 25.53; seeds 1 and 2 with the images gave test 76.71 (8 epochs)
# and 71.18. The margin is about half the measured gap of 48 points.
LEARN_MARGIN = 24.0


def _colour_config(root, out, blank: bool):
    cfg = load_task_config(task_config("vqa-shapes"))
    cfg["data"].update(root=str(root), train=["vqa_train_colour.json"], val="vqa_val_colour.json",
                       test="vqa_test_colour.json", batch_size=16, eval_batch_size=64, blank_images=blank)
    cfg["optim"]["lr"] = 2.0e-3
    cfg["trainer"].update(max_epochs=5, check_val_every_n_epoch=5, enable_progress_bar=False)
    cfg["train"].update(output_dir=str(out), name="run", export=not blank)  # the ablation needs no export
    return cfg


@pytest.fixture(scope="module")
def colour_shapes(tmp_path_factory):
    return shapes_subset(tmp_path_factory.mktemp("colour") / "shapes", "vqa", "colour",
                         lambda r, counts: r["question"].startswith("what colour") and counts[r["image"]] <= 2,
                         splits=("train", "val", "test"), num_train_images=600, num_val_images=150,
                         num_test_images=150, image_size=64, num_videos=0)


@pytest.fixture(scope="module")
def colour_runs(colour_shapes, tmp_path_factory):
    """The learning job with the images and with blank images: ``{"images": results, "blank": results}``."""
    out = tmp_path_factory.mktemp("colour-runs")
    return {name: train(_colour_config(colour_shapes, out / name, blank=name == "blank"))
            for name in ("images", "blank")}


def test_train_evaluate_export_reload(colour_shapes, colour_runs, tmp_path):
    results, blank = colour_runs["images"], colour_runs["blank"]
    run = Path(results["run_dir"])
    for path in ("checkpoints/last.ckpt", "logs/metrics.csv", "curves.png", "results.json", "export/config.json",
                 "export/model.safetensors", "export/tokenizer"):
        assert (run / path).exists(), path
    # the model reads the colours off the images: both evaluation splits far above the same job on blank images
    for split in ("val", "test"):
        assert results[split]["vqa_acc"] >= blank[split]["vqa_acc"] + LEARN_MARGIN, (split, results, blank)
    assert json.loads((run / "results.json").read_text())["test"] == results["test"]
    # the export, the run folder and the checkpoint rebuild the same model
    exported = zoo.from_pretrained(run / "export").eval()
    from_ckpt = model_from_checkpoint(run).eval()
    images = torch.randn(2, 3, 64, 64)
    ids = torch.randint(5, 300, (2, 6))  # inside the data tokenizer's vocabulary
    with torch.no_grad():
        a = exported.encode_question(images, ids, torch.ones_like(ids))
        b = from_ckpt.encode_question(images, ids, torch.ones_like(ids))
    assert torch.equal(a, b)
    export_checkpoint(run / "checkpoints" / "last.ckpt", tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").is_file()
    # mmzoo eval on the export reproduces the test score of the run
    metrics = evaluate(run / "export", task_config("vqa-shapes"),
                       [f"data.root={colour_shapes}", "data.test=vqa_test_colour.json", "data.eval_batch_size=64"],
                       split="test", output=tmp_path / "eval.json")
    assert metrics["vqa_acc"] == pytest.approx(results["test"]["vqa_acc"])
    assert json.loads((tmp_path / "eval.json").read_text())["metrics"]["vqa_acc"] == pytest.approx(metrics["vqa_acc"])


def test_the_curves_label_training_losses_by_everything_after_train(tmp_path, monkeypatch):
    """curves.png: the training losses (not the skipped-sample count) on the left, each labelled by its name after
    ``train/`` (a loss named with a slash keeps it), the evaluation metrics on the right under their full names."""
    import matplotlib.pyplot as plt

    from zoo.train.run import _plot_curves

    csv_file = tmp_path / "metrics.csv"
    csv_file.write_text("epoch,step,train/loss,train/itc/hard,train/skipped_samples,val/vqa_acc\n"
                        "0,0,2.0,1.0,,\n0,1,1.5,0.8,3.0,\n0,1,,,,40.0\n")
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))
    _plot_curves(csv_file, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    left, right = figures[0].axes
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["itc/hard", "loss"]
    assert [t.get_text() for t in right.get_legend().get_texts()] == ["val/vqa_acc"]


def test_a_checkpoint_every_epoch_when_validation_is_sparser(shapes, tmp_path):
    cfg = _config(shapes, tmp_path, max_epochs=2, check_val_every_n_epoch=2, limit_train_batches=1, limit_val_batches=1,
                  limit_test_batches=1)
    cfg["train"]["export"] = False
    cfg["train"]["keep_last"] = -1  # every epoch's file (the default keeps the newest)
    train(cfg)
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "epoch000.ckpt").is_file() and (ckpts / "epoch001.ckpt").is_file()
    assert torch.load(ckpts / "epoch000.ckpt", weights_only=True)["epoch"] == 0


def test_video_qa_config_trains_on_frames(shapes, tmp_path, monkeypatch):
    """zoo/configs/tasks/videoqa-shapes.yaml end to end on the tiny data's videos: 3 frames per sample reach the video
    encoder, and the export rebuilds the video model with the data's answer classifier."""
    cfg = load_task_config(task_config("videoqa-shapes"), [
        f"data.root={shapes}", f"train.output_dir={tmp_path}", "train.name=video", "data.batch_size=2",
        "data.eval_batch_size=2", "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1",
        "trainer.enable_progress_bar=false", "trainer.limit_train_batches=2"])
    seen = []
    from zoo.modules.vision.video import VideoEncoder

    original = VideoEncoder.forward

    def spy(self, frames, *args, **kwargs):
        seen.append(tuple(frames.shape))
        return original(self, frames, *args, **kwargs)

    monkeypatch.setattr(VideoEncoder, "forward", spy)
    results = train(cfg)
    assert seen and all(len(s) == 5 and s[1] == 3 for s in seen)  # (batch, 3 frames, C, H, W)
    exported = json.loads((tmp_path / "video" / "export" / "config.json").read_text())
    answers = json.loads((shapes / "video_answer_list.json").read_text())
    assert exported["model"]["vision"]["type"] == "video"
    assert exported["model"]["vqa"]["num_classes"] == len(answers)
    # No learning is asserted for video: trained from scratch on the shapes videos the model scores no better than on
    # blank frames (BENCHMARKS.md: the full config, 30 epochs on 72 training questions, gave val 15.00 / test 19.17
    # with the frames and the same with blank ones), far beyond this test's budget in any case. What holds exactly:
    # the test score is the VQA accuracy of the export's own answers, asked one video and question at a time through
    # `mmzoo predict` (not the evaluation's batches), over every test question.
    records = json.loads((shapes / "video_qa_test.json").read_text())
    model = model_from_checkpoint(tmp_path / "video" / "export").eval()
    predicted, expected = predicted_answers(tmp_path / "video" / "export", shapes, records, model, media="video")
    assert len(records) == 3 and set(predicted) <= set(answers)  # one test video, 3 questions
    assert results["test"]["vqa_acc"] == pytest.approx(expected, abs=1e-9)


def test_resume_continues_step_and_schedule(shapes, tmp_path):
    from zoo.spec import ConfigError

    first = _config(shapes, tmp_path)
    train(first)
    before = (tmp_path / "run" / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run") as info:
        train(first)  # without --resume (or --overwrite) an existing run is an error, and it is untouched
    assert info.value.path == "train.name"
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").read_bytes() == before
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    steps_one_epoch = ckpt["global_step"]
    second = _config(shapes, tmp_path, max_epochs=2)
    train(second, resume=True)
    ckpt2 = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt2["global_step"] == 2 * steps_one_epoch
    assert ckpt2["lr_schedulers"][0]["last_epoch"] == 2 * steps_one_epoch
    # an uninterrupted two-epoch run ends at the same step with the same learning rates
    straight = _config(shapes, tmp_path / "straight", max_epochs=2)
    train(straight)
    ckpt3 = torch.load(tmp_path / "straight" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt3["global_step"] == ckpt2["global_step"]
    assert ckpt3["lr_schedulers"][0]["_last_lr"] == pytest.approx(ckpt2["lr_schedulers"][0]["_last_lr"])


def test_bad_config_and_missing_resume(shapes, tmp_path):
    from zoo.spec import ConfigError

    with pytest.raises(ConfigError, match="optim.learning_rate: unknown key"):
        load_task_config(task_config("vqa-shapes"), ["optim.learning_rate=1.0"])
    cfg = _config(shapes, tmp_path)
    cfg["data"]["train"] = ["no_such_file.json"]
    with pytest.raises(ConfigError, match="no_such_file.json"):
        train(cfg)
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        train(_config(shapes, tmp_path / "none"), resume=True)


def test_ddp_on_two_cpu_processes(shapes, tmp_path):
    """`mmzoo train ... trainer.strategy=ddp trainer.devices=2` completes on CPU (gloo) and writes its results."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("mmzoo")
    if not exe.exists():
        pytest.skip("the mmzoo console script is not installed beside this interpreter")
    # 15 test questions: the distributed sampler pads them to 16 (one repeated), which the metric must not count
    records = json.loads((shapes / "vqa_test.json").read_text())[:15]
    (shapes / "vqa_test_15.json").write_text(json.dumps(records))
    cmd = [str(exe), "train", task_config("vqa-shapes"), f"data.root={shapes}", "data.batch_size=4",
           "data.eval_batch_size=3", "data.test=vqa_test_15.json", "trainer.max_epochs=1", "trainer.strategy=ddp",
           "trainer.devices=2",
           "trainer.enable_progress_bar=false", f"train.output_dir={tmp_path}", "train.name=ddp"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert "vqa_acc" in results["test"] and (tmp_path / "ddp" / "export" / "model.safetensors").is_file()
    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=True)
    # 2 processes × batch 4 per optimiser step (the distributed sampler pads the records to a multiple of 2)
    records = len(json.loads((shapes / "vqa_train.json").read_text()))
    assert ckpt["global_step"] == -(-records // 2) // 4
    # the metric of the two processes is computed over their gathered predictions: it equals one process's score
    single = evaluate(tmp_path / "ddp" / "export", task_config("vqa-shapes"),
                      [f"data.root={shapes}", "data.test=vqa_test_15.json", "data.eval_batch_size=5"], split="test",
                      output=tmp_path / "single.json")
    assert results["test"]["vqa_acc"] == pytest.approx(single["vqa_acc"], abs=1e-4)


def test_model_parallel_shards_on_two_cpu_processes(shapes, tmp_path):
    """`trainer.strategy=model_parallel trainer.devices=2`: Lightning's ModelParallelStrategy with the model's blocks
    and encoders sharded by torch's fully_shard on a gloo mesh (gradient clipping over sharded and replicated
    gradients included); the checkpoint holds the whole state dict, and the export equals it tensor for tensor and
    scores what the run scored."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from zoo.hub import load_state_dict

    exe = Path(sys.executable).with_name("mmzoo")
    if not exe.exists():
        pytest.skip("the mmzoo console script is not installed beside this interpreter")
    cmd = [str(exe), "train", task_config("vqa-shapes"), f"data.root={shapes}", "data.batch_size=4",
           "data.eval_batch_size=4", "trainer.max_epochs=1", "trainer.strategy=model_parallel", "trainer.devices=2",
           "trainer.gradient_clip_val=0.5", "trainer.enable_progress_bar=false", f"train.output_dir={tmp_path}",
           "train.name=mp"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((tmp_path / "mp" / "results.json").read_text())
    ckpt = torch.load(tmp_path / "mp" / "checkpoints" / "last.ckpt", weights_only=True)
    saved = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    exported = load_state_dict(tmp_path / "mp" / "export")
    assert all(not isinstance(v, torch.distributed.tensor.DTensor) for v in saved.values())
    assert exported.keys() <= saved.keys() and all(torch.equal(v, saved[k]) for k, v in exported.items())
    single = evaluate(tmp_path / "mp" / "export", task_config("vqa-shapes"),
                      [f"data.root={shapes}", "data.eval_batch_size=5"], split="test", output=tmp_path / "single.json")
    assert results["test"]["vqa_acc"] == pytest.approx(single["vqa_acc"], abs=1e-4)
