"""Question-only reference points for a VQA dataset in the official format: what answering without the image scores.

    python tools/vqa_baselines.py ROOT [--train vqa_train.json] [--eval vqa_val.json vqa_test.json]

Prints, with the standard VQA accuracy (:func:`zoo.metrics.vqa.vqa_accuracy`), per evaluation file:

- ``majority``: the most frequent training answer, given to every question (the majority-answer baseline);
- ``per type``: the most frequent training answer of the question's type, its first three words as in VQA's
  question types ("how many shapes", "what colour is", "is there a") — the "per Q-type prior" of the VQA paper;
- ``same question``: the most frequent training answer of the same question string (else the majority answer) —
  the best a model reading only the question could do by memorising the training set.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

from zoo.metrics.vqa import vqa_accuracy


def _question_type(question: str) -> str:
    return " ".join(question.lower().rstrip("?").split()[:3])


def baselines(train: list[dict], evaluation: list[dict]) -> dict[str, float]:
    overall: Counter = Counter()
    by_question: dict[str, Counter] = defaultdict(Counter)
    by_type: dict[str, Counter] = defaultdict(Counter)
    for rec in train:
        answers = rec["answer"] if isinstance(rec["answer"], list) else [rec["answer"]]
        overall.update(answers)
        by_question[rec["question"]].update(answers)
        by_type[_question_type(rec["question"])].update(answers)
    majority = overall.most_common(1)[0][0]
    scores = {"majority": [], "per type": [], "same question": []}
    for rec in evaluation:
        scores["majority"].append(vqa_accuracy(majority, rec["answer"]))
        typed = by_type.get(_question_type(rec["question"]))
        scores["per type"].append(vqa_accuracy(typed.most_common(1)[0][0] if typed else majority, rec["answer"]))
        seen = by_question.get(rec["question"])
        scores["same question"].append(vqa_accuracy(seen.most_common(1)[0][0] if seen else majority, rec["answer"]))
    return {k: 100.0 * sum(v) / len(v) for k, v in scores.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root")
    p.add_argument("--train", default="vqa_train.json")
    p.add_argument("--eval", nargs="+", default=["vqa_val.json", "vqa_test.json"])
    args = p.parse_args()
    root = Path(args.root)
    train = json.loads((root / args.train).read_text())
    for name in args.eval:
        result = baselines(train, json.loads((root / name).read_text()))
        print(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
