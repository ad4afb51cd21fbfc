"""WebDataset tar shards: any task's data as a stream of tar files (local paths or http(s) URLs), for data beyond one
disk (the format open_clip and most large-scale pre-training read).

Layout (the WebDataset convention): a shard is a plain tar file; a sample is consecutive members sharing a key (the
member name up to the first dot of its file name), one member per extension:

- ``KEY.json``: the annotation record, every field kept, its media field(s) rewritten to the member names below;
- ``KEY.EXT``: the media file's bytes, unchanged (``EXT`` its file's extension: ``png``, ``jpg``, ``mp4``); a
  two-image record (NLVR) has ``KEY.0.EXT`` and ``KEY.1.EXT``;
- ``KEY.meta.json``: ``{"index", "file", "record", ...}``: the record's position in the data set it was written from,
  its annotation file and position there, and the values of its item that depend on the other records
  (:meth:`zoo.data.datasets._AnnotationDataset.item_context`: a retrieval pair's dense image index);
- ``KEY.txt``: the caption, when the record has one string ``caption`` (what open_clip's loader reads beside the
  image).

Keys are the record's position, zero-padded to nine digits. :func:`write_shards` writes ``{prefix}-000000.tar``,
``{prefix}-000001.tar``, ... (each to a temporary name, renamed when complete) and the manifest
``{prefix}.shards.json``: the shard names (relative to the manifest), their sample counts and sizes, the total, the
reader and the source annotation files.

:class:`ShardDataset` streams them (a manifest, a brace pattern ``train-{000000..000009}.tar``, a list, or URLs read
with urllib as a stream) and yields the items the task's folder reader yields for the same records: the reader class
builds them from the record and the media bytes (:meth:`zoo.data.datasets._AnnotationDataset.item_from_media`).

Order and splitting (:func:`epoch_plan`): an epoch's order is the shards shuffled with ``seed + epoch``, then each
DataLoader worker's samples through a shuffle buffer seeded by ``seed + epoch``, the rank and the worker. The epoch's
samples (the shards concatenated in that order) are cut into one contiguous range per process (rank), and each rank's
range into one per worker, in whole batches (``batch_size``): every sample goes to exactly one worker of one rank, and
the loader yields the batches a map-style loader would (one partial batch at most, at the end). Ranges are cut at
samples, not shards, so any number of shards splits over any number of processes: a shard on a boundary is read in
part by the two ranges that meet in it (each reads only its own samples' bytes from a local file; a URL is streamed
up to the end of the range). With ``even=True`` (the default, as ``DistributedSampler``) every rank gets
``ceil(N / world)`` samples: when ``world`` does not divide ``N``, the last ranks' ranges run past the end of the epoch
and wrap to its first samples, so ``world * ceil(N / world) - N`` samples (fewer than ``world``) are read twice that
epoch, always the first ones of the epoch's order; ``even=False`` reads every sample exactly once, the first ``N %
world`` ranks one more each.

Resuming: :meth:`ShardDataset.state_dict` gives the epoch and the samples consumed in it; after
:meth:`ShardDataset.load_state_dict` the epoch's stream skips them (read again, not decoded) and yields the rest, as
the uninterrupted stream would have.

Errors: a missing shard, a file that is not a tar, a truncated or corrupt one (its sample count checked against the
manifest; a local file's end-of-archive block checked), a sample without its record or a medium its record names: a
:class:`zoo.data.datasets.DataError` naming the shard and the sample key. With ``on_bad_sample="skip"`` a bad sample
(not a bad shard) is yielded as None, which the collators drop and count.
"""

from __future__ import annotations

import bisect
import io
import json
import os
import random
import re
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from zoo.data.datasets import DataError, Records, _Problem, problem_kind

__all__ = ["MANIFEST_SUFFIX", "ShardDataset", "count_samples", "epoch_plan", "expand_braces", "iter_shard",
           "rank_range", "read_manifest", "resolve_shards", "shard_task_config", "worker_sizes", "worker_skips",
           "write_shards"]

MANIFEST_SUFFIX = ".shards.json"
FORMAT = "webdataset"
VERSION = 1
KEY_WIDTH = 9  # keys are record positions, zero-padded
#: WebDataset's rule (``base_plus_ext``): the key is the member name up to the first dot of its file name
_KEY_EXT = re.compile(r"^((?:.*/|)[^./][^.]*)\.([^/]*)$")
_BLOCK = tarfile.BLOCKSIZE
_URL_SCHEMES = ("http://", "https://", "file://")
_URL_TIMEOUT_S = 60
_RESERVED = ("json", "meta.json", "txt")  # the record's members


def _is_url(source: str) -> bool:
    return source.startswith(_URL_SCHEMES)


# ---------------------------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------------------------
def _reader_name(dataset: Any) -> str | None:
    from zoo.registry import DATASETS

    for name in DATASETS.names():
        if DATASETS.get(name) is type(dataset):
            return name
    return None


def _source_name(file: str, root: str | None) -> str:
    """An annotation file as a manifest names it: relative to the media root when inside it, else its file name."""
    if root:
        rel = os.path.relpath(file, root)
        if not rel.startswith(".."):
            return rel.replace(os.sep, "/")
    return os.path.basename(file)


def _tar_size(size: int) -> int:
    return _BLOCK + -(-size // _BLOCK) * _BLOCK


def _sample_members(ds: Any, i: int) -> list[tuple[str, bytes]]:
    """The tar members of record ``i`` of the reader ``ds`` (see the module docstring)."""
    file, idx, rec = ds.records[i]
    key = f"{i:0{KEY_WIDTH}d}"
    paths = ds.media_files(rec)
    exts = [(os.path.splitext(p)[1].lower().lstrip(".") or "bin") for p in paths]
    exts = [f"media.{e}" if e in _RESERVED else e for e in exts]  # never a record's own member name
    names = [f"{key}.{exts[0]}"] if len(paths) == 1 else [f"{key}.{j}.{e}" for j, e in enumerate(exts)]
    media = []
    for path, name in zip(paths, names):
        try:
            with open(path, "rb") as fh:
                media.append((name, fh.read()))
        except OSError as exc:
            raise DataError(file, idx, f"cannot read media file {path}: {exc.strerror or exc}") from None
    meta = {"index": i, "file": _source_name(file, ds.media_root), "record": idx, **ds.item_context(i)}
    members = [(f"{key}.json", json.dumps(ds.with_media_names(rec, names)).encode("utf-8")),
               (f"{key}.meta.json", json.dumps(meta).encode("utf-8")), *media]
    if isinstance(rec.get("caption"), str):
        members.append((f"{key}.txt", rec["caption"].encode("utf-8", "surrogatepass")))
    return members


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o444, "", ""
    tar.addfile(info, io.BytesIO(data))


def write_shards(dataset: Any, out_dir: str | os.PathLike, prefix: str, max_samples: int = 1000,
                 max_bytes: int | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Write the records of ``dataset`` (a reader of :mod:`zoo.data.datasets` of any task, as built: its records in
    order, its media files' bytes unchanged; a subset view of one writes its records) into WebDataset shards
    ``out_dir/{prefix}-{n:06d}.tar`` of at most ``max_samples`` samples and (when given) ``max_bytes`` bytes each (a
    sample larger than that gets a shard of its own), each written atomically, then the manifest
    ``out_dir/{prefix}.shards.json``. Shards of an earlier write with the same prefix beyond the new count are removed.
    Returns the manifest."""
    from tqdm.auto import tqdm

    from zoo.hub import atomic_path, atomic_write

    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise ValueError(f"max_samples must be a positive int, got {max_samples!r}")
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
        raise ValueError(f"max_bytes must be a positive int or None, got {max_bytes!r}")
    if not prefix or "/" in prefix or "." in prefix:
        raise ValueError(f"prefix {prefix!r}: expected a file name prefix without dots or slashes")
    base, indices = dataset, None
    while "dataset" in vars(base):  # a view of a reader (a subset, items with translations)
        view = vars(base).get("indices")
        if view is not None:
            indices = list(view) if indices is None else [view[j] for j in indices]
        base = base.dataset
    if not hasattr(base, "media_files") or not hasattr(base, "item_context"):
        raise TypeError(f"write_shards needs a reader of zoo.data.datasets, got {type(dataset).__name__}")
    order = list(indices) if indices is not None else list(range(len(base.records)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []
    show = (len(order) > 2000 and sys.stderr.isatty()) if progress is None else bool(progress)
    samples = (_sample_members(base, i) for i in order)
    with tqdm(total=len(order), desc=f"writing {prefix} shards", unit="sample", disable=not show,
              leave=False) as bar:
        pending = next(samples, None)
        while pending is not None:
            name = f"{prefix}-{len(shards):06d}.tar"
            count = size = 0
            with atomic_path(out / name) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
                while pending is not None and count < max_samples:
                    need = sum(_tar_size(len(data)) for _, data in pending)
                    if count and max_bytes is not None and size + need > max_bytes:
                        break
                    for member, data in pending:
                        _add_member(tar, member, data)
                    count, size = count + 1, size + need
                    bar.update(1)
                    pending = next(samples, None)
            shards.append({"name": name, "samples": count, "bytes": (out / name).stat().st_size})
    stale = re.compile(rf"^{re.escape(prefix)}-(\d{{6}})\.tar$")
    for path in out.iterdir():
        found = stale.match(path.name)
        if found and int(found.group(1)) >= len(shards):
            path.unlink()
    manifest = {"format": FORMAT, "version": VERSION, "reader": _reader_name(base), "video": bool(base.video),
                "total": sum(s["samples"] for s in shards), "shards": shards,
                "sources": [_source_name(f, base.media_root) for f in base.ann_files]}
    with atomic_write(out / f"{prefix}{MANIFEST_SUFFIX}", "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.write("\n")
    return manifest


def shard_task_config(config: str | os.PathLike | Mapping[str, Any], split: str = "train",
                      out_dir: str | os.PathLike | None = None, shard_size: int = 1000, max_bytes: int | None = None,
                      overrides: Iterable[str] = (), prefix: str | None = None,
                      progress: bool | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """Write one split of a task config's data as shards (``mmzoo data shard``): the config (a file, a packaged
    config's name, or a loaded mapping; ``overrides`` as ``mmzoo train`` takes them) is read, the split's records and
    every media file they name are checked as training checks them (:meth:`zoo.train.data.TaskDataModule.check`;
    with ``data.on_bad_sample: skip`` bad ones are left out), and its reader's records are written by
    :func:`write_shards` into ``out_dir`` (default: ``{data.root}/shards``) with the prefix ``prefix`` (default: the
    split; a named evaluation set ``{split}-{name}``). Returns ``(manifest path, manifest)`` per shard set written."""
    from zoo.spec import ConfigError
    from zoo.train.data import SPLITS, TaskDataModule
    from zoo.train.run import load_task_config, resolve_data

    if split not in SPLITS:
        raise ConfigError(f"expected one of {', '.join(SPLITS)}, got {split!r}", "split")
    cfg = dict(config) if isinstance(config, Mapping) else load_task_config(config, overrides)
    data = resolve_data(cfg.get("data") or {})
    shards = dict(data.pop("shards", None) or {})
    if not data.get(split):
        where = f" (it is read from shards: data.shards.{split})" if split in shards else ""
        raise ConfigError(f"the config has no {split} annotation files to write{where}", f"data.{split}",
                          cfg.get("_file"))
    from zoo.data.side import side_stream_names

    data.update({s: None for s in SPLITS if s != split})  # only this split is read and checked
    for key in side_stream_names():  # side streams join training batches: not part of a split's records
        for name in (key, f"{key}_weight", f"{key}_batch_size"):
            data.pop(name, None)
    if split != "train":
        data.pop("few_shot", None)
        data.pop("translation", None)
    dm = TaskDataModule(cfg["task"], data, None, vqa_mode="classifier", image_size=1)
    report = dm.check([split])
    print(report)
    root = Path(dm.cfg["root"])
    target = Path(out_dir) if out_dir is not None else root / "shards"
    written = []
    for name in dm.eval_names(split) if split != "train" else [None]:
        pre = prefix or split
        pre = pre if name is None else f"{pre}-{name}"
        manifest = write_shards(dm.dataset(split, name), target, pre, max_samples=shard_size, max_bytes=max_bytes,
                                progress=progress)
        written.append((target / f"{pre}{MANIFEST_SUFFIX}", manifest))
    return written


# ---------------------------------------------------------------------------------------------------------------------
# finding shards
# ---------------------------------------------------------------------------------------------------------------------
def expand_braces(pattern: str) -> list[str]:
    """``train-{000000..000002}.tar`` → the three names (zero-padded to the first number's width);
    ``{a,b}`` → both; several braces → every combination, in order."""
    found = re.search(r"\{([^{}]*)\}", pattern)
    if found is None:
        return [pattern]
    head, body, tail = pattern[:found.start()], found.group(1), pattern[found.end():]
    span = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if span:
        lo, hi = span.groups()
        if int(hi) < int(lo):
            raise ValueError(f"{pattern}: the range {{{body}}} runs backwards")
        items = [str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1)]
    elif "," in body:
        items = body.split(",")
    else:
        items = ["{" + body + "}"]  # not a pattern: kept as written
    rests = expand_braces(tail)
    return [head + item + rest for item in items for rest in rests]


def _relative_to(base: str, name: str) -> str:
    if _is_url(name) or os.path.isabs(name):
        return name
    if _is_url(base):
        return urllib.parse.urljoin(base, name)
    return os.path.join(os.path.dirname(base), name)


def _read_bytes(source: str) -> bytes:
    if _is_url(source):
        try:
            with urllib.request.urlopen(source, timeout=_URL_TIMEOUT_S) as resp:
                return resp.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise DataError(source, None, f"cannot read it: {exc}") from None
    if not os.path.isfile(source):
        raise DataError(source, None, "file not found")
    with open(source, "rb") as fh:
        return fh.read()


def read_manifest(source: str | os.PathLike) -> dict[str, Any]:
    """The shard manifest at ``source`` (a path or URL), checked: ``shards`` a list of ``{name, samples}``."""
    source = os.fspath(source)
    try:
        manifest = json.loads(_read_bytes(source).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(source, None, f"not a JSON shard manifest ({exc})") from None
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    if not isinstance(shards, list) or not all(
            isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("samples"), int)
            and not isinstance(s.get("samples"), bool) and s["samples"] >= 0 for s in shards):
        raise DataError(source, None, "not a shard manifest: expected 'shards', a list of {name, samples}")
    return manifest


def resolve_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]
                   ) -> tuple[list[str], list[int | None], list[dict[str, Any]]]:
    """``(shards, sample counts, manifests)`` of a shard source: a manifest (``*.json``; its shards relative to
    it), a path or URL with brace patterns, or a list of those. A count is None where no manifest gives it."""
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    urls: list[str] = []
    counts: list[int | None] = []
    manifests = []
    for item in specs:
        item = os.fspath(item)
        if item.endswith(".json"):
            manifest = read_manifest(item)
            manifests.append(manifest)
            for entry in manifest["shards"]:
                urls.append(_relative_to(item, entry["name"]))
                counts.append(entry["samples"])
        else:
            for url in expand_braces(item):
                urls.append(url)
                counts.append(None)
    return urls, counts, manifests


# ---------------------------------------------------------------------------------------------------------------------
# reading one shard
# ---------------------------------------------------------------------------------------------------------------------
def _open_shard(url: str) -> tuple[Any, bool]:
    """An open binary stream of the shard and whether it can seek (local files)."""
    if _is_url(url):
        try:
            return urllib.request.urlopen(url, timeout=_URL_TIMEOUT_S), False
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise DataError(url, None, f"cannot open the shard: {exc}") from None
    if not os.path.isfile(url):
        raise DataError(url, None, "shard not found")
    try:
        return open(url, "rb"), True
    except OSError as exc:
        raise DataError(url, None, f"cannot open the shard: {exc.strerror or exc}") from None


def iter_shard(url: str, start: int = 0, stop: int | None = None, expected: int | None = None,
               exts: Iterable[str] | None = None) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """``(position, key, {extension: bytes})`` for the samples ``start`` ≤ position < ``stop`` of the shard at
    ``url`` (a path: members outside the range are skipped without reading them; a URL: streamed). ``exts``: only
    those members are read (others are left out of the dicts). ``expected``: the shard's sample count (a manifest's),
    checked when the range reaches its end. Any fault is a :class:`DataError` naming the shard and the sample."""
    wanted = set(exts) if exts is not None else None
    fh, seekable = _open_shard(url)
    key, pos, parts, last = None, -1, {}, None
    seen: set[str] = set()
    with fh:
        try:
            tar = tarfile.open(fileobj=fh, mode="r:" if seekable else "r|")  # noqa: SIM115 - `with fh` closes
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise DataError(url, None, f"not a readable tar file ({exc})") from None
        try:
            for member in tar:
                if not member.isfile():
                    continue
                found = _KEY_EXT.match(member.name)
                if found is None:
                    continue
                name, ext = found.groups()
                if name != key:
                    if key is not None and start <= pos:
                        yield pos, key, parts
                    last = key
                    if name in seen:
                        raise DataError(url, None, f"sample {name!r}: its members are not consecutive (a tar sample is "
                                                   "the consecutive members sharing a key)")
                    seen.add(name)
                    key, pos, parts = name, pos + 1, {}
                    if stop is not None and pos >= stop:
                        if expected is not None and pos >= expected:
                            raise DataError(url, None, f"sample {name!r}: more samples than the manifest's {expected}")
                        return
                if pos >= start and (wanted is None or ext in wanted):
                    if ext in parts:
                        raise DataError(url, None, f"sample {name!r}: two members {member.name!r}")
                    parts[ext] = tar.extractfile(member).read()
            if seekable:  # tarfile stops at a bad header without a word: a whole archive ends in a zero block
                fh.seek(tar.offset)
                block = fh.read(_BLOCK)
                if block != tarfile.NUL * _BLOCK:
                    what = "truncated" if len(block) < _BLOCK else "corrupt (a bad tar header)"
                    raise DataError(url, None, f"the shard is {what} after sample {last!r}")
            if expected is not None and pos + 1 != expected:
                raise DataError(url, None, f"{pos + 1} samples, but the manifest says {expected}: the shard is "
                                           f"truncated or corrupt after sample {last!r}")
            if key is not None and start <= pos and (stop is None or pos < stop):
                yield pos, key, parts
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            where = f"after sample {last!r}" if last is not None else "at its first sample"
            raise DataError(url, None, f"corrupt tar {where}: {exc}") from None


def count_samples(url: str) -> int:
    """The number of samples in the shard at ``url`` (a local file's headers only; a URL is read through)."""
    return sum(1 for _ in iter_shard(url, exts=()))


# ---------------------------------------------------------------------------------------------------------------------
# one epoch: order and splitting
# ---------------------------------------------------------------------------------------------------------------------
def rank_range(total: int, world: int, rank: int, even: bool = True) -> tuple[int, int]:
    """The positions ``[lo, hi)`` of rank ``rank`` of ``world`` in an epoch of ``total`` samples; with ``even``
    every rank has ``ceil(total / world)`` (positions past ``total`` wrap to the epoch's first samples), else the
    first ``total % world`` ranks one more than the others."""
    if even:
        n = -(-total // world) if total else 0
        return rank * n, rank * n + n
    share, more = divmod(total, world)  # the first ``more`` ranks one more
    lo = rank * share + min(rank, more)
    return lo, lo + share + (rank < more)


def worker_sizes(n: int, workers: int, batch_size: int = 1) -> list[int]:
    """``n`` samples over ``workers`` DataLoader workers in contiguous runs of whole batches (only the last worker
    with samples may end in a partial batch)."""
    batches = -(-n // batch_size)
    edges = [min(w * batches // workers * batch_size, n) for w in range(workers + 1)]
    return [edges[w + 1] - edges[w] for w in range(workers)]


def worker_skips(consumed: int, sizes: Sequence[int], batch_size: int = 1) -> tuple[list[int], int]:
    """Where ``consumed`` samples of a DataLoader over workers with ``sizes`` samples leave off: ``(skips, next)``,
    how many of each worker's samples came among them and the worker whose batch comes next. A loader's batches come
    round-robin from the workers that have batches left (torch's in-order multi-worker iteration), and a new loader
    starts at worker 0: a resumed stream gives worker ``w`` the part of worker ``(w + next) % workers``."""
    skips = [0] * len(sizes)
    left, following = consumed, 0
    while left > 0 and any(skips[w] < sizes[w] for w in range(len(sizes))):
        for w, size in enumerate(sizes):
            if skips[w] >= size:
                continue
            whole = min(batch_size, size - skips[w])
            take = min(whole, left)
            skips[w] += take
            left -= take
            following = (w + 1) % len(sizes) if take == whole else w
            if left == 0:
                break
    return skips, following


def epoch_plan(counts: Sequence[int], epoch: int = 0, seed: int = 0, shuffle: bool = True, world: int = 1,
               rank: int = 0, workers: int = 1, worker: int = 0, batch_size: int = 1,
               even: bool = True) -> tuple[list[tuple[int, int, int]], list[int]]:
    """What worker ``worker`` of rank ``rank`` reads in ``epoch``: ``(pieces, sizes)`` with ``pieces`` the
    ``(shard index, first sample, end)`` runs in reading order and ``sizes`` every worker's sample count on this rank
    (see the module docstring: shards shuffled with ``seed + epoch``, contiguous ranges per rank and per worker in
    whole batches, wrapping when ``even``)."""
    order = list(range(len(counts)))
    if shuffle:
        random.Random(seed + epoch).shuffle(order)
    total = sum(counts)
    lo, hi = rank_range(total, world, rank, even)
    sizes = worker_sizes(hi - lo, workers, batch_size)
    start = lo + sum(sizes[:worker])
    end = start + sizes[worker]
    starts, acc = [], 0
    for j in order:
        starts.append(acc)
        acc += counts[j]
    pieces = []
    p = start
    while p < end:
        q = p % total
        base = p - q
        j = bisect.bisect_right(starts, q) - 1
        first = starts[j]
        stop = min(end - base, first + counts[order[j]])
        pieces.append((order[j], q - first, stop - first))
        p = base + stop
    return pieces, sizes


def _buffer_shuffle(samples: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """A streaming shuffle: a buffer of ``size`` samples, each new one taking the place of a random one yielded."""
    buf: list[Any] = []
    for sample in samples:
        if len(buf) < size:
            buf.append(sample)
            continue
        j = rng.randrange(size)
        yield buf[j]
        buf[j] = sample
    rng.shuffle(buf)
    yield from buf


# ---------------------------------------------------------------------------------------------------------------------
# the reader
# ---------------------------------------------------------------------------------------------------------------------
class ShardDataset(IterableDataset):
    """Items of a task's reader streamed from WebDataset shards (see the module docstring).

    Args:
        shards: a manifest (``*.shards.json``), a shard path or URL with brace patterns, or a list of those.
        reader: the reader (a :data:`zoo.registry.DATASETS` name or class) whose items to build; default: the
            manifest's. ``reader_kwargs`` are its arguments (``image_size``, ``train``, ``transform``, ``max_words``,
            ``video``, ``num_frames``, ...; not ``media_root``: the media are the shards' members).
        seed, shuffle: the epoch order (shards and a ``buffer``-sample shuffle buffer; ``shuffle=False``: shard
            order as given, no buffer).
        even: every rank gets the same number of samples (see the module docstring).
        rank, world_size: this process's place (None: from ``torch.distributed`` when initialised, else 0 of 1).
        batch_size: the DataLoader's batch size: workers get whole batches, and resuming maps consumed samples to
            workers by it (None: 1).
        full: read every record of the shards first (their JSON members) and build the reader from all of them:
            what evaluation sets need (a retrieval set's texts, a captioning set's image ids). Without it the records
            are read when :attr:`records` is first asked for.
        on_bad_sample: ``"error"`` or ``"skip"`` (a bad sample yields None).
        raw: yield the undecoded samples, ``{"__key__", "__url__", EXT: bytes, ...}`` (no reader needed).
    """

    def __init__(self, shards: str | os.PathLike | Sequence[str | os.PathLike], reader: Any = None, *, seed: int = 0,
                 shuffle: bool = True, buffer: int = 1000, even: bool = True, rank: int | None = None,
                 world_size: int | None = None, batch_size: int | None = None, full: bool = False,
                 on_bad_sample: str = "error", raw: bool = False, **reader_kwargs: Any):
        urls, counts, manifests = resolve_shards(shards)
        if not urls:
            raise DataError(str(shards), None, "no shards")
        self.source = os.fspath(shards) if isinstance(shards, (str, os.PathLike)) else [os.fspath(s) for s in shards]
        self.urls = urls
        self.counts = [c if c is not None else count_samples(u) for u, c in zip(urls, counts)]
        self.manifests = manifests
        self.seed, self.shuffle, self.buffer, self.even = int(seed), bool(shuffle), int(buffer), bool(even)
        self.rank, self.world_size = rank, world_size
        self.batch_size = batch_size
        self.raw = bool(raw)
        self.skipped: list[tuple[str, int | None, str]] = []
        self.num_malformed = 0
        self.num_bad_media = 0
        #: a callable given each record before its item is built (raises to refuse it)
        self.sample_check: Callable[[Mapping], None] | None = None
        self._state = torch.zeros(2, dtype=torch.int64).share_memory_()  # epoch, samples to skip: seen by workers
        self._consumed = 0
        self._records: Records | None = None
        self._positions: dict[int, int] | None = None
        self._full: Any = None
        self.template: Any = None
        if on_bad_sample not in ("error", "skip"):
            from zoo.spec import ConfigError

            raise ConfigError(f"on_bad_sample={on_bad_sample!r}: expected 'error' or 'skip'")
        self.on_bad_sample = on_bad_sample
        if raw:
            return
        from zoo.registry import DATASETS

        names = {m.get("reader") for m in manifests} - {None}
        if reader is None:
            if len(names) != 1:
                raise ValueError(f"{self.source}: name the reader of these shards (reader=...): "
                                 + ("no manifest names one" if not names else f"the manifests name {sorted(names)}"))
            reader = names.pop()
        self.reader_cls = DATASETS.get(reader) if isinstance(reader, str) else reader
        if reader_kwargs.get("media_root") is not None:
            raise TypeError("ShardDataset reads the media from the shards' members: no media_root")
        kwargs = {**reader_kwargs, "on_bad_sample": on_bad_sample, "media_root": None}
        if kwargs.get("video") is None:
            videos = {bool(m["video"]) for m in manifests if "video" in m}
            kwargs["video"] = videos.pop() if len(videos) == 1 else self._first_record_is_video()
        self.reader_kwargs = kwargs
        self.sources = list(dict.fromkeys(s for m in manifests for s in m.get("sources", [])))
        self.template = self.reader_cls(Records([], self.sources), **kwargs)
        if full:
            self.load_records()

    # -- records -------------------------------------------------------------------------------------------------
    def _first_record_is_video(self) -> bool:
        for _, key, parts in iter_shard(self.urls[0], 0, 1, exts={"json"}):
            rec = self._parse(self.urls[0], key, parts, "json")
            return "video" in rec and "image" not in rec
        return False

    @staticmethod
    def _parse(url: str, key: str, parts: Mapping[str, bytes], ext: str) -> dict:
        if ext not in parts:
            raise DataError(url, None, _Problem(f"sample {key!r}: no {key}.{ext} member", "missing key"))
        try:
            value = json.loads(parts[ext].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(url, None, _Problem(f"sample {key!r}: {key}.{ext} is not JSON ({exc})", "not an object")) \
                from None
        if not isinstance(value, dict):
            raise DataError(url, None, _Problem(f"sample {key!r}: {key}.{ext} is not a JSON object", "not an object"))
        return value

    def load_records(self) -> Records:
        """Read every record of the shards (their ``.json`` and ``.meta.json`` members only), check each with the
        reader (a malformed one: a DataError naming the shard and key, or left out and counted with ``skip``), and
        build the reader from all of them (:attr:`records`; the items' data-set-wide values then come from it)."""
        if self._records is not None:
            return self._records
        records, positions = Records([], self.sources), {}
        for url, count in zip(self.urls, self.counts):
            for _, key, parts in iter_shard(url, expected=count, exts={"json", "meta.json"}):
                try:
                    rec = self._parse(url, key, parts, "json")
                    meta = self._parse(url, key, parts, "meta.json")
                    problem = self.template._check_record(rec)
                    if problem is not None:
                        raise DataError(url, None, _Problem(f"sample {key!r}: {problem}", problem_kind(problem)))
                except DataError as exc:
                    if self.on_bad_sample == "error":
                        raise
                    self.skipped.append((exc.file, exc.index, exc.problem))
                    self.num_malformed += 1
                    continue
                positions[int(meta.get("index", len(positions)))] = len(records)
                records.append((meta.get("file", url), meta.get("record"), rec))
        self._full = self.reader_cls(records, **self.reader_kwargs)
        for name in ("frame_ablation", "min_frames", "_image_cache"):
            if name in vars(self.template):
                setattr(self._full, name, getattr(self.template, name))
        self._records, self._positions = records, positions
        return records

    @property
    def records(self) -> Records:
        """``(annotation file, index in it, record)`` of every sample, in shard order (read on first use; the
        records' media fields name the shards' members)."""
        return self.load_records()

    @property
    def reader(self) -> Any:
        """The reader that builds the items (with every record once :meth:`load_records` has run)."""
        return self._full if self._full is not None else self.template

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("template", "reader_cls", "reader_kwargs"):
            raise AttributeError(name)
        full, template = self.__dict__.get("_full"), self.__dict__.get("template")
        reader = full if full is not None else template
        if reader is None:
            raise AttributeError(name)
        if name in ("texts", "img2txt", "txt2img", "image_ids", "img_ids") and full is None:
            self.load_records()  # data-set-wide indexes need every record
            reader = self.__dict__["_full"]
        return getattr(reader, name)

    def set_frame_ablation(self, ablation: str | None) -> None:
        """:meth:`zoo.data.datasets._AnnotationDataset.set_frame_ablation` of the reader(s) building the items."""
        for reader in (self.template, self._full):
            if reader is not None:
                reader.set_frame_ablation(ablation)

    def check(self) -> int:
        """Before training: every local shard exists and starts as a tar file (URLs are not fetched here; every
        sample is checked when read). Returns the number of shards."""
        for url in self.urls:
            if _is_url(url):
                continue
            for _ in iter_shard(url, 0, 1, exts=()):
                break
        return len(self.urls)

    # -- order, splitting and state ------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return int(self._state[0])

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration yields; moving to another epoch drops a resume point."""
        if int(epoch) != int(self._state[0]):
            self._state[0] = int(epoch)
            self._state[1] = 0

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "consumed", "seed"}``: ``consumed`` counts the samples this process's iterator has yielded
        in the epoch (plus a resume point it started from). Through a DataLoader with workers the count is the
        loader's: batches yielded × batch size."""
        return {"epoch": self.epoch, "consumed": int(self._consumed), "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume: the next iterations of epoch ``state["epoch"]`` skip its first ``state["consumed"]`` samples
        (until :meth:`set_epoch` moves to another epoch or a main-process iteration has used it)."""
        if "seed" in state and int(state["seed"]) != self.seed:
            warnings.warn(f"resuming shards read with seed {self.seed}, but the state was saved with seed "
                          f"{state['seed']}: the remaining samples differ from the interrupted run's", stacklevel=2)
        self._state[0] = int(state.get("epoch", 0))
        self._state[1] = int(state.get("consumed", 0))
        self._consumed = int(state.get("consumed", 0))

    def _place(self) -> tuple[int, int]:
        """``(world, rank)``: as given, else torch.distributed's, else one process."""
        world, rank = self.world_size, self.rank
        if world is None or rank is None:
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
                world = dist.get_world_size() if world is None else world
                rank = dist.get_rank() if rank is None else rank
        world, rank = int(world or 1), int(rank or 0)
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not one of {world} processes")
        return world, rank

    def __len__(self) -> int:
        """The samples this process reads per epoch (all its workers together)."""
        world, rank = self._place()
        lo, hi = rank_range(sum(self.counts), world, rank, self.even)
        return hi - lo

    def plan(self, epoch: int | None = None, worker: int = 0, workers: int = 1) -> list[tuple[str, int, int]]:
        """``(shard, first sample, end)`` runs that worker ``worker`` of ``workers`` of this process reads in
        ``epoch`` (default: the current one)."""
        world, rank = self._place()
        pieces, _ = epoch_plan(self.counts, self.epoch if epoch is None else epoch, self.seed, self.shuffle, world,
                               rank, workers, worker, self.batch_size or 1, self.even)
        return [(self.urls[j], a, b) for j, a, b in pieces]

    def __iter__(self) -> Iterator[Any]:
        epoch, skip = int(self._state[0]), int(self._state[1])
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is None:  # the resume point is used once by a main-process iteration
            self._state[1] = 0
            self._consumed = skip
        world, rank = self._place()
        batch = self.batch_size or 1
        sizes = worker_sizes(len(self), workers, batch)
        skips, following = worker_skips(skip, sizes, batch)
        worker = (worker + following) % workers  # the part this worker reads: the next batch is worker 0's
        pieces, _ = epoch_plan(self.counts, epoch, self.seed, self.shuffle, world, rank, workers, worker, batch,
                               self.even)
        todo = skips[worker]
        samples = self._samples(pieces)
        if self.shuffle and self.buffer > 1:
            samples = _buffer_shuffle(samples, self.buffer, random.Random(f"{self.seed + epoch}:{rank}:{worker}"))
        for sample in samples:
            if todo > 0:
                todo -= 1
                continue
            out = sample if self.raw else self._item(sample)
            if info is None:
                self._consumed += 1
            yield out

    def _samples(self, pieces: Sequence[tuple[int, int, int]]) -> Iterator[dict[str, Any]]:
        for j, first, end in pieces:
            url, count = self.urls[j], self.counts[j]
            for _, key, parts in iter_shard(url, first, end, expected=count):
                yield {"__key__": key, "__url__": url, **parts}

    # -- items ---------------------------------------------------------------------------------------------------
    def _item(self, sample: Mapping[str, Any]) -> Any:
        url, key = sample["__url__"], sample["__key__"]
        try:
            rec = self._parse(url, key, sample, "json")
            meta = self._parse(url, key, sample, "meta.json")
            reader, context = self.template, meta
            index = meta.get("index")
            if isinstance(index, bool) or not isinstance(index, int):
                raise DataError(url, None, _Problem(f"sample {key!r}: {key}.meta.json has no integer 'index'",
                                                    "missing key"))
            if self._full is not None:  # every record read: the position among those the reader kept
                if index not in self._positions:
                    return None  # left out when the records were read (counted there)
                reader, index = self._full, self._positions[index]
            problem = self.template._check_record(rec)
            if problem is not None:
                raise DataError(url, None, _Problem(f"sample {key!r}: {problem}", problem_kind(problem)))
            media = {}
            for name in reader.media_files(rec):
                found = _KEY_EXT.match(name)
                if found is None or found.group(1) != key or found.group(2) not in sample:
                    held = ", ".join(f"{key}.{e}" for e in sorted(sample) if not e.startswith("__"))
                    raise DataError(url, None, _Problem(f"sample {key!r}: no member {name!r}, which its record names "
                                                        f"(the sample holds {held})", "missing media"))
                media[name] = sample[found.group(2)]
            if self.sample_check is not None:
                self.sample_check(rec)
            try:
                return reader.item_from_media(index, rec, media, context, file=url)
            except DataError as exc:
                raise DataError(url, None, _Problem(f"sample {key!r}: {exc.problem}", problem_kind(exc.problem))) \
                    from None
        except DataError as exc:
            if self.on_bad_sample == "error" or not getattr(self.template, "_skip_media_errors", True):
                raise
            self.skipped.append((exc.file, exc.index, exc.problem))
            warnings.warn(f"skipped a bad sample: {exc}", RuntimeWarning, stacklevel=2)
            return None

    def __repr__(self) -> str:
        what = "raw samples" if self.raw else type(self.template).__name__
        return f"ShardDataset({len(self.urls)} shards, {sum(self.counts)} samples, {what}, seed={self.seed})"
