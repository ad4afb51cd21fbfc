"""What a model family declares on its class instead of generic code knowing it: the optimiser part of each parameter
(``ZooModel.param_part``) and the official-checkpoint converter (``ZooModel.official_converter``, found by
``mmzoo convert`` through the model registry, plug-ins included)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import install_plugin
from torch import nn

import zoo
from zoo.catalog import load_model_config
from zoo.cli import main
from zoo.models.base import PARAM_PARTS, ZooModel
from zoo.train.optim import param_groups, part_of

CONFIGS = Path(zoo.__file__).parent / "configs" / "models"
TINY = sorted(p.stem for p in CONFIGS.glob("*tiny*.yaml"))


# -- parameter parts ------------------------------------------------------------------------------------------------
def reference_part(model: nn.Module, name: str) -> str:
    """The grouping as the optimiser did it by name before families declared it (restated here on purpose, so that
    the comparison does not go through the code under test): the top-level module names the part, except that in a
    text part with ``fusion_start`` (the split text/fusion stack) layers from ``fusion_start`` on are fusion."""
    top = re.match(r"(vision|text|fusion)\.", name)
    if top is None:
        return "other"
    if top.group(1) == "text":
        start = getattr(getattr(model, "text", None), "fusion_start", None)
        layer = re.match(r"text\.encoder\.layer\.(\d+)\.", name)
        if start is not None and layer is not None:
            return "fusion" if int(layer.group(1)) >= start else "text"
    return top.group(1)


def _variants(name: str) -> list[str | None]:
    tasks = load_model_config(name).get("tasks") or {}
    return [None] + sorted(t for t in tasks if not t.startswith("_"))


TINY_CASES = [(name, task) for name in TINY for task in _variants(name)]
FULL_SIZE = sorted(p.stem for p in CONFIGS.glob("*.yaml") if "tiny" not in p.stem)


def _assert_same_grouping(model: nn.Module) -> dict[str, str]:
    names = [n for n, _ in model.named_parameters()]
    before = {n: reference_part(model, n) for n in names}
    after = {n: model.param_part(n) for n in names}
    assert after == before, {n: (before[n], after[n]) for n in names if before[n] != after[n]}
    assert {n: part_of(model, n) for n in names} == before
    return before


def test_every_tiny_model_and_task_variant_is_covered():
    assert {"x2vlm-tiny", "x2vlm-tiny-video", "cclm-tiny", "davinci-tiny", "epalm-tiny", "mmgpt-tiny"} <= set(TINY)
    assert ("x2vlm-tiny", "vqa") in TINY_CASES and ("davinci-tiny", "text_to_image") in TINY_CASES


@pytest.mark.parametrize("name, task", TINY_CASES, ids=[f"{n}:{t or 'base'}" for n, t in TINY_CASES])
def test_param_parts_equal_the_name_rule_of_before(name, task):
    """Every parameter of every tiny model, in every task variant, falls in the part it fell in before (so the
    official per-part learning rates are unchanged), and param_groups puts it in a group of that part."""
    model = zoo.create_model(name, task=task, device="meta")
    parts = _assert_same_grouping(model)
    if hasattr(getattr(model, "text", None), "fusion_start"):  # the split stack: its fusion layers are fusion
        assert "fusion" in parts.values() and "text" in parts.values()
    groups = param_groups(model, lr=1e-4, vision_lr=1e-5, text_lr=2e-5, fusion_lr=3e-5)
    lrs = {"vision": 1e-5, "text": 2e-5, "fusion": 3e-5, "other": 1e-4}
    for group in groups:
        part = group["name"].split("_", 1)[0]
        assert group["lr"] == lrs[part]
        assert all(parts[n] == part for n in group["param_names"]), group["name"]


@pytest.mark.parametrize("name", FULL_SIZE)
def test_param_parts_of_the_full_size_models_equal_before(name):
    """The official sizes too (on meta: names only), among them CCLM-X2VLM with its separate ``fusion`` encoder."""
    model = zoo.create_model(name, device="meta")
    parts = _assert_same_grouping(model)
    if name.startswith(("x2vlm", "cclm")):
        assert "fusion" in parts.values()


def test_the_split_stack_is_declared_by_the_family_not_inferred():
    """A generic model whose text part happens to carry ``fusion_start`` keeps the generic rule; X²-VLM (and CCLM,
    its subclass) declare the split."""
    from zoo.models.cclm import CCLM
    from zoo.models.x2vlm import X2VLM

    assert CCLM.param_part is X2VLM.param_part is not ZooModel.param_part

    class Text(nn.Module):
        fusion_start = 1

        def __init__(self):
            super().__init__()
            self.encoder = nn.Module()
            self.encoder.layer = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])

    class Generic(ZooModel):
        def __init__(self):
            super().__init__()
            self.text = Text()

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.text, self.fusion, self.head = Text(), nn.Linear(2, 2), nn.Linear(2, 2)

    assert {part_of(Generic(), n) for n, _ in Generic().named_parameters()} == {"text"}
    plain = Plain()
    assert {n: part_of(plain, n) for n, _ in plain.named_parameters()} == {
        "text.encoder.layer.0.weight": "text", "text.encoder.layer.0.bias": "text",
        "text.encoder.layer.1.weight": "text", "text.encoder.layer.1.bias": "text",
        "fusion.weight": "fusion", "fusion.bias": "fusion", "head.weight": "other", "head.bias": "other"}


def test_a_family_override_sets_the_learning_rate_and_a_wrong_part_is_named():
    class Adapters(ZooModel):
        """A family whose ``adapter`` part trains with the fusion learning rate."""

        def __init__(self):
            super().__init__()
            self.vision, self.adapter = nn.Linear(2, 2), nn.Linear(2, 2)

        def param_part(self, name: str) -> str:
            return "fusion" if name.startswith("adapter.") else super().param_part(name)

    groups = {g["name"]: g for g in param_groups(Adapters(), lr=1e-4, vision_lr=1e-5, fusion_lr=3e-5)}
    assert groups["fusion"]["param_names"] == ["adapter.weight"] and groups["fusion"]["lr"] == 3e-5
    assert groups["vision"]["lr"] == 1e-5

    class Wrong(Adapters):
        def param_part(self, name: str) -> str:
            return "adapters"

    with pytest.raises(ValueError, match=r"Wrong.param_part\('vision.weight'\) returned 'adapters'; expected one of "
                                         + ", ".join(PARAM_PARTS)):
        param_groups(Wrong(), lr=1e-4)


# -- converters -----------------------------------------------------------------------------------------------------
def test_builtin_converters_are_the_families_own():
    from zoo.models import cclm, davinci, epalm, mmgpt, univl, x2vlm
    from zoo.models.epalm import convert as epalm_convert
    from zoo.models.mmgpt import convert as mmgpt_convert
    from zoo.registry import MODELS

    with_converter = {n for n in MODELS.names() if getattr(MODELS.get(n), "official_converter", None) is not None}
    assert with_converter == {"x2vlm", "cclm", "davinci", "univl", "epalm", "mmgpt"}
    for module in (epalm, mmgpt):  # adapter-only checkpoints: the converter lives in the family's convert module
        family = MODELS.get(module.__name__.rsplit(".", 1)[1])
        assert family.official_converter.__doc__.strip().splitlines()[0]
    assert callable(epalm_convert.convert_official_checkpoint) and callable(mmgpt_convert.convert_official_checkpoint)
    for module in (x2vlm, cclm, davinci, univl):
        family = MODELS.get(module.__name__.rsplit(".", 1)[1])
        assert family.official_converter.__doc__.strip().splitlines()[0]
        assert callable(module.convert_official_checkpoint)


def test_convert_list_names_each_family_with_a_one_line_description(capsys):
    assert main(["convert", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    families = {line.split()[0]: line.split(None, 1)[1] for line in lines}
    assert set(families) == {"cclm", "davinci", "epalm", "mmgpt", "univl", "x2vlm"}
    assert families["x2vlm"].startswith("X²-VLM") and families["cclm"].startswith("CCLM")
    assert families["epalm"].startswith("eP-ALM") and families["mmgpt"].startswith("MultiModal-GPT")
    assert families["univl"].startswith("UniVL")
    assert families["davinci"].startswith("DaVinci")


def test_the_model_registry_still_lists_without_importing_the_families():
    code = ("import sys, zoo; names = zoo.MODELS.names(); "
            "assert 'x2vlm' in names and 'cclm' in names, names; "
            "loaded = [m for m in ('zoo.models.x2vlm', 'zoo.models.cclm', 'zoo.models.davinci', 'zoo.cli') "
            "if m in sys.modules]; assert not loaded, loaded")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 0, res.stderr[-2000:]


def _convert_fails(capsys, argv) -> str:
    capsys.readouterr()
    assert main(["convert", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmzoo convert: error: "), err
    return err[0]


def test_convert_errors_are_one_line_naming_the_families_with_a_converter(tmp_path, capsys):
    out = str(tmp_path / "out")
    line = _convert_fails(capsys, ["fusion_encoder", "ckpt.pth", out])
    assert "'fusion_encoder' has no official-checkpoint converter" in line
    assert line.endswith("cclm, davinci, epalm, mmgpt, univl, x2vlm")
    line = _convert_fails(capsys, ["x2vlm-base", "ckpt.pth", out])
    assert "'x2vlm-base' is not a registered model family (did you mean 'x2vlm'?)" in line
    assert line.endswith("families with a converter: cclm, davinci, epalm, mmgpt, univl, x2vlm")
    assert "FAMILY CHECKPOINT OUT_DIR" in _convert_fails(capsys, ["x2vlm", "ckpt.pth"])
    assert "--list takes no other argument" in _convert_fails(capsys, ["--list", "x2vlm"])
    line = _convert_fails(capsys, ["davinci", str(tmp_path / "missing.pth"), out])
    assert "missing.pth" in line
    assert not Path(out).exists()


PLUGIN = textwrap.dedent(
    '''
    """A model family from outside the package, with an official-checkpoint converter."""
    import torch
    from torch import nn

    import zoo
    from zoo.hub import load_state_dict, load_weights
    from zoo.models.base import ZooModel

    RENAMES = {"encoder": "vision", "classifier": "head"}


    @zoo.register_model("toyfamily")
    class ToyFamily(ZooModel):
        def __init__(self, width: int = 4, num_classes: int = 2):
            super().__init__()
            self.vision, self.head = nn.Linear(width, width), nn.Linear(width, num_classes)

        @staticmethod
        def official_converter(checkpoint, out_dir, model=None, task=None):
            """Toy checkpoints: encoder.* becomes vision.*, classifier.* becomes head.*.

            The widths are read from the tensors."""
            official = load_state_dict(checkpoint)
            renamed = {}
            for key, value in official.items():
                top, rest = key.split(".", 1)
                renamed[f"{RENAMES[top]}.{rest}"] = value
            width, classes = renamed["vision.weight"].shape[0], renamed["head.weight"].shape[0]
            config = {"name": model or "toy", "model": {"type": "toyfamily", "width": width, "num_classes": classes}}
            net = zoo.create_model(config, task=task)
            load_weights(net, renamed, what=f"{checkpoint} (converted)")
            net.save_pretrained(out_dir)
            return {"model": config["name"], "tensors": len(renamed), "renamed": sorted(official)}
    '''
)

CHECK = textwrap.dedent(
    '''
    import sys, torch, zoo
    official = torch.load(sys.argv[1], weights_only=True)
    model = zoo.from_pretrained(sys.argv[2])
    assert type(model).__name__ == "ToyFamily", type(model)
    state = model.state_dict()
    assert set(state) == {"vision.weight", "vision.bias", "head.weight", "head.bias"}, sorted(state)
    for key, value in official.items():
        new = key.replace("encoder.", "vision.").replace("classifier.", "head.")
        assert torch.equal(state[new], value), key
    print("ok")
    '''
)


def test_a_plugin_family_with_a_converter_is_listed_and_converts(tmp_path):
    """A package installed beside mmzoo (entry point ``mmzoo.plugins``) registers a family whose class declares
    ``official_converter``: ``mmzoo convert --list`` shows it with the built-in families, ``mmzoo convert toyfamily``
    renames the official keys and writes an export that loads with the same tensors."""
    site = install_plugin(tmp_path / "site", "toy_zoo_family", PLUGIN)
    generator = torch.Generator().manual_seed(0)
    official = {"encoder.weight": torch.randn(3, 3, generator=generator), "encoder.bias": torch.randn(3),
                "classifier.weight": torch.randn(5, 3, generator=generator), "classifier.bias": torch.randn(5)}
    ckpt = tmp_path / "official.pth"
    torch.save(official, ckpt)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1")

    def mmzoo(*argv, code=None):
        command = [sys.executable, "-c", code, *argv] if code else [sys.executable, "-m", "zoo.cli", *argv]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                              check=False)

    listed = mmzoo("convert", "--list")
    assert listed.returncode == 0, listed.stderr[-3000:]
    lines = dict(line.split(None, 1) for line in listed.stdout.strip().splitlines())
    assert lines.pop("toyfamily") == "Toy checkpoints: encoder.* becomes vision.*, classifier.* becomes head.*."
    assert set(lines) == {"cclm", "davinci", "epalm", "mmgpt", "univl", "x2vlm"}

    converted = mmzoo("convert", "toyfamily", str(ckpt), str(tmp_path / "export"))
    assert converted.returncode == 0, converted.stderr[-3000:]
    assert f"converted {ckpt} -> {tmp_path / 'export'}" in converted.stdout
    assert "classifier.bias, classifier.weight, encoder.bias, encoder.weight" in converted.stdout
    checked = mmzoo(str(ckpt), str(tmp_path / "export"), code=CHECK)
    assert checked.returncode == 0 and "ok" in checked.stdout, checked.stderr[-3000:]

    refused = mmzoo("convert", "toyfamliy", str(ckpt), str(tmp_path / "other"))
    assert refused.returncode == 2
    assert refused.stderr.strip() == ("mmzoo convert: error: family 'toyfamliy' is not a registered model family "
                                      "(did you mean 'toyfamily'?); families with a converter: cclm, davinci, "
                                      "epalm, mmgpt, toyfamily, univl, x2vlm")
