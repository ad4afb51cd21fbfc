"""Pre-training through `mmzoo train` (task `pretrain`): image–caption batches with MLM inputs, the X²-VLM / CCLM
objectives summed, zero-shot retrieval as the evaluation, and the export as a fine-tuning starting point."""

from __future__ import annotations

import pytest
import torch
from conftest import task_config

import zoo
from zoo.data.collate import RetrievalCollator
from zoo.data.shapes import generate_shapes
from zoo.train.data import TaskDataModule
from zoo.train.module import TaskModule
from zoo.train.run import load_task_config, train


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train_images=24, num_val_images=6,
                           num_test_images=6, image_size=64, num_videos=0)


def _tiny(**extra):
    return zoo.create_model("x2vlm-tiny", **{"vision.patch_size": 8, "text.tokenizer": "data", "text.vocab_size": 512,
                                             "text.pad_token_id": 1, "mlm.vocab_size": 512, "bbox": None,
                                             "text.hidden_dropout": 0.0, "text.attention_dropout": 0.0, **extra})


def test_pretrain_batches_carry_the_official_mlm_inputs(shapes):
    from zoo.train.data import resolve_data_tokenizer

    model = _tiny()
    data = {"root": str(shapes), "train": ["retrieval_train.json"], "val": "retrieval_val.json", "batch_size": 8}
    resolve_data_tokenizer(model, data, shapes, "pretrain")
    tok = model.text.get_tokenizer()
    dm = TaskDataModule("pretrain", data, tok, image_size=64)
    assert (dm.cfg["mask_prob"], dm.cfg["max_masks"]) == (0.5, 12)  # the official pre-training values
    torch.manual_seed(0)
    batch = dm.collator("train")([dm.dataset("train")[i] for i in range(8)])
    ids, masked, pos, gold = batch["input_ids"], batch["input_ids_masked"], batch["masked_pos"], batch["masked_ids"]
    lengths = batch["attention_mask"].sum(1)
    for b in range(8):
        real = gold[b] != -100
        n = int(real.sum())
        # n = min(12, max(1, round(0.5 * length))) with [CLS] and [SEP] counted, as the official generator
        assert n == min(12, max(1, round(0.5 * int(lengths[b]))))
        p = pos[b][real]
        assert torch.equal(gold[b][real], ids[b][p])  # the targets are the original tokens at the masked places
        assert not any(int(ids[b][i]) in tok.all_special_ids for i in p)  # specials never chosen
        changed = masked[b] != ids[b]
        assert set(torch.nonzero(changed).flatten().tolist()) <= set(p.tolist())  # nothing else is touched
    mask_share = (masked.gather(1, pos)[gold != -100] == tok.mask_token_id).float().mean()
    assert 0.6 < float(mask_share) < 0.95  # 80% [MASK] (over ~100 positions)
    # the evaluation batches are retrieval's
    assert set(dm.collator("val")([dm.dataset("val")[0]])) == {"images", "index", "num_skipped"}
    with pytest.raises(ValueError, match="no mask token"):
        RetrievalCollator(type("NoMask", (), {"mask_token_id": None})(), mlm={"mask_prob": 0.5})


def test_pretrain_step_sums_itc_itm_and_mlm(shapes):
    from zoo.train.data import resolve_data_tokenizer

    model = _tiny()
    data = {"root": str(shapes), "train": ["retrieval_train.json"], "batch_size": 8}
    resolve_data_tokenizer(model, data, shapes, "pretrain")
    dm = TaskDataModule("pretrain", data, model.text.get_tokenizer(), image_size=64)
    batch = dm.collator("train")([dm.dataset("train")[i] for i in range(8)])
    module = TaskModule(model, "pretrain")
    torch.manual_seed(1)
    losses = module(batch)
    assert set(losses) == {"itc", "itm", "mlm", "loss"}
    assert torch.allclose(losses["loss"], losses["itc"] + losses["itm"] + losses["mlm"])
    # the MLM loss is the cross-entropy of the MLM head's logits at the masked places, recomputed here
    image = model.encode_image(batch["images"])
    fused = model.text(batch["input_ids_masked"], batch["attention_mask"], mode="full", vision_tokens=image.tokens,
                       vision_mask=image.mask).tokens
    logits = model.mlm.logits(fused, batch["masked_pos"])
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["masked_ids"].flatten(), ignore_index=-100)
    assert torch.allclose(losses["mlm"], expected, atol=1e-5)


def test_pretrain_config_runs_and_its_export_starts_a_fine_tuning(shapes, tmp_path):
    cfg = load_task_config(task_config("pretrain-shapes"), [
        f"data.root={shapes}", "data.batch_size=8", "data.eval_batch_size=8", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", f"train.output_dir={tmp_path}", "train.name=pt", "evaluation.k_test=4"])
    results = train(cfg)
    assert {"r_mean", "txt_r1", "img_r1"} <= set(results["test"])
    losses = (tmp_path / "pt" / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert all(f"train/{k}" in losses for k in ("mlm", "itc", "itm", "bbox_l1", "bbox_giou"))
    nlvr = load_task_config(task_config("nlvr-shapes"), [
        f"data.root={shapes}", "data.batch_size=8", "data.eval_batch_size=8", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", f"train.output_dir={tmp_path}", "train.name=nlvr",
        f"model.pretrained={tmp_path / 'pt' / 'export'}",
        f"model.overrides.text.tokenizer={tmp_path / 'pt' / 'export' / 'tokenizer'}"])
    model = zoo.create_model("x2vlm-tiny", task="nlvr", pretrained=nlvr["model"]["pretrained"],
                             pretrained_strict=False, **nlvr["model"]["overrides"])
    assert model.load_report == {"new": ["nlvr"], "left_out": ["bbox", "itc", "itm", "mlm"]}
    assert "acc" in train(nlvr)["test"]


def test_cclm_pretrain_batches_with_translations(shapes):
    """CCLM's image–caption pre-training: translations in the batch add the second-language ITC and TTC."""
    from zoo.data.shapes import shapes_tokenizer

    model = zoo.create_model("cclm-tiny", **{"text.tokenizer": str(shapes_tokenizer(shapes)),
                                             "text.hidden_dropout": 0.0, "text.attention_dropout": 0.0})
    data = {"root": str(shapes), "train": ["retrieval_train_multilingual.json"], "translation": "de",
            "batch_size": 8}
    dm = TaskDataModule("pretrain", data, model.text.get_tokenizer(), image_size=64)
    batch = dm.collator("train")([dm.dataset("train")[i] for i in range(8)])
    assert {"input_ids_2", "input_ids_masked", "masked_pos", "masked_ids"} <= set(batch)
    losses = TaskModule(model, "pretrain")(batch)
    assert {"itc", "ttc", "itm", "mlm"} <= set(losses)
    assert torch.allclose(losses["loss"], sum(v for k, v in losses.items() if k != "loss"))


DAVINCI = {"text.tokenizer": "data", "text.vocab_size": 512, "text.pad_token_id": 1, "decoder.vocab_size": 1536,
           "decoder.pad_token_id": 1, "decoder.bos_token_id": 0, "decoder.eos_token_id": 2}


def test_davinci_pretrains_through_the_command_with_its_own_batches(shapes, tmp_path):
    """DaVinci builds its own pre-training inputs (caption splits; with an image tokenizer, the images for the codes
    of image modelling), and the prefix-LM and image-modelling losses train; a DaVinci has no zero-shot retrieval, so
    evaluation splits are refused by name."""
    from zoo.catalog import load_model_config
    from zoo.spec import ConfigError

    image_tokenizer = load_model_config("davinci-tiny")["tasks"]["text_to_image"]["image_tokenizer"]
    overrides = [f"data.root={shapes}", "data.batch_size=8", "trainer.max_epochs=1",
                 "trainer.enable_progress_bar=false", f"train.output_dir={tmp_path}", "train.name=dv",
                 "model.name=davinci-tiny", "data.val=null",
                 "data.test=null"]
    cfg = load_task_config(task_config("pretrain-shapes"), overrides)
    cfg["model"]["overrides"] = {**DAVINCI, "image_tokenizer": image_tokenizer}
    train(cfg)
    header = (tmp_path / "dv" / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert "train/prefix_lm" in header and "train/image_lm" in header and "train/mlm" not in header
    # the batch: caption splits whose prefix and target make the caption, and the images back in [0, 1]
    model = zoo.create_model("davinci-tiny", **DAVINCI, image_tokenizer=image_tokenizer)
    from zoo.train.data import resolve_data_tokenizer

    data = {"root": str(shapes), "train": ["retrieval_train.json"], "batch_size": 4}
    resolve_data_tokenizer(model, data, tmp_path, "pretrain")
    tok = model.text.get_tokenizer()
    dm = TaskDataModule("pretrain", data, tok, image_size=64)
    dm.configure_for_model(model)
    batch = dm.collator("train")([dm.dataset("train")[i] for i in range(4)])
    for b in range(4):
        prefix = tok.decode(batch["prefix_ids"][b][batch["prefix_mask"][b].bool()], skip_special_tokens=True)
        target = tok.decode(batch["target_ids"][b][batch["target_mask"][b].bool()], skip_special_tokens=True)
        assert " ".join(w for w in (prefix, target) if w) == batch["captions"][b]
    from zoo.data.transforms import CLIP_MEAN, CLIP_STD

    pixels = batch["images"] * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    assert torch.allclose(batch["code_images"], pixels.clamp(0, 1), atol=1e-6)
    assert float(batch["code_images"].min()) >= 0 and float(batch["code_images"].max()) <= 1
    cfg = load_task_config(task_config("pretrain-shapes"), overrides[:-2] + ["train.name=dv2"])
    cfg["model"]["overrides"] = dict(DAVINCI)
    with pytest.raises(ConfigError, match=r"data\.val: pre-training is evaluated by zero-shot retrieval, and DaVinci"):
        train(cfg)


def test_region_phrases_bring_their_boxes_to_the_box_head(shapes, tmp_path):
    """grounding_*.json: one phrase per object with its pixel box; the reader normalises it to (cx, cy, w, h), the
    collator marks whole-image captions as is_image, and the pre-training step adds the box losses."""
    import json

    from zoo.data.datasets import DataError, RetrievalTrainDataset
    from zoo.heads.box import box_losses
    from zoo.spec import ConfigError
    from zoo.train.data import resolve_data_tokenizer

    scenes = {s["image"]: s for s in json.loads((shapes / "scenes.json").read_text())}
    records = json.loads((shapes / "grounding_train.json").read_text())
    assert sum(len(s["objects"]) for s in scenes.values() if s["split"] == "train") == len(records)
    for r in records:  # the box is the scene's box of the object the phrase names
        obj = next(o for o in scenes[r["image"]]["objects"] if r["caption"] == f"the {o['size']} {o['colour']} "
                                                                                f"{o['shape']}")
        assert r["bbox"] == obj["bbox"] and r["image_w"] == r["image_h"] == 64
    model = _tiny(bbox={"type": "bbox", "width": 64})
    data = {"root": str(shapes), "train": ["retrieval_train.json", "grounding_train.json"], "batch_size": 8,
            "crop_scale": [1.0, 1.0], "randaugment": False}
    resolve_data_tokenizer(model, data, tmp_path, "pretrain")
    dm = TaskDataModule("pretrain", data, model.text.get_tokenizer(), image_size=64)
    ds = dm.dataset("train")
    first_region = next(i for i in range(len(ds)) if "bbox" in ds[i])
    x, y, w, h = records[0]["bbox"]
    assert ds[first_region]["bbox"] == pytest.approx([(x + w / 2) / 64, (y + h / 2) / 64, w / 64, h / 64])
    region_items = [ds[i] for i in range(first_region, len(ds))]
    second = next(it for it in region_items if it["image_id"] != region_items[0]["image_id"])
    items = [ds[0], ds[5], region_items[0], second]  # captions of images 0 and 1, phrases of two images
    batch = dm.collator("train")(items)
    assert batch["is_image"].tolist() == [1, 1, 0, 0]
    assert batch["target_bbox"][0].tolist() == [0.5, 0.5, 1.0, 1.0]
    torch.manual_seed(0)
    losses = TaskModule(model, "pretrain")(batch)
    assert {"itc", "itm", "mlm", "bbox_l1", "bbox_giou"} <= set(losses)
    # the box losses count the two region phrases only: recomputed from the head's own boxes
    image = model.encode_image(batch["images"])
    text = model.encode_text(batch["input_ids"], batch["attention_mask"])
    cls = model.fuse(text.tokens, batch["attention_mask"], image.tokens, image.mask).tokens[:, 0]
    l1, giou = box_losses(model.bbox(cls)[2:], batch["target_bbox"][2:])
    assert torch.allclose(losses["bbox_l1"], l1, atol=1e-6) and torch.allclose(losses["bbox_giou"], giou, atol=1e-6)
    # crops and flips would move the boxes: refused by name
    with pytest.raises(ConfigError, match=r"data\.crop_scale: the training data has region boxes"):
        TaskDataModule("pretrain", {**data, "crop_scale": [0.5, 1.0]}, model.text.get_tokenizer(),
                       image_size=64).dataset("train")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{**records[0], "bbox": [60, 60, 10, 10]}]))
    with pytest.raises(DataError, match=r"bad\.json.*record 0.*not a box inside the 64×64 image"):
        RetrievalTrainDataset(str(bad), media_root=str(shapes), max_words=30)
