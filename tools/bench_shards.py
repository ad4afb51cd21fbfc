"""Reading throughput of WebDataset shards against the folder reader (samples per second: read, decode and transform,
no model), on the VQA training split of the embedded shapes data.

    ./run python tools/bench_shards.py [--root DIR] [--file vqa_train.json] [--workers 0 2] [--limit N]

Both readers build the same items (the shapes VQA config's transform: no augmentation, whole image, at
``--image-size``), batched by a DataLoader (``--batch-size``, the items counted, not collated). The shards are
written first into a temporary folder (``--shard-size`` samples each; the write is timed too), so both the images and
the shards are read from the page cache: the numbers measure reading overhead, decoding and the transform, not a cold
disk or a network.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _count(items: list) -> int:
    return sum(item is not None for item in items)


def _subset(dataset, limit: int | None):
    if limit is None or limit >= len(dataset):
        return dataset
    dataset.records = dataset.records[:limit]
    return dataset


def measure(loader, repeat: int) -> tuple[int, float]:
    """Samples and seconds of the best of ``repeat`` passes over ``loader``."""
    best = None
    for _ in range(repeat):
        start = time.perf_counter()
        n = sum(loader)
        took = time.perf_counter() - start
        best = (n, took) if best is None or took < best[1] else best
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help="a shapes folder (default: the embedded one, generated once)")
    parser.add_argument("--file", default="vqa_train.json", help="the VQA annotation file under the root")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers to measure")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=None, help="read the first N records only")
    parser.add_argument("--repeat", type=int, default=2, help="passes per measurement (the best is reported)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    import torch
    from torch.utils.data import DataLoader

    from zoo.data.datasets import VQADataset
    from zoo.data.shapes import generate_shapes
    from zoo.data.shards import ShardDataset, write_shards
    from zoo.data.transforms import build_image_transform

    torch.set_num_threads(1)
    root = Path(args.root) if args.root else generate_shapes()
    transform = build_image_transform(args.image_size, True, randaugment=False, crop_scale=(1.0, 1.0))
    options = {"image_size": args.image_size, "train": True, "transform": transform}
    folder = _subset(VQADataset(str(root / args.file), root, **options), args.limit)
    results = {"file": args.file, "samples": len(folder), "image_size": args.image_size,
               "batch_size": args.batch_size, "cpus": os.cpu_count(), "torch_threads": 1, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest = write_shards(folder, tmp, "train", max_samples=args.shard_size)
        took = time.perf_counter() - start
        size = sum(s["bytes"] for s in manifest["shards"])
        results["write"] = {"samples_per_s": round(len(folder) / took, 1), "shards": len(manifest["shards"]),
                            "megabytes": round(size / 1e6, 1)}
        print(f"wrote {len(folder):,} samples into {len(manifest['shards'])} shards ({size / 1e6:.1f} MB) in "
              f"{took:.1f} s: {len(folder) / took:,.0f} samples/s")
        shards = ShardDataset(str(Path(tmp) / "train.shards.json"), seed=0, batch_size=args.batch_size, **options)
        for workers in args.workers:
            loaders = {
                "folder": DataLoader(folder, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                                     collate_fn=_count, generator=torch.Generator().manual_seed(0)),
                "shards": DataLoader(shards, batch_size=args.batch_size, num_workers=workers, collate_fn=_count),
            }
            for name, loader in loaders.items():
                n, took = measure(loader, args.repeat)
                row = {"reader": name, "workers": workers, "samples": n, "seconds": round(took, 2),
                       "samples_per_s": round(n / took, 1)}
                results["rows"].append(row)
                print(f"{name:6s} workers={workers}: {n:,} samples in {took:.2f} s: {n / took:,.0f} samples/s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
