"""Named configs live inside the package: the wheel carries ``zoo/configs/{models,tasks}/*.yaml``, and a task config
is given by name (``mmzoo train vqa-shapes``) or by path.

The packaging tests build the wheel from a copy of the working tree's ``zoo/``, ``pyproject.toml`` and ``README.md``
(setuptools builds inside the source folder: the copy keeps ``build/`` and ``*.egg-info`` out of the checkout, and no
stale ``build/lib`` file can reach the wheel), install it with ``pip install --target`` and run it from an empty
folder where only that copy is importable: the catalogue lists exactly the models of ``zoo/configs/models``, and the
``vqa-shapes`` task config, found by name, runs one training step on a tiny shapes dataset.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS_DIR, requires_checkout

from zoo import catalog
from zoo.catalog import add_config_dir, config_dirs, task_config_names, task_config_path
from zoo.cli import main
from zoo.spec import ConfigError
from zoo.train.run import load_task_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = CONFIGS_DIR  # the package under test's (the checkout's, or an installed copy's)


@pytest.fixture
def task_dirs(monkeypatch):
    """No task directories added or in the environment (restored afterwards)."""
    monkeypatch.setitem(catalog._extra_dirs, "tasks", [])
    monkeypatch.delenv("MMZOO_TASK_CONFIG_PATH", raising=False)


# ---------------------------------------------------------------------------------------------------------------------
# task configs by name
# ---------------------------------------------------------------------------------------------------------------------
def test_a_task_config_name_resolves_to_the_packaged_file_from_any_folder(task_dirs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert task_config_path("vqa-shapes") == CONFIGS / "tasks" / "vqa-shapes.yaml"
    assert task_config_names() == sorted(f.stem for f in (CONFIGS / "tasks").glob("*.yaml"))
    assert task_config_names("vqa-*shapes") == ["vqa-epalm-shapes", "vqa-mmgpt-shapes", "vqa-multilingual-shapes",
                                                "vqa-shapes"]
    by_name = load_task_config("vqa-shapes", ["trainer.max_epochs=1"])
    by_path = load_task_config(CONFIGS / "tasks" / "vqa-shapes.yaml", ["trainer.max_epochs=1"])
    assert by_name == by_path and by_name["_file"] == str(CONFIGS / "tasks" / "vqa-shapes.yaml")


def test_paths_stay_paths_relative_to_the_current_folder(task_dirs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for text in ("vqa-shapes.yaml", "jobs/vqa-shapes", "job.yml"):  # a suffix or a folder: a path, even when missing
        assert task_config_path(text) == Path(text)
    assert task_config_path(Path("vqa-shapes")) == Path("vqa-shapes")  # a Path object is always a path
    with pytest.raises(ConfigError, match=r"^vqa-shapes\.yaml: config file not found$"):
        load_task_config("vqa-shapes.yaml")
    local = tmp_path / "vqa-shapes"  # an existing file wins over the packaged name
    local.write_text(f"_base_: {CONFIGS / 'tasks' / 'vqa-shapes.yaml'}\ntrain: {{name: local}}\n")
    assert task_config_path("vqa-shapes") == Path("vqa-shapes")
    assert load_task_config("vqa-shapes")["train"]["name"] == "local"


def test_an_unknown_name_is_one_line_with_the_closest_names(task_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        task_config_path("vqa-shape")
    message = str(info.value)
    assert "\n" not in message and message.startswith("unknown task config 'vqa-shape': ")
    assert "did you mean 'vqa-shapes'" in message
    assert message.endswith("Task configs: " + ", ".join(task_config_names()))
    with pytest.raises(ConfigError, match=r"task config name\. Task configs: caption-davinci-shapes, "):
        task_config_path("zzzz")
    for argv in (["train", "vqa-shape", "trainer.max_epochs=1"], ["eval", str(tmp_path), "vqa-shape"]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0] == f"mmzoo {argv[0]}: error: {message}", err
    assert not (tmp_path / "runs").exists()


def test_user_task_config_folders_come_first(task_dirs, tmp_path, monkeypatch):
    mine, env = tmp_path / "mine", tmp_path / "env"
    mine.mkdir()
    env.mkdir()
    base = CONFIGS / "tasks" / "vqa-shapes.yaml"
    (mine / "vqa-shapes.yaml").write_text(f"_base_: {base}\ntrain: {{name: mine}}\n")
    (env / "vqa-shapes.yaml").write_text(f"_base_: {base}\ntrain: {{name: env}}\n")
    (env / "my-job.yaml").write_text(f"_base_: {base}\ntrain: {{name: my-job}}\n")
    (env / "_common.yaml").write_text("task: vqa\n")  # a _base file: not a name
    monkeypatch.setenv("MMZOO_TASK_CONFIG_PATH", str(env))
    assert task_config_path("vqa-shapes") == env / "vqa-shapes.yaml"
    add_config_dir(mine, kind="tasks")
    assert config_dirs("tasks") == [mine, env, CONFIGS / "tasks"]
    assert mine not in config_dirs("models") and env not in config_dirs("models")
    assert load_task_config("vqa-shapes")["train"]["name"] == "mine"
    assert load_task_config("my-job")["train"]["name"] == "my-job"
    assert "my-job" in task_config_names() and "_common" not in task_config_names()
    with pytest.raises(ValueError, match="unknown config kind 'task'; expected one of models, tasks"):
        add_config_dir(mine, kind="task")


def test_list_tasks_and_list_models(task_dirs, capsys):
    assert main(["list", "--tasks", "vqa-*shapes"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert rows[-1] == ["vqa-shapes", "vqa", "x2vlm-tiny"] and len(rows) == 4
    assert main(["list", "--tasks", "nothing*"]) == 1
    assert "no task config matches 'nothing*'" in capsys.readouterr().err
    assert main(["list", "x2vlm-tiny"]) == 0
    assert "x2vlm-tiny" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------------
# the installed wheel
# ---------------------------------------------------------------------------------------------------------------------
def _repo_model_names() -> set[str]:
    """The model names of the repository's ``zoo/configs/models``: each file's own ``name:``, else its stem."""
    names = set()
    for f in (CONFIGS / "models").glob("*.yaml"):
        if not f.name.startswith("_"):
            names.add((yaml.safe_load(f.read_text(encoding="utf-8")) or {}).get("name") or f.stem)
    return names


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """The wheel built from the working tree, installed into ``site``; ``empty``: a folder to run it from."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "zoo", src / "zoo", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist")],
                   cwd=src, check=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("mmzoo-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(tmp / "site"), str(wheel)],
                   check=True, timeout=300)
    (tmp / "empty").mkdir()
    return {"site": tmp / "site", "empty": tmp / "empty", "home": tmp / "home", "tmp": tmp}


def _run_installed(installed, args, timeout=300) -> subprocess.CompletedProcess:
    """``python ARGS`` from the empty folder with only the installed copy on the path (no config folders added)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MMZOO_CONFIG_PATH", "MMZOO_TASK_CONFIG_PATH")}
    env.update(PYTHONPATH=str(installed["site"]), MMZOO_HOME=str(installed["home"]), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, *args], cwd=installed["empty"], env=env, capture_output=True, text=True,
                          timeout=timeout)


@requires_checkout  # builds the wheel from the checkout's sources
def test_the_installed_wheel_carries_the_model_and_task_configs(installed):
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "import zoo\n"
        "from zoo.catalog import task_config_names, task_config_path\n"
        f"site = Path({str(installed['site'])!r}).resolve()\n"
        "assert Path(zoo.__file__).resolve().is_relative_to(site), zoo.__file__\n"
        "print(json.dumps({'models': zoo.list_models(), 'tasks': task_config_names(),\n"
        "                  'vqa': str(task_config_path('vqa-shapes').resolve())}))\n"
    )
    res = _run_installed(installed, ["-c", code], timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    found = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(found["models"]) == _repo_model_names() and len(found["models"]) == len(set(found["models"]))
    assert found["tasks"] == sorted(f.stem for f in (CONFIGS / "tasks").glob("*.yaml"))
    vqa = Path(found["vqa"])
    assert vqa == installed["site"].resolve() / "zoo" / "configs" / "tasks" / "vqa-shapes.yaml"
    assert vqa.read_bytes() == (CONFIGS / "tasks" / "vqa-shapes.yaml").read_bytes()


@requires_checkout
def test_the_installed_wheel_trains_a_task_config_given_by_name(installed):
    """``python -m zoo.cli train vqa-shapes`` from the installed copy: one step on a tiny shapes dataset, one
    validation and one test batch, no export (about 15 s, most of it importing torch, lightning and transformers)."""
    from zoo.data.shapes import generate_shapes

    shapes = generate_shapes(installed["tmp"] / "shapes", num_train_images=16, num_val_images=4, num_test_images=4,
                             image_size=64, num_videos=0)
    runs = installed["tmp"] / "runs"
    res = _run_installed(installed, [
        "-m", "zoo.cli", "train", "vqa-shapes", f"data.root={shapes}", "data.batch_size=8", "data.eval_batch_size=8",
        "trainer.max_steps=1", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
        "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false", "train.export=false",
        f"train.output_dir={runs}", "train.name=run"])
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((runs / "run" / "results.json").read_text())
    assert results["task"] == "vqa" and results["model"] == "x2vlm-tiny"
    assert "vqa_acc" in results["val"] and "vqa_acc" in results["test"]
    assert (runs / "run" / "checkpoints" / "last.ckpt").is_file()
    assert not any(installed["empty"].iterdir())  # nothing written into the folder it ran from
