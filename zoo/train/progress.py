"""What a training run prints: plain progress lines when the output is not a terminal, and less of Lightning's noise.

A progress bar redrawn in place is what a terminal wants; written to a file (``mmzoo train ... > log``, a job
scheduler, CI) the bar appears once, at the end of the epoch, so a long epoch looks like a hung job.
:class:`ProgressLines` prints one timestamped line every ``every_s`` seconds (and at the end of each epoch) with the
epoch, the step within it, the rate, the time left in the epoch and the latest loss. ``mmzoo train`` uses it instead of
the bar when standard output is not a terminal (``trainer.enable_progress_bar`` decides when it is set).

:func:`quiet_lightning` drops the lines that tell a user nothing about the run: Lightning's advertising tip, the
model summary's "Total FLOPs: 0" on CPU, and one deprecation warning of its own internals.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from typing import Any, TextIO

from lightning.pytorch.callbacks import Callback, TQDMProgressBar

__all__ = ["ProgressBar", "ProgressLines", "format_duration", "quiet_lightning"]


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``M:SS`` under an hour)."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressLines(Callback):
    """One line every ``every_s`` seconds of training, and one at each epoch's end:
    ``[12:03:41] epoch 2/8  step 120/208 (58%)  1.93 it/s  ETA 0:45  loss 2.7104``."""

    def __init__(self, every_s: float = 30.0, stream: TextIO | None = None, clock: Any = time.monotonic):
        self.every_s = float(every_s)
        self.stream = stream
        self.clock = clock
        self._epoch_start = 0.0
        self._last = 0.0
        self._first_batch = 0

    def _print(self, text: str) -> None:
        stream = self.stream or sys.stdout
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=stream, flush=True)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._epoch_start = self._last = self.clock()
        self._first_batch = -1

    def _line(self, trainer: Any, done: int) -> str:
        total = trainer.num_training_batches
        elapsed = self.clock() - self._epoch_start
        ran = done - max(self._first_batch, 0)
        rate = ran / elapsed if elapsed > 0 and ran > 0 else 0.0
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        parts = [f"epoch {trainer.current_epoch + 1}{epochs}"]
        if isinstance(total, int) and total > 0:
            parts.append(f"step {done}/{total} ({100 * done // total}%)")
            if rate > 0:
                parts += [f"{rate:.2f} it/s", f"ETA {format_duration((total - done) / rate)}"]
        else:
            parts.append(f"step {done}")
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        return "  ".join(parts)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._first_batch < 0:
            self._first_batch = batch_idx  # a resumed epoch starts past its first batches
        now = self.clock()
        if now - self._last >= self.every_s and trainer.is_global_zero:
            self._last = now
            self._print(self._line(trainer, batch_idx + 1))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:
            took = format_duration(self.clock() - self._epoch_start)
            self._print(f"{self._line(trainer, trainer.num_training_batches)}  (epoch took {took})")

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            shown = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            if shown:
                self._print("validation  " + "  ".join(f"{k[4:]} {v:.2f}" for k, v in sorted(shown.items())))


class ProgressBar(TQDMProgressBar):
    """Lightning's bar (for a terminal) without the logger version (``v_num``), which says nothing about the run."""

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class _DropLines(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


_QUIET = _DropLines("💡 Tip:", "litlogger", "Total FLOPs")


def quiet_lightning() -> None:
    """Drop Lightning's advertising tip and "Total FLOPs: 0" from its log, and its internal ``LeafSpec`` deprecation
    warning (idempotent)."""
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric",
                 "lightning.pytorch.callbacks.model_summary", "lightning.pytorch.utilities.model_summary"):
        logger = logging.getLogger(name)
        if _QUIET not in logger.filters:
            logger.addFilter(_QUIET)
        for handler in logger.handlers:
            if _QUIET not in handler.filters:
                handler.addFilter(_QUIET)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
