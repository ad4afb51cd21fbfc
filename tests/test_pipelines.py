"""``zoo.pipeline``, ``zoo.create_model_and_transforms`` and ``zoo.load_processor``: inputs in every accepted form
give what the model computes on the evaluation transform by hand; batches equal single calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import zoo
from zoo.data.collate import tokenize_texts
from zoo.data.datasets import pre_caption, pre_question


def _scene(colour=(200, 30, 30), size=64) -> Image.Image:
    img = Image.new("RGB", (size, size), (250, 250, 250))
    ImageDraw.Draw(img).ellipse([10, 12, 40, 42], fill=colour)
    return img


@pytest.fixture(scope="module")
def vqa_model():
    torch.manual_seed(0)
    model = zoo.create_model("demo-tiny").eval()
    model.vqa.labels = ["red", "green", "blue", "yellow", "circle", "square", "triangle", "2"]
    return model


def test_vqa_pipeline_takes_images_in_every_form_and_batches(vqa_model, tmp_path):
    img = _scene()
    img.save(tmp_path / "scene.png")
    tensor = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
    vqa = zoo.pipeline("vqa", vqa_model)
    q = "What colour is the circle?"
    transform = vqa_model.processor().image_transform(train=False)
    ids, mask = tokenize_texts(vqa_model.text.get_tokenizer(), [pre_question(q, 50)])
    with torch.no_grad():
        want = vqa_model.vqa_predict(transform(img).unsqueeze(0), ids, mask)
    for form in (img, str(tmp_path / "scene.png"), tensor, (tensor * 255).round().to(torch.uint8)):
        got = vqa(form, q)
        assert got["answer"] == want["answer"][0] and got["prob"] == pytest.approx(float(want["prob"][0]), abs=1e-6)
    other = _scene((30, 30, 200))
    batch = zoo.pipeline("vqa", vqa_model, batch_size=2)([img, other, img], [q, "how many?", q])
    singles = [vqa(img, q), vqa(other, "how many?"), vqa(img, q)]
    assert [b["answer"] for b in batch] == [s["answer"] for s in singles]
    assert [b["prob"] for b in batch] == pytest.approx([s["prob"] for s in singles], abs=1e-5)
    one_for_all = vqa([img, other], q)  # one question for every image
    assert [r["answer"] for r in one_for_all] == [vqa(img, q)["answer"], vqa(other, q)["answer"]]
    with pytest.raises(ValueError, match="2 images and 3 questions"):
        vqa([img, other], [q, q, q])
    with pytest.raises(TypeError, match="a PIL image, a file path or a"):
        vqa(42, q)


def test_retrieval_and_captioning_pipelines_equal_the_models_own_calls(vqa_model):
    torch.manual_seed(1)
    model = zoo.create_model("demo-tiny", task="retrieval").eval()
    texts = ["a red circle", "a blue square", "two green triangles"]
    img = _scene()
    got = zoo.pipeline("retrieval", model)(img, texts)
    transform = model.processor().image_transform(train=False)
    ids, mask = tokenize_texts(model.text.get_tokenizer(), [pre_caption(t, 30) for t in texts])
    with torch.no_grad():
        i2t, _ = model.retrieval_scores(transform(img).unsqueeze(0), ids, mask, k=3)
    want = sorted(((t, float(s)) for t, s in zip(texts, i2t[0])), key=lambda x: -x[1])
    assert [t for t, _ in got["ranking"]] == [t for t, _ in want]
    assert [s for _, s in got["ranking"]] == pytest.approx([s for _, s in want], abs=1e-5)
    captioner = zoo.create_model("x2vlm-tiny", task="captioning").eval()
    caption = zoo.pipeline("captioning", captioner)(img, num_beams=2, max_length=6)
    with torch.no_grad():
        direct = captioner.generate_captions(captioner.processor().image_transform(train=False)(img).unsqueeze(0),
                                             num_beams=2, max_length=6)
    assert caption == {"caption": direct[0]}
    with pytest.raises(ValueError, match="cannot do captioning"):
        zoo.pipeline("captioning", vqa_model)
    with pytest.raises(ValueError, match="unknown pipeline task 'segmentation'"):
        zoo.pipeline("segmentation", vqa_model)


def test_transforms_and_processor_of_an_export_equal_the_models(vqa_model, tmp_path):
    vqa_model.save_pretrained(tmp_path / "export")
    model, train_tf, eval_tf, tok = zoo.create_model_and_transforms(tmp_path / "export")
    img = _scene()
    want = vqa_model.processor().image_transform(train=False)(img)
    assert torch.equal(eval_tf(img), want) and train_tf(img).shape == want.shape
    proc = zoo.load_processor(tmp_path / "export")
    assert torch.equal(proc.transform(img), want)
    assert proc.tokenizer("a red circle")["input_ids"] == vqa_model.text.get_tokenizer()("a red circle")["input_ids"]
    built, _, eval_named, _ = zoo.create_model_and_transforms("x2vlm-tiny", task="vqa")
    assert eval_named(img).shape == (3, 64, 64) and built.zoo_config["task"] == "vqa"
    with pytest.raises(FileNotFoundError, match="no preprocessor.json"):
        zoo.load_processor(tmp_path)


def test_chat_pipeline_is_the_models_chat_on_the_transformed_image():
    torch.manual_seed(0)
    model = zoo.create_model("mmgpt-tiny").eval()
    img = Image.new("RGB", (32, 32), (200, 0, 0))
    got = zoo.pipeline("chat", model)(img, "what is this?", history=[("hi", "hello")], max_new_tokens=4)
    with torch.no_grad():
        want = model.chat(model.processor().image_transform(train=False)(img), [("hi", "hello")], "what is this?",
                          max_new_tokens=4)
    assert got == {"answer": want}
    with pytest.raises(ValueError, match="has no chat"):
        zoo.pipeline("chat", zoo.create_model("demo-tiny"))
