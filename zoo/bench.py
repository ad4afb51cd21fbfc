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


def matmul_peak(dtype: str = "float32", n: int = 2048, repeat: int = 10) -> float:
    """Achieved FLOP/s of an n×n matmul in ``dtype`` on this machine (the reference "peak" for model efficiency)."""
    import torch  # noqa: PLC0415

    dt = getattr(torch, dtype)
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    t = time_fn(lambda: a @ b, repeat=repeat)
    return 2 * n**3 / t


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call, counted by torch's FlopCounterMode (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def bench_model(name: str, batch: int = 8, image_size: int | None = None, tokens: int = 40, repeat: int = 3,
                dtypes=("float32", "bfloat16"), backward: bool = True, baseline_backend: str | None = "math") -> dict:
    """Time a registered model's forward (and forward+backward) on random inputs; FLOP/s against the matmul peak.

    The model's own ``forward(images, input_ids, attention_mask)`` is timed. bfloat16 runs under CPU autocast.
    ``baseline_backend`` times the same model with that attention backend forced (the official implementations
    run the written-out math attention).
    """
    import torch  # noqa: PLC0415

    import zoo  # noqa: PLC0415
    from zoo.modules.attention import force_backend  # noqa: PLC0415

    torch.manual_seed(0)
    model = zoo.create_model(name)
    res = image_size or model.zoo_config.get("default_resolution") or 224
    images = torch.randn(batch, 3, res, res)
    ids = torch.randint(1000, 2000, (batch, tokens))
    mask = torch.ones_like(ids)

    def forward():
        return model(images, ids, mask)

    def loss_of(out) -> "torch.Tensor":
        total = 0
        for value in (out.values() if isinstance(out, dict) else vars(out).values()):
            tensor = getattr(value, "tokens", value)
            if torch.is_tensor(tensor) and tensor.is_floating_point():
                total = total + tensor.float().mean()
        return total

    def train_step():
        model.zero_grad(set_to_none=True)
        loss_of(forward()).backward()

    results: dict = {"model": name, "batch": batch, "image_size": res, "tokens": tokens,
                     "threads": torch.get_num_threads(), "rows": []}
    model.eval()
    with torch.no_grad():
        results["forward_flops"] = count_flops(forward)
    model.train()
    results["train_flops"] = count_flops(train_step)
    peaks = {dt: matmul_peak(dt) for dt in dtypes}
    results["peaks"] = peaks

    def timed(kind: str, dtype: str, backend: str | None):
        ctx_dtype = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else _null()
        ctx_backend = force_backend(backend) if backend else _null()
        with ctx_dtype, ctx_backend:
            if kind == "forward":
                model.eval()
                with torch.no_grad():
                    t = time_fn(forward, repeat=repeat, warmup=1)
                flops = results["forward_flops"]
            else:
                model.train()
                t = time_fn(train_step, repeat=repeat, warmup=1)
                flops = results["train_flops"]
        return {"kind": kind, "dtype": dtype, "attention": backend or "auto", "seconds": t,
                "tflops": flops / t / 1e12, "of_peak": flops / t / peaks[dtype]}

    for kind in ("forward", "forward+backward") if backward else ("forward",):
        for dtype in dtypes:
            results["rows"].append(timed(kind, dtype, None))
        if baseline_backend:
            results["rows"].append(timed(kind, dtypes[0], baseline_backend))
    return results


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def format_model_table(r: dict) -> str:
    peaks = ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in r["peaks"].items())
    lines = [
        f"`{r['model']}`, batch {r['batch']}, image {r['image_size']}, {r['tokens']} text tokens, CPU "
        f"({r['threads']} threads). FLOPs per step (torch FlopCounterMode): forward "
        f"{r['forward_flops'] / 1e9:.0f} G, forward+backward {r['train_flops'] / 1e9:.0f} G. Matmul peak measured in the "
        f"same run: {peaks}.",
        "",
        "| step | dtype | attention | median s | GFLOP/s | of peak |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in r["rows"]:
        lines.append(f"| {row['kind']} | {row['dtype']} | {row['attention']} | {row['seconds']:.3f} | "
                     f"{row['tflops'] * 1e3:.0f} | {row['of_peak'] * 100:.0f}% |")
    by = {(x["kind"], x["dtype"], x["attention"]): x["seconds"] for x in r["rows"]}
    notes = []
    for kind in ("forward", "forward+backward"):
        fp32, bf16 = by.get((kind, "float32", "auto")), by.get((kind, "bfloat16", "auto"))
        math = by.get((kind, "float32", "math"))
        if fp32 and bf16:
            notes.append(f"{kind}: speed-up of bf16 autocast over fp32 = {fp32 / bf16:.2f}× (fp32 time / bf16 time)")
        if fp32 and math:
            notes.append(f"{kind}: speed-up of the fused attention backend (auto) over math attention = "
                         f"{math / fp32:.2f}× (math time / auto time)")
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else []))
