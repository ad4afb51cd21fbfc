"""Side streams: training data of another kind that joins every task batch (a registered unit, as tasks are).

A side stream is a :class:`SideStream` subclass registered in :data:`zoo.registry.SIDE_STREAMS` by the family that
reads it (CCLM's parallel sentences, MultiModal-GPT's language-only instructions). Its registered name ``key`` is the
data section's key: ``data.{key}`` (file or list of files), ``data.{key}_weight`` (the loss weight, default 1) and
``data.{key}_batch_size`` (default ``data.batch_size``). The data module reads its records with :meth:`SideStream.read`,
batches them with :meth:`SideStream.collator` and cycles them beside the task's batches (Lightning's
``CombinedLoader``: the task data sets the epoch); the training module adds the model's ``loss_method`` on each such
batch, times the weight. A model without that method is a config error naming ``data.{key}`` before training.

A plug-in family registers its own with ``@zoo.register_side_stream("name")``; nothing generic changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

__all__ = ["SideStream", "read_side_records", "side_record_problem", "side_stream", "side_stream_names"]

#: ``(file, index, problem)`` of each record left out with ``data.on_bad_sample: skip``
Skipped = list[tuple[str, int, str]]


class SideStream:
    """One kind of side data (see the module docstring). Subclasses set the class attributes and implement
    :meth:`read` and :meth:`collator`."""

    #: the model's method that takes one of this stream's batches and returns ``{"loss": Tensor, ...}``
    loss_method: ClassVar[str] = ""
    #: what its records are, for messages ("parallel sentences (...)")
    what: ClassVar[str] = ""

    @staticmethod
    def read(files: str | Sequence[str], skipped: Skipped | None = None) -> list[dict[str, Any]]:
        """The records of ``files``: a bad record is a :class:`zoo.data.datasets.DataError` naming the file and the
        record, or, given a ``skipped`` list, left out and appended to it."""
        raise NotImplementedError

    @staticmethod
    def collator(model: Any, tokenizer: Any, cfg: Mapping[str, Any]) -> Callable[[list], Any]:
        """The collate function turning a list of records into a batch for ``model``'s :attr:`loss_method`
        (``cfg``: the resolved data section)."""
        raise NotImplementedError


def side_stream_names() -> list[str]:
    """The registered side streams' keys (built-in and plug-in), without importing the built-in ones."""
    from zoo.registry import SIDE_STREAMS  # noqa: PLC0415

    return SIDE_STREAMS.names()


def side_stream(key: str) -> type[SideStream]:
    """The registered side stream ``key``."""
    from zoo.registry import SIDE_STREAMS  # noqa: PLC0415

    cls = SIDE_STREAMS.get(key)
    if not (isinstance(cls, type) and issubclass(cls, SideStream)):
        raise TypeError(f"side stream {key!r} is registered as {cls!r}, not a zoo.data.side.SideStream subclass")
    return cls


def side_record_problem(rec: Any, keys: Sequence[str], expected: str) -> str | None:
    """The problem of a side-stream record whose ``keys`` must hold text (an empty string allowed): ``expected``
    (what the record should be) with the kind of what is wrong, or the first text that is not valid Unicode."""
    from zoo.data.datasets import _Problem, _text_problem  # noqa: PLC0415

    if not isinstance(rec, Mapping):
        return _Problem(expected, "not an object")
    for key in keys:
        if not isinstance(rec.get(key), str):
            return _Problem(expected, "missing key" if rec.get(key) is None else "wrong type")
    return next((p for p in (_text_problem(k, rec[k]) for k in keys) if p), None)


def read_side_records(files: str | Sequence[str], problem: Callable[[Any], str | None],
                      skipped: Skipped | None) -> list[tuple[str, int, Any]]:
    """``(file, index, record)`` of every record of the JSON list ``files`` that ``problem`` accepts; a rejected one
    raises :class:`zoo.data.datasets.DataError` or, given ``skipped``, is appended to it."""
    from zoo.data.datasets import DataError, read_annotations  # noqa: PLC0415

    out = []
    for file, idx, rec in read_annotations([files] if isinstance(files, str) else list(files)):
        reason = problem(rec)
        if reason is None:
            out.append((file, idx, rec))
        elif skipped is None:
            raise DataError(file, idx, reason)
        else:
            skipped.append((file, idx, reason))
    return out
