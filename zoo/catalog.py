"""The catalogue of named models: YAML files under ``configs/models/`` (architectures are data).

A model file holds::

    _base_: other-model.yaml        # optional inheritance
    name: x2vlm-tiny                 # optional; defaults to the file name
    description: ...
    default_resolution: 224
    attention: auto                  # optional attention backend for the whole model
    imports: [my_package.encoders]   # optional: modules imported first (they register user parts)
    model: {type: REGISTERED_MODEL, ...parts...}
    tasks:                           # optional: task name -> overrides merged into `model`
      vqa: {head: {type: ...}}
    answers: [yes, no, ...]          # written by VQA fine-tuning: the answers a generative head ranks at prediction

Directories searched, in order: those added with :func:`add_config_dir`, those in the ``MMZOO_CONFIG_PATH``
environment variable (``os.pathsep``-separated), then the project's own ``configs/models``. Listing needs no import
of torch or of any model family.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any

from zoo.spec import ConfigError, load_yaml

__all__ = ["add_config_dir", "config_dirs", "model_names", "model_config_path", "load_model_config", "MODEL_FILE_KEYS"]

MODEL_FILE_KEYS = {
    "name": (str,),
    "description": (str,),
    "default_resolution": (int,),
    "attention": (str, type(None)),
    "model": (dict,),
    "tasks": (dict,),
    "tags": (list,),
    "tokenizer": (str, dict, type(None)),
    "preprocess": (dict,),
    "pretrained": (str, type(None)),
    "pretrained_strict": (bool,),
    "task": (str, type(None)),
    "imports": (list,),
    "weights": (str,),
    "answers": (list,),
}

_extra_dirs: list[Path] = []
_BUILTIN_DIR = Path(__file__).resolve().parent.parent / "configs" / "models"


def add_config_dir(path: str | os.PathLike) -> None:
    """Make the model YAML files in ``path`` available by name (searched before the built-in ones)."""
    p = Path(path)
    if not p.is_dir():
        raise NotADirectoryError(f"add_config_dir: {p} is not a directory")
    if p not in _extra_dirs:
        _extra_dirs.insert(0, p)


def config_dirs() -> list[Path]:
    env = [Path(x) for x in os.environ.get("MMZOO_CONFIG_PATH", "").split(os.pathsep) if x]
    return [*_extra_dirs, *env, _BUILTIN_DIR]


def _index() -> dict[str, Path]:
    """name -> file, earlier directories winning. Names come from ``name:`` when present, else the file stem."""
    found: dict[str, Path] = {}
    for d in reversed(config_dirs()):
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.yaml")):
            if f.name.startswith("_"):  # _base files are for inheritance only
                continue
            found[_declared_name(f)] = f
    return found


def _declared_name(path: Path) -> str:
    # cheap scan of the first lines for "name:" to avoid parsing every file when listing
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("name:"):
                value = line.split(":", 1)[1].split("#", 1)[0].strip().strip("'\"")
                if value:
                    return value
    return path.stem


def model_names(pattern: str | None = None) -> list[str]:
    names = sorted(_index())
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def model_config_path(name: str) -> Path:
    index = _index()
    if name not in index:
        from zoo.registry import UnknownNameError  # noqa: PLC0415

        raise UnknownNameError("model", name, sorted(index))
    return index[name]


def load_model_config(name_or_path: str | os.PathLike | dict) -> dict[str, Any]:
    """A model file as a dict (inheritance resolved), with ``name`` and ``_file`` filled in; checked at the top level."""
    if isinstance(name_or_path, dict):
        cfg, file = dict(name_or_path), name_or_path.get("_file")
        if "model" not in cfg and "type" in cfg:  # a bare model tree
            cfg = {"model": cfg}
    else:
        text = str(name_or_path)
        path = Path(text)
        if text.endswith((".yaml", ".yml")) or path.is_file():
            file = path
        else:
            file = model_config_path(text)
        cfg = load_yaml(file)
        cfg.setdefault("name", Path(file).stem)
    for key, value in cfg.items():
        if key.startswith("_"):
            continue
        if key not in MODEL_FILE_KEYS:
            raise ConfigError(
                f"unknown top-level key {key!r}; accepted: {', '.join(sorted(MODEL_FILE_KEYS))}", key, file
            )
        if not isinstance(value, MODEL_FILE_KEYS[key]):
            want = " or ".join(t.__name__ for t in MODEL_FILE_KEYS[key])
            raise ConfigError(f"expected {want}, got {type(value).__name__}", key, file)
    if "model" not in cfg:
        raise ConfigError("missing 'model' (the model config tree {type: NAME, ...})", None, file)
    cfg["_file"] = str(file) if file is not None else None
    return cfg
