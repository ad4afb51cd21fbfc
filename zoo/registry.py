"""Registries of named parts.

One :class:`Registry` class; one instance per kind of part (vision encoders, text encoders, fusion blocks, adapters,
language models, heads, models, datasets, tasks, side streams). A part registers itself with a decorator::

    @zoo.register_vision_encoder("my_vit")
    class MyViT(nn.Module): ...

Built-in parts are *not* imported when :mod:`zoo` is imported. Each registry knows, from the static table in
:mod:`zoo._builtins`, which module defines each built-in name, and imports only that module on the first lookup of the
name. Third-party packages register through the entry-point group ``mmzoo.plugins``; those entry points are loaded once,
on the first lookup that the built-in table cannot answer (or on the first listing).
"""

from __future__ import annotations

import difflib
import importlib
import threading
from typing import Any, Callable, Iterator

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
    "load_plugins",
]

PLUGIN_GROUP = "mmzoo.plugins"


class UnknownNameError(LookupError):
    """A name that no registry entry answers; the message lists the closest registered names."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(sorted(known)) if known else "(none)"
        super().__init__(f"unknown {kind} {name!r}{hint} Registered {kind}s: {listing}")

    def __str__(self) -> str:  # LookupError would print the repr of args
        return self.args[0]


_plugins_lock = threading.Lock()
_plugins_loaded = False
_plugin_errors: list[str] = []


def load_plugins(force: bool = False) -> list[str]:
    """Import every entry point of the ``mmzoo.plugins`` group once.

    An entry point may name a module (importing it runs its ``@register_*`` decorators) or a callable that is called
    with no arguments. A plugin that fails to import is reported as a warning and skipped, so that one broken package
    does not make every lookup fail. Returns the names of the entry points loaded.
    """
    global _plugins_loaded
    with _plugins_lock:
        if _plugins_loaded and not force:
            return []
        _plugins_loaded = True
        from importlib.metadata import entry_points
        import warnings

        loaded = []
        for ep in entry_points(group=PLUGIN_GROUP):
            try:
                obj = ep.load()
                if callable(obj) and not isinstance(obj, type):
                    obj()
                loaded.append(ep.name)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the framework
                msg = f"mmzoo plugin {ep.name!r} ({ep.value}) failed to load: {exc!r}"
                _plugin_errors.append(msg)
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return loaded


class Registry:
    """A mapping from names to classes or builder functions of one kind of part."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}

    # -- registering ---------------------------------------------------------------------------------------------
    def register(self, name: str | None = None, *, override: bool = False) -> Callable[[Any], Any]:
        """Decorator registering a class or function under ``name`` (default: its ``__name__``)."""

        def deco(obj: Any) -> Any:
            key = name or obj.__name__
            if not isinstance(key, str) or not key:
                raise ValueError(f"{self.kind} name must be a non-empty string, got {key!r}")
            old = self._entries.get(key)
            if old is not None and old is not obj and not override and not _same_definition(old, obj):
                raise ValueError(
                    f"{self.kind} {key!r} is already registered by {_qualname(old)}; "
                    f"pass override=True to replace it with {_qualname(obj)}"
                )
            self._entries[key] = obj
            try:
                obj._zoo_registry_name = key
            except (AttributeError, TypeError):
                pass
            return obj

        return deco

    def unregister(self, name: str) -> Any:
        """Remove the entry ``name`` (registered at run time; a built-in name's module stays imported) and return
        it; for tests and notebooks that register parts of their own. An unknown name raises KeyError."""
        if name not in self._entries:
            raise KeyError(f"{self.kind} {name!r} is not registered")
        return self._entries.pop(name)

    # -- looking up ----------------------------------------------------------------------------------------------
    def _builtin_module(self, name: str) -> str | None:
        from zoo._builtins import BUILTINS

        return BUILTINS.get(self.kind, {}).get(name)

    def get(self, name: str) -> Any:
        """The object registered as ``name``; imports its defining module on first use."""
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a string, got {type(name).__name__}: {name!r}")
        if name in self._entries:
            return self._entries[name]
        module = self._builtin_module(name)
        if module is not None:
            importlib.import_module(module)
            if name in self._entries:
                return self._entries[name]
            raise RuntimeError(f"module {module} was expected to register {self.kind} {name!r} but did not")
        load_plugins()
        if name in self._entries:
            return self._entries[name]
        raise UnknownNameError(self.kind, name, self.names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def names(self) -> list[str]:
        """All names, built-in and registered, without importing the built-in modules."""
        from zoo._builtins import BUILTINS

        load_plugins()
        return sorted(set(self._entries) | set(BUILTINS.get(self.kind, {})))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _same_definition(a: Any, b: Any) -> bool:
    # Re-importing a module (e.g. under pytest's import modes) re-runs its decorators with a new but identical object.
    return _qualname(a) == _qualname(b)


VISION_ENCODERS = Registry("vision_encoder")
TEXT_ENCODERS = Registry("text_encoder")
FUSIONS = Registry("fusion")
ADAPTERS = Registry("adapter")
LANGUAGE_MODELS = Registry("language_model")
HEADS = Registry("head")
MODELS = Registry("model")
DATASETS = Registry("dataset")
TASKS = Registry("task")  # zoo.tasks.Task subclasses: vqa, retrieval, captioning, ve, nlvr, pretrain
SIDE_STREAMS = Registry("side_stream")  # zoo.data.side.SideStream subclasses: data.parallel, data.language

REGISTRIES: dict[str, Registry] = {
    r.kind: r for r in (VISION_ENCODERS, TEXT_ENCODERS, FUSIONS, ADAPTERS, LANGUAGE_MODELS, HEADS, MODELS, DATASETS,
                        TASKS, SIDE_STREAMS)
}
