"""End to end on a tiny generated shapes dataset: train → evaluate → export → reload, resuming, and bad data."""

from __future__ import annotations

import json

import pytest
import torch

import zoo
from zoo.data.shapes import generate_shapes
from zoo.train.run import evaluate, export_checkpoint, load_task_config, model_from_checkpoint, train


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train_images=16, num_val_images=4,
                           num_test_images=4, image_size=64, num_videos=4, video_frames=4)


def _config(shapes, out, **trainer):
    cfg = load_task_config("configs/tasks/vqa-shapes.yaml")
    cfg["data"].update(root=str(shapes), batch_size=8, eval_batch_size=8)
    cfg["trainer"].update({"max_epochs": 1, "enable_progress_bar": False, **trainer})
    cfg["train"].update(output_dir=str(out), name="run")
    return cfg


def test_train_evaluate_export_reload(shapes, tmp_path):
    results = train(_config(shapes, tmp_path))
    run = tmp_path / "run"
    for path in ("checkpoints/last.ckpt", "logs/metrics.csv", "curves.png", "results.json", "export/config.json",
                 "export/model.safetensors", "export/tokenizer"):
        assert (run / path).exists(), path
    assert 0 <= results["val"]["vqa_acc"] <= 100 and "vqa_acc" in results["test"]
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
    metrics = evaluate(run / "export", "configs/tasks/vqa-shapes.yaml",
                       [f"data.root={shapes}", "data.eval_batch_size=8"], split="test",
                       output=tmp_path / "eval.json")
    assert metrics["vqa_acc"] == pytest.approx(results["test"]["vqa_acc"])
    assert json.loads((tmp_path / "eval.json").read_text())["metrics"]["vqa_acc"] == pytest.approx(metrics["vqa_acc"])


def test_a_checkpoint_every_epoch_when_validation_is_sparser(shapes, tmp_path):
    cfg = _config(shapes, tmp_path, max_epochs=2, check_val_every_n_epoch=2, limit_train_batches=1, limit_val_batches=1,
                  limit_test_batches=1)
    cfg["train"]["export"] = False
    train(cfg)
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "epoch000.ckpt").is_file() and (ckpts / "epoch001.ckpt").is_file()
    assert torch.load(ckpts / "epoch000.ckpt", weights_only=True)["epoch"] == 0


def test_video_qa_config_trains_on_frames(shapes, tmp_path, monkeypatch):
    """configs/tasks/videoqa-shapes.yaml end to end on the tiny data's videos: 3 frames per sample reach the video
    encoder, and the export rebuilds the video model with the data's answer classifier."""
    cfg = load_task_config("configs/tasks/videoqa-shapes.yaml", [
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
    assert 0.0 <= results["test"]["vqa_acc"] <= 100.0
    exported = json.loads((tmp_path / "video" / "export" / "config.json").read_text())
    answers = json.loads((shapes / "video_answer_list.json").read_text())
    assert exported["model"]["vision"]["type"] == "video"
    assert exported["model"]["vqa"]["num_classes"] == len(answers)


def test_resume_continues_step_and_schedule(shapes, tmp_path):
    first = _config(shapes, tmp_path)
    train(first)
    again = train(first)  # without --resume an existing run is kept and the new one goes beside it
    assert again["run_dir"].endswith("run-2")
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
        load_task_config("configs/tasks/vqa-shapes.yaml", ["optim.learning_rate=1.0"])
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
    cmd = [str(exe), "train", "configs/tasks/vqa-shapes.yaml", f"data.root={shapes}", "data.batch_size=4",
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
    single = evaluate(tmp_path / "ddp" / "export", "configs/tasks/vqa-shapes.yaml",
                      [f"data.root={shapes}", "data.test=vqa_test_15.json", "data.eval_batch_size=5"], split="test",
                      output=tmp_path / "single.json")
    assert results["test"]["vqa_acc"] == pytest.approx(single["vqa_acc"], abs=1e-4)
