"""Typed configuration trees: YAML loading with inheritance, command-line overrides, validation and building.

A model is described as a tree of parts, each a mapping ``{type: REGISTERED_NAME, ...arguments}``. The arguments of a
part are the keyword arguments of the registered class (or function); their type annotations are the schema. A nested
part is annotated ``Part["vision_encoder"]`` (or ``list[Part["head"]]``, ``dict[str, Part["head"]]``, ``Part[...] |
None``). Everything is validated before anything is built: an unknown key, a wrong type, a missing required argument
or an unregistered type raises :class:`ConfigError` naming the dotted path, the file and what was expected.

YAML files may inherit: ``_base_: other.yaml`` (or a list; paths relative to the file, and a bare file name found
nowhere there names a registered model file) is loaded first and the file
is deep-merged over it. A mapping holding ``_replace_: true`` replaces the inherited mapping instead of merging.
Overrides ``key.sub=value`` parse ``value`` as YAML and set it at the dotted path. A mapping holding the same key twice
is an error naming the file, the key and both lines (PyYAML would silently keep the last value).
"""

from __future__ import annotations

import copy
import inspect
import os
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Mapping, Union

import yaml

from zoo.registry import REGISTRIES, UnknownNameError

__all__ = [
    "ConfigError",
    "Part",
    "PartOf",
    "load_yaml",
    "load_config",
    "deep_merge",
    "apply_overrides",
    "parse_override",
    "validate",
    "build",
    "check_width",
    "part_path",
]


class ConfigError(ValueError):
    """A configuration problem, located by file and dotted path."""

    def __init__(self, message: str, path: str | None = None, file: str | os.PathLike | None = None):
        self.message, self.path, self.file = message, path, (str(file) if file is not None else None)
        where = ": ".join(str(x) for x in (self.file, self.path) if x)
        super().__init__(f"{where}: {message}" if where else message)

    def __str__(self) -> str:
        return self.args[0]


class PartOf:
    """Marker in ``Annotated[...]`` saying "a part from registry ``kind``"."""

    def __init__(self, kind: str):
        if kind not in REGISTRIES:
            raise ValueError(f"unknown registry kind {kind!r}; expected one of {', '.join(REGISTRIES)}")
        self.kind = kind

    def __repr__(self) -> str:
        return f"Part[{self.kind!r}]"


class Part:
    """``Part["vision_encoder"]`` annotates an argument that takes a part of that kind (a config mapping or a module)."""

    def __class_getitem__(cls, kind: str) -> Any:
        return Annotated[Any, PartOf(kind)]


# ---------------------------------------------------------------------------------------------------------------------
# YAML, inheritance, overrides
# ---------------------------------------------------------------------------------------------------------------------
def deep_merge(base: Any, over: Any) -> Any:
    """``over`` merged into a copy of ``base``: mappings merge key by key, anything else replaces."""
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        if over.get("_replace_"):
            return {k: copy.deepcopy(v) for k, v in over.items() if k != "_replace_"}
        out = {k: copy.deepcopy(v) for k, v in base.items()}
        for key, value in over.items():
            out[key] = deep_merge(out[key], value) if key in out else _strip(copy.deepcopy(value))
        return out
    return _strip(copy.deepcopy(over))


def _strip(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _strip(v) for k, v in value.items() if k != "_replace_"}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's float syntax: ``2e-3`` and ``1e5`` are numbers, as every user expects
    (YAML 1.1, which PyYAML follows, reads a float without a dot, like ``2e-3``, as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping that holds a key twice (PyYAML would silently keep the last value)."""

    def __init__(self, key: Any, path: str, line: int, first_line: int):
        self.key, self.path, self.line, self.first_line = key, path, line, first_line
        super().__init__(f"duplicate key {key!r} at line {line} (first at line {first_line}): a mapping holds each key "
                         "once, and YAML would silently keep only the last value; remove one")


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_duplicate_keys(node: yaml.Node, path: str, seen: set[int]) -> None:
    """Raise :class:`DuplicateKeyError` for the first mapping under ``node`` that holds a key twice. Keys that a merge
    key (``<<: *base``) brings in may be overridden, as YAML intends; only keys written in the mapping count."""
    if id(node) in seen:  # an alias of an anchored node already checked (or a recursive structure)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            if isinstance(key_node, yaml.ScalarNode):
                ident = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if ident in first:
                    raise DuplicateKeyError(key_node.value, f"{path}.{key_node.value}" if path else key_node.value,
                                            line, first[ident])
                first[ident] = line
                child = f"{path}.{key_node.value}" if path else str(key_node.value)
            else:
                child = path
            _check_duplicate_keys(value_node, child, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicate_keys(item, f"{path}[{i}]", seen)


def _safe_load(stream: Any) -> Any:
    """PyYAML's safe loading with :class:`_Loader`, refusing mappings that hold a key twice."""
    loader = _Loader(stream)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicate_keys(node, "", set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_yaml(path: str | os.PathLike, _seen: tuple[str, ...] = ()) -> dict:
    """Load a YAML mapping, resolving ``_base_`` inheritance."""
    path = Path(path)
    key = str(path.resolve())
    if key in _seen:
        chain = " -> ".join([*_seen, key])
        raise ConfigError(f"circular _base_ inheritance: {chain}", file=path)
    if not path.is_file():
        raise ConfigError("config file not found", file=path)
    try:
        with open(path, encoding="utf-8") as f:
            data = _safe_load(f)
    except DuplicateKeyError as exc:
        raise ConfigError(str(exc), exc.path, path) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=path) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}", file=path)
    bases = data.pop("_base_", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError("_base_ must be a file name or a list of file names", path="_base_", file=path)
    merged: dict = {}
    for base in bases:
        merged = deep_merge(merged, load_yaml(_base_path(path, base), (*_seen, key)))
    return deep_merge(merged, data)


def _base_path(path: Path, base: str) -> Path:
    """The file ``_base_: base`` names in ``path``: relative to ``path``'s folder; a bare file name found nowhere there
    is a named model file (:func:`zoo.catalog.model_config_path`: ``_base_: x2vlm-tiny.yaml`` from a file of one's
    own, the packaged configs being inside the installed package)."""
    local = path.parent / base
    if local.is_file() or "/" in base or os.sep in base:
        return local
    from zoo.catalog import model_config_path  # noqa: PLC0415

    try:
        return model_config_path(Path(base).stem)
    except LookupError:
        return local  # not a named model either: the error names the file next to this one


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> dict:
    """Load a YAML config file (with inheritance) and apply ``key.sub=value`` overrides."""
    return apply_overrides(load_yaml(path), overrides, file=path)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> (["a", "b", "c"], parsed YAML value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value (or ~key.sub to remove the key)")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key component")
    try:
        value = _safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(config: dict, overrides: Iterable[str] | Mapping[str, Any], file: Any = None) -> dict:
    """Return a copy of ``config`` with dotted-path overrides applied.

    Command-line strings ``k.s=v`` (:func:`parse_override`) set what they name, as a user reads them: the value
    replaces the key — a mapping replaces a mapping (``'model.overrides={}'`` empties it), ``null`` is the value null
    (as in YAML: Lightning's ``trainer.check_val_every_n_epoch=null`` means something of its own, and
    ``model.overrides.itm=null`` switches a part off) — and ``~k.s`` removes the key (Hydra's spelling): the config
    then says nothing there and the default applies. A dotted key written in the config is the same key as its nested
    spelling (``~model.overrides.text.tokenizer`` removes the ``text.tokenizer`` entry of a ``model.overrides``
    mapping written with dotted keys, and setting ``vision`` there drops its ``vision.*`` entries). A mapping
    ``{"k.s": v}`` (the programmatic changes of ``create_model(..., vision={...})`` and a task config's
    ``model.overrides``) merges a mapping value into the mapping it names."""
    out = copy.deepcopy(config)
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            _merge_at(out, key.split(".") if isinstance(key, str) else list(key), value, file)
    else:
        for text in overrides:
            if isinstance(text, str) and text.strip().startswith("~"):
                key = text.strip()[1:]
                if not key or "=" in key or any(not part for part in key.split(".")):
                    raise ConfigError(f"override {text!r}: a removal is ~key.sub, without a value")
                _replace_at(out, key.split("."), None, file, remove=True)
            else:
                parts, value = parse_override(text)
                _replace_at(out, parts, value, file)
    return out


def _merge_at(out: dict, parts: list[str], value: Any, file: Any) -> None:
    node = out
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(
                f"cannot set {'.'.join(parts)}: {'.'.join(parts[: i + 1])} is a {type(child).__name__}, not a mapping",
                file=file,
            )
        node = child
    if isinstance(value, Mapping) and isinstance(node.get(parts[-1]), Mapping):
        node[parts[-1]] = deep_merge(node[parts[-1]], value)
    else:
        node[parts[-1]] = copy.deepcopy(value)


def _replace_at(out: dict, parts: list[str], value: Any, file: Any, remove: bool = False) -> None:
    """One command-line override (see :func:`apply_overrides`): at each mapping the longest dotted run of the
    remaining key parts that the mapping holds as one key is that key."""
    node, done = out, 0
    while True:
        rest = parts[done:]
        held = next((j for j in range(len(rest), 0, -1) if ".".join(rest[:j]) in node), 0)
        step = held or 1
        key = ".".join(rest[:step])
        if done + step == len(parts):
            break
        child = node.get(key)
        if child is None:
            if remove:
                return  # removing under a key the config lacks: nothing to remove
            child = node[key] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"cannot set {'.'.join(parts)}: {'.'.join(parts[: done + step])} is a "
                              f"{type(child).__name__}, not a mapping", file=file)
        node, done = child, done + step
    for inner in [k for k in node if isinstance(k, str) and k.startswith(key + ".")]:
        del node[inner]  # the dotted spellings of what lies inside the key: replaced with it
    if remove:
        node.pop(key, None)
    else:
        node[key] = _strip(copy.deepcopy(value))


# ---------------------------------------------------------------------------------------------------------------------
# schema from signatures
# ---------------------------------------------------------------------------------------------------------------------
_EMPTY = inspect.Parameter.empty


def _signature(obj: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """Parameters (name -> Parameter), resolved annotations, and whether ``**kwargs`` is accepted."""
    target = obj.__init__ if isinstance(obj, type) else obj
    sig = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # noqa: BLE001 - unresolved forward references: fall back to no type checks
        hints = {}
    params, var_kw = {}, False
    for i, (name, p) in enumerate(sig.parameters.items()):
        if isinstance(obj, type) and i == 0 and name == "self":
            continue
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind is not p.VAR_POSITIONAL:
            params[name] = p
    return params, hints, var_kw


def _describe(ann: Any) -> str:
    origin = typing.get_origin(ann)
    if origin is Annotated:
        args = typing.get_args(ann)
        for meta in args[1:]:
            if isinstance(meta, PartOf):
                return f"a {meta.kind} config ({{type: NAME, ...}})"
        return _describe(args[0])
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(ann))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(ann))
    if origin in (list, tuple, typing.Sequence, Iterable):
        args = [a for a in typing.get_args(ann) if a is not Ellipsis]
        return f"a list of {_describe(args[0])}" if args else "a list"
    if origin in (dict, Mapping):
        args = typing.get_args(ann)
        return f"a mapping of {_describe(args[1])}" if len(args) == 2 else "a mapping"
    if ann is type(None):
        return "null"
    return getattr(ann, "__name__", str(ann))


def _part_kind(ann: Any) -> str | None:
    if typing.get_origin(ann) is Annotated:
        for meta in typing.get_args(ann)[1:]:
            if isinstance(meta, PartOf):
                return meta.kind
    return None


def _type_of(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


def _check(value: Any, ann: Any, path: str, file: Any) -> None:
    """Raise ConfigError when ``value`` does not fit ``ann`` (recursing into parts and containers)."""
    if ann is _EMPTY or ann is Any or ann is object:
        return
    kind = _part_kind(ann)
    if kind is not None:
        if isinstance(value, Mapping):
            validate(value, kind, path, file)
            return
        import torch.nn as nn  # noqa: PLC0415 - only when a built module is passed instead of a config

        if isinstance(value, nn.Module):
            return
        raise ConfigError(f"expected {_describe(ann)}, got {_type_of(value)}", path, file)
    origin = typing.get_origin(ann)
    if origin is Annotated:
        return _check(value, typing.get_args(ann)[0], path, file)
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(ann):
            try:
                _check(value, option, path, file)
                return
            except ConfigError as exc:
                errors.append(exc)
        # a config mapping that fails inside its own schema is more useful than "expected X or None"
        deeper = [e for e in errors if e.path != path]
        if deeper:
            raise deeper[0]
        raise ConfigError(f"expected {_describe(ann)}, got {_type_of(value)}", path, file)
    if origin is Literal:
        if value not in typing.get_args(ann):
            raise ConfigError(f"expected {_describe(ann)}, got {value!r}", path, file)
        return
    if origin in (list, tuple, typing.Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected {_describe(ann)}, got {_type_of(value)}", path, file)
        args = typing.get_args(ann)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"expected a list of {len(args)} items, got {len(value)}", path, file)
            for i, (v, a) in enumerate(zip(value, args)):
                _check(v, a, f"{path}[{i}]", file)
            return
        if args:
            for i, v in enumerate(value):
                _check(v, args[0], f"{path}[{i}]", file)
        return
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected {_describe(ann)}, got {_type_of(value)}", path, file)
        args = typing.get_args(ann)
        if len(args) == 2:
            for k, v in value.items():
                _check(v, args[1], f"{path}.{k}", file)
        return
    if ann is type(None) or ann is None:
        if value is not None:
            raise ConfigError(f"expected null, got {_type_of(value)}", path, file)
        return
    if ann is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif ann is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif ann is bool:
        ok = isinstance(value, bool)
    elif ann is str:
        ok = isinstance(value, str)
    elif isinstance(ann, type):
        ok = isinstance(value, ann)
    else:
        ok = True
    if not ok:
        raise ConfigError(f"expected {_describe(ann)}, got {_type_of(value)}", path, file)


def validate(node: Any, kind: str, path: str = "model", file: Any = None) -> None:
    """Check a part config against its registered signature, recursively. Raises :class:`ConfigError`."""
    if not isinstance(node, Mapping):
        raise ConfigError(f"expected a {kind} config mapping {{type: NAME, ...}}, got {_type_of(node)}", path, file)
    if "type" not in node:
        raise ConfigError(f"missing 'type' (the registered {kind} name)", path, file)
    name = node["type"]
    registry = REGISTRIES[kind]
    try:
        obj = registry.get(name)
    except UnknownNameError as exc:
        raise ConfigError(str(exc), f"{path}.type", file) from None
    except TypeError as exc:
        raise ConfigError(str(exc), f"{path}.type", file) from None
    params, hints, var_kw = _signature(obj)
    for key, value in node.items():
        if key == "type":
            continue
        if key not in params:
            if var_kw:
                continue
            known = ", ".join(sorted(params)) or "(none)"
            import difflib  # noqa: PLC0415

            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {key!r} for {kind} {name!r}{hint} Accepted keys: {known}",
                              f"{path}.{key}", file)
        _check(value, hints.get(key, params[key].annotation), f"{path}.{key}", file)
    missing = [n for n, p in params.items() if p.default is _EMPTY and n not in node]
    if missing:
        raise ConfigError(f"missing required argument(s) {', '.join(missing)} for {kind} {name!r}", path, file)


def accepts(node: Any, kind: str, path: str) -> bool:
    """Whether the ``kind`` part config ``node`` takes the dotted ``path``: a parameter of its registered class, of a
    part inside it (``vqa.pad_token_id`` in a model), or a key inside a mapping parameter (``lm.config.vocab_size``,
    a transformers config). Nothing is built or raised; an unknown type takes nothing."""
    head, _, rest = path.partition(".")
    if not isinstance(node, Mapping) or not isinstance(node.get("type"), str) or kind not in REGISTRIES:
        return False
    try:
        obj = REGISTRIES[kind].get(node["type"])
    except (UnknownNameError, TypeError):
        return False
    params, hints, var_kw = _signature(obj)
    if head not in params:
        return var_kw and not rest
    if not rest:
        return True
    ann = hints.get(head, params[head].annotation)
    options = typing.get_args(ann) if typing.get_origin(ann) in (Union, types.UnionType) else (ann,)  # X | None
    sub_kind = next((kind for option in options if (kind := _part_kind(option)) is not None), None)
    if sub_kind is None:
        return isinstance(node.get(head), Mapping)
    return accepts(node.get(head), sub_kind, rest)


def _build_value(value: Any, ann: Any, path: str, file: Any) -> Any:
    kind = _part_kind(ann)
    if kind is not None and isinstance(value, Mapping):
        return build(value, kind, path, file, validated=True)
    origin = typing.get_origin(ann)
    if origin is Annotated:
        return _build_value(value, typing.get_args(ann)[0], path, file)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(ann):
            if _part_kind(option) is not None and isinstance(value, Mapping):
                return build(value, _part_kind(option), path, file, validated=True)
            sub_origin = typing.get_origin(option)
            if sub_origin in (list, tuple, dict, Mapping, typing.Sequence) and isinstance(value, (list, tuple, Mapping)):
                try:
                    _check(value, option, path, file)
                except ConfigError:
                    continue
                return _build_value(value, option, path, file)
        return value
    if origin in (list, tuple, typing.Sequence) and isinstance(value, (list, tuple)):
        args = typing.get_args(ann)
        if args and _part_kind(args[0]) is not None:
            return [_build_value(v, args[0], f"{path}[{i}]", file) for i, v in enumerate(value)]
        return list(value) if origin is list else tuple(value) if origin is tuple else value
    if origin in (dict, Mapping) and isinstance(value, Mapping):
        args = typing.get_args(ann)
        if len(args) == 2 and _part_kind(args[1]) is not None:
            return {k: _build_value(v, args[1], f"{path}.{k}", file) for k, v in value.items()}
    # plain config data is copied so that a part cannot alter the caller's config; built modules are passed as is
    return copy.deepcopy(value) if isinstance(value, (dict, list)) else value


def build(node: Mapping, kind: str, path: str = "model", file: Any = None, *, validated: bool = False) -> Any:
    """Validate (unless already done) and build a part config tree, children first."""
    if not validated:
        validate(node, kind, path, file)
    obj = REGISTRIES[kind].get(node["type"])
    params, hints, _ = _signature(obj)
    kwargs = {}
    for key, value in node.items():
        if key == "type":
            continue
        ann = hints.get(key, params[key].annotation if key in params else _EMPTY)
        kwargs[key] = _build_value(value, ann, f"{path}.{key}", file)
    try:
        part = obj(**kwargs)
    except ConfigError as exc:
        if exc.path is None and exc.file is None:
            raise type(exc)(exc.message, path, file) from None
        raise
    try:
        object.__setattr__(part, "_zoo_path", path)
        object.__setattr__(part, "_zoo_file", str(file) if file is not None else None)
    except (AttributeError, TypeError):
        pass
    return part


def part_path(part: Any, default: str = "?") -> str:
    """The dotted config path a part was built from (``model.vision``), or its class name."""
    return getattr(part, "_zoo_path", None) or f"{default} ({type(part).__name__})"


def check_width(
    consumer: Any, consumer_arg: str, expected: int, producer: Any, produced: int, producer_attr: str = "width"
) -> None:
    """Raise a ConfigError naming both parts when ``producer`` feeds ``consumer`` a width it does not expect; its
    dotted key is the consumer's argument (``model.vqa.encoder_width``) when the consumer was built from a config."""
    if expected != produced:
        where = getattr(consumer, "_zoo_path", None)
        raise ConfigError(
            f"width mismatch: {part_path(consumer, 'consumer')} expects {consumer_arg}={expected} but "
            f"{part_path(producer, 'producer')} produces {producer_attr}={produced}; set one to match the other",
            f"{where}.{consumer_arg}" if where else None,
            file=getattr(consumer, "_zoo_file", None),
        )
