"""train.loggers: Lightning's MLflow and W&B loggers beside the CSV file, read back with the loggers' own readers (the
MLflow client; W&B's protobuf records of an offline run), and the config errors of the key."""

from __future__ import annotations

import csv
import json
import struct
import sys
from pathlib import Path

import pytest

from zoo.data.shapes import generate_shapes
from zoo.spec import ConfigError
from zoo.train.loggers import build_loggers, check_loggers
from zoo.train.run import load_task_config, train


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train_images=6, num_val_images=2,
                           num_test_images=2, image_size=64, num_videos=0)


def _config(shapes, out, loggers, *more):
    """The README's VQA job on the tiny data: 3 training steps, each logged, one validation and one test batch."""
    return load_task_config("vqa-shapes", [
        f"data.root={shapes}", "data.batch_size=4", "data.eval_batch_size=4", f"train.output_dir={out}",
        "train.name=run", "train.export=false", f"train.loggers={loggers}", "trainer.max_epochs=1",
        "trainer.check_val_every_n_epoch=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", *more])


def _csv_points(run: Path) -> set[tuple[str, int, float]]:
    """``(metric, step, value)`` of every cell of ``logs/metrics.csv``."""
    with open(run / "logs" / "metrics.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows
    return {(key, int(row["step"]), float(value)) for row in rows for key, value in row.items()
            if key != "step" and value != ""}


def _same_points(got: set, want: set) -> None:
    assert {(k, s) for k, s, _ in got} == {(k, s) for k, s, _ in want}
    lookup = {(k, s): v for k, s, v in want}
    for key, step, value in got:
        assert value == pytest.approx(lookup[key, step], rel=1e-6), (key, step)


def test_mlflow_holds_the_metrics_of_the_csv_and_the_config(shapes, tmp_path, monkeypatch):
    MlflowClient = pytest.importorskip("mlflow.tracking").MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")  # restored (unset) afterwards; the run sets it for its store
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    results = train(_config(shapes, tmp_path, "[csv, mlflow]"))
    run = Path(results["run_dir"])
    assert not (run / "logs" / "tb").exists()  # tensorboard was not asked for

    client = MlflowClient((run / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("mmzoo")
    [found] = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "run"
    assert found.info.status == "FINISHED"
    csv_points = _csv_points(run)
    assert {k for k, _, _ in csv_points} >= {"train/loss", "val/vqa_acc", "test/vqa_acc"}
    assert set(found.data.metrics) == {k for k, _, _ in csv_points}
    mlflow_points = {(key, m.step, m.value) for key in found.data.metrics
                     for m in client.get_metric_history(found.info.run_id, key)}
    _same_points(mlflow_points, csv_points)
    params = found.data.params
    assert params["task"] == "vqa"
    assert params["model/name"] == "x2vlm-tiny"
    assert params["optim/lr"] == "0.001"
    assert params["data/batch_size"] == "4"
    assert params["train/loggers"] == "['csv', 'mlflow']"


def _wandb_records(path: Path):
    """The protobuf records (``wandb.proto.wandb_internal_pb2.Record``) of an offline run's ``.wandb`` file: a 7-byte
    ``:W&B`` header, then LevelDB's log format (32 KiB blocks of chunks, each with a 7-byte header: CRC, length, type
    full / first / middle / last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, last
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def test_wandb_offline_run_holds_the_metrics_of_the_csv_and_the_config(shapes, tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    results = train(_config(shapes, tmp_path, "[wandb]", "train.wandb={tags: [tiny]}"))
    run = Path(results["run_dir"])
    printed = capsys.readouterr().out
    assert "train.loggers: csv added to ['wandb']" in printed

    [offline] = (run / "wandb").glob("offline-run-*/run-*.wandb")
    config, history, exits, runs = {}, set(), [], []
    for record in _wandb_records(offline):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            runs.append(record.run)
        elif kind == "config":
            config.update({_key(item): json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            values = {_key(item): json.loads(item.value_json) for item in record.history.item}
            step = values.pop("trainer/global_step")
            history |= {(k, int(step), float(v)) for k, v in values.items() if not k.startswith("_")}
        elif kind == "exit":
            exits.append(record.exit.exit_code)
    assert [(r.display_name, r.project, list(r.tags)) for r in runs] == [("run", "mmzoo", ["tiny"])]
    assert exits == [0]  # the run was ended when the training ended
    _same_points(history, _csv_points(run))
    assert config["task"] == "vqa"
    assert config["optim"]["lr"] == 0.001
    assert config["train"]["loggers"] == ["wandb"]


def test_the_default_is_csv_and_tensorboard_and_csv_stays_on(tmp_path, capsys):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    assert check_loggers({"train": {}}) == ["csv", "tensorboard"]
    assert capsys.readouterr().out == ""
    csv_logger = CSVLogger(tmp_path, name="logs", version="")
    built = build_loggers({"train": {}}, tmp_path, ["csv", "tensorboard"], csv_logger)
    assert built[0] is csv_logger and isinstance(built[1], TensorBoardLogger) and len(built) == 2
    assert Path(built[1].log_dir) == tmp_path / "logs" / "tb"
    assert check_loggers({"train": {"loggers": ["mlflow", "tensorboard", "mlflow"]}}) == ["csv", "mlflow",
                                                                                          "tensorboard"]
    assert capsys.readouterr().out.count("\n") == 1  # one line saying csv was added


def test_an_unknown_logger_name_is_a_config_error_with_the_accepted_names():
    with pytest.raises(ConfigError, match=r"train\.loggers: expected a list of names from csv, tensorboard, wandb, "
                                          r"mlflow.*'wandbb': did you mean 'wandb'\?"):
        load_task_config("vqa-shapes", ["train.loggers=[csv, wandbb]"])
    with pytest.raises(ConfigError, match=r"train\.loggers: .*got str 'mlflow'$"):
        load_task_config("vqa-shapes", ["train.loggers=mlflow"])  # a list, not a lone name


@pytest.mark.parametrize("name,package", [("mlflow", "mlflow-skinny"), ("wandb", "wandb")])
def test_a_logger_whose_package_is_missing_is_a_one_line_config_error(shapes, tmp_path, monkeypatch, name, package):
    monkeypatch.setitem(sys.modules, name, None)  # `import NAME` raises ImportError
    with pytest.raises(ConfigError) as err:
        train(_config(shapes, tmp_path, f"[csv, {name}]"))
    assert "train.loggers" in str(err.value) and f"pip install {package}" in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()  # refused before anything was built


def test_a_setting_the_logger_does_not_take_is_a_config_error():
    pytest.importorskip("mlflow")
    cfg = load_task_config("vqa-shapes", ["train.loggers=[mlflow]", "train.mlflow={tracking_ur: file:x}"])
    with pytest.raises(ConfigError, match=r"train\.mlflow\.tracking_ur: unknown key .*did you mean 'tracking_uri'"):
        check_loggers(cfg)
    with pytest.raises(ConfigError, match=r"train\.wandb: expected a mapping or null, got str"):
        load_task_config("vqa-shapes", ["train.wandb=offline"])
