"""Runs that never lose a finished epoch: ``--resume`` takes the newest readable checkpoint of the run (``last.ckpt``
or a per-epoch file), says which, skips unreadable ones and removes orphan temporary files; the NaN guard refuses to
write checkpoints whose weights or optimiser state are not finite."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import dead_pid, task_config

from zoo.data.shapes import generate_shapes
from zoo.hub import WeightsError
from zoo.train.module import TaskModule
from zoo.train.run import (AtomicCheckpointIO, NonFiniteWeightsError, load_task_config, newest_checkpoint,
                           read_checkpoint, train)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train_images=16, num_val_images=4,
                           num_test_images=4, image_size=64, num_videos=4, video_frames=4)


def _config(shapes, out, epochs: int):
    cfg = load_task_config(task_config("vqa-shapes"))
    cfg["data"].update(root=str(shapes), batch_size=8, hflip=True)  # augmentation drawn from the torch generator
    cfg["data"].pop("val")
    cfg["data"].pop("test")
    cfg["trainer"].update(max_epochs=epochs, limit_train_batches=2, enable_progress_bar=False, log_every_n_steps=1)
    cfg["train"].update(output_dir=str(out), name="run", export=False, keep_last=-1)  # every epoch's file
    return cfg


def _weights(path) -> dict:
    return read_checkpoint(path)["state_dict"]


@pytest.fixture(scope="module")
def straight(shapes, tmp_path_factory):
    """An uninterrupted two-epoch run: what every resumed run must end at, bit for bit."""
    out = tmp_path_factory.mktemp("straight")
    train(_config(shapes, out, 2))
    return _weights(out / "run" / "checkpoints" / "last.ckpt")


@pytest.fixture(scope="module")
def straight_log(straight, tmp_path_factory):
    return (tmp_path_factory.getbasetemp() / "straight0" / "run" / "logs" / "metrics.csv").read_text()


class Killed(RuntimeError):
    pass


def _killed(shapes, out, monkeypatch, at_step: int = 3, every: int | None = None):
    """A two-epoch run stopped right after optimiser step ``at_step`` (3: the first step of the second epoch), as a
    kill would stop it: no checkpoint is written on the way out."""
    def kill(self, outputs, batch, batch_idx):
        if self.global_step == at_step:
            raise Killed(f"killed after step {at_step}")

    cfg = _config(shapes, out, 2)
    if every:
        cfg["train"]["save_every_n_steps"] = every
    with monkeypatch.context() as m:
        m.setattr(TaskModule, "on_train_batch_end", kill, raising=False)
        with pytest.raises(Killed):
            train(cfg)
    return out / "run" / "checkpoints", cfg


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_killed_run_resumes_bit_identical(shapes, tmp_path, straight, straight_log, monkeypatch):
    """Killed mid-epoch with step checkpoints, resumed from the newest: the same weights, bit for bit, as the
    uninterrupted run (the random generators' states travel in the checkpoint: hflip draws from them)."""
    ckpts, cfg = _killed(shapes, tmp_path, monkeypatch, at_step=3, every=1)
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch000.ckpt", "last.ckpt", "step0000003.ckpt"]
    assert newest_checkpoint(tmp_path / "run") == ckpts / "step0000003.ckpt"
    train(cfg, resume=True)
    assert _same(_weights(ckpts / "last.ckpt"), straight)
    # the log keeps the steps before the kill (Lightning's CSV logger would delete it) and holds each step once, losses
    # equal to the uninterrupted run's; one row is missing: Lightning hands a step's metrics to the logger after the
    # checkpoint callbacks of that step, so the row of the step the checkpoint ends on (logged at step 2, the update
    # that made global step 3) died with the killed process
    rows = (tmp_path / "run" / "logs" / "metrics.csv").read_text().splitlines()
    step = straight_log.splitlines()[0].split(",").index("step")
    assert rows == [r for r in straight_log.splitlines() if r.split(",")[step] != "2"]


@pytest.mark.parametrize("damage", ["missing", "truncated", "empty"])
def test_resume_from_the_epoch_file_when_last_is_lost(shapes, tmp_path, straight, straight_log, damage, capsys,
                                                      monkeypatch):
    """A kill during the first ``last.ckpt`` write leaves ``epoch000.ckpt`` and an orphan temporary file; a damaged
    ``last.ckpt`` (it cannot happen through the atomic writer, but disks fail) is skipped with a warning."""
    ckpts, cfg = _killed(shapes, tmp_path, monkeypatch)
    last = ckpts / "last.ckpt"
    orphan = ckpts / f".last.ckpt.{dead_pid()}.k1ll3d.tmp"
    orphan.write_bytes(last.read_bytes()[:1000])
    if damage == "missing":
        last.unlink()
    else:
        last.write_bytes(last.read_bytes()[:5000] if damage == "truncated" else b"")
    capsys.readouterr()
    train(cfg, resume=True)
    out = capsys.readouterr().out
    assert f"resuming from {ckpts / 'epoch000.ckpt'}" in out
    assert f"removed {orphan}" in out
    if damage != "missing":
        assert f"warning: --resume skips {last}" in out
    assert not orphan.exists()
    assert _same(_weights(last), straight)  # bit-identical to the uninterrupted run
    assert (tmp_path / "run" / "logs" / "metrics.csv").read_text() == straight_log  # every step once, none lost
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch000.ckpt", "epoch001.ckpt", "last.ckpt"]


def test_the_newest_checkpoint_is_the_one_with_most_steps(shapes, tmp_path, monkeypatch):
    """With per-epoch files all readable, the one with the most steps wins, not the latest written or the name."""
    ckpts, cfg = _killed(shapes, tmp_path, monkeypatch)
    train(cfg, resume=True)
    assert read_checkpoint(ckpts / "epoch001.ckpt")["global_step"] == 4
    (ckpts / "last.ckpt").unlink()
    os.utime(ckpts / "epoch000.ckpt")  # written last
    assert newest_checkpoint(tmp_path / "run") == ckpts / "epoch001.ckpt"


def test_a_folder_that_holds_a_run_is_an_error_unless_resume_or_overwrite(shapes, tmp_path, monkeypatch):
    """A run folder with only epoch files still holds a run: a new run there is a ConfigError naming train.name
    (nothing touched); ``overwrite=True`` replaces it, the old folder kept aside until the new run has finished
    and then removed."""
    from zoo.spec import ConfigError

    ckpts, cfg = _killed(shapes, tmp_path, monkeypatch)
    (ckpts / "last.ckpt").unlink()
    before = (ckpts / "epoch000.ckpt").read_bytes()
    with pytest.raises(ConfigError, match=r"already holds a run: pass --resume to continue it, --overwrite to "
                                          r"replace it") as info:
        train(_config(shapes, tmp_path, 1))
    assert info.value.path == "train.name"
    assert (ckpts / "epoch000.ckpt").read_bytes() == before
    result = train(_config(shapes, tmp_path, 1), overwrite=True)
    assert result["run_dir"] == str(tmp_path / "run")
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch000.ckpt", "last.ckpt"]
    assert (ckpts / "epoch000.ckpt").read_bytes() != before  # the new run's, one epoch from the start
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".run.replaced")] == []


def test_an_overwrite_that_fails_before_its_first_checkpoint_puts_the_old_run_back(tmp_path, capsys):
    """``overwrite=True`` and a config that fails at the data check (no data folder): the old run is back in place,
    byte for byte."""
    from zoo.spec import ConfigError

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"a checkpoint")
    cfg = load_task_config(task_config("vqa-shapes"), [f"train.output_dir={tmp_path}", "train.name=run",
                                                                  f"data.root={tmp_path / 'no-data'}"])
    with pytest.raises(ConfigError, match="data.root"):
        train(cfg, overwrite=True)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").read_bytes() == b"a checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert "the old run is back in" in capsys.readouterr().out


def test_no_readable_checkpoint_is_a_named_error(shapes, tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "last.ckpt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(FileNotFoundError, match=f"--resume: no checkpoint to resume from in {ckpts}"):
        train(_config(shapes, tmp_path, 1), resume=True)


def test_the_nan_guard_refuses_non_finite_weights(shapes, tmp_path, monkeypatch):
    """A step whose loss was finite but whose update left a NaN weight (the last step of epoch 1 here): neither
    ``epoch001.ckpt`` nor a new ``last.ckpt`` is written; the epoch-0 checkpoints stay as they were."""
    ckpts, cfg = _killed(shapes, tmp_path, monkeypatch)
    before = (ckpts / "last.ckpt").read_bytes()

    def poison(self, outputs, batch, batch_idx):
        if self.global_step == 4:  # after the last step of the second epoch (2 batches per epoch)
            with torch.no_grad():
                next(self.model.parameters()).view(-1)[0] = float("nan")

    monkeypatch.setattr(TaskModule, "on_train_batch_end", poison, raising=False)
    with pytest.raises(NonFiniteWeightsError, match=r"not writing .*epoch001\.ckpt: state_dict\.model\..* holds NaN "
                                                    r"or infinite values after global step 4"):
        train(cfg, resume=True)
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch000.ckpt", "last.ckpt"]
    assert (ckpts / "last.ckpt").read_bytes() == before


def test_the_nan_guard_checks_the_optimiser_state(tmp_path):
    io = AtomicCheckpointIO()
    good = {"state_dict": {"w": torch.ones(2)}, "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(2)}}}],
            "global_step": 7, "epoch": 1}
    io.save_checkpoint(good, tmp_path / "good.ckpt")
    assert torch.equal(read_checkpoint(tmp_path / "good.ckpt")["state_dict"]["w"], torch.ones(2))
    bad = {**good, "optimizer_states": [{"state": {0: {"exp_avg": torch.tensor([1.0, float("inf")])}}}]}
    with pytest.raises(NonFiniteWeightsError, match=r"optimizer_states\.0\.state\.0\.exp_avg holds NaN"):
        io.save_checkpoint(bad, tmp_path / "bad.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.ckpt"]
    with pytest.raises(WeightsError, match="bad.ckpt: no such checkpoint"):
        read_checkpoint(tmp_path / "bad.ckpt")


def test_retention_keeps_the_newest_epoch_last_and_best(shapes, tmp_path):
    """The default retention (``train.keep_last: 1``, a best checkpoint on the task's validation metric): after three
    epochs with validation the run holds ``epoch002.ckpt``, ``last.ckpt`` and ``best.ckpt``, the best holding the
    epoch whose validation score is the highest of metrics.csv (as results.json says); ``--resume`` never starts from
    the best file even when it is the newest written. ``keep_last: 2`` keeps two epoch files. Catches every epoch kept
    (the 5.9 MB per epoch of the main job), the best file written at the wrong epoch, or a resume that goes back."""
    import csv

    cfg = load_task_config(task_config("vqa-shapes"))
    cfg["data"].update(root=str(shapes), batch_size=8)
    cfg["data"].pop("test")
    cfg["trainer"].update(max_epochs=3, limit_train_batches=2, enable_progress_bar=False, log_every_n_steps=1,
                          check_val_every_n_epoch=1)
    cfg["train"].update(output_dir=str(tmp_path), name="run", export=False)
    results = train(cfg)
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.ckpt", "epoch002.ckpt", "last.ckpt"]
    rows = [r for r in csv.DictReader(open(tmp_path / "run" / "logs" / "metrics.csv")) if r.get("val/vqa_acc")]
    scores = [(float(r["val/vqa_acc"]), int(r["step"])) for r in rows]
    assert len(scores) == 3
    best_score = max(s for s, _ in scores)
    first_best_step = min(step for s, step in scores if s == best_score)
    best = read_checkpoint(ckpts / "best.ckpt")
    assert best["global_step"] == first_best_step + 1  # saved after the validation of that epoch's last step
    assert results["best"]["monitor"] == "val/vqa_acc" and results["best"]["score"] == pytest.approx(best_score)
    os.utime(ckpts / "best.ckpt")  # written last
    assert newest_checkpoint(tmp_path / "run") == ckpts / "last.ckpt"
    cfg["train"].update(name="two", keep_last=2, monitor=None)
    train(cfg)
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == \
        ["epoch001.ckpt", "epoch002.ckpt", "last.ckpt"]
