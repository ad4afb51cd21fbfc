"""The catalogue of named configs: models under ``zoo/configs/models/`` (architectures are data) and task configs
(fine-tuning jobs, :func:`zoo.train.run.load_task_config`) under ``zoo/configs/tasks/``. Both folders are part of the
package, so an installed wheel carries them.

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

Model directories searched, in order: those added with :func:`add_config_dir`, those in the ``MMZOO_CONFIG_PATH``
environment variable (``os.pathsep``-separated), then the package's own ``zoo/configs/models``. Listing needs no
import of torch or of any model family.

Task configs are found the same way, with ``kind="tasks"``: directories added with ``add_config_dir(path,
kind="tasks")``, then those in ``MMZOO_TASK_CONFIG_PATH``, then ``zoo/configs/tasks``. A task config's name is its
file stem (``vqa-shapes`` for ``vqa-shapes.yaml``); :func:`task_config_path` takes a name or a path to a YAML file.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zoo.spec import ConfigError, load_yaml

__all__ = ["add_config_dir", "remove_config_dir", "config_dirs", "model_names", "model_config_path", "load_model_config",
           "task_config_names", "task_config_path", "MODEL_FILE_KEYS",
           "check_model_file_keys"]

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
    "pretrained": (str, dict, type(None)),  # a weights path, or the table of official checkpoints (zoo.weights)
    "pretrained_strict": (bool,),
    "pretrained_parts": (list, type(None)),
    "task": (str, type(None)),
    "imports": (list,),
    "weights": (str,),
    "answers": (list,),
}


def check_model_file_keys(cfg: Mapping, file=None) -> None:
    """A ConfigError for a top-level key a model file does not take, or a value of the wrong type (keys starting with
    ``_`` are the loader's own)."""
    for key, value in cfg.items():
        if key.startswith("_"):
            continue
        if key not in MODEL_FILE_KEYS:
            model = cfg.get("model")
            hint = f" (a key of the model tree: 'model.{key}')" if isinstance(model, Mapping) and key in model else ""
            raise ConfigError(
                f"unknown top-level key {key!r}{hint}; accepted: {', '.join(sorted(MODEL_FILE_KEYS))}", key, file
            )
        if not isinstance(value, MODEL_FILE_KEYS[key]):
            want = " or ".join(t.__name__ for t in MODEL_FILE_KEYS[key])
            raise ConfigError(f"expected {want}, got {type(value).__name__}", key, file)


CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
_KINDS = {"models": "MMZOO_CONFIG_PATH", "tasks": "MMZOO_TASK_CONFIG_PATH"}  # kind -> environment variable
_extra_dirs: dict[str, list[Path]] = {kind: [] for kind in _KINDS}


def _check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise ValueError(f"unknown config kind {kind!r}; expected one of {', '.join(_KINDS)}")


def add_config_dir(path: str | os.PathLike, kind: str = "models") -> None:
    """Make the YAML files in ``path`` available by name, searched before the built-in ones: model files
    (``kind="models"``) or task configs (``kind="tasks"``)."""
    _check_kind(kind)
    p = Path(path)
    if not p.is_dir():
        raise NotADirectoryError(f"add_config_dir: {p} is not a directory")
    if p not in _extra_dirs[kind]:
        _extra_dirs[kind].insert(0, p)


def remove_config_dir(path: str | os.PathLike, kind: str = "models") -> None:
    """Undo :func:`add_config_dir` (for tests and notebooks); a folder that was not added raises ValueError."""
    _check_kind(kind)
    p = Path(path)
    if p not in _extra_dirs[kind]:
        raise ValueError(f"remove_config_dir: {p} was not added for {kind}")
    _extra_dirs[kind].remove(p)


def config_dirs(kind: str = "models") -> list[Path]:
    """The directories searched for named configs of ``kind`` ("models" or "tasks"), first match winning. The
    ``mmzoo.plugins`` entry points are loaded first, so a plug-in's :func:`add_config_dir` counts from the start."""
    from zoo.registry import load_plugins  # noqa: PLC0415

    _check_kind(kind)
    load_plugins()
    env = [Path(x) for x in os.environ.get(_KINDS[kind], "").split(os.pathsep) if x]
    return [*_extra_dirs[kind], *env, CONFIGS_DIR / kind]


def _index(kind: str = "models") -> dict[str, Path]:
    """name -> file, earlier directories winning. Model names come from ``name:`` when present, else the file stem;
    task config names are the file stem."""
    found: dict[str, Path] = {}
    for d in reversed(config_dirs(kind)):
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.yaml")):
            if f.name.startswith("_"):  # _base files are for inheritance only
                continue
            found[_declared_name(f) if kind == "models" else f.stem] = f
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
    names = sorted(_index("models"))
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def model_config_path(name: str) -> Path:
    index = _index("models")
    if name not in index:
        from zoo.registry import UnknownNameError  # noqa: PLC0415

        raise UnknownNameError("model", name, sorted(index))
    return index[name]


def task_config_names(pattern: str | None = None) -> list[str]:
    """Names of the task configs (``zoo/configs/tasks`` and the task directories added), sorted."""
    names = sorted(_index("tasks"))
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def task_config_path(name_or_path: str | os.PathLike) -> Path:
    """The task config file for ``name_or_path``.

    A ``Path``, or a string that ends with ``.yaml``/``.yml``, names an existing file or holds a directory separator,
    is a path, returned unchanged (relative to the current directory). Any other string is the name of a task config:
    ``vqa-shapes`` -> ``zoo/configs/tasks/vqa-shapes.yaml`` (directories added with ``add_config_dir(path,
    kind="tasks")`` and ``MMZOO_TASK_CONFIG_PATH`` first). An unknown name is a one-line :class:`ConfigError` with
    the closest names and the list of task configs."""
    text = os.fspath(name_or_path)
    path = Path(text)
    if isinstance(name_or_path, os.PathLike) or text.endswith((".yaml", ".yml")) or path.is_file() \
            or any(sep in text for sep in (os.sep, os.altsep) if sep):
        return path
    index = _index("tasks")
    if text in index:
        return index[text]
    import difflib  # noqa: PLC0415

    close = difflib.get_close_matches(text, list(index), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "."
    raise ConfigError(f"unknown task config {text!r}: no such YAML file or task config name{hint} Task configs: "
                      f"{', '.join(sorted(index)) or '(none)'}")


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
    check_model_file_keys(cfg, file)
    if "model" not in cfg:
        raise ConfigError("missing 'model' (the model config tree {type: NAME, ...})", None, file)
    if isinstance(cfg.get("pretrained"), dict):  # the official checkpoints of this model, not of one built from it
        table = cfg.pop("pretrained")
        cfg["_pretrained_table"] = table if file is None else _own_value(Path(file), "pretrained") or {}
    cfg["_file"] = str(file) if file is not None else None
    return cfg


def _own_value(file: Path, key: str) -> Any:
    """The top-level ``key`` as ``file`` itself sets it, without what a ``_base_`` it inherits from adds: a model
    file derived from another (``x2vlm-tiny`` from ``x2vlm-base``) does not inherit its official checkpoints."""
    import yaml  # noqa: PLC0415

    with open(file, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    return data.get(key) if isinstance(data, dict) else None
