"""Bad task-config values: each case is an override (or a YAML text) that used to load, train on nonsense or end in a
traceback, and must now be a ConfigError naming the dotted key and what was expected.

Most cases need only :func:`zoo.train.run.load_task_config` (nothing is built); the model-dependent ones build the
tiny model of zoo/configs/tasks/vqa-shapes.yaml (x2vlm-tiny, VQA variant).
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import CONFIGS_DIR, task_config

import zoo
from zoo.spec import ConfigError, load_yaml, parse_override
from zoo.train.config_checks import CHECKS, check_against_model, lightning_precisions, run_name_problem
from zoo.train.run import TASK_CONFIG_KEYS, load_task_config, train

VQA = task_config("vqa-shapes")

# (overrides, the dotted key of the error, a fragment of its message)
LOAD_CASES = [
    # optim
    (["optim.lr=-1"], "optim.lr", "expected a number > 0"),
    (["optim.lr=0"], "optim.lr", "expected a number > 0"),
    (["optim.lr=.nan"], "optim.lr", "got float nan"),
    (["optim.lr=fast"], "optim.lr", "got str 'fast'"),
    (["optim.vision_lr=-1e-4"], "optim.vision_lr", "expected a number > 0 or null"),
    (["optim.text_lr=0"], "optim.text_lr", "expected a number > 0"),
    (["optim.fusion_lr=[1]"], "optim.fusion_lr", "got list [1]"),
    (["optim.weight_decay=-0.5"], "optim.weight_decay", "expected a number >= 0, got float -0.5"),
    (["optim.weight_decay=null"], "optim.weight_decay", "got null"),
    (["optim.warmup=5.5"], "optim.warmup", "a whole number of warm-up steps >= 1"),
    (["optim.warmup=-0.1"], "optim.warmup", "a fraction of the optimiser steps in [0, 1)"),
    (["optim.warmup=true"], "optim.warmup", "got bool True"),
    (["optim.betas=[0.9]"], "optim.betas", "a list of two numbers in [0, 1)"),
    (["optim.betas=[0.9, 1.0]"], "optim.betas", "got list [0.9, 1.0]"),
    (["optim.betas=0.9"], "optim.betas", "a list of two numbers"),
    (["optim.eps=0"], "optim.eps", "expected a number > 0"),
    (["optim.new_param_lr_mult=0"], "optim.new_param_lr_mult", "expected a number > 0"),
    (["optim.new_params=vqa.*"], "optim.new_params", "a list of strings such as ['vqa.*']"),
    (["optim.new_params=[1]"], "optim.new_params", "a list of strings"),
    (["optim.fused=maybe"], "optim.fused", "expected true or false or null"),
    # trainer
    (["trainer.max_epochs=-5"], "trainer.max_epochs", "expected an integer >= 1 or -1 or null, got int -5"),
    (["trainer.max_epochs=0"], "trainer.max_epochs", "expected an integer >= 1 or -1"),
    (["trainer.max_epochs=2.5"], "trainer.max_epochs", "got float 2.5"),
    (["trainer.max_epochs=true"], "trainer.max_epochs", "got bool True"),
    (["trainer.max_epochs=-1"], "trainer.max_epochs", "needs trainer.max_steps >= 1"),
    (["trainer.max_steps=-2"], "trainer.max_steps", "expected an integer >= -1"),
    (["trainer.precision=13"], "trainer.precision", "one of Lightning's precisions"),
    (["trainer.precision=bf16-mix"], "trainer.precision", "did you mean 'bf16-mixed'?"),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches", "expected an integer >= 1, got int 0"),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val", "expected a number >= 0 or null, got int -1"),
    (["trainer.strategy=dpp"], "trainer.strategy", "did you mean 'ddp'?"),
    (["trainer.accelerator=gpus"], "trainer.accelerator", "did you mean 'gpu'?"),
    (["trainer.devices=0"], "trainer.devices", "a number of devices >= 1, -1 (all of them), 'auto'"),
    (["trainer.devices=[]"], "trainer.devices", "got list []"),
    (["trainer.num_nodes=0"], "trainer.num_nodes", "expected an integer >= 1"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps", "expected an integer >= 1 or null"),
    (["trainer.val_check_interval=1.5"], "trainer.val_check_interval", "a number in (0, 1]"),
    (["trainer.val_check_interval=0"], "trainer.val_check_interval", "an integer >= 1 (batches)"),
    (["trainer.val_check_interval=10 minutes"], "trainer.val_check_interval", "a time 'DD:HH:MM:SS'"),
    (["trainer.check_val_every_n_epoch=null", "trainer.val_check_interval=0.5"], "trainer.val_check_interval",
     "an integer number of batches or a time"),
    (["trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch", "expected an integer >= 1 or null"),
    (["trainer.limit_train_batches=-3"], "trainer.limit_train_batches",
     "expected an integer >= 0 (batches) or a number in [0, 1] (a fraction of the batches) or null, got int -3"),
    (["trainer.limit_val_batches=1.5"], "trainer.limit_val_batches", "got float 1.5"),
    (["trainer.limit_test_batches=all"], "trainer.limit_test_batches", "got str 'all'"),
    (["trainer.num_sanity_val_steps=-2"], "trainer.num_sanity_val_steps", "expected an integer >= -1"),
    (["trainer.enable_progress_bar=yes please"], "trainer.enable_progress_bar", "expected true or false or null"),
    (["trainer.deterministic=1"], "trainer.deterministic", "true or false or 'warn'"),
    (["trainer.max_epoch=3"], "trainer.max_epoch", "did you mean 'max_epochs'?"),
    # evaluation
    (["evaluation.k_test=-1"], "evaluation.k_test", "expected an integer >= 1 or null, got int -1"),
    (["evaluation.k_test=0"], "evaluation.k_test", "expected an integer >= 1"),
    (["evaluation.num_beams=0"], "evaluation.num_beams", "expected an integer >= 1"),
    (["evaluation.max_length=0"], "evaluation.max_length", "expected an integer >= 1"),
    (["evaluation.min_length=-1"], "evaluation.min_length", "expected an integer >= 0"),
    (["evaluation.max_length=5", "evaluation.min_length=8"], "evaluation.min_length",
     "expected at most evaluation.max_length=5, got 8"),
    # train
    (["train.seed=abc"], "train.seed", "expected an integer in [0, 4294967295], got str 'abc'"),
    (["train.seed=-1"], "train.seed", "expected an integer in [0, 4294967295]"),
    (["train.seed=1.5"], "train.seed", "got float 1.5"),
    (["train.output_dir=''"], "train.output_dir", "expected a non-empty string"),
    (["train.output_dir=[runs]"], "train.output_dir", "expected a non-empty string"),
    (["train.name=../../.."], "train.name", "'..' leads out of the output folder"),
    (["train.name=sweep/../../x"], "train.name", "'..' leads out of the output folder"),
    (["train.name=/tmp/elsewhere"], "train.name", "it is an absolute path"),
    (["train.name=C:\\runs"], "train.name", "it is an absolute path"),
    (["train.name=."], "train.name", "it names the output folder itself"),
    (["train.name=''"], "train.name", "expected a non-empty string"),
    (["train.freeze=vision"], "train.freeze", "a list of strings such as ['vision.*']"),
    (["train.grad_checkpointing=sometimes"], "train.grad_checkpointing", "expected true or false"),
    (["train.export=1"], "train.export", "expected true or false, got int 1"),
    (["train.save_every_n_steps=0"], "train.save_every_n_steps", "expected an integer >= 1 or null"),
    # model
    (["model.task=retrieval"], "model.task", "the config's task is 'vqa' but model.task is 'retrieval'"),
    (["model.task=retreival"], "model.task", "has no task variant 'retreival'; did you mean 'retrieval'?"),
    (["model.name=x2vlm-tiyn"], "model.name", "did you mean 'x2vlm-tiny'"),
    (["model.name=3"], "model.name", "expected a non-empty string, got int 3"),
    (["model.pretrained_strict=no thanks"], "model.pretrained_strict", "expected true or false or null"),
    (["model.overrides=[vision.depth]"], "model.overrides", "expected a mapping or null"),
    (["model.pretrained=7"], "model.pretrained", "expected a non-empty string or null"),
    # sections and the task
    (["tsk=vqa"], "tsk", "did you mean 'task'?"),
    (["task=vqq"], "task", "did you mean 'vqa'?"),
]


@pytest.mark.parametrize("overrides,key,fragment", LOAD_CASES, ids=[" ".join(c[0]) for c in LOAD_CASES])
def test_a_bad_value_is_a_config_error_naming_the_key(overrides, key, fragment):
    with pytest.raises(ConfigError) as info:
        load_task_config(VQA, overrides)
    assert info.value.path == key, str(info.value)
    assert fragment in info.value.message, str(info.value)
    assert info.value.file == VQA
    assert "\n" not in str(info.value)


# values that are right and must keep loading (the checks' edges, and the forms Lightning documents)
GOOD_OVERRIDES = [
    ["optim.warmup=0"], ["optim.warmup=0.99"], ["optim.warmup=5"], ["optim.warmup=500"], ["optim.lr=2e-3"],
    ["optim.vision_lr=null"], ["optim.new_params=[]"], ["optim.new_params=null"], ["optim.betas=[0.0, 0.999]"],
    ["optim.weight_decay=0"], ["optim.fused=null"],
    ["trainer.max_epochs=-1", "trainer.max_steps=100"], ["trainer.max_epochs=null"], ["trainer.max_steps=0"],
    ["trainer.precision=16"], ["trainer.precision=bf16-mixed"], ["trainer.precision='32'"], ["trainer.precision=bf16"],
    ["trainer.precision=transformer-engine"], ["trainer.gradient_clip_val=0"], ["trainer.gradient_clip_val=null"],
    ["trainer.strategy=ddp"], ["trainer.strategy=auto"], ["trainer.accelerator=gpu"], ["trainer.accelerator=auto"],
    ["trainer.devices=-1"], ["trainer.devices=auto"], ["trainer.devices=[0, 1]"], ["trainer.devices='0,1'"],
    ["trainer.devices='2'"], ["trainer.val_check_interval=0.25"], ["trainer.val_check_interval=100"],
    ["trainer.val_check_interval=00:01:00:00"], ["trainer.val_check_interval={minutes: 30}"],
    ["trainer.check_val_every_n_epoch=null", "trainer.val_check_interval=50"],
    ["trainer.limit_train_batches=0"], ["trainer.limit_train_batches=1.0"], ["trainer.limit_val_batches=0.5"],
    ["trainer.limit_test_batches=3"], ["trainer.num_sanity_val_steps=-1"], ["trainer.deterministic=warn"],
    ["evaluation.min_length=0", "evaluation.max_length=1"], ["evaluation.min_length=30"],
    ["train.name=sweep/lr-1e-3"], ["train.name=./run"], ["train.name=2024"], ["train.seed=4294967295"],
    ["train.freeze=[vision]"], ["train.freeze=null"], ["train.save_every_n_steps=null"],
    ["model.task=vqa_cls"], ["model.task=null"],
]


@pytest.mark.parametrize("overrides", GOOD_OVERRIDES, ids=[" ".join(o) for o in GOOD_OVERRIDES])
def test_good_values_still_load(overrides):
    load_task_config(VQA, overrides)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONFIGS_DIR / "tasks").glob("*.yaml")))
def test_every_shipped_task_config_passes(name):
    assert load_task_config(task_config(name))["_file"] == task_config(name)


def test_every_checked_key_has_an_entry_in_the_table():
    """The table covers every key of the checked sections, and holds nothing else."""
    listed = {f"{section}.{key}" for section, keys in TASK_CONFIG_KEYS.items() if keys for key in keys}
    assert listed == set(CHECKS)


def test_precisions_come_from_lightning():
    values = lightning_precisions()
    for p in ("32-true", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true", "transformer-engine", 32, 16, 64):
        assert p in values
    assert 13 not in values


@pytest.mark.parametrize("name,problem", [
    ("run", None), ("sweep/a", None), ("./run", None), ("a/./b", None),
    ("..", "'..'"), ("a/../..", "'..'"), ("a\\..\\..\\b", "'..'"), ("/abs", "absolute"), ("\\\\server\\share", "absolute"),
    ("D:run", "absolute"), ("~/runs", "absolute"), ("./", "output folder itself"), ("  ", "empty"),
])
def test_run_names_stay_inside_the_output_folder(name, problem):
    got = run_name_problem(name)
    assert (got is None) if problem is None else (problem in got), got


# ---------------------------------------------------------------------------------------------------------------------
# duplicate YAML keys
# ---------------------------------------------------------------------------------------------------------------------
def test_a_task_config_with_a_duplicate_key_names_file_line_and_key(tmp_path):
    text = Path(VQA).read_text().replace("  weight_decay: 0.01\n", "  weight_decay: 0.01\n  lr: 5.0\n")
    lines = text.splitlines()
    bad = tmp_path / "dup.yaml"
    bad.write_text(text)
    first = next(i for i, line in enumerate(lines, 1) if line.startswith("  lr:"))
    second = next(i for i, line in enumerate(lines, 1) if line == "  lr: 5.0")
    with pytest.raises(ConfigError) as info:
        load_task_config(bad)
    assert info.value.path == "optim.lr" and info.value.file == str(bad)
    assert f"duplicate key 'lr' at line {second} (first at line {first})" in info.value.message


def test_a_model_config_with_a_duplicate_key_is_refused(tmp_path):
    model_file = tmp_path / "tiny-dup.yaml"
    base = CONFIGS_DIR / "models" / "x2vlm-tiny.yaml"
    model_file.write_text(f"_base_: {base}\nname: tiny-dup\nmodel:\n  vision: {{depth: 1}}\n  text: {{num_layers: 4}}\n"
                          "  vision: {depth: 3}\n")
    with pytest.raises(ConfigError) as info:
        zoo.create_model(str(model_file))
    assert info.value.path == "model.vision" and info.value.file == str(model_file)
    assert "duplicate key 'vision' at line 6 (first at line 4)" in info.value.message


def test_duplicate_keys_inside_flow_mappings_and_lists_and_overrides():
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        parse_override("optim={a: 1, a: 2}")
    from zoo.spec import DuplicateKeyError, _safe_load

    with pytest.raises(DuplicateKeyError) as info:
        _safe_load("items:\n  - {x: 1}\n  - {y: 1, y: 2}\n")
    assert info.value.path == "items[1].y" and info.value.line == 3


def test_merge_keys_may_override_what_they_bring_in():
    from zoo.spec import _safe_load

    assert _safe_load("base: &b {x: 1, y: 2}\nrun:\n  <<: *b\n  x: 3\n")["run"] == {"x": 3, "y": 2}


def test_every_shipped_yaml_file_has_unique_keys():
    files = sorted(CONFIGS_DIR.glob("**/*.yaml"))
    assert files
    for path in files:
        load_yaml(path)


# ---------------------------------------------------------------------------------------------------------------------
# checks that need the built model
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vqa_model():
    cfg = load_task_config(VQA)
    mcfg = cfg["model"]
    return zoo.create_model(mcfg["name"], task=mcfg["task"], **dict(mcfg["overrides"]))


MODEL_CASES = [
    (["optim.new_params=[vqa.*, vqaa.*]"], "optim.new_params", "pattern 'vqaa.*' would match no parameter name; "
                                                              "did you mean 'vqa.*'?"),
    (["optim.new_params=[heads.*]"], "optim.new_params", "would match no parameter name; the model's parts: "
                                                        "text, vision, vqa"),
    (["train.freeze=[visoin]"], "train.freeze", "pattern 'visoin' would match no parameter name; did you mean "
                                                "'vision'? The model's parts: text, vision, vqa"),
    (["train.freeze=[vision.blokcs.*]"], "train.freeze", "did you mean 'vision.blocks.*'?"),
    (["train.freeze=[vision, text, vqa]"], "train.freeze", "freezes every trainable parameter"),
    (["train.freeze=['*']"], "train.freeze", "nothing is left to train"),
]


@pytest.mark.parametrize("overrides,key,fragment", MODEL_CASES, ids=[" ".join(c[0]) for c in MODEL_CASES])
def test_patterns_must_name_parameters_of_the_built_model(vqa_model, overrides, key, fragment):
    cfg = load_task_config(VQA, overrides)
    with pytest.raises(ConfigError) as info:
        check_against_model(vqa_model, cfg)
    assert info.value.path == key and fragment in info.value.message, str(info.value)
    assert info.value.file == VQA


def test_a_part_name_freezes_the_whole_part(vqa_model):
    from zoo.train.optim import apply_freeze

    model = zoo.create_model("x2vlm-tiny", task="vqa")
    check_against_model(model, load_task_config(VQA, ["train.freeze=[vision, text.embeddings]"]))
    frozen = apply_freeze(model, ["vision", "text.embeddings"])
    assert frozen and all(n.startswith(("vision.", "text.embeddings.")) for n in frozen)
    assert not any(p.requires_grad for p in model.vision.parameters())
    assert any(p.requires_grad for p in model.text.parameters())


def test_a_mapping_config_given_to_train_is_checked_too(vqa_model):
    cfg = load_task_config(VQA)
    cfg["optim"]["lr"] = -1.0
    with pytest.raises(ConfigError) as info:
        check_against_model(vqa_model, cfg)
    assert info.value.path == "optim.lr"


@pytest.mark.parametrize("overrides,key,fragment", [
    (["model.overrides.text.hidden_size=96"], "model.vqa.encoder_width",
     "width mismatch: model.vqa expects encoder_width=64 but model.text produces width=96"),
    (["optim.new_params=[vqaa.*]"], "optim.new_params", "did you mean 'vqa.*'?"),
    (["train.freeze=[visoin]"], "train.freeze", "did you mean 'vision'?"),
])
def test_train_stops_before_data_and_lightning(tmp_path, overrides, key, fragment):
    """Through train(): the error comes right after the model is built; no data is read, no run folder is made."""
    cfg = load_task_config(VQA, [*overrides, f"train.output_dir={tmp_path}", "train.name=run",
                                 f"data.root={tmp_path / 'no-data'}"])
    with pytest.raises(ConfigError) as info:
        train(cfg)
    assert info.value.path == key and fragment in info.value.message, str(info.value)
    if key == "model.vqa.encoder_width":  # the model file's key, and the task config whose overrides changed it
        assert info.value.message.endswith(f"(the model as changed by the model.overrides of {VQA})")
    assert not (tmp_path / "run").exists()


def test_warmup_steps_beyond_the_run_are_an_error(vqa_model):
    from zoo.train.module import TaskModule

    module = TaskModule(vqa_model, "vqa", {"warmup": 50})
    module._trainer = SimpleNamespace(estimated_stepping_batches=40, precision="32-true")
    with pytest.raises(ConfigError) as info:
        module.configure_optimizers()
    assert info.value.path == "optim.warmup" and "50 warm-up steps, but this run makes only 40" in info.value.message
    module = TaskModule(vqa_model, "vqa", {"warmup": 40, "new_params": None})
    module._trainer = SimpleNamespace(estimated_stepping_batches=40, precision="32-true")
    sched = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert isinstance(sched, torch.optim.lr_scheduler.LambdaLR)


def test_the_case_table_is_large_and_names_distinct_keys():
    assert len(LOAD_CASES) + len(MODEL_CASES) >= 60
    keys = {c[1] for c in LOAD_CASES}
    assert len(keys) >= 40 and all(re.fullmatch(r"[a-z_]+(\.[a-z_]+)?", k) for k in keys)


def test_a_model_file_without_task_variants_says_so(tmp_path):
    """model.task naming a variant of a model file that declares none: the message lists '(none)'."""
    model_file = tmp_path / "bare.yaml"
    model_file.write_text("model:\n  type: x2vlm\n")
    with pytest.raises(ConfigError) as info:
        load_task_config(VQA, [f"model.name={model_file}", "model.task=vqa"])
    assert info.value.path == "model.task" and info.value.file == VQA
    assert info.value.message == f"{model_file} has no task variant 'vqa' Its variants: (none)"


def test_a_model_built_without_the_task_head_names_the_config_file():
    from zoo.factory import resolve_config
    from zoo.train.run import _check_model_for_task

    tree = resolve_config("x2vlm-tiny", "nlvr")["model"]
    with pytest.raises(ConfigError) as info:
        _check_model_for_task(tree, "vqa", {"name": "x2vlm-tiny", "task": "nlvr"}, VQA)
    assert info.value.path == "model.task" and info.value.file == VQA
    assert info.value.message == ("x2vlm-tiny built for task 'nlvr' has no vqa head (vqa not built): set model.task "
                                  "to the variant that builds it (see `mmzoo info x2vlm-tiny`)")


def test_train_prints_what_a_part_by_part_load_left_out(tmp_path, capsys, monkeypatch):
    """Weights of the NLVR variant (an export with BERT's tokenizer) loaded part by part into the VQA variant, which
    reads the data's own word tokenizer: train() says which parts are new, which the file held for nothing, and how
    many of the data tokenizer's tokens got their row from the file (only characters: a word of the shapes vocabulary,
    "▁red", is another string than BERT's piece "red", and the special tokens differ too). The weights load
    after the data check, into the model built to the data's tokenizer (stopped right after the report)."""
    import zoo.train.run as run
    from zoo.data.shapes import generate_shapes

    root = generate_shapes(tmp_path / "shapes", num_train_images=4, num_val_images=2, num_test_images=2)
    source = tmp_path / "nlvr"
    cfg = load_task_config(VQA, [f"model.pretrained={source}", "model.pretrained_strict=false",
                                 f"train.output_dir={tmp_path}", "train.name=run", f"data.root={root}"])
    shared = {k: v for k, v in cfg["model"]["overrides"].items()
              if not k.startswith("vqa.") and k != "text.tokenizer"}  # vision and text, BERT's tokenizer
    zoo.create_model("x2vlm-tiny", task="nlvr", **shared).save_pretrained(source)

    def stop(*args, **kwargs):
        raise RuntimeError("stopped after the load")

    monkeypatch.setattr(run, "_datamodule", stop)
    with pytest.raises(RuntimeError, match="stopped after the load"):
        train(cfg)
    out = capsys.readouterr().out
    assert out.index("data check:") < out.index(f"initialised from {source} part by part: new vqa; left out of the "
                                                "file nlvr\n")
    from transformers import AutoTokenizer

    ours = AutoTokenizer.from_pretrained(str(root / "tokenizer_xlmr")).get_vocab()
    theirs = AutoTokenizer.from_pretrained(str(source / "tokenizer")).get_vocab()
    shared = set(ours) & set(theirs)  # single characters: the data tokenizer's spelling-out pieces, BERT's pieces
    assert "▁red" in ours and "▁red" not in theirs and "red" in theirs and 0 < len(shared) < 100
    assert f"vocabulary: {len(shared)} of the model's {len(ours)} tokens copied from the file's by token; new: " \
        "<s> <pad> </s> <unk> ▁a" in out
