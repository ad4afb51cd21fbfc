"""Building models and parts from names, files or dicts: ``create_model``, ``list_models``, ``model_info``."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from zoo.catalog import MODEL_FILE_KEYS, check_model_file_keys, load_model_config, model_names
from zoo.spec import ConfigError, apply_overrides, build, deep_merge, validate

__all__ = ["create_model", "list_models", "model_info", "resolve_config", "build_part"]


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names (config files), optionally filtered by a glob pattern such as ``"x2vlm*"``."""
    return model_names(pattern)


def resolve_config(
    name_or_config: str | os.PathLike | Mapping,
    task: str | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    model_overrides: Mapping[str, Any] | None = None,
) -> dict:
    """The full model config after inheritance, task selection and overrides; validated, nothing built.

    ``overrides``: ``key.sub=value`` strings (or a mapping) relative to the model file (``model.vision.depth=2``).
    ``model_overrides``: a mapping relative to the ``model`` tree (``{"vision.depth": 2}`` or ``{"vision": {...}}``),
    except for top-level file keys such as ``attention``.
    """
    cfg = load_model_config(name_or_config if not isinstance(name_or_config, Mapping) else copy.deepcopy(dict(name_or_config)))
    file = cfg.get("_file")
    task = task if task is not None else None
    if task is not None:
        tasks = cfg.get("tasks") or {}
        if task in tasks:
            cfg["model"] = deep_merge(cfg["model"], tasks[task] or {})
        elif tasks:
            known = ", ".join(sorted(tasks))
            raise ConfigError(f"model {cfg.get('name')!r} has no task {task!r}; tasks: {known}", "tasks", file)
        else:
            # a file without task variants builds one model for every task it serves (eP-ALM, MultiModal-GPT): the
            # task is checked against what the built model supports (create_model)
            cfg["_serves_task"] = task
        cfg["task"] = task
    cfg = apply_overrides(cfg, overrides, file=file)
    check_model_file_keys(cfg, file)  # an override spelt from the model tree ("vision.depth=2", not "model.vision...")
    if model_overrides:
        top = {k: v for k, v in model_overrides.items() if k in MODEL_FILE_KEYS and k != "model"}
        rest = {k: v for k, v in model_overrides.items() if k not in top}
        cfg.update(copy.deepcopy(top))
        cfg["model"] = apply_overrides(cfg["model"], rest, file=file)
    _import_user_modules(cfg.get("imports") or [], file, trusted=cfg.get("_trust_imports", True))
    validate(cfg["model"], "model", "model", file)
    if cfg.get("attention") is not None:
        from zoo.modules.attention import BACKENDS  # noqa: PLC0415

        if cfg["attention"] not in BACKENDS:
            raise ConfigError(f"expected one of {', '.join(BACKENDS)}, got {cfg['attention']!r}", "attention", file)
    return cfg


def _import_user_modules(modules: list, file, trusted: bool = True) -> None:
    """Import the modules a config's ``imports`` names (they register user parts).

    ``trusted`` False (an export or checkpoint being loaded, :func:`zoo.hub.from_pretrained`): nothing is imported.
    A module already imported, or one that an installed plug-in's entry point (group ``mmzoo.plugins``) provides, is
    fine (the entry points are loaded: installing a package is the user's decision, a file naming a module is not);
    any other raises :class:`zoo.hub.WeightsError` naming it and the way to allow it."""
    import importlib  # noqa: PLC0415
    import sys  # noqa: PLC0415

    for i, name in enumerate(modules):
        if not isinstance(name, str):
            raise ConfigError(f"expected a module name, got {type(name).__name__}", f"imports[{i}]", file)
        if not trusted:
            if name in sys.modules or _from_plugin(name):
                continue
            from zoo.hub import WeightsError  # noqa: PLC0415

            raise WeightsError(f"module {name!r} is not imported: loading an export or checkpoint never imports the "
                               "modules its config names (importing runs their code). Install the plug-in that "
                               "provides it (entry point group mmzoo.plugins) or import it yourself first; or, if you "
                               "trust this file, pass trust_imports=True (mmzoo: --trust-imports)",
                               f"imports[{i}]", file)
        # a module is looked for next to the config file first (a plug-in file beside its YAML, as `python
        # script.py` finds modules beside the script), then on the import path
        folder = str(Path(file).resolve().parent) if isinstance(file, (str, os.PathLike)) and file else None
        added = folder is not None and folder not in sys.path
        if added:
            sys.path.insert(0, folder)
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"cannot import module {name!r} (looked for next to the config file and on the "
                              f"import path): {exc}", f"imports[{i}]", file) from None
        finally:
            if added and folder in sys.path:
                sys.path.remove(folder)


def _from_plugin(name: str) -> bool:
    """Whether an installed ``mmzoo.plugins`` entry point provides module ``name`` (then the plug-ins are loaded)."""
    import sys  # noqa: PLC0415
    from importlib.metadata import entry_points  # noqa: PLC0415

    from zoo.registry import PLUGIN_GROUP, load_plugins  # noqa: PLC0415

    modules = {ep.module for ep in entry_points(group=PLUGIN_GROUP)}
    if not any(m == name or m.startswith(name + ".") or name.startswith(m + ".") for m in modules):
        return False
    load_plugins()
    return name in sys.modules or any(m in sys.modules for m in modules if m.startswith(name + "."))


def _finish(model, cfg: dict):
    from zoo.modules.attention import set_attention_backend  # noqa: PLC0415

    if cfg.get("attention") is not None:
        set_attention_backend(model, cfg["attention"])
    if cfg.get("preprocess") is not None:  # checked when built, named by its file (zoo.processing)
        from zoo.processing import check_preprocess_section  # noqa: PLC0415

        check_preprocess_section(cfg["preprocess"], cfg.get("_file"))
    clean = {k: v for k, v in cfg.items() if k != "tasks" and not k.startswith("_")}
    try:
        model.zoo_config = clean
    except AttributeError:
        pass
    return model


def create_model(
    name_or_config: str | os.PathLike | Mapping,
    task: str | None = None,
    pretrained: str | os.PathLike | None = None,
    *,
    overrides: Iterable[str] = (),
    device: Any = None,
    pretrained_strict: bool | None = None,
    pretrained_parts: Iterable[str] | None = None,
    **model_overrides: Any,
):
    """Build a registered model.

    Args:
        name_or_config: a registered name (``zoo.list_models()``), a YAML file, or a config dict.
        task: a task variant declared in the model file (``"vqa"``, ``"retrieval"``, ...); None = the base model.
        pretrained: a local weights file or an export folder loaded strictly after building (default: the model
            file's ``pretrained:``); recorded in the model's config. Or a tag of the model file's ``pretrained:`` table
            of official checkpoints (``"official"``: the default one for ``task``): downloaded, verified and
            converted once into ``$MMZOO_HOME`` (:func:`zoo.weights.pretrained_export`); the tag fixes the task (left
            out, the tag's) and the resolution: the model is the converted export, with ``model_overrides`` applied.
            Loaded part by part (``pretrained_parts`` or ``pretrained_strict=False``) a tag may start another task.
        pretrained_strict: False loads ``pretrained`` part by part, for weights of the same model built for another
            task (fine-tuning a VQA or pre-training model on NLVR, say): each top-level part the file holds must load
            whole, parts the file lacks keep their initialisation (the new task head), and the file's parts the
            model lacks (the old task's head) are left out; ``model.load_report`` lists both. Default: the config's
            ``pretrained_strict``, else True (every tensor loaded, nothing left over).
        pretrained_parts: only these top-level parts of ``pretrained`` are loaded (``["vision"]``: an image model's
            vision encoder into a video model), each whole, the others keep their initialisation; implies part-by-part
            loading. When ``pretrained`` is an export whose tokenizer differs from the model's (and the load is part
            by part: ``pretrained_parts`` or ``pretrained_strict=False``), the token-indexed tensors (word
            embeddings, LM heads) load by token (:func:`zoo.hub.transfer_vocabulary`: the rows of the
            tokens both hold are copied, the model's other tokens keep their initialisation; ``load_report
            ["vocabulary"]`` counts them). Default: the config's ``pretrained_parts``, else all.
        overrides: ``key.sub=value`` strings relative to the model file (as on the command line).
        device: build directly on this device (``"meta"`` builds without memory).
        **model_overrides: changes to the model tree, ``create_model(name, **{"vision.depth": 2})`` or
            ``create_model(name, vision={"depth": 2})``; ``attention="math"`` picks the attention backend.
    """
    from zoo.weights import tag_export  # noqa: PLC0415

    whole = pretrained_parts is None and pretrained_strict is not False
    tagged = None if isinstance(name_or_config, Mapping) else tag_export(str(name_or_config), pretrained, task, whole)
    if tagged is not None:
        from zoo.hub import from_pretrained  # noqa: PLC0415

        folder, entry = tagged
        if whole and not overrides and device is None:
            return from_pretrained(folder, **model_overrides)
        task = entry.task if whole else task
        pretrained = str(folder)  # a part-by-part start (or a build with string overrides) from the converted export
    cfg = resolve_config(name_or_config, task, overrides, model_overrides)
    if device is not None:
        import torch  # noqa: PLC0415

        with torch.device(device):
            model = build(cfg["model"], "model", "model", cfg.get("_file"), validated=True)
    else:
        model = build(cfg["model"], "model", "model", cfg.get("_file"), validated=True)
    pretrained = pretrained if pretrained is not None else cfg.get("pretrained")
    strict = pretrained_strict if pretrained_strict is not None else cfg.get("pretrained_strict", True)
    if not isinstance(strict, bool):
        raise ConfigError(f"expected true or false, got {strict!r}", "pretrained_strict", cfg.get("_file"))
    parts = pretrained_parts if pretrained_parts is not None else cfg.get("pretrained_parts")
    if parts is not None:
        if isinstance(parts, str) or not all(isinstance(p, str) and p for p in parts) or not parts:
            raise ConfigError(f"expected a list of part names such as ['vision'], got {parts!r}", "pretrained_parts",
                              cfg.get("_file"))
        parts, strict = list(parts), False
    if pretrained is not None:
        cfg["pretrained"] = str(pretrained)
        if not strict:
            cfg["pretrained_strict"] = False  # a rebuild from the config (trainable-only export) loads it alike
        if parts is not None:
            cfg["pretrained_parts"] = parts
    _finish(model, cfg)
    task_name = cfg.pop("_serves_task", None)
    if task_name is not None and hasattr(model, "supported_tasks") and task_name not in model.supported_tasks():
        raise ConfigError(f"model {cfg.get('name')!r} has no task variants and does not train on {task_name!r}; it "
                          f"trains on {', '.join(model.supported_tasks()) or 'nothing'} as built", "task",
                          cfg.get("_file"))
    if pretrained is not None:
        from zoo.hub import load_state_dict, load_weights  # noqa: PLC0415

        if strict:
            load_weights(model, pretrained)
        elif parts is None:
            model.load_report = _load_by_part(model, load_state_dict(pretrained), str(pretrained))
        else:
            model.load_report = _load_parts(model, load_state_dict(pretrained), parts, str(pretrained),
                                            cfg.get("_file"))
    return model


def _load_parts(model, state: Mapping, parts: list[str], where: str, file: Any) -> dict[str, list]:
    """:func:`_load_by_part` of the tensors of ``parts`` only; a part the file or the model lacks is a
    ConfigError naming ``pretrained_parts``."""
    in_file = {k.split(".", 1)[0] for k in state}
    in_model = {k.split(".", 1)[0] for k in model.state_dict()}
    for part in parts:
        if part not in in_file or part not in in_model:
            holder = "the model" if part in in_file else where
            have = sorted(in_model if part in in_file else in_file)
            raise ConfigError(f"{part!r} is not a part of {holder} (its parts: {', '.join(have)})", "pretrained_parts",
                              file)
    report = _load_by_part(model, {k: v for k, v in state.items() if k.split(".", 1)[0] in parts}, where)
    report["left_out"] = sorted(in_file - set(parts))
    return report


def _load_by_part(model, state: dict, where: str) -> dict[str, Any]:
    """:func:`zoo.hub.load_weights_by_part` of ``state``; when ``where`` is an export folder with its tokenizer, the
    token-indexed tensors first move to the model's vocabulary (:func:`zoo.hub.transfer_vocabulary`: the tokenizer
    tells which row is which token, so weights of another vocabulary load by token; ``report["vocabulary"]``)."""
    from zoo.hub import TOKENIZER_DIR, load_weights_by_part, transfer_vocabulary  # noqa: PLC0415

    folder = Path(where) / TOKENIZER_DIR
    vocabulary = None
    if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
        vocabulary = transfer_vocabulary(model, state, folder, what=where)
    report = load_weights_by_part(model, state, what=where)
    if vocabulary is not None:
        report["vocabulary"] = vocabulary
    return report


def build_part(config: Mapping, kind: str):
    """Build one part (``kind`` = ``vision_encoder``, ``text_encoder``, ``fusion``, ...) from ``{type: NAME, ...}``."""
    return build(config, kind, kind)


def model_info(name_or_config: str | os.PathLike | Mapping, task: str | None = None) -> dict:
    """Parameter count, parts, task variants (``tasks``), the tasks it can be trained on as built
    (``supported_tasks``) and default resolution of a model, built on the meta device (no memory)."""
    from zoo.models.base import count_parameters, input_resolution  # noqa: PLC0415

    cfg = resolve_config(name_or_config, task)
    model = create_model(cfg, device="meta")
    tree = cfg["model"]
    parts = {}
    for child_name, child in model.named_children():
        sub = tree.get(child_name)
        parts[child_name] = {
            "type": sub.get("type") if isinstance(sub, Mapping) else type(child).__name__,
            "params": count_parameters(child),
        }
    base = load_model_config(name_or_config if not isinstance(name_or_config, Mapping) else dict(name_or_config))
    return {
        "name": cfg.get("name"),
        "description": cfg.get("description", ""),
        "model_type": tree["type"],
        "task": task,
        "params": count_parameters(model),
        "trainable_params": count_parameters(model, trainable_only=True),
        "parts": parts,
        "tasks": sorted((base.get("tasks") or {}).keys()),
        "supported_tasks": model.supported_tasks() if hasattr(model, "supported_tasks") else [],
        # the side the built model takes (a task variant may change it: x2vlm-base's vqa runs at 768), else the
        # file's default
        "default_resolution": input_resolution(model) or cfg.get("default_resolution"),
        "file": cfg.get("_file"),
    }
