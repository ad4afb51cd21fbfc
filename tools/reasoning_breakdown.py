"""Accuracy of a visual-entailment or NLVR export on a shapes reasoning split, per sentence template and per label.

    python tools/reasoning_breakdown.py EXPORT {ve,nlvr} [--root SHAPES_ROOT] [--split test] [--blank]

The template of each sentence is read back from its words (the generator's templates are listed in
:mod:`zoo.data.shapes_reasoning`); ``--blank`` feeds grey images instead, the text-only reference of the same model.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict

import torch

_NLVR = (("both images", "both"), ("only the left", "only_left"), ("only the right", "only_right"),
         ("neither", "neither"), ("more shapes", "more"), ("fewer shapes", "fewer"), ("same number", "same"),
         ("in total", "total"), ("the left image contains", "left_size"), ("the right image contains", "right_size"))


def template(task: str, sentence: str) -> str:
    if task == "nlvr":
        return next((name for words, name in _NLVR if words in sentence), "other")
    from zoo.data.shapes_reasoning import QUALITIES

    words = sentence.split()
    if any(q in words for q in QUALITIES):
        return "quality"
    if re.match(r"there (are \w+ shapes|is one shape)", sentence):
        return "count"
    if sentence.startswith("there is a"):
        return "exists"
    if sentence.startswith("a "):
        return "full"
    return "size" if words[-1] in ("small", "large") else "position"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export")
    ap.add_argument("task", choices=["ve", "nlvr"])
    ap.add_argument("--root", default=None, help="shapes folder (default: the generated default one)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--blank", action="store_true", help="grey images: the text-only reference")
    args = ap.parse_args()

    import zoo
    from zoo.data.collate import SentenceLabelCollator
    from zoo.data.datasets import NLVRDataset, VEDataset
    from zoo.data.shapes import generate_shapes
    from zoo.train.data import _BlankImage

    root = args.root or str(generate_shapes())
    model = zoo.from_pretrained(args.export).eval()
    size = model.zoo_config.get("default_resolution", 64)
    cls = VEDataset if args.task == "ve" else NLVRDataset
    ds = cls(f"{root}/{args.task}_{args.split}.json", media_root=root, image_size=size, train=False,
             transform=_BlankImage(size) if args.blank else None)
    names = list(model.ve_labels) if args.task == "ve" else ["false", "true"]
    collate = SentenceLabelCollator(model.text.get_tokenizer(), 32, class_names=names)
    hits: dict[str, list[int]] = defaultdict(list)
    with torch.no_grad():
        for start in range(0, len(ds), 100):
            batch = collate([ds[i] for i in range(start, min(start + 100, len(ds)))])
            if args.task == "ve":
                logits = model.ve_logits(batch["images"], batch["input_ids"], batch["attention_mask"])
            else:
                logits = model.nlvr_logits(batch["images_a"], batch["images_b"], batch["input_ids"],
                                           batch["attention_mask"])
            for sentence, pred, gold in zip(batch["sentences"], logits.argmax(-1).tolist(), batch["labels"].tolist()):
                ok = int(pred == gold)
                hits["all"].append(ok)
                hits[f"template {template(args.task, sentence)}"].append(ok)
                hits[f"label {names[gold]}"].append(ok)
    for key in sorted(hits, key=lambda k: (k != "all", k)):
        print(f"{key:24s} {100.0 * sum(hits[key]) / len(hits[key]):6.2f}  ({len(hits[key])})")


if __name__ == "__main__":
    main()
