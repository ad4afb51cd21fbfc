"""A model's preprocessing is its own (zoo.processing): each family's official recipe, a vision part's library defaults,
a model file's ``preprocess:`` section; the transform, the training data, the blank-image ablation, ``mmzoo predict``
and the export's preprocessor.json all use it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import REFERENCE_DIR
from PIL import Image

import zoo
from zoo.catalog import load_model_config
from zoo.spec import ConfigError

with open(REFERENCE_DIR / "official_defaults.json", encoding="utf-8") as fh:
    OFFICIAL = json.load(fh)["values"]["image_preprocess"]["value"]

TINY = {"x2vlm": "x2vlm-tiny", "cclm": "cclm-tiny", "davinci": "davinci-tiny", "epalm": "epalm-tiny",
        "mmgpt": "mmgpt-tiny"}


def _image(w: int = 50, h: int = 30, seed: int = 0) -> Image.Image:
    """A non-square RGB image with random pixels (so resize and crop differences show)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("family", sorted(TINY))
def test_each_family_preprocesses_as_its_official_code(family):
    model = zoo.create_model(TINY[family], device="meta")
    cfg = model.preprocess_config()
    want = OFFICIAL[family]
    assert (list(cfg.mean), list(cfg.std), cfg.interpolation, cfg.resize_mode) == (
        want["mean"], want["std"], want["interpolation"], want["resize_mode"])
    assert cfg.image_size == zoo.models.base.input_resolution(model)


def test_the_shortest_side_recipe_is_open_clips_transform():
    """MultiModal-GPT's evaluation transform gives the same tensor as open_clip's own ``image_transform`` with the
    tower's configuration (an independent implementation), on a non-square image."""
    import open_clip

    cfg = zoo.create_model("mmgpt-tiny", device="meta").preprocess_config()
    ours = zoo.processing.Processor(cfg).image_transform(train=False)
    theirs = open_clip.image_transform(cfg.image_size, is_train=False, mean=cfg.mean, std=cfg.std,
                                       resize_mode="shortest", interpolation="bicubic")
    img = _image()
    assert torch.allclose(ours(img), theirs(img), atol=1e-6)


def test_the_square_recipe_is_the_official_torchvision_pipeline():
    """X²-VLM's evaluation transform = torchvision ``Resize((S, S), bicubic) → ToTensor → Normalize(CLIP)`` (the
    official test_transform), on a non-square image: the aspect is squashed, nothing is cropped."""
    from torchvision import transforms as T

    cfg = zoo.create_model("x2vlm-tiny", device="meta").preprocess_config()
    s = cfg.image_size
    official = T.Compose([T.Resize((s, s), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                          T.Normalize(OFFICIAL["x2vlm"]["mean"], OFFICIAL["x2vlm"]["std"])])
    img = _image()
    assert torch.equal(zoo.processing.Processor(cfg).image_transform(train=False)(img), official(img))


def test_a_timm_vision_part_brings_timms_normalisation():
    """A generic fusion encoder declares no recipe: a ``timm`` vision part gives the timm model's ``pretrained_cfg``
    mean / std / interpolation, as ``timm.data.resolve_data_config`` reads them."""
    import timm.data

    cfg = load_model_config("demo-tiny")
    cfg.pop("preprocess")
    cfg["model"]["vision"] = {"type": "timm", "model_name": "vit_tiny_patch16_224", "img_size": 32,
                              "model_kwargs": {"embed_dim": 64, "depth": 1, "num_heads": 4}}
    model = zoo.create_model(cfg, device="meta")
    timm_cfg = timm.data.resolve_data_config({}, model=model.vision.model)
    got = model.preprocess_config()
    assert (got.mean, got.std, got.interpolation) == (tuple(timm_cfg["mean"]), tuple(timm_cfg["std"]),
                                                      timm_cfg["interpolation"])
    assert got.mean != tuple(OFFICIAL["x2vlm"]["mean"])  # not CLIP's: the part's own


def test_the_model_file_section_wins_and_is_checked(tmp_path):
    cfg = load_model_config("x2vlm-tiny")
    cfg["preprocess"] = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"}
    got = zoo.create_model(cfg, device="meta").preprocess_config()
    assert (got.mean, got.std, got.interpolation, got.resize_mode) == ((0.5,) * 3, (0.25,) * 3, "bilinear", "squash")

    bad = tmp_path / "bad.yaml"
    bad.write_text("_base_: x2vlm-tiny.yaml\nname: bad\npreprocess: {mean: [0.5, 0.5], std: [1, 1, 1]}\n")
    with pytest.raises(ConfigError) as err:
        zoo.create_model(str(bad), device="meta")
    assert (err.value.path, err.value.file) == ("preprocess.mean", str(bad))
    assert "expected three numbers (one per RGB channel), got [0.5, 0.5]" in err.value.message
    bad.write_text("_base_: x2vlm-tiny.yaml\nname: bad\npreprocess: {resize: shortest}\n")
    with pytest.raises(ConfigError, match="did you mean 'resize_mode'"):
        zoo.create_model(str(bad), device="meta")


def test_a_model_with_no_normalisation_anywhere_is_a_config_error():
    """No silent default: a part and family that declare nothing and a file without ``preprocess`` → the error
    names the section to write."""
    cfg = load_model_config("demo-tiny")
    cfg.pop("preprocess")  # its BEiT-v2 part declares none, nor does the generic fusion encoder
    model = zoo.create_model(cfg, device="meta")
    with pytest.raises(ConfigError) as err:
        model.processor("vqa")
    assert err.value.path == "preprocess"
    assert "give preprocess.mean and preprocess.std in its model file" in err.value.message


def test_training_data_export_and_predict_use_the_models_preprocessing(tmp_path):
    """With a model whose file sets its own mean / std: the run's data module normalises with them (the
    blank-image ablation is the model's mid-grey), the export's preprocessor.json records them, and predict's
    pixels are the model's transform of the file."""
    from zoo.data.shapes import generate_shapes
    from zoo.predict import _pixels
    from zoo.train.run import _datamodule

    mean, std = (0.2, 0.4, 0.6), (0.5, 0.25, 0.125)
    cfg = load_model_config("x2vlm-tiny")
    cfg["preprocess"] = {"mean": list(mean), "std": list(std)}
    torch.manual_seed(0)
    model = zoo.create_model(cfg, task="vqa")
    shapes = generate_shapes(tmp_path / "shapes", num_train_images=4, num_val_images=1, num_test_images=1,
                             image_size=48, num_videos=0, languages=())
    data = {"root": str(shapes), "train": "vqa_train.json", "batch_size": 2, "randaugment": False,
            "blank_images": True}
    dm = _datamodule("vqa", {"data": data}, model, model.text.get_tokenizer())
    grey = dm.dataset("train")[0]["image"]
    assert torch.allclose(grey[:, 0, 0], (0.5 - torch.tensor(mean)) / torch.tensor(std))

    out = model.save_pretrained(tmp_path / "export")
    saved = json.loads((out / "preprocessor.json").read_text())
    size = zoo.models.base.input_resolution(model)
    assert saved == {"image_size": size, "mean": list(mean), "std": list(std), "interpolation": "bicubic",
                     "resize_mode": "squash"}
    reloaded = zoo.from_pretrained(out)
    assert reloaded.preprocess_config() == model.preprocess_config()

    img_path = tmp_path / "img.png"
    _image(40, 24).save(img_path)
    expected = model.processor().image_transform(train=False)(Image.open(img_path).convert("RGB"))
    assert torch.equal(_pixels(reloaded, str(img_path), 1)[0], expected)
    manual = (torch.from_numpy(np.array(Image.open(img_path).convert("RGB").resize((size, size), Image.BICUBIC)))
              .permute(2, 0, 1).float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(expected, manual, atol=0.02)  # PIL's and torchvision's bicubic differ by rounding only


@pytest.mark.parametrize("name", ["epalm-tiny", "mmgpt-tiny"])
def test_language_model_families_get_text_batches(name, tmp_path):
    """Their processor's VQA batches carry the questions, answers and weights as text (nothing to decode) and their
    captioning training batches the captions; captioning evaluation batches are the task's own."""
    from zoo.data.collate import CaptionEvalCollator
    from zoo.data.shapes import generate_shapes
    from zoo.modules.lm.processing import TextCaptionCollator, TextVQACollator
    from zoo.train.run import _datamodule

    torch.manual_seed(0)
    model = zoo.create_model(name)
    shapes = generate_shapes(tmp_path / "shapes", num_train_images=4, num_val_images=1, num_test_images=1,
                             image_size=48, num_videos=0, languages=())
    dm = _datamodule("vqa", {"data": {"root": str(shapes), "train": "vqa_train.json", "val": "vqa_val.json",
                                      "batch_size": 2, "randaugment": False}}, model, model.text.get_tokenizer())
    dm.configure_for_model(model)
    assert type(dm.collator("train")) is TextVQACollator and dm.collator("train").answers
    assert not dm.collator("val").answers
    batch = next(iter(dm.train_dataloader()))
    ds = dm.dataset("train")
    items = {item["question_id"]: item for item in (ds[i] for i in range(len(ds)))}
    assert "question_ids" not in batch and "answer_ids" not in batch  # no ids of another tokenizer
    assert len(batch["questions"]) == 2
    for qid, question, answers, weights in zip(batch["question_id"], batch["questions"], batch["answers"],
                                               batch["weights"]):
        item = items[qid]
        assert (question, answers, weights) == (item["question"], list(item["answers"]),
                                                [float(w) for w in item["weights"]])
    cap = _datamodule("captioning", {"data": {"root": str(shapes), "train": "caption_train.json",
                                              "val": "caption_val.json", "batch_size": 2}}, model,
                      model.text.get_tokenizer())
    cap.configure_for_model(model)
    assert type(cap.collator("train")) is TextCaptionCollator
    assert type(cap.collator("val")) is CaptionEvalCollator


def test_mmgpt_trains_on_the_answer_of_highest_weight():
    """The official ``true_answer = answers[argmax(weights)]``: a question with answers (blue 0.3, red 1.0) gives
    the loss of "red" alone."""
    from zoo.modules.lm.processing import TextVQACollator

    torch.manual_seed(0)
    model = zoo.create_model("mmgpt-tiny").eval()
    image = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(1))
    item = {"image": image, "question": "what color is it", "question_id": 1, "all_answers": ["red"]}
    both = TextVQACollator()([{**item, "answers": ["blue", "red"], "weights": [0.3, 1.0]}])
    red = TextVQACollator()([{**item, "answers": ["red"], "weights": [1.0]}])
    blue = TextVQACollator()([{**item, "answers": ["blue"], "weights": [1.0]}])
    with torch.no_grad():
        loss = model.vqa_loss(both)["loss"]
        assert torch.equal(loss, model.vqa_loss(red)["loss"])
        assert not torch.equal(loss, model.vqa_loss(blue)["loss"])


def test_text_batches_give_the_lm_families_the_answers_the_decoded_ids_gave(tmp_path):
    """Before the LM families took text batches they decoded the collator's answer ids (``[CLS] answer [SEP]`` made
    with the data's word-level tokenizer) back to strings. On the shapes data that round trip is the identity for
    every answer, so the text path trains on the same strings (the eP-ALM rows of BENCHMARKS.md stand)."""
    from transformers import AutoTokenizer

    from zoo.data.collate import decode_texts, encode_answer_list
    from zoo.data.datasets import VQADataset
    from zoo.data.shapes import generate_shapes, shapes_tokenizer

    shapes = generate_shapes(tmp_path / "shapes", num_train_images=40, num_val_images=8, num_test_images=8,
                             image_size=48, num_videos=0)  # with its languages: the data's word-level tokenizer
    tok = AutoTokenizer.from_pretrained(str(shapes_tokenizer(shapes)))
    answers = sorted({a for split in ("train", "val", "test")
                      for _, _, rec in VQADataset([str(shapes / f"vqa_{split}.json")], str(shapes), image_size=48,
                                                  train=split == "train").records
                      for a in ([rec["answer"]] if isinstance(rec["answer"], str) else rec["answer"])})
    assert len(answers) > 10
    ids, mask = encode_answer_list(tok, answers)
    assert decode_texts(tok, ids, mask, tok.pad_token_id) == answers
