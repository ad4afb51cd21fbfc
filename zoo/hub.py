"""Saving and loading weights: ``save_pretrained`` / ``from_pretrained``, local checkpoints, path resolution.

Exports are a folder with ``config.json`` (the full, resolved model config: rebuilding needs nothing else) and
``model.safetensors``. Files are written atomically (to a temporary name in the same folder, then renamed), so an
interrupted save never leaves a truncated file under the final name. Loading never unpickles arbitrary objects:
safetensors, or ``torch.load(weights_only=True)`` for ``.pth``/``.bin``/``.pt`` files.

Paths given anywhere a weights file or folder is read (``pretrained:`` of a model or a part, tokenizers) may be
``hf-hub:ORG/REPO`` (a snapshot folder of a Hugging Face Hub repository) or ``hf-hub:ORG/REPO/PATH/IN/REPO`` (one
file of it), fetched by huggingface_hub into its own cache (``HF_HUB_OFFLINE=1`` or ``MMZOO_OFFLINE=1``: from that
cache only). The official checkpoints of the model files are fetched by :mod:`zoo.weights`.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from zoo.spec import ConfigError

__all__ = [
    "save_pretrained",
    "from_pretrained",
    "load_weights_by_part",
    "load_state_dict",
    "load_inert",
    "load_weights",
    "save_adapter_export",
    "resolve_path",
    "mmzoo_home",
    "atomic_write",
    "atomic_path",
    "atomic_dir",
    "WeightsError",
    "rename_by_rules",
    "raise_unknown_keys",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
PREPROCESSOR_NAME = "preprocessor.json"
_TORCH_SUFFIXES = (".pth", ".pt", ".th", ".bin", ".ckpt")
_FOLDER_WEIGHTS = (WEIGHTS_NAME, "pytorch_model.bin", "model.pth", "model.pt")


class WeightsError(ConfigError):
    """A weights file that cannot be read or does not fit the model (the message names the file and the keys).

    A ConfigError, so that a ``pretrained:`` path inside a model config is reported with its config path too.
    """


def rename_by_rules(key: str, rules: Sequence[tuple[str, str]]) -> str | None:
    """``key`` renamed by the first ``(regex, replacement)`` rule that matches it (``re.sub``); None when none does.
    The official-checkpoint converters are tables of such rules."""
    for pattern, replacement in rules:
        if re.search(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def raise_unknown_keys(unknown: Sequence[str], family: str = "") -> None:
    """A converter's official keys that no rule maps and no dropped pattern matches: a WeightsError listing them
    (the first 20), so nothing of a checkpoint is silently ignored."""
    if unknown:
        shown = ", ".join(unknown[:20]) + (f", ... ({len(unknown) - 20} more)" if len(unknown) > 20 else "")
        raise WeightsError(f"{len(unknown)} official {family + ' ' if family else ''}key(s) have no mapping and are "
                           f"not in the dropped list: {shown}")


def convert_keys(state_dict: Mapping[str, Any], rename: Callable[[str, Any], tuple[str, Any] | None],
                 dropped: Sequence[str] = (), family: str = "") -> tuple[dict[str, Any], list[str]]:
    """The loop of every official-checkpoint converter: keys matching a ``dropped`` regex are set aside (returned),
    every other key goes through ``rename(key, value)`` → ``(new key, new value)``, or None when it has no mapping;
    keys without one raise :func:`raise_unknown_keys`. Returns ``(converted, dropped keys)``."""
    out: dict[str, Any] = {}
    dropped_keys: list[str] = []
    unknown: list[str] = []
    for key, value in state_dict.items():
        if any(re.search(p, key) for p in dropped):
            dropped_keys.append(key)
        elif (mapped := rename(key, value)) is not None:
            out[mapped[0]] = mapped[1]
        else:
            unknown.append(key)
    raise_unknown_keys(unknown, family)
    return out, dropped_keys


def resolve_path(spec: str | os.PathLike) -> Path:
    """A local path from ``~``/``$VARS`` paths, ``pkg:MODULE[/SUB/PATH]`` (a folder inside an installed package) or
    ``hf-hub:ORG/REPO[/PATH]`` (a Hugging Face Hub repository's snapshot folder or one file of it, through
    huggingface_hub's cache)."""
    text = os.path.expandvars(os.path.expanduser(str(spec)))
    if text.startswith("hf-hub:"):
        return _hub_path(text[len("hf-hub:"):])
    if text.startswith("pkg:"):
        module, _, sub = text[4:].partition("/")
        import importlib.util  # noqa: PLC0415

        # only the top-level package is looked up (find_spec of a top-level name imports nothing; of a dotted name it
        # would import the parents, running their code): sub-packages are folders below it
        top, *rest = module.split(".")
        found = importlib.util.find_spec(top) if top.isidentifier() else None
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError(f"{spec}: package {module!r} is not installed "
                                    f"(pip install {top.replace('_', '-')})")
        base = Path(list(found.submodule_search_locations)[0]).joinpath(*rest)
        return base / sub if sub else base
    return Path(text)


def mmzoo_home() -> Path:
    """``$MMZOO_HOME``, else ``$XDG_CACHE_HOME/mmzoo``, else ``~/.cache/mmzoo``: datasets, downloads, converted
    weights."""
    if os.environ.get("MMZOO_HOME"):
        return Path(os.path.expanduser(os.environ["MMZOO_HOME"]))
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.path.expanduser(cache)) / "mmzoo"


def _umask() -> int:
    """The process's file-creation mask: Linux reports it in ``/proc/self/status``; elsewhere it is read by setting
    and restoring it (there is no read-only call)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _user_mode(path: str | os.PathLike, folder: bool = False, umask: int | None = None) -> None:
    """Give a file made by :func:`tempfile.mkstemp` (mode 0600) or a folder made by :func:`tempfile.mkdtemp` (0700)
    the mode an ordinary ``open`` / ``mkdir`` would have given it under the user's umask (0644 / 0755 typically), so
    exports, checkpoints and results are readable by the group on a shared disk as any other file the user writes."""
    os.chmod(path, (0o777 if folder else 0o666) & ~(_umask() if umask is None else umask))


_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.(?:tmp|old)$")


def _tmp_prefix(name: str) -> str:
    """Temporary names carry the writer's process id (``.NAME.PID.RANDOM.tmp``), so that an orphan left by a killed
    writer can be told from the file of a writer still at work (:func:`remove_orphans`)."""
    return f".{name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_orphans(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temporary files and folders that writers killed before finishing left in ``folder``
    (``.NAME.PID.RANDOM.tmp`` / ``.old`` whose process is gone; only those of ``name`` when given). Returns what
    was removed. A temporary of a live process is left alone."""
    import shutil  # noqa: PLC0415

    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = _TMP_RE.match(entry.name)
        if m is None or (name is not None and m.group("name") != name) or _alive(int(m.group("pid"))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _fsync_dir(path: str | os.PathLike) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary file name beside ``path`` to write to; on success the file is fsynced, given the user's umask
    mode and renamed over ``path`` (an interrupted write never leaves a truncated file under the final name); on
    failure it is removed. A writer killed outright leaves ``.NAME.PID.RANDOM.tmp``, which :func:`remove_orphans`
    (called by the next write of the same name) clears."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_orphans(path.parent, path.name)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path.name), suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:  # the folder cannot be written to: named by the path asked for, not the temporary one
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        _user_mode(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        named = _write_error(exc, tmp, path)
        if os.path.exists(tmp):
            os.unlink(tmp)
        if named is exc:
            raise
        raise named from None


def _write_error(exc: BaseException, tmp: str | os.PathLike, final: str | os.PathLike) -> BaseException:
    """The error a failed write raises, named after the file or folder being written rather than its temporary
    name: an OSError from Python's own I/O gets the final path; the writers that hide the system's error in their
    own (safetensors' ``SafetensorError``, ``torch.save``'s ``RuntimeError`` from its zip writer) become an OSError
    with the errno they report, else the errno a probe write fails with now (a full disk, a size limit), else EIO
    with their message. Anything else is returned as is."""
    import errno  # noqa: PLC0415

    tmp, final = str(tmp), str(final)
    if isinstance(exc, OSError):
        name = str(exc.filename) if exc.filename is not None else None
        if name is not None and name.startswith(tmp):
            name = final + name[len(tmp):]
        return OSError(exc.errno, exc.strerror or str(exc), name or final) if exc.errno else exc
    text = str(exc)
    if type(exc).__name__ == "SafetensorError" or (isinstance(exc, RuntimeError) and (
            "PytorchStreamWriter" in text or "file write failed" in text or "inline_container" in text)):
        found = re.search(r"os error (\d+)", text)
        code = int(found.group(1)) if found else _probe_write(Path(tmp) if Path(tmp).is_dir() else Path(tmp).parent)
        if code is None:
            return OSError(errno.EIO, f"cannot be written ({text.strip().splitlines()[0][:200]})", final)
        return OSError(code, os.strerror(code), final)
    return exc


def _probe_write(folder: Path) -> int | None:
    """The errno a 64 KiB write into ``folder`` fails with now (a full disk, a file-size limit), None if it
    succeeds: the reason a writer that does not report the system's error failed."""
    probe = folder / f".probe.{os.getpid()}.tmp"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"\0" * 65536)
            fh.flush()
            os.fsync(fh.fileno())
        return None
    except OSError as exc:
        return exc.errno
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system or file system
    cannot (then the caller falls back to two renames)."""
    import ctypes  # noqa: PLC0415
    import sys  # noqa: PLC0415

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95, 18):  # EINVAL, ENOSYS, EOPNOTSUPP, EXDEV: not supported here
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def _sync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` and give each the user's umask mode (some writers, safetensors
    among them, create their files 0600)."""
    umask = _umask()  # read once for the whole tree
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            file = os.path.join(dirpath, name)
            if os.path.islink(file):
                continue
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
            _user_mode(file, umask=umask)
        _user_mode(dirpath, folder=True, umask=umask)
        _fsync_dir(dirpath)


@contextmanager
def atomic_dir(path: str | os.PathLike, *, keep: Callable[[str], bool] | None = None) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; on success it takes the place of ``path`` in one step, so a reader
    (or a writer killed at any moment) sees the old folder whole or the new one whole, never a mix.

    The swap is ``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere the old folder is renamed aside and the new one
    renamed in (two steps: a kill between them leaves the old folder under ``.NAME.PID.RANDOM.old/NAME``). Files are
    fsynced first and given the user's umask mode. ``keep(entry_name)``: entries of the old folder that are not the
    writer's (a user's own notes beside an export, say) are carried into the new folder instead of being dropped. On
    failure the temporary folder is removed and ``path`` is left as it was."""
    import shutil  # noqa: PLC0415

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path}: exists and is not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_orphans(path.parent, path.name)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path.name), suffix=".tmp", dir=path.parent))
    except OSError as exc:  # the folder cannot be written to: named by the path asked for, not the temporary one
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        yield tmp
        if keep is not None and path.is_dir():
            for entry in path.iterdir():
                if keep(entry.name) and not (tmp / entry.name).exists():
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.copytree(entry, tmp / entry.name, symlinks=True)
                    else:
                        shutil.copy2(entry, tmp / entry.name, follow_symlinks=False)
        _sync_tree(tmp)
    except BaseException as exc:
        named = _write_error(exc, tmp, path)
        shutil.rmtree(tmp, ignore_errors=True)
        if named is exc:
            raise
        raise named from None
    if path.is_dir() and _exchange(tmp, path):  # tmp now holds the old folder
        _fsync_dir(path.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path.name), suffix=".old", dir=path.parent))
        os.replace(path, old / path.name)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success rename it over ``path`` (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh


def _atomic_save_file(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file  # noqa: PLC0415

    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def _unique_state_dict(model) -> dict:
    """The state dict with tied tensors stored once (safetensors refuses shared storage)."""
    seen: dict[tuple, str] = {}
    out = {}
    for name, tensor in model.state_dict().items():
        key = _storage_key(tensor)
        if tensor.numel() and key in seen:
            continue
        seen[key] = name
        out[name] = tensor.detach().contiguous()
    return out


_EXPORT_ENTRIES = (CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_DIR, PREPROCESSOR_NAME, "README.md")


def save_pretrained(model, directory: str | os.PathLike, *, config: Mapping | None = None,
                    trainable_only: bool = False, tokenizer: Any = None, run: Mapping | None = None) -> Path:
    """Write an export folder for a model built by :func:`zoo.create_model`.

    - ``config.json``: the full resolved model config (rebuilding needs nothing else);
    - ``model.safetensors``: the weights (tied tensors once); with ``trainable_only`` only the parameters that require
      gradients (adapters, LoRA, heads) — the config then names the frozen parts, which load from their own
      ``pretrained`` paths when the export is rebuilt;
    - ``tokenizer/``: the text encoder's tokenizer (or ``tokenizer``), so the export is usable without it;
    - ``preprocessor.json``: the model's preprocessing (:meth:`zoo.models.base.ZooModel.preprocess_config`: image
      size, mean, std, interpolation, resize mode), left out for a model that declares none;
    - ``README.md``: the model card (:func:`zoo.card.model_card`; ``run``: the training run's results, whose task,
      data and scores it lists) — unless the folder holds a README.md of the user's own, which is kept as it is.

    The folder is written whole into a temporary folder beside ``directory`` and swapped in at the end
    (:func:`atomic_dir`): an export written over an older one leaves the old export or the new one, never a mix,
    whenever the writer is stopped. Other files a user keeps in an existing export folder are carried over; a
    non-empty folder that is not an export is refused (nothing in it is touched).
    """
    directory = Path(directory)
    config = dict(config if config is not None else getattr(model, "zoo_config", None) or {})
    if "model" not in config:
        raise ValueError("save_pretrained: the model carries no zoo_config; build it with zoo.create_model")
    if directory.is_dir() and not (directory / CONFIG_NAME).is_file() and any(directory.iterdir()):
        raise FileExistsError(f"{directory}: folder holds files and is not an mmzoo export (no {CONFIG_NAME}); "
                              "export into a new or empty folder")
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    tensors = _unique_state_dict(model)
    if trainable_only:
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        tensors = {k: v for k, v in tensors.items() if k in trainable}
        config["weights"] = "trainable_only"
    else:  # all weights are in the export: the base weights the model was built from are not needed again
        config.pop("weights", None)
        config.pop("pretrained", None)
        config.pop("pretrained_strict", None)
    text = getattr(model, "text", None)
    if tokenizer is None and text is not None and getattr(text, "tokenizer", None) and hasattr(text, "get_tokenizer"):
        tokenizer = text.get_tokenizer()
    preprocess = None
    if callable(getattr(model, "preprocess_config", None)):
        from zoo.spec import ConfigError  # noqa: PLC0415

        try:
            preprocess = model.preprocess_config().to_json()
        except ConfigError:  # no resolution or no normalisation declared: nothing to record
            preprocess = None
    from zoo.card import CARD_NAME, is_model_card, model_card  # noqa: PLC0415

    # a README.md of the user's own (not a card this function wrote) is kept, and no card written over it
    own_readme = (directory / CARD_NAME).is_file() and not is_model_card(directory / CARD_NAME)
    writes = set(_EXPORT_ENTRIES) - ({CARD_NAME} if own_readme else set())
    with atomic_dir(directory, keep=lambda name: name not in writes) as tmp:
        from safetensors.torch import save_file  # noqa: PLC0415

        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "mmzoo": "1"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
            config["tokenizer"] = TOKENIZER_DIR
        if preprocess is not None:
            (tmp / PREPROCESSOR_NAME).write_text(json.dumps(preprocess, indent=2), encoding="utf-8")
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        if not own_readme:
            (tmp / CARD_NAME).write_text(model_card(model, config, run, preprocess), encoding="utf-8")
    return directory


def save_adapter_export(name: str, task: str | None, tensors: Mapping[str, Any], directory: str | os.PathLike, *,
                        parts: Mapping[str, Any] | None = None, what: str = "the checkpoint") -> Path:
    """A trainable-only export from an official checkpoint that holds only the trained tensors (adapters, prompts,
    LoRA) of registered model ``name`` built for ``task``: the model is built on the meta device (a 7B language model
    costs no memory), ``tensors`` must be exactly its trainable parameters, shape for shape (a missing, extra or
    misshapen tensor raises naming it), and ``parts`` (dotted keys of the model config → values, e.g.
    ``{"lm.pretrained": "hf-hub:facebook/opt-2.7b"}``) say where the frozen parts load from when the export is
    rebuilt (:func:`from_pretrained`)."""
    from zoo.factory import create_model  # noqa: PLC0415

    model = create_model(name, task=task, device="meta")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(trainable) - set(tensors))
    extra = sorted(set(tensors) - set(trainable))
    if missing or extra:
        raise WeightsError(f"{what}: does not hold the trained tensors of {name}"
                           + (f"; missing {len(missing)}: {_list(missing)}" if missing else "")
                           + (f"; not trainable in the model {len(extra)}: {_list(extra)}" if extra else ""))
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(trainable[key].shape):
            raise WeightsError(f"{what}: {key} has shape {tuple(value.shape)}, {name} expects "
                               f"{tuple(trainable[key].shape)}")
    model.load_state_dict({k: v.to(trainable[k].dtype) for k, v in tensors.items()}, strict=False, assign=True)
    for key, param in model.named_parameters():  # the assigned tensors train as the parameters they replace
        if key in trainable:
            param.requires_grad_(True)
    config = copy.deepcopy(dict(model.zoo_config))
    for dotted, value in (parts or {}).items():
        node = config["model"]
        *path, last = dotted.split(".")
        for step in path:
            node = node.setdefault(step, {})
            if not isinstance(node, dict):
                raise WeightsError(f"{what}: parts key {dotted!r}: model.{step} is not a mapping in {name}'s config")
        node[last] = value
    return save_pretrained(model, directory, config=config, trainable_only=True)


def load_state_dict(path: str | os.PathLike, *, inert_objects: bool = False) -> dict:
    """The tensors of a local weights file, or of a folder holding one (``model.safetensors`` preferred).

    safetensors files are read with safetensors; ``.pth``/``.pt``/``.bin``/``.ckpt`` with
    ``torch.load(weights_only=True)``; a state dict nested under ``model`` / ``state_dict`` / ``model_state_dict`` /
    ``module`` is unwrapped, and a ``module.`` prefix on every key (a DistributedDataParallel save) is removed.

    A file that pickles an object other than tensors and containers is refused, unless ``inert_objects``: then such
    objects (a training config object saved beside the weights, as some official checkpoints hold) come back as
    inert placeholders — their classes are never imported and nothing the file names runs — and the tensors are read
    (:func:`load_inert`). Only the family converters of such official files ask for it.
    """
    import torch  # noqa: PLC0415

    path = resolve_path(path)
    if path.is_dir():
        found = next((path / n for n in _FOLDER_WEIGHTS if (path / n).is_file()), None)
        if found is None:
            raise WeightsError(f"{path}: folder holds none of {', '.join(_FOLDER_WEIGHTS)} (sharded checkpoints are "
                               "not read)")
        path = _inside(path, found, found.name)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file (pretrained weights load from local files and folders; "
                           "hub names are not fetched)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # noqa: PLC0415

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001
            raise WeightsError(f"{path}: not a readable safetensors file ({load_failure(exc)})") from None
    if path.suffix not in _TORCH_SUFFIXES:
        raise WeightsError(f"{path}: unknown weights format {path.suffix!r}; expected .safetensors, "
                           f"{', '.join(_TORCH_SUFFIXES)}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        if not (inert_objects and "Unsupported global" in str(exc)):
            raise WeightsError(f"{path}: cannot be read with torch.load(weights_only=True) "
                               f"({load_failure(exc)})") from None
        obj = load_inert(path)
    for key in ("model", "state_dict", "model_state_dict", "module"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a state dict (mapping of tensors), got {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if torch.is_tensor(v)}
    if not tensors:
        raise WeightsError(f"{path}: holds no tensors (keys: {_list([str(k) for k in obj])})")
    if all(k.startswith("module.") for k in tensors):  # saved from a DistributedDataParallel wrapper
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


class InertObject(dict):
    """What :func:`load_inert` puts where a file pickles an object of a class other than tensors and containers: the
    class is not imported and none of its code runs; ``pickled_as`` names it (a dict subclass, so that a pickled dict
    subclass's items land somewhere harmless; its state and constructor arguments are dropped)."""

    pickled_as = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<inert {self.pickled_as}>"


def load_inert(path: str | os.PathLike) -> Any:
    """``torch.load`` of a pickled checkpoint in which every global outside torch's weights-only allow-list (the
    tensor rebuilders, containers, dtypes) becomes an :class:`InertObject` subclass instead of being imported: an
    object of another class, a function the file would call (``os.system``, ``exec``) come back as placeholders, so
    loading runs nothing the file names. The tensors are rebuilt as by ``weights_only=True``."""
    import pickle  # noqa: PLC0415
    import types  # noqa: PLC0415

    import torch  # noqa: PLC0415

    try:
        from torch._weights_only_unpickler import _get_allowed_globals  # noqa: PLC0415
    except ImportError:  # pragma: no cover - a torch without the list: nothing but the strict reader
        raise WeightsError(f"{path}: holds pickled objects and this torch offers no allow-list to read around them"
                           ) from None
    allowed = _get_allowed_globals()
    inert: dict[str, type] = {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            full = f"{module}.{name}"
            if full in allowed:
                return allowed[full]
            if full not in inert:
                inert[full] = type(name, (InertObject,), {"pickled_as": full, "__module__": __name__})
            return inert[full]

    # torch reads a legacy (non-zip) file's header objects with ``pickle_module.load``: the same restricted unpickler
    pickle_module = types.SimpleNamespace(Unpickler=Unpickler, load=lambda f, **kw: Unpickler(f, **kw).load(),
                                          __name__="zoo.hub.inert_pickle")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=pickle_module)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"{path}: cannot be read ({load_failure(exc)})") from None


def load_failure(exc: BaseException) -> str:
    """One short line saying why ``torch.load(weights_only=True)`` (or a safetensors read) refused a file: a pickled
    object other than tensors and containers (named; it is never unpickled), or the reader's first line."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it holds a pickled {found.group(1)!r}, not only tensors and containers: refused, never run"
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "") or type(exc).__name__
    line = re.split(r"(?<=[a-z)])\. ", re.sub(r"\x1b\[[0-9;]*m", "", line))[0]  # its first sentence
    if "central directory" in line or "unexpected EOF" in line.lower() or "Ran out of input" in line:
        line += " (a truncated or damaged file)"
    return line if len(line) <= 200 else line[:197] + "..."


def _list(keys: list[str], n: int = 12) -> str:
    head = ", ".join(keys[:n])
    return head + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def load_weights(
    model,
    source: str | os.PathLike | Mapping,
    *,
    strict: bool = True,
    prefix: str = "",
    optional: Callable[[str], bool] | None = None,
    what: str | None = None,
) -> Any:
    """Load a state dict (or a file/folder) into ``model``; mismatches raise :class:`WeightsError` naming the keys.

    ``prefix``: only keys under it are used (stripped). ``optional(key)``: model keys that may be absent (buffers the
    model recomputes are always optional). Shapes must match even when ``strict`` is False.
    """
    where = what or ("state dict" if isinstance(source, Mapping) else str(source))
    state = dict(source) if isinstance(source, Mapping) else load_state_dict(source)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    own = model.state_dict()
    shape_errors = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if shape_errors:
        raise WeightsError(f"{where}: {len(shape_errors)} tensor(s) have the wrong shape (shape mismatch): "
                           f"{_list(shape_errors, 8)}")
    result = model.load_state_dict(state, strict=False)
    # a tied tensor is stored once (save_pretrained): its other names are loaded through the one in the file
    loaded = {_storage_key(own[k]) for k in state if k in own}
    missing = [k for k in result.missing_keys if not _is_derived_buffer(model, k) and not (optional and optional(k))
               and _storage_key(own[k]) not in loaded]
    if strict and (missing or result.unexpected_keys):
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_list(missing)}")
        if result.unexpected_keys:
            parts.append(f"unexpected {len(result.unexpected_keys)} key(s): {_list(result.unexpected_keys)}")
        raise WeightsError(f"{where} does not fit {type(model).__name__}: " + "; ".join(parts))
    return result


def load_weights_by_part(model, source: str | os.PathLike | Mapping, *, what: str | None = None) -> dict[str, list]:
    """Load the top-level parts of ``model`` that ``source`` holds, each whole (a part the file holds only some
    tensors of raises :class:`WeightsError`, as does a shape mismatch); the model's parts the file lacks keep their
    initialisation and the file's parts the model lacks are left out. Returns ``{"new": [...], "left_out": [...]}``
    (part names): what fine-tuning a model built for one task from weights of another (the official loaders'
    ``strict=False``, minus its silence about a part that loads only half) reports."""
    where = what or ("state dict" if isinstance(source, Mapping) else str(source))
    state = dict(source) if isinstance(source, Mapping) else load_state_dict(source)
    own = model.state_dict()
    model_parts = {k.split(".", 1)[0] for k in own}
    file_parts = {k.split(".", 1)[0] for k in state}
    shared = model_parts & file_parts
    if not shared:
        raise WeightsError(f"{where} holds none of the parts of {type(model).__name__} (file: "
                           f"{', '.join(sorted(file_parts)) or 'nothing'}; model: {', '.join(sorted(model_parts))})")
    kept = {k: v for k, v in state.items() if k.split(".", 1)[0] in shared}
    load_weights(model, kept, what=where, optional=lambda k: k.split(".", 1)[0] not in shared)
    return {"new": sorted(model_parts - file_parts), "left_out": sorted(file_parts - model_parts)}


def vocabulary_keys(model, rows: int) -> list[str]:
    """The state-dict keys of ``model`` whose first axis is indexed by token id, for a vocabulary of ``rows`` rows:
    the weights of its embeddings of ``rows`` entries (word embeddings; position and token-type tables have other
    sizes and are skipped by name), the weights and biases of its linear maps to ``rows`` outputs (LM heads) and a
    bias vector of ``rows`` values held by a module directly (BERT's prediction-head bias)."""
    from torch import nn  # noqa: PLC0415

    keys: list[str] = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if "position" in name or "token_type" in name:
            continue
        if isinstance(module, nn.Embedding) and module.num_embeddings == rows:
            keys.append(prefix + "weight")
        elif isinstance(module, nn.Linear) and module.out_features == rows:
            keys += [prefix + "weight"] + ([prefix + "bias"] if module.bias is not None else [])
        else:
            keys += [prefix + n for n, p in module.named_parameters(recurse=False)
                     if n == "bias" and p.dim() == 1 and p.shape[0] == rows]
    return keys


def transfer_vocabulary(model, state: dict, tokenizer_folder: str | os.PathLike, what: str = "the weights file"
                        ) -> dict[str, Any] | None:
    """Rewrite the token-indexed tensors of ``state`` (weights saved with the tokenizer in ``tokenizer_folder``) to
    ``model``'s own tokenizer, in place: the row of each token both vocabularies hold is copied to the token's id in
    the model's vocabulary; the model's tokens the file's vocabulary lacks keep the model's initialisation — how a
    model trained on one vocabulary starts on data with another (``tokenizer.add_tokens`` + ``resize_token_embeddings``
    of transformers, by token string, so that ids may also move). Returns ``{"copied", "tokens", "new": [first new
    tokens], "keys"}``, or None when nothing changes (same vocabulary and rows, or a model without a tokenizer
    part). The token-indexed keys are those of :func:`vocabulary_keys` for the file's and the model's row counts."""
    part = getattr(model, getattr(model, "tokenizer_part", "text"), None)
    if part is None or not hasattr(part, "get_tokenizer") or not hasattr(part, "get_input_embeddings"):
        return None
    from transformers import AutoTokenizer  # noqa: PLC0415

    rows = int(part.get_input_embeddings().num_embeddings)
    own = model.state_dict()
    keys = [k for k in vocabulary_keys(model, rows) if k in state]
    if not keys:
        return None
    try:
        theirs = AutoTokenizer.from_pretrained(str(tokenizer_folder)).get_vocab()
    except Exception as exc:  # noqa: BLE001 - tokenizers raise several error types for bad folders
        raise WeightsError(f"{tokenizer_folder}: the tokenizer saved with {what} cannot be read ({exc})") from None
    ours = part.get_tokenizer().get_vocab()
    file_rows = {int(state[k].shape[0]) for k in keys}
    if ours == theirs and file_rows == {rows}:
        return None
    if len(file_rows) != 1:
        raise WeightsError(f"{what}: its token-indexed tensors {', '.join(keys)} have different row counts "
                           f"({sorted(file_rows)})")
    (old_rows,) = file_rows
    pairs = [(j, theirs[t]) for t, j in ours.items() if t in theirs and theirs[t] < old_rows and j < rows]
    new = [t for t, j in sorted(ours.items(), key=lambda kv: kv[1]) if t not in theirs]
    if pairs:
        import torch  # noqa: PLC0415

        to_ids = torch.tensor([j for j, _ in pairs])
        from_ids = torch.tensor([i for _, i in pairs])
        for key in keys:
            if state[key].shape[1:] != own[key].shape[1:]:
                continue  # another width: the shape check of the load names it
            out = own[key].detach().clone().to(state[key].dtype)
            out[to_ids] = state[key][from_ids]
            state[key] = out
    return {"copied": len(pairs), "tokens": len(ours), "new": new[:20], "keys": keys}


def _storage_key(tensor) -> tuple:
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)


def _is_derived_buffer(model, key: str) -> bool:
    """Non-persistent-in-spirit buffers (index tables) that a file may legitimately omit."""
    leaf = key.rsplit(".", 1)[-1]
    return leaf in {"relative_position_index", "position_ids", "attn_mask"}


def _inside(directory: Path, path: Path, what: str) -> Path:
    """``path`` checked to lie inside the export ``directory`` once symlinks are followed: an export is one folder,
    and a config, weights or tokenizer file that is a link out of it (to a file the loader was never pointed at) is
    refused."""
    real_dir = directory.resolve()
    real = path.resolve()
    if real != real_dir and real_dir not in real.parents:
        raise WeightsError(f"{path}: {what} is a symbolic link out of the export folder (to {real}); exports are "
                           "loaded from their own folder only")
    return path


def _check_export_links(directory: Path) -> None:
    for name in (CONFIG_NAME, PREPROCESSOR_NAME, *_FOLDER_WEIGHTS):
        if (directory / name).exists() or (directory / name).is_symlink():
            _inside(directory, directory / name, name)
    tok = directory / TOKENIZER_DIR
    if tok.exists() or tok.is_symlink():
        _inside(directory, tok, TOKENIZER_DIR)
        if tok.is_dir():
            for entry in tok.rglob("*"):
                _inside(directory, entry, f"{TOKENIZER_DIR}/{entry.relative_to(tok)}")


def from_pretrained(path: str | os.PathLike, *, map_location: str = "cpu", trust_imports: bool = False,
                    **overrides):
    """Rebuild a model saved with ``save_pretrained`` (outputs equal the saved model's).

    A trainable-only export is loaded onto a model whose frozen parts come from the base weights named by its config
    (``pretrained:``, or the parts' own ``pretrained`` paths); every tensor of the export must fit, and every trainable
    parameter must be in it.

    Loading never runs code the export names or holds: weights are safetensors, and the modules listed under
    ``imports`` in its ``config.json`` (plug-ins that register parts) are not imported. They must already be imported,
    or be installed plug-ins (entry point group ``mmzoo.plugins``), else loading stops with an error naming them.
    ``trust_imports=True`` imports them — only for an export whose source you trust, since importing a module runs its
    code (a module of that name in the current folder included). Files that are symbolic links out of the export
    folder are refused.
    """
    from zoo.factory import create_model  # noqa: PLC0415

    directory = resolve_path(path)
    cfg_file = directory / CONFIG_NAME
    if not cfg_file.is_file():
        raise WeightsError(f"{directory}: not an mmzoo export (no {CONFIG_NAME}); expected a save_pretrained folder")
    _check_export_links(directory)
    config = read_json(cfg_file, WeightsError)
    if not isinstance(config, dict):
        raise WeightsError(f"{cfg_file}: expected a JSON object (an mmzoo export config), got {type(config).__name__}")
    config["_file"] = str(cfg_file)
    config["_trust_imports"] = trust_imports
    trainable_only = config.pop("weights", None) == "trainable_only"
    tokenizer = config.get("tokenizer")
    if tokenizer == TOKENIZER_DIR and (directory / TOKENIZER_DIR).is_dir():
        config = _with_tokenizer(config, str(directory / TOKENIZER_DIR))
    model = create_model(config, **overrides)
    if trainable_only:
        state = load_state_dict(directory)
        if not config.get("pretrained"):  # no base weights: the tensors absent here must be frozen parts
            trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            missing = sorted(trainable - set(state))
            if missing:
                raise WeightsError(f"{directory}: trainable-only export without base weights (no 'pretrained' in its "
                                   f"config) lacks {len(missing)} trainable tensor(s): {_list(missing)}")
        result = load_weights(model, state, strict=False, what=str(directory))
        if result.unexpected_keys:
            raise WeightsError(f"{directory}: {len(result.unexpected_keys)} tensor(s) do not belong to the model: "
                               f"{_list(result.unexpected_keys)}")
    else:
        load_weights(model, directory)
    return model


def read_json(path: str | os.PathLike, error: type[Exception] = ConfigError) -> Any:
    """A JSON file's content; a file that cannot be read or parsed raises ``error`` naming the file (and the line)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: invalid JSON ({exc})") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _with_tokenizer(config: dict, folder: str) -> dict:
    """Point the part whose tokenizer the export holds (the model class's ``tokenizer_part``) at the exported
    folder."""
    from zoo.registry import MODELS  # noqa: PLC0415

    tree = config.get("model", {})
    cls = MODELS.get(tree["type"]) if isinstance(tree.get("type"), str) and tree["type"] in MODELS else None
    key = getattr(cls, "tokenizer_part", "text")
    part = tree.get(key)
    if isinstance(part, dict) and "tokenizer" in part:
        return {**config, "model": {**tree, key: {**part, "tokenizer": folder}}}
    return config


def is_offline(hub: bool = False) -> bool:
    """``MMZOO_OFFLINE`` set to 1 / true / yes: nothing is downloaded, caches only. ``hub``: for a Hugging Face Hub
    download, where ``HF_HUB_OFFLINE`` counts too (it says nothing about the official links the model files name)."""
    names = ("MMZOO_OFFLINE", "HF_HUB_OFFLINE") if hub else ("MMZOO_OFFLINE",)
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in names)


_OTHER_FRAMEWORKS = ["*.h5", "*.msgpack", "*.ot", "*.onnx", "*.onnx_data", "*.tflite", "*.mlmodel", "onnx/*",
                     "coreml/*", "openvino/*", "rust_model*"]


def _hub_path(spec: str) -> Path:
    """``ORG/REPO`` → the snapshot folder, ``ORG/REPO/PATH`` → that file, from huggingface_hub (its cache when offline:
    ``HF_HUB_OFFLINE`` or ``MMZOO_OFFLINE``)."""
    parts = spec.strip("/").split("/", 2)
    if len(parts) < 2 or not all(parts[:2]):
        raise WeightsError(f"hf-hub:{spec}: expected hf-hub:ORG/REPO or hf-hub:ORG/REPO/PATH/IN/REPO")
    repo = "/".join(parts[:2])
    try:
        from huggingface_hub import hf_hub_download, snapshot_download  # noqa: PLC0415
    except ImportError:
        raise WeightsError(f"hf-hub:{spec}: huggingface_hub is not installed") from None
    offline = is_offline(hub=True)
    try:
        if len(parts) == 3:
            return Path(hf_hub_download(repo, parts[2], local_files_only=offline))
        # a repository's weights for other frameworks (TensorFlow, Flax, ONNX, ...) are not fetched
        return Path(snapshot_download(repo, local_files_only=offline, ignore_patterns=_OTHER_FRAMEWORKS))
    except Exception as exc:  # noqa: BLE001
        where = "is not in the local Hugging Face cache (offline)" if offline else "cannot be fetched"
        raise WeightsError(
            f"hf-hub:{spec}: {where} ({type(exc).__name__}); run `huggingface-cli download {repo}` where the hub is "
            "reachable and copy the Hugging Face cache (HF_HUB_CACHE), or give the local path instead"
        ) from None
