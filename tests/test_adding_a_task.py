"""docs/adding-a-task.md, run as written: its code blocks become a plug-in package (registered through the
``mmzoo.plugins`` entry point, outside this repository's package), its task config trains the toy ``entails`` task
with ``mmzoo train``, and the run's accuracy is what the exported model's own predictions give."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PACKAGE_DIR, install_plugin, requires_checkout

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-task.md"
pytestmark = requires_checkout  # the page is read from the checkout


def _page_files() -> dict[str, str]:
    """The page's fenced code blocks whose first line names a file (``# name``), by file name."""
    blocks = re.findall(r"```(?:python|yaml|toml)\n# (\S+)[^\n]*\n(.*?)```", DOC.read_text(encoding="utf-8"),
                        re.DOTALL)
    return {name: body for name, body in blocks}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from zoo.data.shapes import generate_shapes

    return generate_shapes(tmp_path_factory.mktemp("entails") / "shapes", num_train_images=12, num_val_images=2,
                           num_test_images=4, image_size=64, num_videos=0, languages=())


@pytest.fixture(scope="module", autouse=True)
def _forget_the_plugin():
    """The tests import the page's module in this process too; what it registered is removed afterwards, so the
    other test files see the built-in registries."""
    yield
    import zoo
    import zoo.tasks

    for registry, name in ((zoo.TASKS, "entails"), (zoo.MODELS, "x2vlm_entails")):
        with contextlib.suppress(KeyError):  # not imported here when the tests before the import failed
            registry.unregister(name)
    zoo.tasks._instances.pop("entails", None)
    sys.modules.pop("toy_entails", None)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The page's module, model file and task config, and an installed distribution's entry point for the module."""
    files = _page_files()
    assert {"toy_entails.py", "pyproject.toml", "x2vlm-entails.yaml", "entails-shapes.yaml"} <= set(files)
    entry = re.search(r'\[project\.entry-points\."mmzoo\.plugins"\]\n(\w+) = "(\w+)"', files["pyproject.toml"])
    assert entry.groups() == ("toy_entails", "toy_entails")  # the page's entry point names its module
    site = install_plugin(tmp_path_factory.mktemp("site"), "toy_entails", files["toy_entails.py"])
    for name in ("x2vlm-entails.yaml", "entails-shapes.yaml"):
        (site / name).write_text(files[name], encoding="utf-8")
    return site


def _mmzoo(site, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(PACKAGE_DIR.parent)]), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "zoo.cli", *args], cwd=site, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def test_the_page_trains_its_toy_task(site, shapes, tmp_path):
    res = _mmzoo(site, "train", "entails-shapes.yaml", f"data.root={shapes}", "data.batch_size=8",
                 "trainer.enable_progress_bar=false", f"train.output_dir={tmp_path}")
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((tmp_path / "entails-shapes" / "results.json").read_text())
    acc = results["test"]["acc"]

    # the same accuracy from the export's own predictions, computed here
    sys.path.insert(0, str(site))
    try:
        import torch
        import toy_entails  # noqa: F401 - in Python, importing the module registers the task and the model

        import zoo
        from zoo.data.collate import tokenize_texts
        from zoo.data.datasets import pre_caption
        from zoo.data.transforms import build_image_transform
        from zoo.tasks import list_tasks

        assert "entails" in list_tasks()
        model = zoo.from_pretrained(tmp_path / "entails-shapes" / "export").eval()
        assert model.supported_tasks() == ["entails", "pretrain", "retrieval"]
        from PIL import Image

        records = json.loads((Path(shapes) / "ve_test.json").read_text())
        transform = build_image_transform(64, train=False)
        tok = model.text.get_tokenizer()
        right = 0
        with torch.no_grad():
            for rec in records:
                image = transform(Image.open(Path(shapes) / rec["image"]).convert("RGB")).unsqueeze(0)
                ids, mask = tokenize_texts(tok, [pre_caption(rec["sentence"], 30)], 32)
                said = int(model.entails_logits(image, ids, mask).argmax(-1))
                right += said == int(rec["label"] == "entailment")
        assert acc == pytest.approx(100.0 * right / len(records), abs=1e-9)
    finally:
        sys.path.remove(str(site))


def test_a_model_without_the_tasks_head_is_a_config_error(site, shapes, tmp_path):
    """The plug-in task's protocol and the model's task_heads are checked before anything is built."""
    from zoo.spec import ConfigError
    from zoo.train.run import train

    sys.path.insert(0, str(site))
    try:
        import toy_entails  # noqa: F401

        common = [f"data.root={shapes}", f"train.output_dir={tmp_path}"]
        with pytest.raises(ConfigError) as info:
            train(site / "entails-shapes.yaml", [*common, "model.overrides.itm=null"])
        assert info.value.path == "model.task" and "has no entails head (itm not built)" in str(info.value)
        with pytest.raises(ConfigError) as info:
            train(site / "entails-shapes.yaml", [*common, "model.name=x2vlm-tiny"])
        assert info.value.path == "task"
        assert "has no entails_loss(), entails_logits(): it cannot be trained on task 'entails'" in str(info.value)
        assert not (tmp_path / "entails-shapes").exists()
    finally:
        sys.path.remove(str(site))
