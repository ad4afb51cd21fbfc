"""Benchmarks (not tests): ``mmzoo bench attention``.

Times are medians over repeated runs after warm-up, measured in one process so that ratios compare like with like.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

__all__ = ["time_fn", "bench_attention"]


def time_fn(fn: Callable[[], object], repeat: int = 10, warmup: int = 2, sync: Callable[[], None] | None = None) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_attention(
    lengths=(197, 577, 1025),
    batch: int = 8,
    heads: int = 12,
    head_dim: int = 64,
    repeat: int = 10,
    device: str = "cpu",
    dtype: str = "float32",
    backward: bool = False,
) -> list[dict]:
    """Median time per backend and its ratio to the math backend, per sequence length."""
    import torch  # noqa: PLC0415

    from zoo.modules.attention import AttentionBackendError, attention, select_backend  # noqa: PLC0415

    dt = getattr(torch, dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    rows = []
    for n in lengths:
        g = torch.Generator(device="cpu").manual_seed(0)
        q, k, v = (torch.randn(batch, heads, n, head_dim, generator=g).to(device=device, dtype=dt) for _ in range(3))
        if backward:
            for t in (q, k, v):
                t.requires_grad_(True)
        row = {"length": n}
        for name in ("math", "sdpa", "xformers"):
            try:
                select_backend(q, k, v, name)
            except AttentionBackendError as exc:
                row[name] = None
                row[f"{name}_why"] = str(exc).split(": ", 1)[-1]
                continue

            def run(name=name):
                out = attention(q, k, v, backend=name)
                if backward:
                    out.sum().backward()
                return out

            with torch.inference_mode(not backward):
                row[name] = time_fn(run, repeat=repeat, sync=sync)
        rows.append(row)
    return rows


def format_attention_table(rows: list[dict], header: str) -> str:
    lines = [header, "", "| tokens | math ms | sdpa ms | sdpa speed-up | xformers ms | xformers speed-up |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        def ms(key):
            return f"{r[key] * 1e3:.1f}" if r.get(key) else "n/a"

        def ratio(key):
            return f"{r['math'] / r[key]:.2f}×" if r.get(key) and r.get("math") else "n/a"

        lines.append(f"| {r['length']} | {ms('math')} | {ms('sdpa')} | {ratio('sdpa')} | {ms('xformers')} | {ratio('xformers')} |")
    why = next((r.get("xformers_why") for r in rows if r.get("xformers_why")), None)
    if why:
        lines += ["", f"xformers: not run ({why})."]
    return "\n".join(lines)
