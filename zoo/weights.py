"""Official weights by name: the ``pretrained:`` tables of the model files, downloaded, verified, converted once and
cached under ``$MMZOO_HOME``.

A model file lists the checkpoints its authors published, one entry per tag::

    pretrained:
      vqa:                      # the tag
        task: vqa               # the task variant the weights are for (null: the model without a task)
        resolution: 768         # the image side they were trained at
        url: https://...        # the official link (or hub: ORG/REPO[/FILE] for the Hugging Face Hub, or page: a
                                # page to download it from by hand, Google Drive say)
        file: x2vlm_base_vqa.th # the name it is saved under
        size: 1234              # bytes, where known (checked)
        sha256: ...             # where the source publishes one (checked)
        licence: ...
        source: https://github.com/...   # where the link and the scores were read
        scores: {vqa_test_dev: 80.4}
        default: true           # the tag ``pretrained="official"`` picks for its task (else the first for it)
        parts:                  # adapter-only checkpoints (eP-ALM, MultiModal-GPT): where the frozen parts load from
          lm.pretrained: hf-hub:facebook/opt-2.7b        # (dotted keys of the model config, written into the export)

:func:`pretrained_export` turns a tag into a local export folder: the download lands in
``$MMZOO_HOME/downloads/MODEL/TAG/FILE`` (``FILE.part`` while it runs: an interrupted download resumes with an HTTP
range request), is checked against the table's size and sha256, then converted once with the family's official
converter (:attr:`zoo.models.base.ZooModel.official_converter`) into ``$MMZOO_HOME/weights/MODEL/TAG`` — a
``save_pretrained`` export, written atomically, with ``source.json`` (URL, size, sha256 of the file converted) written
last: a folder without it is converted again. The tag fixes the task and the resolution: the converter is told the
task, and an export whose task or input size differs from the table's is refused.

Offline (``MMZOO_OFFLINE=1``, or no network) the cache is used; without it the error names the
file to fetch elsewhere and the exact path to put it at. Loading never runs code: official checkpoints are read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from zoo.hub import WeightsError, atomic_write, is_offline, mmzoo_home
from zoo.spec import ConfigError

__all__ = ["OFFICIAL", "PretrainedEntry", "pretrained_table", "find_entry", "names_tag", "tag_export",
           "pretrained_export", "download", "cached_export", "download_path", "export_path"]

#: the tag that picks, for the task asked for, the model file's default checkpoint
OFFICIAL = "official"
SOURCE_NAME = "source.json"
_CHUNK = 1 << 20
_KEYS = {"task": (str, type(None)), "resolution": (int, type(None)), "url": (str,), "hub": (str,), "page": (str,),
         "file": (str,),
         "size": (int, type(None)), "sha256": (str, type(None)), "licence": (str, type(None)),
         "source": (str, type(None)), "scores": (dict, type(None)), "default": (bool,), "family": (str,),
         "note": (str, type(None)), "parts": (dict, type(None))}


@dataclasses.dataclass(frozen=True)
class PretrainedEntry:
    """One published checkpoint of a registered model (see the module docstring for the fields)."""

    model: str
    tag: str
    task: str | None = None
    resolution: int | None = None
    url: str | None = None
    hub: str | None = None
    page: str | None = None
    file: str | None = None
    size: int | None = None
    sha256: str | None = None
    licence: str | None = None
    source: str | None = None
    scores: dict | None = None
    default: bool = False
    family: str | None = None
    note: str | None = None
    parts: dict | None = None

    @property
    def location(self) -> str:
        return self.url or self.page or f"hf-hub:{self.hub}"


def _entry(model: str, tag: str, node: Any, file: str | None) -> PretrainedEntry:
    where = f"pretrained.{tag}"
    if not isinstance(node, Mapping):
        raise ConfigError(f"expected a mapping (task, url, file, ...), got {type(node).__name__}", where, file)
    for key, value in node.items():
        if key not in _KEYS:
            raise ConfigError(f"unknown key {key!r}; accepted: {', '.join(sorted(_KEYS))}", f"{where}.{key}", file)
        if not isinstance(value, _KEYS[key]) or (isinstance(value, bool) and key != "default"):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in _KEYS[key])
            raise ConfigError(f"expected {want}, got {value!r}", f"{where}.{key}", file)
    if sum(k in node for k in ("url", "hub", "page")) != 1:
        raise ConfigError("expected exactly one of 'url' (a direct link), 'hub' (ORG/REPO[/FILE] on the Hugging Face "
                          "Hub) and 'page' (a page to download the file from by hand)", where, file)
    if "page" in node and "file" not in node:
        raise ConfigError("a 'page' entry needs 'file': the name the downloaded file is kept under", where, file)
    for key, value in (node.get("parts") or {}).items():
        if not isinstance(key, str) or not key or not isinstance(value, (str, int, float, bool)):
            raise ConfigError(f"expected a dotted model-config key and a value (a path or hf-hub: id), got "
                              f"{key!r}: {value!r}", f"{where}.parts", file)
    sha = node.get("sha256")
    if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha.lower())):
        raise ConfigError(f"expected 64 hexadecimal digits, got {sha!r}", f"{where}.sha256", file)
    name = node.get("file")
    if name is None and "url" in node:
        name = node["url"].split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    if name is not None and (not name or "/" in name or "\\" in name or name in (".", "..")):
        raise ConfigError(f"expected a plain file name, got {name!r}", f"{where}.file", file)
    return PretrainedEntry(model=model, tag=tag, **{**node, "file": name})


def pretrained_table(name_or_config: str | os.PathLike | Mapping) -> dict[str, PretrainedEntry]:
    """The published checkpoints of a registered model (tag → entry, in the file's order); empty when it lists none.
    A malformed table raises a ConfigError naming ``pretrained.TAG.KEY`` in its file."""
    from zoo.catalog import load_model_config  # noqa: PLC0415

    cfg = name_or_config if isinstance(name_or_config, Mapping) else load_model_config(name_or_config)
    table = cfg.get("_pretrained_table") or {}
    return {tag: _entry(cfg.get("name", "?"), tag, node, cfg.get("_file")) for tag, node in table.items()}


def find_entry(name: str, tag: str = OFFICIAL, task: str | None = None,
               table: Mapping[str, PretrainedEntry] | None = None) -> PretrainedEntry:
    """The entry ``tag`` names (``official``: the default checkpoint for ``task``, else the first one for it; with no
    task and none for the task-less model, the default one); a tag for another task than ``task`` is a ConfigError,
    as is a tag the table lacks (with the tags it has)."""
    table = pretrained_table(name) if table is None else table
    if not table:
        raise ConfigError(f"model {name!r} lists no official weights (no 'pretrained:' table in its model file); "
                          "pass a local weights file or export folder", "pretrained")
    if tag == OFFICIAL:
        for_task = [e for e in table.values() if e.task == task]
        if not for_task and task is None:  # no task asked for: the model's default checkpoint, whatever its task
            for_task = [e for e in table.values() if e.default]
        if not for_task:
            have = ", ".join(sorted({str(e.task) for e in table.values()}))
            raise ConfigError(f"model {name!r} has no official weights for task {task!r}; its checkpoints are for "
                              f"task {have} (mmzoo list --pretrained {name})", "pretrained")
        return next((e for e in for_task if e.default), for_task[0])
    if tag not in table:
        raise ConfigError(f"model {name!r} has no checkpoint tagged {tag!r}; tags: {OFFICIAL}, {', '.join(table)} "
                          f"(mmzoo list --pretrained {name})", "pretrained")
    entry = table[tag]
    if task is not None and entry.task != task:
        raise ConfigError(f"{name} checkpoint {tag!r} holds the {entry.task or 'task-less'} model, not task {task!r}; "
                          f"leave the task out or pick a tag for it", "pretrained")
    return entry


def names_tag(name: str, pretrained: str) -> bool:
    """Whether ``pretrained`` names a checkpoint of the model's ``pretrained:`` table (``official`` or a tag) rather
    than a local path (an existing file or folder of that name wins)."""
    if os.path.exists(os.path.expanduser(pretrained)):
        return False
    if pretrained == OFFICIAL:
        return True
    if "/" in pretrained or os.sep in pretrained or ":" in pretrained:
        return False
    return pretrained in pretrained_table(name)


def tag_export(name: str, pretrained: Any, task: str | None, whole: bool = True
               ) -> tuple[Path, PretrainedEntry] | None:
    """When ``pretrained`` names a checkpoint of model ``name`` (:func:`names_tag`): its converted export, fetched
    once (:func:`pretrained_export`); else None. A ``whole`` (strict) load needs the tag's task to be ``task``; a
    part-by-part load may start another task from a tag's weights (the pre-training model's, say), so only
    ``official`` still picks by ``task``."""
    if not isinstance(pretrained, str) or not names_tag(name, pretrained):
        return None
    return pretrained_export(name, pretrained, task if whole or pretrained == OFFICIAL else None)


def download_path(entry: PretrainedEntry) -> Path:
    """Where the official file of ``entry`` is kept: ``$MMZOO_HOME/downloads/MODEL/TAG/FILE``."""
    return mmzoo_home() / "downloads" / entry.model / entry.tag / str(entry.file)


def export_path(entry: PretrainedEntry) -> Path:
    """Where its converted export is kept: ``$MMZOO_HOME/weights/MODEL/TAG``."""
    return mmzoo_home() / "weights" / entry.model / entry.tag


def cached_export(entry: PretrainedEntry) -> Path | None:
    """The converted export when it is complete (its ``source.json`` written last) and made from the file the table
    names now (same URL, same frozen-part sources and, where the table has them, size and sha256); else None."""
    folder = export_path(entry)
    try:
        source = json.loads((folder / SOURCE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(source, dict) or source.get("location") != entry.location:
        return None
    if (source.get("parts") or None) != (entry.parts or None):  # the frozen parts' sources changed in the table
        return None
    if entry.sha256 is not None and source.get("sha256") != entry.sha256.lower():
        return None
    if entry.size is not None and source.get("size") != entry.size:
        return None
    return folder


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


class _DownloadFailed(WeightsError):
    """No connection (or it kept dropping): the offline advice applies."""


def _offline_message(entry: PretrainedEntry, reason: str) -> str:
    size = f", {entry.size:,} bytes" if entry.size else ""
    return (f"{entry.model} {entry.tag}: {reason}; on a machine without network download {entry.location}"
            f"{size} elsewhere and place it at {download_path(entry)} (or set MMZOO_HOME to a folder that holds "
            "downloads/ and weights/ from another machine)")


def download(url: str, dest: str | os.PathLike, *, size: int | None = None, sha256: str | None = None,
             progress: bool | None = None, retries: int = 3, timeout: float = 60.0) -> Path:
    """Fetch ``url`` into ``dest``, resuming a partial ``dest.part`` with a range request (also after a dropped
    connection, up to ``retries`` times), then check the size and sha256 when given; ``dest`` appears only once
    the whole file is there and checked. A file that fails a check is removed (the error says what was expected and
    what came). ``progress``: a tqdm bar on stderr (None: when stderr is a terminal, else a line every 10%)."""
    import http.client  # noqa: PLC0415
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    from zoo import __version__  # noqa: PLC0415

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        have = part.stat().st_size if part.is_file() else 0
        headers = {"User-Agent": f"mmzoo/{__version__}"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
                if have and resp.status != 206:  # the server sent the whole file: start again
                    have = 0
                length = resp.headers.get("Content-Length")
                total = have + int(length) if length is not None and length.isdigit() else size
                if size is not None and total is not None and total != size:
                    raise WeightsError(f"{url}: the server has {total:,} bytes, the table says {size:,}; not "
                                       "downloaded (a different file, or the table is out of date)")
                _stream(resp, part, have, total, dest.name, progress)
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have and size is not None and have == size:  # the part is already whole
                break
            raise WeightsError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            attempt += 1  # a dropped connection, a timeout, a refused one: try again from what arrived
            if attempt > retries:
                kept = part.stat().st_size if part.is_file() else 0
                reason = getattr(exc, "reason", None) or exc
                kept_note = f"; {kept:,} bytes kept in {part}, the next try resumes from there" if kept else ""
                raise _DownloadFailed(f"cannot download {url} ({type(exc).__name__}: {reason}){kept_note}") from None
            time.sleep(min(0.25 * 2.0 ** attempt, 5.0))
    got = part.stat().st_size
    if size is not None and got != size:
        part.unlink()
        raise WeightsError(f"{url}: downloaded {got:,} bytes, the table says {size:,}; the file was removed")
    if sha256 is not None:
        digest = _sha256(part)
        if digest != sha256.lower():
            part.unlink()
            raise WeightsError(f"{url}: sha256 {digest} differs from the table's {sha256.lower()}; the file was "
                               "removed (a corrupted or different file)")
    os.replace(part, dest)
    return dest


def _stream(resp, part: Path, have: int, total: int | None, name: str, progress: bool | None) -> None:
    from tqdm.auto import tqdm  # noqa: PLC0415

    show = sys.stderr.isatty() if progress is None else progress
    lines = progress is None and not show
    bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=not show,
               file=sys.stderr)
    done, said = have, (have * 10 // total if total else 0)
    try:
        with open(part, "ab" if have else "wb") as fh:
            while True:
                block = resp.read(_CHUNK)
                if not block:
                    break
                fh.write(block)
                done += len(block)
                bar.update(len(block))
                if lines and total and done * 10 // total > said:
                    said = done * 10 // total
                    print(f"{name}: {done:,} of {total:,} bytes ({100 * done // total}%)", file=sys.stderr,
                          flush=True)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        bar.close()
    if total is not None and done < total:
        import http.client  # noqa: PLC0415

        raise http.client.IncompleteRead(b"", total - done)


def _converter(entry: PretrainedEntry):
    from zoo.catalog import load_model_config  # noqa: PLC0415
    from zoo.registry import MODELS  # noqa: PLC0415

    family = entry.family or load_model_config(entry.model)["model"].get("type")
    converter = getattr(MODELS.get(family), "official_converter", None)
    if converter is None:
        raise WeightsError(f"{entry.model} {entry.tag}: family {family!r} has no official-checkpoint converter")
    return converter


def _check_export(entry: PretrainedEntry, folder: Path) -> None:
    """The tag fixes the task and the resolution: the converted export must have both."""
    from zoo.hub import read_json  # noqa: PLC0415

    config = read_json(folder / "config.json", WeightsError)
    if config.get("task") != entry.task:
        raise WeightsError(f"{entry.model} {entry.tag}: the converted checkpoint is the {config.get('task')!r} model, "
                           f"the table says task {entry.task!r}")
    if entry.resolution is not None:
        pre = folder / "preprocessor.json"
        side = read_json(pre, WeightsError).get("image_size") if pre.is_file() else None
        side = side[0] if isinstance(side, list) else side
        if side is not None and side != entry.resolution:
            raise WeightsError(f"{entry.model} {entry.tag}: the converted checkpoint takes {side} px images, the "
                               f"table says {entry.resolution}")


def pretrained_export(name: str, tag: str = OFFICIAL, task: str | None = None, *,
                      progress: bool | None = None) -> tuple[Path, PretrainedEntry]:
    """The local export folder of a published checkpoint: from the cache, else downloaded (or found where the
    offline message says to put it), verified and converted once. Returns (folder, entry)."""
    entry = find_entry(name, tag, task)
    folder = cached_export(entry)
    if folder is not None:
        return folder, entry
    checked = None  # the sha256 a fresh download was checked against
    if entry.hub is not None and entry.url is None:
        from zoo.hub import resolve_path  # noqa: PLC0415

        raw = resolve_path(entry.location)
    else:
        raw = download_path(entry)
        if not raw.is_file() and entry.page is not None:
            raise WeightsError(f"{entry.model} {entry.tag}: the authors share this checkpoint on a web page, not as "
                               f"a direct link; download it from {entry.page} and place it at {raw}")
        if not raw.is_file():
            if is_offline():
                raise WeightsError(_offline_message(entry, "not in the cache and MMZOO_OFFLINE is set"))
            try:
                download(str(entry.url), raw, size=entry.size, sha256=entry.sha256, progress=progress)
            except _DownloadFailed as exc:
                raise WeightsError(_offline_message(entry, exc.message)) from None
            checked = entry.sha256  # download checked it: the file is not read again
        elif entry.size is not None and raw.stat().st_size != entry.size:
            raise WeightsError(f"{raw}: {raw.stat().st_size:,} bytes, the table says {entry.size:,} ({entry.location}"
                               "); replace or remove it")
    digest = checked.lower() if checked else _sha256(raw) if raw.is_file() else None
    if entry.sha256 is not None and digest != entry.sha256.lower():
        raise WeightsError(f"{raw}: sha256 {digest} differs from the table's {entry.sha256.lower()} "
                           f"({entry.location}); replace or remove it")
    folder = export_path(entry)
    print(f"converting {raw.name} ({entry.model} {entry.tag}) -> {folder}", file=sys.stderr, flush=True)
    # an adapter-only checkpoint: the converter writes where the frozen parts load from into the export
    _converter(entry)(str(raw), str(folder), model=entry.model, task=entry.task,
                      **({"parts": dict(entry.parts)} if entry.parts else {}))
    _check_export(entry, folder)
    source = {"model": entry.model, "tag": entry.tag, "location": entry.location, "file": str(raw.name),
              "size": raw.stat().st_size if raw.is_file() else None, "sha256": digest, "task": entry.task,
              "resolution": entry.resolution, "parts": entry.parts, "converted": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with atomic_write(folder / SOURCE_NAME, "w") as fh:
        json.dump(source, fh, indent=2)
    return folder, entry
