"""Visual entailment (SNLI-VE / XVNLI) and two-image reasoning (NLVR2 / MaRVL) as `mmzoo train` tasks: readers of the
official layouts, the label order each family's head was trained with, accuracy, and training runs end to end."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import task_config
from PIL import Image

import zoo
from zoo.cli import main
from zoo.data.collate import SentenceLabelCollator
from zoo.data.datasets import DataError, NLVRDataset, VEDataset
from zoo.metrics.classification import accuracy_by_class
from zoo.train.run import evaluate, load_task_config, train

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220)}


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Eight one-colour images; VE hypotheses and NLVR statements about their colour."""
    root = tmp_path_factory.mktemp("reasoning")
    (root / "images").mkdir()
    names = []
    for i in range(8):
        colour = "red" if i % 2 == 0 else "blue"
        Image.new("RGB", (64, 64), COLOURS[colour]).save(root / "images" / f"{i}.png")
        names.append((f"images/{i}.png", colour))
    ve, nlvr = [], []
    for k, (image, colour) in enumerate(names):
        other = "blue" if colour == "red" else "red"
        ve += [{"image": image, "sentence": f"the picture is {colour}", "label": "entailment"},
               {"image": image, "sentence": f"the picture is {other}", "label": "contradiction"},
               {"image": image, "sentence": f"the {colour} picture is old", "label": "neutral"}]
        right, right_colour = names[(k + 1) % len(names)]
        nlvr += [{"images": [image, right], "sentence": f"the left image is {colour}", "label": "True"},
                 {"images": [image, right], "sentence": f"the right image is {right_colour}", "label": True},
                 {"images": [image, right], "sentence": f"the left image is {other}", "label": "False"}]
    for name, records in (("ve", ve), ("nlvr", nlvr)):
        _write(root / f"{name}_train.json", records)
        _write(root / f"{name}_test.json", records[:12])
    return root


# ---------------------------------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------------------------------
def test_ve_reads_snli_ve_and_xvnli_layouts(tmp_path):
    Image.new("RGB", (32, 32), (255, 0, 0)).save(tmp_path / "2345.jpg")
    Image.new("RGB", (32, 32), (0, 0, 255)).save(tmp_path / "777.jpg")
    # SNLI-VE as ALBEF / DaVinci read it: the image is a Flickr30k id, ".jpg" appended
    snli = _write(tmp_path / "ve.json", [{"image": "2345", "sentence": "A Red thing!", "label": "neutral"}])
    # XVNLI as CCLM reads it: one record a line, Flikr30kID / sentence2 / gold_label
    (tmp_path / "xvnli.jsonl").write_text(json.dumps({"Flikr30kID": "777", "sentence2": "Ein Ding.",
                                                      "gold_label": "contradiction"}) + "\n")
    ds = VEDataset([snli, str(tmp_path / "xvnli.jsonl")], media_root=str(tmp_path), image_size=32, train=False)
    a, b = ds[0], ds[1]
    assert (a["sentence"], a["label"]) == ("a red thing", "neutral")  # pre_caption: lower case, no punctuation
    assert (b["sentence"], b["label"]) == ("ein ding", "contradiction")
    assert a["image"].shape == (3, 32, 32) and a["image"][0].mean() > a["image"][2].mean()  # red
    assert b["image"][2].mean() > b["image"][0].mean()  # blue


def test_ve_rejects_a_label_outside_the_three(tmp_path):
    bad = _write(tmp_path / "ve.json", [{"image": "a.png", "sentence": "s", "label": "entailment"},
                                        {"image": "a.png", "sentence": "s", "label": "-"}])
    with pytest.raises(DataError) as info:
        VEDataset(bad, media_root=str(tmp_path))
    assert "ve.json" in str(info.value) and "record 1" in str(info.value) and "'-'" in str(info.value)
    ds = VEDataset(bad, media_root=str(tmp_path), on_bad_sample="skip")  # dropped and counted, as XVNLI's '-' rows
    assert len(ds) == 1 and ds.num_skipped == 1


def test_nlvr_reads_labels_and_both_images(data):
    ds = NLVRDataset(str(data / "nlvr_train.json"), media_root=str(data), image_size=32, train=False)
    assert [ds[i]["label"] for i in range(3)] == [1, 1, 0]  # "True", true, "False"
    item = ds[0]
    assert item["image_a"][0].mean() > item["image_a"][2].mean()  # image 0 is red
    assert item["image_b"][2].mean() > item["image_b"][0].mean()  # image 1 is blue


@pytest.mark.parametrize("record, problem", [
    ({"images": ["a.png"], "sentence": "s", "label": True}, "two images"),
    ({"images": ["a.png", "b.png"], "sentence": "s", "label": 1}, "'label' is int 1"),
    ({"images": ["a.png", "b.png"], "sentence": "s"}, "missing key 'label'"),
])
def test_nlvr_bad_records_name_the_problem(tmp_path, record, problem):
    path = _write(tmp_path / "nlvr.json", [record])
    with pytest.raises(DataError) as info:
        NLVRDataset(path, media_root=str(tmp_path))
    assert "nlvr.json" in str(info.value) and problem in str(info.value)


def test_collator_maps_label_names_in_the_model_class_order(data):
    from zoo.models.cclm import XVNLI_LABELS
    from zoo.models.davinci import DaVinci

    # the official orders: DaVinci ve_dataset {'entailment': 2, 'neutral': 1, 'contradiction': 0};
    # CCLM xvnli_dataset {"contradiction": 0, "entailment": 1, "neutral": 2}
    assert DaVinci.ve_labels == ("contradiction", "neutral", "entailment")
    assert XVNLI_LABELS == ("contradiction", "entailment", "neutral")
    cclm = zoo.create_model("cclm-tiny", task="xvnli")
    assert cclm.ve_labels == XVNLI_LABELS  # the head's labels (cclm-base.yaml) agree
    ds = VEDataset(str(data / "ve_train.json"), media_root=str(data), image_size=32, train=False)
    items = [ds[i] for i in range(3)]  # entailment, contradiction, neutral
    tok = zoo.create_model("x2vlm-tiny", task="nlvr").text.get_tokenizer()
    assert SentenceLabelCollator(tok, class_names=DaVinci.ve_labels)(items)["labels"].tolist() == [2, 0, 1]
    batch = SentenceLabelCollator(tok, class_names=XVNLI_LABELS)(items)
    assert batch["labels"].tolist() == [1, 0, 2]
    assert batch["images"].shape == (3, 3, 32, 32) and batch["input_ids"].shape[0] == 3
    with pytest.raises(ValueError, match="'neutral' is not one of the model's classes"):
        SentenceLabelCollator(tok, class_names=["contradiction", "entailment"])(items)


def test_accuracy_by_class_counts():
    pred = torch.tensor([0, 1, 2, 2, 1, 0, 0])
    gold = torch.tensor([0, 1, 1, 2, 2, 2, 0])
    out = accuracy_by_class(pred, gold, ["a", "b", "c"])
    # by hand: correct at 0, 1, 3, 6 -> 4 / 7; class a: 2 / 2, b: 1 / 2, c: 1 / 3
    assert out == pytest.approx({"acc": 400 / 7, "acc_a": 100.0, "acc_b": 50.0, "acc_c": 100 / 3})
    assert "acc_c" not in accuracy_by_class(torch.tensor([0]), torch.tensor([0]), ["a", "b", "c"])
    with pytest.raises(ValueError, match="class indices"):
        accuracy_by_class(torch.tensor([0]), torch.tensor([3]), ["a", "b", "c"])


# ---------------------------------------------------------------------------------------------------------------------
# training end to end
# ---------------------------------------------------------------------------------------------------------------------
DAVINCI = {"text.tokenizer": "data", "text.vocab_size": 512, "text.pad_token_id": 1, "decoder.vocab_size": 1536,
           "decoder.pad_token_id": 1, "decoder.bos_token_id": 0, "decoder.eos_token_id": 2}
SMALL_VOCAB = {"text.tokenizer": "data", "text.vocab_size": 512, "text.pad_token_id": 1}


def _task_config(data, tmp_path, task, model, model_task, overrides):
    cfg = load_task_config(task_config('nlvr-shapes' if task == 'nlvr' else 've-davinci-shapes'), [
        f"data.root={data}", f"data.train=[{task}_train.json]", f"data.val={task}_test.json",
        f"data.test={task}_test.json", "data.batch_size=8", "data.eval_batch_size=8", "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false", f"train.output_dir={tmp_path}", f"train.name={model}",
        f"model.name={model}", f"model.task={model_task}"])
    cfg["model"]["overrides"] = dict(overrides)
    if model == "cclm-tiny":  # the VE config's lr multiplier names DaVinci's head; CCLM's is `xvnli`
        cfg["optim"]["new_params"] = ["xvnli.*"]
    for key in ("pretrained", "pretrained_strict"):  # the configs start from the shapes runs' exports; here: random
        cfg["model"].pop(key, None)
    return cfg


def _independent_accuracy(export, data, task, class_names, file=None):
    """Test accuracy, overall and per label, recomputed outside the training module: the export's logits, argmax, the
    record's label looked up in the family's class order by hand. (Per label: a barely trained model may answer one
    class everywhere, which scores a third overall whatever the class order; which label gets 100 depends on it.)"""
    model = zoo.from_pretrained(export).eval()
    tok = model.text.get_tokenizer()
    records = json.loads((data / (file or f"{task}_test.json")).read_text())
    from zoo.data.transforms import build_image_transform

    transform = build_image_transform(model.zoo_config.get("default_resolution", 64), False)

    def image(rel):
        return transform(Image.open(data / rel).convert("RGB"))[None]

    hits: dict[str, list[int]] = {}
    for rec in records:
        enc = tok([rec["sentence"]], return_tensors="pt")
        with torch.no_grad():
            if task == "ve":
                logits = model.ve_logits(image(rec["image"]), enc["input_ids"], enc["attention_mask"])
                name = rec["label"]
                gold = class_names.index(name)
            else:
                logits = model.nlvr_logits(image(rec["images"][0]), image(rec["images"][1]), enc["input_ids"],
                                           enc["attention_mask"])
                gold = 1 if rec["label"] in (True, "True") else 0
                name = ("false", "true")[gold]
        hits.setdefault(name, []).append(int(logits.argmax(-1).item() == gold))
    out = {f"acc_{name}": 100.0 * sum(h) / len(h) for name, h in hits.items()}
    return {"acc": 100.0 * sum(sum(h) for h in hits.values()) / len(records), **out}


def _softmax(export, task, left, right, sentence):
    """Class probabilities of one example, computed here from the export's logits."""
    model = zoo.from_pretrained(export).eval()
    from zoo.data.transforms import build_image_transform

    transform = build_image_transform(model.zoo_config.get("default_resolution", 64), False)
    enc = model.text.get_tokenizer()([sentence], return_tensors="pt")
    a = transform(Image.open(left).convert("RGB"))[None]
    with torch.no_grad():
        if task == "ve":
            logits = model.ve_logits(a, enc["input_ids"], enc["attention_mask"])
        else:
            b = transform(Image.open(right).convert("RGB"))[None]
            logits = model.nlvr_logits(a, b, enc["input_ids"], enc["attention_mask"])
    return logits.double().softmax(-1)[0].tolist()


@pytest.mark.parametrize("model, model_task, class_names, overrides", [
    ("davinci-tiny", "ve", ("contradiction", "neutral", "entailment"), DAVINCI),
    ("cclm-tiny", "xvnli", ("contradiction", "entailment", "neutral"), SMALL_VOCAB),
])
def test_ve_trains_and_its_accuracy_is_the_models(data, tmp_path, capsys, model, model_task, class_names, overrides):
    results = train(_task_config(data, tmp_path, "ve", model, model_task, overrides))
    test = results["test"]
    assert set(test) == {"acc", "acc_contradiction", "acc_neutral", "acc_entailment"}
    assert test == pytest.approx(_independent_accuracy(tmp_path / model / "export", data, "ve", class_names))
    # the per-class numbers average to the total on this balanced split
    assert test["acc"] == pytest.approx(sum(test[f"acc_{c}"] for c in class_names) / 3)
    # mmzoo predict --hypothesis: the export's softmax over its classes, named in its order
    export = tmp_path / model / "export"
    capsys.readouterr()  # the training run's output
    assert main(["predict", str(export), "--image", str(data / "images" / "1.png"), "--hypothesis",
                 "The picture is BLUE.", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    probs = _softmax(export, "ve", data / "images" / "1.png", None, "the picture is blue")
    assert out["probs"] == pytest.approx(dict(zip(class_names, probs)), abs=1e-5)
    assert out["label"] == max(out["probs"], key=out["probs"].get)  # the most probable class, by name


@pytest.mark.parametrize("model, overrides", [("x2vlm-tiny", SMALL_VOCAB), ("davinci-tiny", DAVINCI)])
def test_nlvr_trains_and_mmzoo_eval_reproduces_it(data, tmp_path, capsys, model, overrides):
    results = train(_task_config(data, tmp_path, "nlvr", model, "nlvr", overrides))
    export = tmp_path / model / "export"
    assert set(results["test"]) == {"acc", "acc_false", "acc_true"}
    assert results["test"] == pytest.approx(_independent_accuracy(export, data, "nlvr", None))
    metrics = evaluate(export, task_config("nlvr-shapes"), [
        f"data.root={data}", "data.test=nlvr_test.json", "data.val=nlvr_test.json", "data.eval_batch_size=8"],
        split="test", output=tmp_path / "eval.json")
    assert metrics["acc"] == pytest.approx(results["test"]["acc"])
    # mmzoo predict --statement on two images
    left, right = data / "images" / "0.png", data / "images" / "3.png"
    capsys.readouterr()  # the training run's output
    assert main(["predict", str(export), "--image", str(left), "--image2", str(right), "--statement",
                 "the left image is red", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    p_true = _softmax(export, "nlvr", left, right, "the left image is red")[1]
    assert out["prob"] == pytest.approx(p_true, abs=1e-5) and out["label"] == (out["prob"] > 0.5)
    # the wrong head, or a statement without its second image, is a clear error
    assert main(["predict", str(export), "--image", str(left), "--hypothesis", "a red picture"]) == 2
    assert "no visual-entailment head" in capsys.readouterr().err
    assert main(["predict", str(export), "--image", str(left), "--statement", "the left image is red"]) == 2
    assert "--image2 RIGHT" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# starting from a model trained for another task
# ---------------------------------------------------------------------------------------------------------------------
def test_pretrained_strict_false_loads_the_shared_parts_whole(tmp_path):
    from zoo.hub import WeightsError

    vqa = zoo.create_model("x2vlm-tiny", task="vqa")
    vqa.save_pretrained(tmp_path / "vqa")
    with pytest.raises(WeightsError, match="missing 6 key"):  # strict by default: the NLVR head is not in the file
        zoo.create_model("x2vlm-tiny", task="nlvr", pretrained=tmp_path / "vqa")
    nlvr = zoo.create_model("x2vlm-tiny", task="nlvr", pretrained=tmp_path / "vqa", pretrained_strict=False)
    assert nlvr.load_report == {"new": ["nlvr"], "left_out": ["vqa"]}
    source = vqa.state_dict()
    shared = [k for k in nlvr.state_dict() if k.split(".")[0] in ("vision", "text")]
    assert shared and all(torch.equal(nlvr.state_dict()[k], source[k]) for k in shared)
    fresh = zoo.create_model("x2vlm-tiny", task="nlvr")  # the new head keeps the seeded initialisation's shapes
    assert all(nlvr.state_dict()[k].shape == v.shape for k, v in fresh.state_dict().items() if k.startswith("nlvr."))
    # a part the file holds only in part is an error, not a silent half-load
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "vqa" / "model.safetensors")
    dropped = next(k for k in state if k.startswith("text.") and k.endswith("query.weight"))
    del state[dropped]
    save_file(state, tmp_path / "partial.safetensors")
    with pytest.raises(WeightsError, match=dropped.replace(".", r"\.")):
        zoo.create_model("x2vlm-tiny", task="nlvr", pretrained=tmp_path / "partial.safetensors",
                         pretrained_strict=False)
    with pytest.raises(zoo.spec.ConfigError, match="pretrained_strict: expected true or false"):
        zoo.create_model("x2vlm-tiny", task="nlvr", pretrained=tmp_path / "vqa", pretrained_strict="no")
    # the whole export of the new model stands alone (no base weights named in its config)
    nlvr.save_pretrained(tmp_path / "nlvr")
    config = json.loads((tmp_path / "nlvr" / "config.json").read_text())
    assert "pretrained" not in config and "pretrained_strict" not in config
    again = zoo.from_pretrained(tmp_path / "nlvr")
    assert all(torch.equal(v, nlvr.state_dict()[k]) for k, v in again.state_dict().items())
    # a trainable-only export names its base weights and how they were loaded; the rebuild loads them alike
    for p in nlvr.text.parameters():
        p.requires_grad_(False)
    nlvr.save_pretrained(tmp_path / "light", trainable_only=True)
    config = json.loads((tmp_path / "light" / "config.json").read_text())
    assert config["pretrained"] == str(tmp_path / "vqa") and config["pretrained_strict"] is False
    light = zoo.from_pretrained(tmp_path / "light")
    assert all(torch.equal(v, nlvr.state_dict()[k]) for k, v in light.state_dict().items())


# ---------------------------------------------------------------------------------------------------------------------
# the zero-shot cross-lingual protocol (XVNLI, MaRVL) on the shapes translations
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from zoo.data.shapes import generate_shapes

    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train_images=16, num_val_images=4,
                           num_test_images=4, image_size=64, num_videos=0)


@pytest.mark.parametrize("task, config, class_names", [
    ("ve", "ve-cclm-multilingual-shapes", ("contradiction", "entailment", "neutral")),
    ("nlvr", "nlvr-cclm-multilingual-shapes", None),
])
def test_cross_lingual_configs_score_each_language(shapes, tmp_path, task, config, class_names):
    cfg = load_task_config(task_config(config), [
        f"data.root={shapes}", "data.batch_size=8", "data.eval_batch_size=8", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", f"train.output_dir={tmp_path}", "train.name=run"])
    for key in ("pretrained", "pretrained_strict"):  # random weights here: no retrieval run to start from
        cfg["model"].pop(key)
    cfg["model"]["overrides"]["text.tokenizer"] = "shapes"
    results = train(cfg)
    for lang in ("en", "de", "fr"):
        file = f"{task}_test.json" if lang == "en" else f"{task}_test.{lang}.json"
        expected = _independent_accuracy(tmp_path / "run" / "export", shapes, task, class_names, file)
        got = {k.split("/", 1)[1]: v for k, v in results["test"].items() if k.startswith(f"{lang}/")}
        assert got == pytest.approx(expected), lang


def test_a_model_that_cannot_do_the_task_is_a_config_error(data, tmp_path, capsys):
    common = [f"data.root={data}", "data.val=ve_test.json", "data.test=ve_test.json", f"train.output_dir={tmp_path}"]
    # a run on one task with the model built for another (X²-VLM has no visual-entailment head at all)
    assert main(["train", task_config("nlvr-shapes"), "task=ve", "data.train=[ve_train.json]",
                 "model.pretrained=null", *common]) == 2
    err = capsys.readouterr().err  # the config says nlvr for the model and ve for the run
    assert "nlvr-shapes.yaml: model.task: the config's task is 've' but model.task is 'nlvr'" in err
    # DaVinci has one, but not when built for VQA; both are named by the config check before anything is built
    assert main(["train", task_config("ve-davinci-shapes"), "model.task=vqa", "model.pretrained=null",
                 "data.train=[ve_train.json]", *common]) == 2
    err = capsys.readouterr().err
    assert "ve-davinci-shapes.yaml: model.task: the config's task is 've' but model.task is 'vqa'" in err
    assert not (tmp_path / "ve-davinci-shapes" / "checkpoints").exists()  # stopped before anything ran
