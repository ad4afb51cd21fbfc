"""One timed training step loop, plain Python with no import of zoo: ``mmzoo bench train`` times this framework's
steps with it, and a family's official-code harness (run by path under the official code's own venv, where zoo is not
installed) loads this file by its path and times the official steps with the same loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def timed_steps(make_batch: Callable[[], Any], forward: Callable[[Any, int], Any], optimizer: Any, steps: int,
                log: Callable[[str], Any] | None = None) -> tuple[dict[str, list[float]], float]:
    """``steps + 1`` training steps (the first a warm-up), each timed per phase: ``batch = make_batch()``,
    ``forward(batch, step)`` (the loss; ``step`` counts from 0, the warm-up), backward, ``optimizer.step()`` +
    ``zero_grad``. Returns ``({phase: [seconds per timed step]}, the warm-up
    step's seconds)``."""
    phases: dict[str, list[float]] = {"data": [], "forward": [], "backward": [], "optimizer": []}
    first = 0.0
    for step in range(steps + 1):
        if log is not None:
            log(f"step {step + 1} of {steps + 1}" + (" (warm-up)" if step == 0 else ""))
        t0 = time.perf_counter()
        batch = make_batch()
        t1 = time.perf_counter()
        loss = forward(batch, step)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if step == 0:
            first = t4 - t0
            continue
        for key, value in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            phases[key].append(value)
    return phases, first
