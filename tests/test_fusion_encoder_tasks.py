"""The generic fusion encoder (``demo-tiny``, the base of the plug-in guide's example) on the framework's tasks: its
retrieval and VQA losses against the heads applied by hand, and a retrieval run through ``train()``."""

from __future__ import annotations

import pytest
import torch
from conftest import task_config

import zoo
from zoo.data.shapes import generate_shapes
from zoo.heads.matching import sample_hard_negatives
from zoo.train.run import load_task_config, train


def _batch(n: int = 4):
    g = torch.Generator().manual_seed(0)
    return {"images": torch.randn(n, 3, 64, 64, generator=g),
            "input_ids": torch.randint(1000, 2000, (n, 7), generator=g),
            "attention_mask": torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 6 + [0], [1] * 7][:n]),
            "image_ids": torch.tensor([0, 1, 2, 1][:n])}


def test_retrieval_loss_is_itc_plus_itm_on_the_hard_negatives_drawn():
    """The loss equals ITC on the pooled vectors plus ITM (cross-entropy, label 1 for the positives) on the fused CLS
    of the positives, (hard negative image, text) and (image, hard negative text), drawn as
    :func:`sample_hard_negatives` draws with the same generator; repeated images (``image_ids``) are no negatives.
    Catches the negatives paired the wrong way, the labels swapped, or the text mask ignored in the fusion."""
    torch.manual_seed(0)
    model = zoo.create_model("demo-tiny", task="retrieval").eval()
    batch = _batch()
    with torch.no_grad():
        got = model.retrieval_losses(batch, generator=torch.Generator().manual_seed(5))
        image = model.vision(batch["images"])
        text = model.text(batch["input_ids"], batch["attention_mask"])
        itc = model.itc(image.pooled, text.pooled, batch["image_ids"])
        image_neg, text_neg = sample_hard_negatives(itc["image_feat"], itc["text_feat"], model.itc.temperature(),
                                                    batch["image_ids"], torch.Generator().manual_seed(5))
        assert batch["image_ids"][image_neg[1]] != 1 and batch["image_ids"][image_neg[3]] != 1
        logits = []
        for t, i in [(b, b) for b in range(4)] + [(b, int(image_neg[b])) for b in range(4)] + \
                [(int(text_neg[b]), b) for b in range(4)]:
            m = batch["attention_mask"][t: t + 1]
            cls = model.fusion(text.tokens[t: t + 1], m, image.tokens[i: i + 1], None).tokens[:, 0]
            logits.append(model.itm(cls)["logits"][0])
        labels = torch.tensor([1] * 4 + [0] * 8)
        itm = torch.nn.functional.cross_entropy(torch.stack(logits).double(), labels)
    assert float(got["itc"]) == pytest.approx(float(itc["loss"]), rel=1e-6)
    assert float(got["itm"]) == pytest.approx(float(itm), rel=1e-5)
    assert float(got["loss"]) == pytest.approx(float(itc["loss"] + itm), rel=1e-5)


def test_vqa_loss_and_prediction_are_the_classifier_on_the_fused_cls():
    torch.manual_seed(0)
    model = zoo.create_model("demo-tiny").eval()
    batch = _batch()
    targets = torch.zeros(4, 8)
    targets[torch.arange(4), torch.tensor([0, 3, 5, 7])] = 1.0
    with torch.no_grad():
        got = model.vqa_loss({"images": batch["images"], "question_ids": batch["input_ids"],
                              "question_mask": batch["attention_mask"], "targets": targets})
        cls = model.fusion(model.text(batch["input_ids"], batch["attention_mask"]).tokens, batch["attention_mask"],
                           model.vision(batch["images"]).tokens, None).tokens[:, 0]
        logits = model.vqa(cls)["logits"].double()
        expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.double()) * 8
        pred = model.vqa_predict(batch["images"], batch["input_ids"], batch["attention_mask"])
    assert float(got["loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert pred["index"].tolist() == logits.argmax(-1).tolist()
    assert pred["answer"] == [model.vqa.labels[i] for i in logits.argmax(-1).tolist()]


def test_a_demo_tiny_retrieval_run_trains_and_ranks(tmp_path):
    """``mmzoo train`` of the shapes retrieval config on ``demo-tiny`` (the plug-in guide's base; the config's
    overrides, made for x2vlm-tiny, emptied): it trains, and the evaluation ranks the 6 test images (every caption
    finds its image within the top 10 of 6)."""
    shapes = generate_shapes(tmp_path / "shapes", num_train_images=16, num_val_images=6, num_test_images=6,
                             image_size=64, num_videos=0)
    cfg = load_task_config(task_config("retrieval-shapes"), [
        "model.name=demo-tiny", "model.overrides={}", f"data.root={shapes}", "data.batch_size=8",
        "data.eval_batch_size=4", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        f"train.output_dir={tmp_path}", "train.name=demo"])
    results = train(cfg)
    assert results["model"] == "demo-tiny"
    assert results["test"]["img_r10"] == pytest.approx(100.0)
