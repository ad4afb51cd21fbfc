"""Kill -9 trials of a small training run: does ``mmzoo train --resume`` always end where an uninterrupted run ends?

Usage::

    ./run python tools/fault_trials.py --trials 20 --out runs/fault-trials

The run is the main job's config (``vqa-shapes``) on a slice of the shapes VQA data (``--questions``
training questions, 32 for validation and test), ``--epochs`` epochs with a checkpoint every ``--every`` steps.
A reference run goes through uninterrupted and sets the wall time T. Each trial starts the same run, kills its whole
process group with SIGKILL at a moment drawn uniformly from (0, T) (seeded), counts the checkpoint files that cannot be
read, then resumes (``--resume``; a run killed before its first checkpoint starts again) until it exits 0, and compares:

- the final weights (the export's ``model.safetensors``, every tensor, bit for bit) with the reference run's;
- the test score in ``results.json`` with the reference run's;
- temporary files left anywhere in the run folder (orphans).

Prints a Markdown table (the one in BENCHMARKS.md) and writes ``trials.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _subset(root: Path, out: Path, questions: int) -> dict[str, str]:
    """Slices of the shapes VQA files (the first N records of each) written into ``out``."""
    files = {}
    for split, n in (("train", questions), ("val", 32), ("test", 32)):
        records = json.loads((root / f"vqa_{split}.json").read_text(encoding="utf-8"))[:n]
        path = out / f"vqa_{split}_{n}.json"
        path.write_text(json.dumps(records), encoding="utf-8")
        files[split] = str(path)
    return files


def _command(args, files: dict[str, str], name: str, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "zoo.cli", "train", "vqa-shapes",
           f"data.train=[{files['train']}]", f"data.val={files['val']}", f"data.test={files['test']}",
           f"data.batch_size={args.batch_size}", "data.eval_batch_size=32", f"trainer.max_epochs={args.epochs}",
           "trainer.check_val_every_n_epoch=1", "trainer.enable_progress_bar=false",
           f"train.save_every_n_steps={args.every}", f"train.output_dir={args.out}", f"train.name={name}"]
    return cmd + (["--resume"] if resume else [])


def _run(cmd: list[str], log: Path, kill_after: float | None = None) -> tuple[int | None, float]:
    """Run ``cmd`` (its output appended to ``log``); with ``kill_after``, SIGKILL its process group then. Returns
    (exit code, None when killed; seconds)."""
    t0 = time.perf_counter()
    with open(log, "a", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            code = proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    return code, time.perf_counter() - t0


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "export" / "model.safetensors"))


def _unreadable(run: Path) -> list[str]:
    from zoo.hub import WeightsError
    from zoo.train.run import read_checkpoint, run_checkpoints

    bad = []
    for path in run_checkpoints(run):
        try:
            read_checkpoint(path, mmap=True)
        except WeightsError:
            bad.append(path.name)
    return bad


def _orphans(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob(".*") if p.name.endswith((".tmp", ".old")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("runs/fault-trials"))
    p.add_argument("--questions", type=int, default=256, help="training questions (the first N of vqa_train.json)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--every", type=int, default=3, help="train.save_every_n_steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    args = p.parse_args(argv)

    import torch

    from zoo.data.shapes import generate_shapes

    args.out = args.out.resolve()
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out}: exists and is not empty; give a new --out folder")
    args.out.mkdir(parents=True, exist_ok=True)
    files = _subset(generate_shapes(), args.out, args.questions)
    code, ref_s = _run(_command(args, files, "reference", False), args.out / "reference.log")
    if code != 0:
        raise SystemExit(f"the reference run failed (exit {code}); see {args.out / 'reference.log'}")
    reference = _weights(args.out / "reference")
    ref_test = json.loads((args.out / "reference" / "results.json").read_text())["test"]
    print(f"reference run: {ref_s:.1f} s, test {ref_test}", flush=True)

    rng = random.Random(args.seed)
    trials = []
    for i in range(args.trials):
        name = f"trial{i:02d}"
        run, log = args.out / name, args.out / f"{name}.log"
        at = rng.uniform(0.0, ref_s)
        code, _ = _run(_command(args, files, name, False), log, kill_after=at)
        checkpoints = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt")) if run.exists() else []
        unreadable = _unreadable(run) if run.exists() else []
        orphans_after_kill = _orphans(run) if run.exists() else []
        restarts = 0
        while code != 0 and restarts < 3:  # resume (a run killed before its first checkpoint starts again)
            resume = (run / "checkpoints").is_dir() and any((run / "checkpoints").glob("*.ckpt"))
            code, _ = _run(_command(args, files, name, resume), log)
            restarts += 1
        finished = code == 0
        same = False
        test = None
        if finished:
            weights = _weights(run)
            same = weights.keys() == reference.keys() and all(torch.equal(weights[k], reference[k]) for k in weights)
            test = json.loads((run / "results.json").read_text())["test"]
        trial = {"trial": i, "killed_at_s": round(at, 2),
                 "checkpoints_at_kill": checkpoints, "unreadable_at_kill": unreadable,
                 "temporaries_at_kill": orphans_after_kill, "resumed": bool(checkpoints),
                 "finished": finished, "bit_identical": same, "test_equal": test == ref_test,
                 "orphans_at_end": _orphans(run) if run.exists() else []}
        trials.append(trial)
        print(f"{name}: killed at {at:5.1f} s with {len(checkpoints)} checkpoint(s) "
              f"({'resumed' if checkpoints else 'restarted'}); unreadable {len(unreadable)}; temporaries "
              f"{len(orphans_after_kill)}; finished {finished}; bit-identical {same}; orphans at end "
              f"{len(trial['orphans_at_end'])}", flush=True)

    summary = {"trials": len(trials), "resumed": sum(t["resumed"] for t in trials),
               "restarted": sum(not t["resumed"] for t in trials),
               "finished": sum(t["finished"] for t in trials),
               "bit_identical": sum(t["bit_identical"] for t in trials),
               "test_score_equal": sum(t["test_equal"] for t in trials),
               "unreadable_checkpoints": sum(len(t["unreadable_at_kill"]) for t in trials),
               "temporaries_left_by_kills": sum(len(t["temporaries_at_kill"]) for t in trials),
               "orphans_at_end": sum(len(t["orphans_at_end"]) for t in trials),
               "reference_s": round(ref_s, 1), "questions": args.questions, "epochs": args.epochs,
               "save_every_n_steps": args.every, "seed": args.seed}
    (args.out / "trials.json").write_text(json.dumps({"summary": summary, "trials": trials}, indent=2))
    print()
    print("| trials | resumed | restarted (killed before a checkpoint) | finished | bit-identical weights | "
          "equal test score | unreadable checkpoints | temporaries left by kills | orphans at the end |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {summary['trials']} | {summary['resumed']} | {summary['restarted']} | {summary['finished']} | "
          f"{summary['bit_identical']} | {summary['test_score_equal']} | {summary['unreadable_checkpoints']} | "
          f"{summary['temporaries_left_by_kills']} | {summary['orphans_at_end']} |")
    return 0 if summary["bit_identical"] == summary["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
