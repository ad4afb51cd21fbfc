"""The model contract, checked for every registered tiny model × every task variant × every registered task.

For each task a model declares (``supported_tasks()``: its ``task_heads``, the heads built, the task protocol's
methods), on the shapes data through the task's own readers and collator:

- one training step: a finite loss, and a nonzero gradient reaching every head the declaration names (a head left out
  of the loss, or detached from it, fails) and no frozen parameter;
- prediction on an evaluation batch through the task's ``predict_batch`` and its metrics, with the task's progress-bar
  metrics among them;
- ``save_pretrained`` → ``from_pretrained``: the same predictions and metrics, to the bit.

For each task it does not declare: ``mmzoo train`` stops with a ConfigError on ``task`` or ``model.task`` before any
model is built. (That what a config tree says a model can do, :func:`zoo.tasks.config_problem`, equals what the
built model says is checked for every registered model and variant, official sizes on the meta device, in
tests/test_factory.py.)
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import zoo
from zoo.catalog import load_model_config
from zoo.factory import resolve_config
from zoo.spec import ConfigError
from zoo.tasks import config_problem, get_task, list_tasks

TINY = ["x2vlm-tiny", "x2vlm-tiny-video", "cclm-tiny", "davinci-tiny", "epalm-tiny", "mmgpt-tiny", "demo-tiny",
        "univl-tiny"]
# the shapes files of each task (train, evaluation); video models read the video files
FILES = {"vqa": ("vqa_train.json", "vqa_test.json"), "retrieval": ("retrieval_train.json", "retrieval_test.json"),
         "captioning": ("caption_train.json", "caption_test.json"), "ve": ("ve_train.json", "ve_test.json"),
         "nlvr": ("nlvr_train.json", "nlvr_test.json"), "pretrain": ("retrieval_train.json", "retrieval_test.json")}
VIDEO_FILES = {"vqa": ("video_qa_train.json", "video_qa_test.json"),
               "retrieval": ("video_retrieval_train.json", "video_retrieval_test.json"),
               "captioning": ("video_retrieval_train.json", "video_retrieval_test.json"),
               "pretrain": ("video_retrieval_train.json", "video_retrieval_test.json")}


def _variants(name: str) -> list[str | None]:
    return [None, *sorted(load_model_config(name).get("tasks") or {})]


def _declared() -> list[tuple[str, str | None, str]]:
    """Each tiny model × each task one of its variants declares, built once: the variant named after the task (or
    declaring it, ``xvnli`` for ``ve``), else the base model; and the classifier VQA variants (another head kind) and
    UniVL's FT-Align retrieval variant (another scoring: the cross encoder over every pair)."""
    out = []
    for name in TINY:
        variants = _variants(name)
        trees = {v: resolve_config(name, v)["model"] for v in variants}
        for task in list_tasks():
            able = [v for v in variants if config_problem(trees[v], get_task(task)) is None]
            if able:
                out.append((name, task if task in able else None if None in able else able[0], task))
        out += [(name, v, "vqa") for v in variants if v == "vqa_cls"]
        out += [(name, v, "retrieval") for v in variants if v == "retrieval_align"]
    return list(dict.fromkeys(out))


def _undeclared() -> list[tuple[str, str | None, str]]:
    out = []
    for name in TINY:
        for variant in _variants(name):
            tree = resolve_config(name, variant)["model"]
            out += [(name, variant, t) for t in list_tasks() if config_problem(tree, get_task(t)) is not None]
    return out


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from zoo.data.shapes import generate_shapes

    return generate_shapes(tmp_path_factory.mktemp("conformance") / "shapes", num_train_images=12,
                           num_val_images=4, num_test_images=4, image_size=64, num_videos=6, video_frames=3,
                           languages=())


def _setup(name, variant, task, shapes, tmp_path):
    """The model (random weights, the shapes tokenizer) and the data module of ``task`` on a few shapes records."""
    from zoo.train.data import TaskDataModule, resolve_data_tokenizer

    torch.manual_seed(0)
    model = zoo.create_model(name, task=variant)
    video = getattr(getattr(model, "vision", None), "is_video", False)
    train, test = (VIDEO_FILES if video else FILES)[task]
    data = {"root": str(shapes), "train": [train], "test": test, "batch_size": 4, "eval_batch_size": 4,
            "randaugment": False, "crop_scale": [1.0, 1.0], "max_tokens": 24, "video": video}
    vqa_mode = "generative" if getattr(model, "generative_vqa", True) else "classifier"
    if task == "vqa":  # the data's answer list; a classifier's classes: its first answers
        data["answer_list"] = "video_answer_list.json" if video else "answer_list.json"
        if vqa_mode == "classifier":
            data["top_k_answers"] = model.vqa.num_classes
    dm = TaskDataModule(task, data, None, vqa_mode=vqa_mode, image_size=zoo.models.base.input_resolution(model))
    if not getattr(model.text, "tokenizer", None):  # cclm-tiny names none: the data's own word-level tokenizer
        model.text.tokenizer = "data"
        resolve_data_tokenizer(model, data, tmp_path, task, datamodule=dm)
    dm.tokenizer = model.text.get_tokenizer()
    dm.configure_for_model(model)
    dm.task_spec.prepare_model(model, dm)
    return model, dm


def _items(dm, split, n=4) -> list:
    """Up to ``n`` items spread over the split (neighbours often share an image: contrastive losses need several)."""
    ds = dm.dataset(split)
    return [ds[i] for i in range(0, len(ds), max(1, len(ds) // n))][:n]


def _batch(dm, split, n=4):
    return dm.collator(split)(_items(dm, split, n))


def _module(model, dm):
    """What a task's predict_batch / compute_metrics read of the Lightning module, for one evaluation set."""
    trainer = SimpleNamespace(datamodule=dm, state=SimpleNamespace(stage="test"))
    return SimpleNamespace(model=model, evaluation={"num_beams": 1, "max_length": 6, "min_length": 1, "k_test": 4},
                           device=torch.device("cpu"), trainer=trainer)


def _predict(model, dm):
    """The task's predictions on one evaluation batch, and its metrics of them; for a model the task cannot evaluate
    (:meth:`zoo.tasks.Task.check_model` refuses evaluation data: DaVinci pre-training, no zero-shot retrieval), its
    eval-mode losses on a training batch instead."""
    spec = dm.task_spec
    try:
        spec.check_model(model, dm)
    except ConfigError as exc:
        assert exc.path == "data.test"
        model.eval()
        torch.manual_seed(1)
        with torch.no_grad():
            return None, getattr(model, spec.loss_method)(_batch(dm, "train"))
    module = _module(model.eval(), dm)
    with torch.no_grad():
        outputs = [spec.predict_batch(module, _batch(dm, "test"))]
        return outputs, spec.compute_metrics(module, outputs)


def _same(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("name, variant, task", _declared())
def test_each_declared_task_trains_predicts_and_round_trips(name, variant, task, shapes, tmp_path):
    model, dm = _setup(name, variant, task, shapes, tmp_path)
    spec = get_task(task)
    assert task in model.supported_tasks()

    model.train()
    losses = getattr(model, spec.loss_method)(_batch(dm, "train"))
    assert math.isfinite(float(losses["loss"].detach()))
    losses["loss"].backward()
    for head in model.task_heads[task]:
        part = getattr(model, head)
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert any(g is not None and bool(g.abs().sum() > 0) for g in grads), f"no gradient reaches {head}"
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert frozen == []
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())

    outputs, metrics = _predict(model, dm)
    if outputs is not None:
        assert set(spec.progress_metrics) <= set(metrics)
        assert all(math.isfinite(v) for v in metrics.values())
        ids = outputs[0][spec.id_key]  # the batch's samples, each named once by the task's id key
        assert len(set(ids.tolist() if torch.is_tensor(ids) else ids)) == len(_items(dm, "test"))

    model.save_pretrained(tmp_path / "export")
    again = zoo.from_pretrained(tmp_path / "export")
    again_outputs, again_metrics = _predict(again, dm)
    assert _same(again_outputs, outputs) and again_metrics == metrics


@pytest.mark.parametrize("name, variant, task", _undeclared())
def test_each_undeclared_task_is_a_config_error_before_anything_is_built(name, variant, task, tmp_path, monkeypatch):
    from zoo.train.run import train

    def built(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(zoo, "create_model", built)
    cfg = {"task": task, "model": {"name": name, "task": variant}, "data": {"root": "shapes"},
           "train": {"output_dir": str(tmp_path), "name": "run"}}
    with pytest.raises(ConfigError) as info:
        train(cfg)
    assert info.value.path in ("task", "model.task")
    assert str(get_task(task).name) in str(info.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("name, variant, task, key, message", [
    # the two holes of the old attribute probing: both passed the pre-run check and failed at the first step
    ("cclm-tiny", None, "captioning", "task", "does not declare task 'captioning'"),
    ("x2vlm-tiny", None, "vqa", "model.task", "has no vqa head (vqa not built)"),
    ("x2vlm-tiny", "vqa", "captioning", "model.task", "has no captioning head (caption not built)"),
])
def test_what_a_model_cannot_do_is_named_with_the_key_to_change(name, variant, task, key, message):
    got_key, why = config_problem(resolve_config(name, variant)["model"], get_task(task))
    assert got_key == key and message in why


def test_mmzoo_info_says_what_each_variant_trains_on():
    assert zoo.model_info("x2vlm-tiny")["supported_tasks"] == ["pretrain", "retrieval"]
    assert zoo.model_info("x2vlm-tiny", task="captioning")["supported_tasks"] == ["captioning"]
    assert zoo.model_info("cclm-tiny", task="xvnli")["supported_tasks"] == ["ve"]
    assert zoo.model_info("davinci-tiny", task="nlvr")["supported_tasks"] == ["captioning", "nlvr", "pretrain", "vqa"]
