"""The loggers of ``mmzoo train``: ``train.loggers`` picks Lightning's own loggers by name.

``train.loggers`` is a list of names from :data:`LOGGERS` (default ``[csv, tensorboard]``). ``csv`` is always on: the
run's ``logs/metrics.csv`` feeds ``curves.png`` and ``--resume``; a list without it gets it back, and one printed line
says so. ``wandb`` (Lightning's ``WandbLogger``) takes its arguments from ``train.wandb`` and ``mlflow`` (Lightning's
``MLFlowLogger``) from ``train.mlflow``; both receive the resolved config as hyperparameters. A named logger whose
package is missing, or a setting neither the Lightning logger nor (for W&B) ``wandb.init`` takes, is a
:class:`zoo.spec.ConfigError`, raised by :func:`check_loggers` before the model is built.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zoo.spec import ConfigError
from zoo.train.config_checks import LOGGER_NAMES, check_value, unknown_key

__all__ = ["DEFAULT_LOGGERS", "LOGGERS", "build_loggers", "check_loggers", "close_loggers"]

LOGGERS = LOGGER_NAMES  # csv, tensorboard, wandb, mlflow
DEFAULT_LOGGERS = ("csv", "tensorboard")
# a logger's module and the pip package(s) that bring it
PACKAGES = {"wandb": ("wandb", "pip install wandb"), "mlflow": ("mlflow", "pip install mlflow-skinny (or mlflow)")}


def _settings(tcfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    return dict(tcfg.get(name) or {})


def check_loggers(cfg: Mapping[str, Any]) -> list[str]:
    """The names of the run's loggers (``train.loggers``, ``csv`` first and always there, each name once), after
    checking that their packages import and their settings are arguments they take; raises :class:`ConfigError`."""
    file = cfg.get("_file")
    tcfg = dict(cfg.get("train") or {})
    given = tcfg.get("loggers")
    if given is None:
        return list(DEFAULT_LOGGERS)
    check_value("train.loggers", given, file)
    names = list(dict.fromkeys(given))
    if "csv" not in names:
        print(f"train.loggers: csv added to {names} (always on: logs/metrics.csv feeds curves.png and --resume)")
        names.insert(0, "csv")
    for name in names:
        if name not in PACKAGES:
            continue
        module, install = PACKAGES[name]
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(f"the {name} logger needs the {module} package, which is not installed: {install}",
                              "train.loggers", file) from None
        check_value(f"train.{name}", tcfg.get(name), file)
        accepted = _accepted_settings(name)
        for key in _settings(tcfg, name):
            if key not in accepted:
                raise unknown_key(f"train.{name}", key, accepted, file)
    return names


def _accepted_settings(name: str) -> set[str]:
    """The keys of ``train.wandb`` / ``train.mlflow``: the arguments of Lightning's logger (and of ``wandb.init``,
    which ``WandbLogger`` passes its other keyword arguments to)."""
    from lightning.pytorch import loggers

    functions: list[Any] = [loggers.WandbLogger.__init__] if name == "wandb" else [loggers.MLFlowLogger.__init__]
    if name == "wandb":
        import wandb

        functions.append(wandb.init)
    return {p.name for f in functions for p in inspect.signature(f).parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def build_loggers(cfg: Mapping[str, Any], run_dir: Path, names: Sequence[str], csv_logger: Any) -> list[Any]:
    """Lightning's loggers for ``names`` (from :func:`check_loggers`), in that order; ``csv_logger`` is the run's CSV
    logger (a fresh one, or the one of a resumed run that keeps ``metrics.csv``). W&B and MLflow log the config
    (without ``_file``) as hyperparameters."""
    tcfg = dict(cfg.get("train") or {})
    run_name = Path(run_dir).name
    out: list[Any] = []
    for name in names:
        if name == "csv":
            out.append(csv_logger)
        elif name == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            out.append(TensorBoardLogger(run_dir, name="logs", version="tb"))
        elif name == "wandb":
            out.append(_wandb_logger(_settings(tcfg, "wandb"), run_dir, run_name))
        elif name == "mlflow":
            out.append(_mlflow_logger(_settings(tcfg, "mlflow"), run_dir, run_name))
    hparams = {k: v for k, v in cfg.items() if k != "_file"}
    for logger in out:
        if _is_external(logger):
            logger.log_hyperparams(hparams)
    return out


def _is_external(logger: Any) -> bool:
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    return isinstance(logger, (MLFlowLogger, WandbLogger))


def _wandb_logger(settings: dict[str, Any], run_dir: Path, run_name: str) -> Any:
    """``WandbLogger``: project ``mmzoo`` (or ``$WANDB_PROJECT``), the run's name, files under the run folder
    (``wandb/``); ``mode`` left to wandb (``$WANDB_MODE``) unless ``train.wandb.mode`` gives it."""
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    args = {"project": os.environ.get("WANDB_PROJECT") or "mmzoo", "name": run_name, "save_dir": str(run_dir),
            **settings}
    Path(args["save_dir"]).mkdir(parents=True, exist_ok=True)
    logger = WandbLogger(**args)
    # a run that was already in progress is reused by WandbLogger and stays open; one started here ends with the run
    logger._mmzoo_finish = wandb.run is None
    return logger


def _mlflow_logger(settings: dict[str, Any], run_dir: Path, run_name: str) -> Any:
    """``MLFlowLogger``: tracking URI ``$MLFLOW_TRACKING_URI`` or a file store in the run folder (``mlruns/``),
    experiment ``mmzoo``, the run's name."""
    from lightning.pytorch.loggers import MLFlowLogger

    uri = settings.pop("tracking_uri", None) or os.environ.get("MLFLOW_TRACKING_URI") \
        or (Path(run_dir) / "mlruns").resolve().as_uri()
    if uri.startswith("file:") or "://" not in uri:
        # MLflow 3 refuses its file store unless asked for it; older releases ignore the variable
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    args = {"experiment_name": "mmzoo", "run_name": run_name, "tracking_uri": uri, **settings}
    return MLFlowLogger(**args)


def close_loggers(loggers: Sequence[Any], failed: bool = False) -> None:
    """End the W&B runs this training started (Lightning leaves them open, and the next ``WandbLogger`` of the
    process would log into them); MLflow runs are ended by Lightning itself."""
    for logger in loggers:
        run = getattr(logger, "_experiment", None)
        if getattr(logger, "_mmzoo_finish", False) and run is not None and hasattr(run, "finish"):
            run.finish(exit_code=1 if failed else 0)
