"""Benchmarks (not tests): ``mmzoo bench attention``.

Times are medians over repeated runs after warm-up, measured in one process so that ratios compare like with like.
"""

from __future__ import annotations

from typing import Any

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


def matmul_peak(dtype: str = "float32", n: int | None = None, repeat: int = 10, target_s: float = 0.2) -> float:
    """Achieved FLOP/s of an n×n matmul in ``dtype`` on this machine (the reference "peak" for model efficiency).

    ``n`` None: sized from a 256×256 trial so that one product takes about ``target_s`` (between 256 and 2048): a
    CPU without bfloat16 units runs a 2048×2048 bfloat16 product a hundred times slower than float32, and ten of them
    took minutes."""
    import torch  # noqa: PLC0415

    dt = getattr(torch, dtype)
    if n is None:
        a = torch.randn(256, 256, dtype=dt)
        trial = time_fn(lambda: a @ a, repeat=3)
        n = int(min(2048, max(256, 256 * (target_s / max(trial, 1e-9)) ** (1 / 3))))
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    t = time_fn(lambda: a @ b, repeat=repeat)
    return 2 * n**3 / t


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call, counted by torch's FlopCounterMode (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _stage_logger(log: Any) -> Callable[[str], None]:
    """A ``say(text)`` that hands ``log`` (a print-like callable, or None: silent) each stage with the seconds since
    the logger was made."""
    import time  # noqa: PLC0415

    began = time.perf_counter()

    def say(text: str) -> None:
        if log is not None:
            log(f"[{time.perf_counter() - began:6.1f} s] {text}")

    return say


def bench_model(name: str, batch: int = 8, image_size: int | None = None, tokens: int = 40, repeat: int = 3,
                dtypes=("float32", "bfloat16"), backward: bool = True, baseline_backend: str | None = "math",
                log: Any = None) -> dict:
    """Time a registered model's forward (and forward+backward) on random inputs; FLOP/s against the matmul peak.

    The model's own ``forward(images, input_ids, attention_mask)`` is timed. bfloat16 runs under CPU autocast.
    ``baseline_backend`` times the same model with that attention backend forced (the official implementations
    run the written-out math attention). ``log`` (a print-like callable) hears each stage as it starts and how long
    it took: an official-size model takes minutes.
    """
    import torch  # noqa: PLC0415

    import zoo  # noqa: PLC0415
    from zoo.modules.attention import force_backend  # noqa: PLC0415

    say = _stage_logger(log)
    torch.manual_seed(0)
    say(f"building {name}")
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
    say("counting the FLOPs of a forward and a training step")
    with torch.no_grad():
        results["forward_flops"] = count_flops(forward)
    model.train()
    results["train_flops"] = count_flops(train_step)
    say(f"measuring the matmul peak ({', '.join(dtypes)})")
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
        for dtype, backend in [(d, None) for d in dtypes] + ([(dtypes[0], baseline_backend)] if baseline_backend
                                                             else []):
            say(f"timing {kind}, {dtype}, attention {backend or 'auto'}: {repeat} runs after one warm-up")
            results["rows"].append(timed(kind, dtype, backend))
            say(f"  median {results['rows'][-1]['seconds']:.3f} s")
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


# ------------------------------------------------------------------------------------------------------------ train

#: the tasks whose batches bench train draws (images, texts and image ids: the retrieval objective's inputs)
TRAIN_TASKS = ("retrieval",)


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (``getrusage`` ``ru_maxrss``: KiB on Linux)."""
    import resource  # noqa: PLC0415

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bench_train(name: str, task: str = "retrieval", batch: int = 8, image_size: int | None = None, tokens: int = 40,
                steps: int = 3, dtype: str = "float32", grad_checkpointing: bool = False, compile: bool = False,
                log: Any = None) -> dict:
    """Time full training steps of a registered model on random inputs — the task's objective (retrieval: ITC + ITM
    with in-batch hard negatives, the official ``XVLMForRetrieval.forward``), backward and an AdamW step (fused where
    it applies, as training's ``optim.fused`` default) — and split
    each step into making the batch, forward, backward and the optimiser; the peak resident memory of the process.

    Medians over ``steps`` steps after one warm-up step. bfloat16 runs the forward under CPU autocast (weights and the
    optimiser stay fp32). The batch is random tensors (its share is the cost of drawing them, not of reading a
    data set: ``mmzoo bench video`` measures data loading)."""
    import statistics  # noqa: PLC0415

    import torch  # noqa: PLC0415

    import zoo  # noqa: PLC0415
    from zoo.models.base import enable_grad_checkpointing, input_resolution  # noqa: PLC0415
    from zoo.tasks import get_task  # noqa: PLC0415

    if task not in TRAIN_TASKS:
        raise ValueError(f"bench train times {', '.join(TRAIN_TASKS)}; got task {task!r}")
    say = _stage_logger(log)
    torch.manual_seed(0)
    say(f"building {name} for {task}")
    model = zoo.create_model(name, task=task).train()
    if grad_checkpointing:
        enable_grad_checkpointing(model)
    res = image_size or input_resolution(model) or 224
    objective = getattr(model, get_task(task).loss_method)  # the family method the task unit trains with
    if compile:
        from zoo.models.base import compile_parts  # noqa: PLC0415

        say(f"torch.compile: {', '.join(compile_parts(model))} (compiled in the warm-up step)")
    from zoo.train.module import _use_fused  # noqa: PLC0415

    groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    # the optimiser training builds: torch's fused AdamW kernel where it applies (optim.fused's default)
    optimizer = torch.optim.AdamW(groups, lr=1e-5, weight_decay=0.01, fused=_use_fused(groups, None))
    gen = torch.Generator().manual_seed(1)

    def make_batch() -> dict:
        ids = torch.randint(1000, 2000, (batch, tokens), generator=gen)
        return {"images": torch.randn(batch, 3, res, res, generator=gen), "input_ids": ids,
                "attention_mask": torch.ones_like(ids), "image_ids": torch.arange(batch)}

    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else _null()
    from zoo.steptimer import timed_steps  # noqa: PLC0415

    def forward(data: dict, step: int):
        with autocast:
            return objective(data, generator=torch.Generator().manual_seed(step))["loss"]

    phases, first_s = timed_steps(make_batch, forward, optimizer, steps, log=say)
    medians = {k: statistics.median(v) for k, v in phases.items()}
    step_s = sum(medians.values())
    return {"model": name, "task": task, "batch": batch, "image_size": res, "tokens": tokens, "dtype": dtype,
            "grad_checkpointing": grad_checkpointing, "compile": compile, "first_step_s": first_s,
            "threads": torch.get_num_threads(), "steps": steps,
            "phases": medians, "step_s": step_s, "steps_per_s": 1 / step_s, "samples_per_s": batch / step_s,
            "peak_rss": peak_rss_bytes()}


def bench_train_child(name: str, task: str = "retrieval", batch: int = 8, image_size: int | None = None,
                      tokens: int = 40, steps: int = 3, dtype: str = "float32",
                      grad_checkpointing: bool = False) -> dict:
    """:func:`bench_train` in a fresh process (its own peak memory; as the official step runs in one). A failure is
    a RuntimeError with the child's last error line."""
    import json  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    cmd = [sys.executable, "-m", "zoo.cli", "bench", "train", name, "--task", task, "--batch", str(batch),
           "--tokens", str(tokens), "--repeat", str(steps), "--dtype", dtype, "--child"]
    cmd += (["--grad-checkpointing"] if grad_checkpointing else []) + \
        (["--image-size", str(image_size)] if image_size else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError((done.stderr.strip().splitlines() or ["?"])[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_train_vs_official(name: str, checkout: str, python: str, batch: int = 8, image_size: int | None = None,
                            tokens: int = 40, steps: int = 3, rounds: int = 3, log: Any = None) -> dict:
    """``rounds`` × (the official step, then this model's), each in a fresh process, after an equality check of the
    two models' losses on the official initial weights. The model's family declares both
    (:attr:`zoo.models.base.ZooModel.official_train_step`); returns the rows and the per-round ratios."""
    import tempfile  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    import torch  # noqa: PLC0415

    from zoo.catalog import load_model_config  # noqa: PLC0415
    from zoo.registry import MODELS  # noqa: PLC0415
    from zoo.spec import ConfigError  # noqa: PLC0415

    family = load_model_config(name)["model"].get("type")
    official = getattr(MODELS.get(family), "official_train_step", None)
    if official is None:
        raise ConfigError(f"model family {family!r} declares no official training step to compare with", "--official")
    say = _stage_logger(log)
    res = image_size or 224
    with tempfile.TemporaryDirectory() as tmp:
        saved_path = str(Path(tmp) / "official.pt")
        theirs, ours = [], []
        for r in range(rounds):
            say(f"round {r + 1} of {rounds}: the official step")
            theirs.append(official.run(checkout, python, batch=batch, image_size=res, tokens=tokens, steps=steps,
                                       threads=torch.get_num_threads(), save=saved_path if r == 0 else None))
            if r == 0:
                say("equality: this model on the official initial weights, inputs and hard negatives")
                equal = official.check(torch.load(saved_path, weights_only=True), name)
            say(f"round {r + 1} of {rounds}: {name} (its own process, as the official step)")
            ours.append(bench_train_child(name, "retrieval", batch, res, tokens, steps))
    ratios = [o["step_s"] / m["step_s"] for o, m in zip(theirs, ours)]
    return {"official": theirs, "ours": ours, "ratios": ratios, "equality": equal}


def format_official_comparison(result: dict) -> str:
    import statistics  # noqa: PLC0415

    eq = result["equality"]
    lines = ["| round | official step s | mmzoo step s | speed-up | official fwd / bwd / opt s | mmzoo fwd / bwd / opt s |",
             "|---:|---:|---:|---:|---|---|"]
    for i, (o, m, r) in enumerate(zip(result["official"], result["ours"], result["ratios"]), 1):
        op, mp = o["phases"], m["phases"]
        lines.append(f"| {i} | {o['step_s']:.2f} | {m['step_s']:.2f} | {r:.2f}× | "
                     f"{op['forward']:.2f} / {op['backward']:.2f} / {op['optimizer']:.2f} | "
                     f"{mp['forward']:.2f} / {mp['backward']:.2f} / {mp['optimizer']:.2f} |")

    def ratio(*keys: str) -> float:
        return statistics.median(sum(o["phases"][k] for k in keys) / sum(m["phases"][k] for k in keys)
                                 for o, m in zip(result["official"], result["ours"]))

    lines.append("")
    lines.append(f"Median speed-up over the rounds: step {statistics.median(result['ratios']):.2f}×, forward "
                 f"{ratio('forward'):.2f}×, forward + backward {ratio('forward', 'backward'):.2f}×, optimiser "
                 f"{ratio('optimizer'):.2f}×.")
    lines.append(f"Equal outputs on the official initial weights: ITC {eq['itc_value']:.6f} (|Δ| {eq['itc']:.1e}), "
                 f"ITM {eq['itm_value']:.6f} (|Δ| {eq['itm']:.1e}); official parameters "
                 f"{result['official'][0]['parameters']:,}; keys not loaded: {len(eq['missing'])}, unused: "
                 f"{len(eq['unexpected'])}.")
    return "\n".join(lines)


def format_train_table(rows: list[dict]) -> str:
    first = rows[0]
    header = (f"`{first['model']}` {first['task']} training step (objective, backward, AdamW), {first['tokens']} text "
              f"tokens, image {first['image_size']}, CPU ({first['threads']} threads); medians of {first['steps']} "
              "steps after a warm-up; peak resident memory of the process.")
    columns = ("| batch | dtype | grad ckpt | compiled | step s | steps/s | samples/s | data | forward | backward |"
               " optimiser | first step s | peak RSS GiB |")
    lines = [header, "", columns, "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        share = {k: f"{100 * v / r['step_s']:.0f}%" for k, v in r["phases"].items()}
        lines.append(f"| {r['batch']} | {r['dtype']} | {'yes' if r['grad_checkpointing'] else 'no'} | "
                     f"{'yes' if r.get('compile') else 'no'} | "
                     f"{r['step_s']:.2f} | {r['steps_per_s']:.3f} | {r['samples_per_s']:.2f} | {share['data']} | "
                     f"{share['forward']} | {share['backward']} | {share['optimizer']} | "
                     f"{r.get('first_step_s', float('nan')):.1f} | {r['peak_rss'] / 2**30:.2f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------ video


def _long_clip(path, frames: int, size: int) -> None:
    """A ``frames``-frame clip of a square crossing a ``size``-pixel frame, written as the shapes videos are."""
    import numpy as np  # noqa: PLC0415

    from zoo.data.shapes import _video_codec, _write_video  # noqa: PLC0415

    side = max(4, size // 8)

    def frame(i: int):
        img = np.zeros((size, size, 3), dtype=np.uint8)
        x = int((size - side) * i / max(1, frames - 1))
        img[size // 2 - side // 2:size // 2 + side // 2, x:x + side] = (220, 40, 40)
        return img

    _write_video(path, (frame(i) for i in range(frames)), size, _video_codec())


def _decode_all(path: str, backend: str) -> int:
    """Decode every frame of ``path`` with ``backend``; the number of frames."""
    from zoo.data.video import _av_open, _decord_reader  # noqa: PLC0415

    if backend == "decord":
        reader = _decord_reader(path)
        return int(reader.get_batch(list(range(len(reader)))).shape[0])
    with _av_open(path) as container:  # as the reader does: every frame decoded and converted to RGB
        return sum(1 for f in container.decode(video=0) if f.to_ndarray(format="rgb24") is not None)


def video_backends() -> list[str]:
    """The video readers (:data:`zoo.data.video.VIDEO_BACKENDS`) installed here."""
    import importlib.util  # noqa: PLC0415

    from zoo.data.video import VIDEO_BACKENDS  # noqa: PLC0415

    return [b for b in VIDEO_BACKENDS if importlib.util.find_spec(b) is not None]


def bench_video(clips: list, num_frames: int = 8, repeat: int = 3, long_frames: int = 300, long_size: int = 224,
                workdir=None) -> list[dict]:
    """Decoding speed of each installed video reader: on ``clips`` (the shapes videos) reading ``num_frames`` sampled
    frames per clip as training does (:func:`zoo.data.video.read_video_frames`) and decoding every frame, and on one
    longer generated clip (``long_frames`` frames of ``long_size`` pixels) the same two. Medians of ``repeat`` runs;
    one row per (reader, clip set, mode) with frames per second."""
    import random  # noqa: PLC0415
    import tempfile  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from zoo.data.video import count_frames, read_video_frames  # noqa: PLC0415

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        long_path = str(Path(tmp) / "long.mp4")
        _long_clip(long_path, long_frames, long_size)
        sets = [(f"shapes clips ({len(clips)})", [str(c) for c in clips]),
                (f"long clip ({long_frames} frames, {long_size} px)", [long_path])]
        for backend in video_backends():
            for label, paths in sets:
                total = sum(count_frames(p, backend) for p in paths)

                def sampled(paths=paths, backend=backend):
                    rng = random.Random(0)
                    for p in paths:
                        read_video_frames(p, num_frames, training=True, backend=backend, rng=rng)

                def full(paths=paths, backend=backend):
                    for p in paths:
                        _decode_all(p, backend)

                t_sampled = time_fn(sampled, repeat=repeat, warmup=1)
                t_full = time_fn(full, repeat=repeat, warmup=1)
                rows.append({"backend": backend, "clips": label, "mode": f"{num_frames} sampled frames per clip",
                             "frames": len(paths) * num_frames, "seconds": t_sampled,
                             "fps": len(paths) * num_frames / t_sampled})
                rows.append({"backend": backend, "clips": label, "mode": "every frame", "frames": total,
                             "seconds": t_full, "fps": total / t_full})
    return rows


def bench_video_step(config: str = "videoqa-shapes", batches: int = 8, overrides=()) -> dict:
    """The share of a training step spent loading video: the task config's model and data (video cache off, so every
    batch decodes its clips), ``batches`` training batches after one warm-up, each timed as loading (the data
    loader's ``next``) and the step (forward, backward, AdamW). Medians per batch and the loading share of the median
    batch (median loading / (median loading + median step))."""
    import statistics  # noqa: PLC0415
    import tempfile  # noqa: PLC0415
    import time  # noqa: PLC0415

    import torch  # noqa: PLC0415

    from zoo.train.module import TaskModule  # noqa: PLC0415
    from zoo.train.run import load_task_config, model_and_data  # noqa: PLC0415

    cfg = load_task_config(config, ["data.cache_images=false", "data.num_workers=0", *overrides])
    torch.manual_seed(0)
    mcfg = cfg["model"]
    with tempfile.TemporaryDirectory() as tmp:  # the run folder, for a tokenizer built from the data
        model, dm = model_and_data(cfg, tmp)  # the model and data `mmzoo train` would train
        module = TaskModule(model, cfg["task"], cfg.get("optim"), cfg.get("evaluation"))
        dm.setup("fit")
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        model.train()
        loader = iter(dm.train_dataloader())
        load, step = [], []
        for i in range(batches + 1):
            t0 = time.perf_counter()
            batch = next(loader)
            t1 = time.perf_counter()
            loss = module(batch)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            t2 = time.perf_counter()
            if i:  # the first batch warms up
                load.append(t1 - t0)
                step.append(t2 - t1)
    return {"config": config, "model": mcfg["name"], "batch_size": int(dm.cfg["batch_size"]),
            "frames": int(dm.cfg.get("num_frames") or 0), "batches": batches,
            "load_s": statistics.median(load), "step_s": statistics.median(step),
            "load_share": statistics.median(load) / (statistics.median(load) + statistics.median(step)),
            "threads": torch.get_num_threads()}


def format_video_table(rows: list[dict], step: dict | None, header: str) -> str:
    lines = [header, "", "| reader | clips | frames read | frames | median s | frames/s |",
             "|---|---|---|---:|---:|---:|"]
    lines += [f"| {r['backend']} | {r['clips']} | {r['mode']} | {r['frames']} | {r['seconds']:.3f} | {r['fps']:.0f} |"
              for r in rows]
    if step is not None:
        lines += ["", f"Training step of {step['config']} ({step['model']}, batch {step['batch_size']} × "
                      f"{step['frames']} frames, video cache off, {step['threads']} threads; median of "
                      f"{step['batches']} batches): loading {step['load_s'] * 1000:.1f} ms, step "
                      f"{step['step_s'] * 1000:.1f} ms, loading share {100 * step['load_share']:.1f}%"]
    return "\n".join(lines)
