"""Grounding accuracy of an export with a box head on a region file: the share of phrases whose predicted box overlaps
the reference box with IoU >= 0.5 (the RefCOCO measure), from the fused [CLS] of the phrase and the whole image.

    python tools/grounding_accuracy.py EXPORT [--root SHAPES_ROOT] [--split test]
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export")
    ap.add_argument("--root", default=None, help="shapes folder (default: the generated default one)")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()

    from torchvision.ops import box_convert, box_iou

    import zoo
    from zoo.data.collate import RetrievalCollator
    from zoo.data.datasets import RetrievalTrainDataset
    from zoo.data.shapes import generate_shapes

    root = args.root or str(generate_shapes())
    model = zoo.from_pretrained(args.export).eval()
    if getattr(model, "bbox", None) is None:
        raise SystemExit(f"{args.export}: the model has no box head")
    size = model.zoo_config.get("default_resolution", 64)
    ds = RetrievalTrainDataset(f"{root}/grounding_{args.split}.json", media_root=root, image_size=size, train=False,
                               max_words=30)
    collate = RetrievalCollator(model.text.get_tokenizer(), 30)
    hits = []
    with torch.no_grad():
        for start in range(0, len(ds), 100):
            batch = collate([ds[i] for i in range(start, min(start + 100, len(ds)))])
            image = model.encode_image(batch["images"])
            text = model.encode_text(batch["input_ids"], batch["attention_mask"])
            cls = model.fuse(text.tokens, batch["attention_mask"], image.tokens, image.mask).tokens[:, 0]
            pred = box_convert(model.bbox(cls), "cxcywh", "xyxy")
            gold = box_convert(batch["target_bbox"], "cxcywh", "xyxy")
            hits += (box_iou(pred, gold).diagonal() >= 0.5).tolist()
    print(f"grounding accuracy (IoU >= 0.5) on {len(hits)} phrases: {100.0 * sum(hits) / len(hits):.2f}")


if __name__ == "__main__":
    main()
