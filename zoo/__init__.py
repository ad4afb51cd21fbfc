"""mmzoo: a modular multimodal model zoo.

Importing :mod:`zoo` is cheap: it imports neither torch nor any model family. The public functions below import what
they need on first use.

    >>> import zoo
    >>> zoo.list_models("x2vlm*")
    >>> model = zoo.create_model("x2vlm-tiny", task="vqa")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zoo.registry import (
    ADAPTERS,
    DATASETS,
    FUSIONS,
    HEADS,
    LANGUAGE_MODELS,
    MODELS,
    REGISTRIES,
    SIDE_STREAMS,
    TASKS,
    TEXT_ENCODERS,
    VISION_ENCODERS,
    Registry,
    UnknownNameError,
)

__version__ = "0.1.0"

register_vision_encoder = VISION_ENCODERS.register
register_text_encoder = TEXT_ENCODERS.register
register_fusion = FUSIONS.register
register_adapter = ADAPTERS.register
register_language_model = LANGUAGE_MODELS.register
register_head = HEADS.register
register_model = MODELS.register
register_dataset = DATASETS.register
register_task = TASKS.register
register_side_stream = SIDE_STREAMS.register

_LAZY = {
    "create_model": "zoo.factory",
    "list_models": "zoo.factory",
    "model_info": "zoo.factory",
    "build_part": "zoo.factory",
    "from_pretrained": "zoo.hub",
    "ConfigError": "zoo.spec",
    "load_config": "zoo.spec",
    "add_config_dir": "zoo.catalog",
    "get_task": "zoo.tasks",
    "list_tasks": "zoo.tasks",
    "pipeline": "zoo.pipelines",
    "create_model_and_transforms": "zoo.pipelines",
    "load_processor": "zoo.pipelines",
}

__all__ = [
    "Registry",
    "UnknownNameError",
    "REGISTRIES",
    "VISION_ENCODERS",
    "TEXT_ENCODERS",
    "FUSIONS",
    "ADAPTERS",
    "LANGUAGE_MODELS",
    "HEADS",
    "MODELS",
    "DATASETS",
    "TASKS",
    "SIDE_STREAMS",
    "register_vision_encoder",
    "register_text_encoder",
    "register_fusion",
    "register_adapter",
    "register_language_model",
    "register_head",
    "register_model",
    "register_dataset",
    "register_task",
    "register_side_stream",
    *_LAZY,
]

if TYPE_CHECKING:  # pragma: no cover
    from zoo.catalog import add_config_dir
    from zoo.factory import build_part, create_model, list_models, model_info
    from zoo.hub import from_pretrained
    from zoo.pipelines import create_model_and_transforms, load_processor, pipeline
    from zoo.spec import ConfigError, load_config
    from zoo.tasks import get_task, list_tasks


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'zoo' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
