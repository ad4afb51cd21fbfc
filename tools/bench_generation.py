"""Caption generation with and without the key/value cache, at official sizes with random weights.

Usage::

    ./run python tools/bench_generation.py                      # X²-VLM base, 384 px, 30 tokens, 3 beams, batch 2
    ./run python tools/bench_generation.py --families x2vlm davinci univl --runs 3 --json gen.json

For each family the images (or clip features) are encoded once; then the caption search runs ``--runs`` times with
the cache and ``--runs`` times without (the rerun of the whole prefix every step), interleaved and alternating which
goes first, in one process, and the medians are compared. Every caption has exactly ``--tokens`` generated tokens
(``min_length = max_length``: the end token is refused until then). Both searches must give the same token ids; the
script stops if they do not.

- ``x2vlm``: ``x2vlm-base`` at ``captioning`` (BEiT-v2 B/16 at 384 px: 577 image tokens; the 18-layer text stack,
  cross-attention in the last 6; the MLM head read at a trailing ``[MASK]``), the official decoding otherwise (3-gram
  blocking, no length penalty), prompt ``[CLS] a picture of``.
- ``davinci``: ``davinci-base`` at ``captioning`` (ResNet-101 grid at ``--davinci-size`` px, default 576 as the
  official config: 1296 grid tokens; 6-layer encoder; the 6-layer causal decoder is what generates).
- ``univl``: ``univl-base`` at ``captioning`` (48 clip features of 1024 dims; the 2-layer cross encoder; the 3-layer
  decoder generates under UniVL's own beam search).

Times are wall-clock seconds of the search alone (``decode``) and of the encoding (``encode``, once); ``end to end``
adds the two. Report the machine and its load with the numbers: on a shared CPU the absolute times move, the ratio of
interleaved medians much less.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import zoo
from zoo.factory import resolve_config
from zoo.generation import beam_search
from zoo.models.univl.model import beam_search as univl_beam_search

PROMPT = [101, 1037, 3861, 1997]  # [CLS] a picture of (bert-base-uncased)
SEP = 102


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _compare(name: str, search: Callable[[bool], Any], runs: int) -> dict[str, Any]:
    """Interleaved runs of ``search(use_cache)``; medians, ratio, and the check that both give the same ids."""
    times: dict[bool, list[float]] = {True: [], False: []}
    outputs: dict[bool, Any] = {}
    for r in range(runs):
        for use_cache in ((True, False) if r % 2 == 0 else (False, True)):
            seconds, out = _timed(functools.partial(search, use_cache))
            times[use_cache].append(seconds)
            outputs[use_cache] = out
            print(f"  {name} run {r + 1}/{runs} {'cached' if use_cache else 'rerun '}: {seconds:8.3f} s", flush=True)
    if outputs[True] != outputs[False]:
        raise SystemExit(f"{name}: the cached search gave other token ids than the rerun")
    cached, rerun = statistics.median(times[True]), statistics.median(times[False])
    return {"cached_s": cached, "rerun_s": rerun, "speedup": rerun / cached, "times": {
        "cached": times[True], "rerun": times[False]}}


def bench_x2vlm(args: argparse.Namespace) -> dict[str, Any]:
    size = args.x2vlm_size or int(resolve_config("x2vlm-base", task="captioning")["model"]["vision"]["img_size"])
    torch.manual_seed(0)
    overrides = {} if args.x2vlm_size is None else {"vision": {"img_size": size}}
    seconds, model = _timed(lambda: zoo.create_model("x2vlm-base", task="captioning", **overrides).eval())
    print(f"x2vlm-base captioning built in {seconds:.1f} s; images {args.batch} × {size} px", flush=True)
    images = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        encode, image = _timed(lambda: model.encode_image(images))
    print(f"  image tokens {tuple(image.tokens.shape)}, encoded in {encode:.2f} s", flush=True)

    def search(use_cache: bool) -> list[list[int]]:
        with torch.no_grad():
            out = model.caption.generate(model.text, image.tokens, image.mask, PROMPT, num_beams=args.beams,
                                         min_length=args.tokens, max_length=args.tokens, use_cache=use_cache)
        assert all(len(s) == args.tokens for s in out.sequences)
        return out.sequences

    return {"image_size": size, "image_tokens": image.tokens.shape[1], "encode_s": encode,
            **_compare("x2vlm", search, args.runs)}


def bench_davinci(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    seconds, model = _timed(lambda: zoo.create_model("davinci-base", task="captioning").eval())
    size = args.davinci_size
    print(f"davinci-base captioning built in {seconds:.1f} s; images {args.batch} × {size} px", flush=True)
    images = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ctx, ctx_mask = model._empty_context(args.batch, images.device)
        encode, (states, smask) = _timed(lambda: model.encode(images, ctx, ctx_mask))
    print(f"  encoder states {tuple(states.shape)}, encoded in {encode:.2f} s", flush=True)
    prompt = torch.tensor(PROMPT).expand(args.batch, -1)

    def search(use_cache: bool) -> list[list[int]]:
        with torch.no_grad():  # the model's caption search: no n-gram blocking, as the official
            out = beam_search(model._step_fn(states, smask, text_only=True, use_cache=use_cache), prompt,
                              eos_token_id=SEP, num_beams=args.beams, max_length=args.tokens,
                              min_length=args.tokens, forbid_duplicate_ngrams=False)
        return out.sequences

    return {"image_size": size, "encoder_tokens": states.shape[1], "encode_s": encode,
            **_compare("davinci", search, args.runs)}


def bench_univl(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    seconds, model = _timed(lambda: zoo.create_model("univl-base", task="captioning").eval())
    print(f"univl-base captioning built in {seconds:.1f} s; clips {args.batch} × 48 features", flush=True)
    features = torch.randn(args.batch, 48, 1024, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        encode, context = _timed(lambda: model.caption_context(features))
    print(f"  cross-encoder states {tuple(context.tokens.shape)}, encoded in {encode:.2f} s", flush=True)

    def search(use_cache: bool) -> list[list[int]]:
        with torch.no_grad():
            return univl_beam_search(model.caption_step(context, use_cache=use_cache), args.batch, args.beams,
                                     args.tokens, PROMPT[0], SEP, min_length=args.tokens)

    return {"context_tokens": context.tokens.shape[1], "encode_s": encode, **_compare("univl", search, args.runs)}


BENCHES = {"x2vlm": bench_x2vlm, "davinci": bench_davinci, "univl": bench_univl}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", choices=sorted(BENCHES), default=["x2vlm"])
    parser.add_argument("--tokens", type=int, default=30, help="generated tokens per caption (min = max length)")
    parser.add_argument("--beams", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="runs of each search (interleaved); medians reported")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--x2vlm-size", type=int, default=None, help="image size (default: the config's, 384)")
    parser.add_argument("--davinci-size", type=int, default=576, help="image size (official captioning: 576)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__}
    print(f"{machine}; {args.tokens} tokens, {args.beams} beams, batch {args.batch}, {args.runs} runs each",
          flush=True)
    results: dict[str, Any] = {"machine": machine, "tokens": args.tokens, "beams": args.beams, "batch": args.batch}
    for name in args.families:
        results[name] = BENCHES[name](args)
    print()
    print("| model | decode cached (s) | decode rerun (s) | speed-up | end to end cached (s) | end to end rerun (s) | "
          "speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name in args.families:
        r = results[name]
        c, u, e = r["cached_s"], r["rerun_s"], r["encode_s"]
        print(f"| {name} | {c:.2f} | {u:.2f} | {u / c:.1f}× | {c + e:.2f} | {u + e:.2f} | {(u + e) / (c + e):.1f}× |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
