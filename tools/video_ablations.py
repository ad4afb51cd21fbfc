"""Train a video task config and its three time ablations, then print one table of their test scores.

    python tools/video_ablations.py CONFIG [--out DIR] [--parallel 2] [--only frames,one_frame] [--table-only]
                                    [-- KEY=VALUE ...]

The four runs of one config (every other setting equal):

- ``frames``: the config as written;
- ``blank``: ``data.blank_images=true`` (every frame the same grey image: what the text alone gives);
- ``one_frame``: ``data.frame_ablation=one_frame`` (one sampled frame repeated: what a single image gives);
- ``shuffled``: ``data.frame_ablation=shuffled`` (the sampled frames in a random order: what the order of time gives).

Each run is ``mmzoo train CONFIG train.output_dir=DIR train.name=VARIANT ... --overwrite`` (its folder
``DIR/VARIANT``, replaced when the tool runs again); with
``--parallel N`` N runs at a time, each with one math thread (OMP_NUM_THREADS=1). ``--table-only`` reads the
``results.json`` files already there. Columns by task: VQA the overall accuracy, the temporal and the static question
families of the shapes-video data (weighted by the number of test questions of each type) and every type; retrieval
text→video R@1/5/10, median and mean rank, video→text R@1 and the mean recall; captioning CIDEr-D, BLEU-4, ROUGE-L.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

VARIANTS = {"frames": [], "blank": ["data.blank_images=true"], "one_frame": ["data.frame_ablation=one_frame"],
            "shuffled": ["data.frame_ablation=shuffled"]}
COLUMNS = {"retrieval": ["img_r1", "img_r5", "img_r10", "img_mdr", "img_mnr", "txt_r1", "r_mean"],
           "captioning": ["CIDEr", "Bleu_4", "ROUGE_L"]}


def _run(config: str, out: Path, variant: str, extra: list[str], threads: int | None) -> int:
    cmd = [sys.executable, "-m", "zoo.cli", "train", config, f"train.output_dir={out}", f"train.name={variant}",
           "trainer.enable_progress_bar=false", *VARIANTS[variant], *extra, "--overwrite"]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{variant}.log", "w") as log:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode


def question_type_counts(split: str = "test") -> Counter:
    """Questions of each type in a split of the default shapes-video data."""
    from zoo.data.shapes_video import default_shapes_video_root  # noqa: PLC0415

    records = json.loads((default_shapes_video_root() / f"video_qa_{split}.json").read_text(encoding="utf-8"))
    return Counter(r["question_type"] for r in records)


def vqa_columns(test: dict, counts: Counter) -> dict[str, float]:
    """Overall, temporal, static and per-type accuracy; the families weighted by their test question counts."""
    from zoo.data.shapes_video import STATIC_QUESTION_TYPES, TEMPORAL_QUESTION_TYPES  # noqa: PLC0415

    row = {"vqa_acc": test["vqa_acc"]}
    for family, types in (("temporal", TEMPORAL_QUESTION_TYPES), ("static", STATIC_QUESTION_TYPES)):
        present = [t for t in types if f"vqa_acc_{t}" in test]
        n = sum(counts[t] for t in present)
        if n:
            row[family] = sum(test[f"vqa_acc_{t}"] * counts[t] for t in present) / n
    for t in (*TEMPORAL_QUESTION_TYPES, *STATIC_QUESTION_TYPES):
        if f"vqa_acc_{t}" in test:
            row[t] = test[f"vqa_acc_{t}"]
    return row


def table(out: Path, variants: list[str]) -> str:
    rows, task = {}, None
    for variant in variants:
        path = out / variant / "results.json"
        if not path.is_file():
            continue
        results = json.loads(path.read_text(encoding="utf-8"))
        task, test = results["task"], results["test"]
        if task == "vqa":
            rows[variant] = vqa_columns(test, question_type_counts())
        else:
            rows[variant] = {k: test[k] for k in COLUMNS.get(task, sorted(test)) if k in test}
    if not rows:
        return f"no results.json under {out}/{{{','.join(variants)}}}"
    columns = list(dict.fromkeys(k for row in rows.values() for k in row))
    lines = ["| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for variant, row in rows.items():
        lines.append(f"| {variant} | " + " | ".join(f"{row[c]:.2f}" if c in row else "" for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--out", default="runs/ablations", help="the runs' parent folder")
    ap.add_argument("--parallel", type=int, default=1, help="runs at a time (each then with one math thread)")
    ap.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variants")
    ap.add_argument("--table-only", action="store_true", help="print the table of the runs already there")
    argv = sys.argv[1:]
    # the overrides after "--" are split off here: argparse gives a positional list that follows options nothing
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.extra = extra
    variants = [v for v in args.only.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"--only: unknown variant {unknown[0]!r}; expected some of {', '.join(VARIANTS)}")
    out = Path(args.out)
    if not args.table_only:
        threads = 1 if args.parallel > 1 else None
        with ThreadPoolExecutor(max_workers=max(args.parallel, 1)) as pool:
            codes = dict(zip(variants, pool.map(lambda v: _run(args.config, out, v, args.extra, threads), variants)))
        failed = [v for v, rc in codes.items() if rc]
        if failed:
            print(f"failed: {', '.join(failed)} (see {out}/<variant>.log)", file=sys.stderr)
    print(table(out, variants))


if __name__ == "__main__":
    main()
