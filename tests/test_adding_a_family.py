"""docs/adding-a-family.md, run as written: its code blocks become a plug-in package (registered through the
``mmzoo.plugins`` entry point, outside this repository's package) that adds a model family, ``dualtower``, with no
framework file changed. The family trains with ``mmzoo train`` and learns from the pixels (it beats the same job on
blank images), the run's recall is what its export computes, it does the one task it declares and no other, its
export reloads with equal outputs, and ``mmzoo convert`` turns a toy official checkpoint into an export holding the
same tensors."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PACKAGE_DIR, install_plugin, requires_checkout

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-family.md"
pytestmark = requires_checkout  # the page is read from the checkout
MODULE = "toy_dualtower"
MODEL_FILE = "dualtower_models/dualtower-tiny.yaml"
TASK_CONFIG = "retrieval-dualtower-shapes.yaml"
RUN = "retrieval-dualtower-shapes"  # the task config's train.name
#: the toy official layout as the page describes it: this family's key prefix -> the official one
OFFICIAL = {"vision.model.": "image_tower.", "text.model.": "text_tower.", "head.vision_proj.": "image_projection.",
            "head.text_proj.": "text_projection.", "head.log_temp": "log_temperature"}


def _page_files() -> dict[str, str]:
    """The page's fenced code blocks whose first line names a file (``# name``), by file name."""
    blocks = re.findall(r"```(?:python|yaml|toml)\n# (\S+)[^\n]*\n(.*?)```", DOC.read_text(encoding="utf-8"),
                        re.DOTALL)
    return {name: body for name, body in blocks}


def _env(site, **extra) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(PACKAGE_DIR.parent)]), HF_HUB_OFFLINE="1", **extra)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from zoo.data.shapes import generate_shapes

    return generate_shapes(tmp_path_factory.mktemp("dualtower") / "shapes", num_train_images=96, num_val_images=2,
                           num_test_images=12, image_size=64, num_videos=0, languages=())


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The page's module and model folder as an installed distribution with the page's entry point, and its task
    config beside them."""
    files = _page_files()
    assert set(files) == {f"{MODULE}.py", "pyproject.toml", MODEL_FILE, TASK_CONFIG}
    entry = re.search(r'\[project\.entry-points\."mmzoo\.plugins"\]\n(\w+) = "(\w+)"', files["pyproject.toml"])
    assert entry.groups() == (MODULE, MODULE)  # the page's entry point names its module
    site = install_plugin(tmp_path_factory.mktemp("site"), MODULE, files[f"{MODULE}.py"])
    for name in (MODEL_FILE, TASK_CONFIG):
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(files[name], encoding="utf-8")
    return site


@pytest.fixture(scope="module")
def family(site):
    """The page's module imported in this process too (``import toy_dualtower``). What it registered and the model
    folder it added are removed afterwards, so the other test files see the built-in registries and catalogue."""
    sys.path.insert(0, str(site))
    try:
        yield importlib.import_module(MODULE)
    finally:
        sys.path.remove(str(site))
        import zoo
        import zoo.catalog

        for registry, name in ((zoo.MODELS, "dualtower"), (zoo.HEADS, "dualtower_contrast")):
            with contextlib.suppress(KeyError):  # not registered when the import failed
                registry.unregister(name)
        with contextlib.suppress(ValueError):  # not added when the import failed
            zoo.catalog.remove_config_dir(site / "dualtower_models")
        sys.modules.pop(MODULE, None)


@pytest.fixture(scope="module", autouse=True)
def _started_runs(request, site, shapes, tmp_path_factory):
    """``mmzoo train`` of the page's task config, as written and on blank images (``data.blank_images``: every image
    a constant grey), started with the module in two processes of one thread each, so that the tests needing no run
    go on meanwhile (not started when no selected test needs them). The plug-in is found through its entry point,
    its model file through the folder the module adds."""
    wanted = any("runs" in item.fixturenames for item in request.session.items if item.module is request.module)
    out = tmp_path_factory.mktemp("runs")
    common = ["train", TASK_CONFIG, f"data.root={shapes}", "trainer.enable_progress_bar=false",
              f"train.output_dir={out}"]
    jobs = {RUN: common, "blank": [*common, "data.blank_images=true", "train.name=blank", "train.export=false"]}
    procs = {}
    try:
        for name, args in jobs.items() if wanted else ():
            log = open(out / f"{name}.log", "w+", encoding="utf-8")  # noqa: SIM115 - closed at teardown
            procs[name] = (subprocess.Popen([sys.executable, "-m", "zoo.cli", *args], cwd=site, stdout=log,
                                            stderr=subprocess.STDOUT, env=_env(site, OMP_NUM_THREADS="1")), log)
        yield out, procs
    finally:
        for proc, log in procs.values():
            if proc.poll() is None:  # a test failed before waiting for it
                proc.kill()
                proc.wait()
            log.close()


@pytest.fixture(scope="module")
def runs(_started_runs):
    """The results.json of both runs, once they have finished."""
    out, procs = _started_runs
    for name, (proc, log) in procs.items():
        code = proc.wait(timeout=600)
        log.seek(0)
        assert code == 0, f"{name}: {log.read()[-3000:]}"
    return {name: json.loads((out / name / "results.json").read_text()) for name in procs}


def test_it_does_the_task_it_declares_and_no_other(family, site, shapes, tmp_path, capsys):
    """``task_heads`` is the whole story: built, the model does retrieval and nothing else; built without its head it
    does nothing; training it on another task, or headless, is one config line before anything is built."""
    import zoo
    from zoo.cli import main

    assert family.DualTower.task_heads == {"retrieval": ("head",)}
    assert zoo.create_model("dualtower-tiny", device="meta").supported_tasks() == ["retrieval"]
    assert zoo.create_model("dualtower-tiny", device="meta", head=None).supported_tasks() == []

    common = [f"data.root={shapes}", f"train.output_dir={tmp_path}"]
    assert main(["train", str(site / TASK_CONFIG), "task=vqa", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mmzoo train: error: ")
    assert err.endswith("task: dualtower-tiny (dualtower) has no vqa_loss(), vqa_predict(): it cannot be trained on "
                        "task 'vqa'")
    assert main(["train", str(site / TASK_CONFIG), "model.overrides.head=null", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.task: " in err and "has no retrieval head (head not built)" in err
    assert list(tmp_path.iterdir()) == []  # no run folder


def test_list_info_and_the_converter_list_show_the_family(family, site, capsys):
    from zoo.cli import main

    listed = subprocess.run([sys.executable, "-m", "zoo.cli", "list"], cwd=site, capture_output=True, text=True,
                            timeout=300, check=False, env=_env(site))
    assert listed.returncode == 0, listed.stderr[-3000:]
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith("dualtower-tiny "))
    assert row[:4] == ["dualtower-tiny", "dualtower", "-", "64"]

    assert main(["info", "dualtower-tiny"]) == 0
    rows = [re.split(r"\s{2,}", line.strip()) for line in capsys.readouterr().out.splitlines()]
    info = {r[0]: r[1:] for r in rows if len(r) > 1}
    assert info["trains on"] == ["retrieval"] and info["model type"] == ["dualtower"]
    assert info["head"][0] == "dualtower_contrast" and info["vision"][0] == "timm" and info["text"][0] == "hf"

    assert main(["convert", "--list"]) == 0
    families = dict(line.split(None, 1) for line in capsys.readouterr().out.strip().splitlines())
    assert families.pop("dualtower") == ("Toy dual-tower checkpoints (image_tower, text_tower, image_projection, "
                                         "text_projection, log_temperature).")
    assert {"cclm", "davinci", "x2vlm"} <= set(families)


def test_the_export_reloads_with_equal_outputs(family, tmp_path):
    import torch

    import zoo

    torch.manual_seed(0)
    model = zoo.create_model("dualtower-tiny").eval()
    model.save_pretrained(tmp_path / "export")
    loaded = zoo.from_pretrained(tmp_path / "export").eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 64, 64, generator=g)
    ids, mask = torch.randint(1000, 2000, (4, 7), generator=g), torch.ones(4, 7, dtype=torch.long)
    mask[1, 4:] = 0
    batch = {"images": images[[0, 1, 2, 0]], "input_ids": ids, "attention_mask": mask,
             "image_ids": torch.tensor([0, 1, 2, 0])}
    with torch.no_grad():
        for a, b in zip(model.retrieval_scores(images, ids, mask), loaded.retrieval_scores(images, ids, mask)):
            assert torch.equal(a, b)
        assert torch.equal(model.retrieval_losses(batch)["loss"], loaded.retrieval_losses(batch)["loss"])
    assert loaded.text.get_tokenizer()("a red circle")["input_ids"] == model.text.get_tokenizer()("a red circle")[
        "input_ids"]


def test_mmzoo_convert_turns_an_official_checkpoint_into_an_export(family, tmp_path, capsys):
    """A checkpoint in the toy official layout (written here from the page's description, with a BERT pooler the
    family drops) converts into an export holding exactly the source tensors; a key no rule maps is one error line."""
    import torch

    import zoo
    from zoo.cli import main

    torch.manual_seed(1)
    source = zoo.create_model("dualtower-tiny").state_dict()
    official = {}
    for key, value in source.items():
        prefix = next(p for p in OFFICIAL if key.startswith(p))
        official[OFFICIAL[prefix] + key[len(prefix):]] = value.clone()
    official.update({"text_tower.pooler.dense.weight": torch.randn(64, 64), "text_tower.pooler.dense.bias": torch.randn(64)})
    ckpt, out = tmp_path / "official.pth", tmp_path / "converted"
    torch.save({"state_dict": official}, ckpt)

    assert main(["convert", "dualtower", str(ckpt), str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"converted {ckpt} -> {out}" in printed
    report = dict(line.split(None, 1) for line in printed.splitlines()[3:])
    assert report == {"model": "dualtower-tiny", "tensors": str(len(source)),
                      "dropped": "text_tower.pooler.dense.weight, text_tower.pooler.dense.bias"}
    converted = zoo.from_pretrained(out).state_dict()
    assert converted.keys() == source.keys()
    assert all(torch.equal(converted[k], v) for k, v in source.items())

    torch.save({"state_dict": {**official, "mystery.weight": torch.zeros(1)}}, tmp_path / "odd.pth")
    assert main(["convert", "dualtower", str(tmp_path / "odd.pth"), str(tmp_path / "odd")]) == 2
    assert capsys.readouterr().err.strip() == ("mmzoo convert: error: 1 official dualtower key(s) have no mapping and "
                                               "are not in the dropped list: mystery.weight")
    assert not (tmp_path / "odd").exists()


def test_the_family_learns_from_the_images(runs):
    """Two epochs of the page's job: its test recall far above the same job's on blank images (where every image
    looks the same, so only the captions' order decides)."""
    learned, blank = runs[RUN]["test"], runs["blank"]["test"]
    assert runs[RUN]["model"] == "dualtower-tiny" and runs[RUN]["task"] == "retrieval"
    assert learned["r_mean"] > blank["r_mean"] + 20, (learned, blank)
    assert learned["img_r1"] > blank["img_r1"] + 20, (learned, blank)


def test_the_runs_recall_is_what_its_export_computes(runs, family, shapes):
    """The recall ``mmzoo train`` reported on the test split, recomputed here from the export: its own
    preprocessing, tokenizer and ``retrieval_scores``, ranks counted by hand."""
    import torch
    from PIL import Image
    from torchvision import transforms as T

    import zoo
    from zoo.data.collate import tokenize_texts
    from zoo.data.datasets import pre_caption

    export = Path(runs[RUN]["export"])
    model = zoo.from_pretrained(export).eval()
    assert type(model) is family.DualTower and model.supported_tasks() == ["retrieval"]
    prep = json.loads((export / "preprocessor.json").read_text())
    assert prep.get("resize_mode", "squash") == "squash"
    size = prep["image_size"]
    transform = T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode(prep["interpolation"])),
                           T.ToTensor(), T.Normalize(prep["mean"], prep["std"])])
    records = json.loads((Path(shapes) / "retrieval_test.json").read_text())
    images = torch.stack([transform(Image.open(Path(shapes) / r["image"]).convert("RGB")) for r in records])
    texts = [pre_caption(c, 30) for r in records for c in r["caption"]]
    owner = torch.tensor([i for i, r in enumerate(records) for _ in r["caption"]])
    ids, mask = tokenize_texts(model.text.get_tokenizer(), texts, 30)
    i2t, t2i = model.retrieval_scores(images, ids, mask)

    text_ranks = torch.stack([(i2t[owner[t]] > i2t[owner[t], t]).sum() for t in range(len(texts))])
    best_text = torch.stack([text_ranks[owner == i].min() for i in range(len(records))])
    image_ranks = torch.stack([(t2i[t] > t2i[t, owner[t]]).sum() for t in range(len(texts))])
    mine = {}
    for side, ranks in (("txt", best_text), ("img", image_ranks)):
        for k in (1, 5, 10):
            mine[f"{side}_r{k}"] = 100.0 * int((ranks < k).sum()) / len(ranks)
        mine[f"{side}_r_mean"] = sum(mine[f"{side}_r{k}"] for k in (1, 5, 10)) / 3
        mine[f"{side}_mdr"] = float((ranks.double() + 1).median()) if len(ranks) % 2 else \
            float((ranks.double() + 1).sort().values[len(ranks) // 2 - 1:len(ranks) // 2 + 1].mean())
        mine[f"{side}_mnr"] = float((ranks.double() + 1).mean())
    mine["r_mean"] = (mine["txt_r_mean"] + mine["img_r_mean"]) / 2
    assert runs[RUN]["test"] == pytest.approx(mine, abs=1e-9)
