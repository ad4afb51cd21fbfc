"""Hostile exports, checkpoints and weights files through every loading path: nothing a file names or holds runs,
and every case is an error naming the file (one line from the command line, exit status 2).

Each hostile file carries a payload that, if it ran, would create a marker file: a pickle ``__reduce__`` (in a
``.ckpt``, a ``.pth``, a ``pytorch_model.bin``), a module listed under ``imports`` in an export's or a checkpoint's
saved config (placed where Python would find it: the current folder, on ``sys.path``). Other cases are links out of
the export folder, tampered tensor shapes, truncated and empty files, and configs that are not JSON objects.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PACKAGE_DIR, task_config

import zoo
from zoo.cli import main
from zoo.hub import WeightsError, load_state_dict
from zoo.train.run import model_from_checkpoint

PAYLOAD_MODULE = "mmzoo_hostile_payload"


class _Payload:
    """Unpickling this runs ``exec``, which writes the marker file (what an attacker's checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return zoo.create_model("demo-tiny").eval()


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A folder that is the current directory and on sys.path (as with ``python -m``), holding the payload module."""
    marker = tmp_path / "PAYLOAD_RAN"
    (tmp_path / f"{PAYLOAD_MODULE}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(PAYLOAD_MODULE, None)
    yield tmp_path, marker
    sys.modules.pop(PAYLOAD_MODULE, None)


def _export(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


def _ckpt(model, path: Path, **extra) -> Path:
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "zoo_config": model.zoo_config, "global_step": 3, "epoch": 0, **extra}, path)
    return path


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# -- the hostile files: each returns (source, the file the error must name) --------------------------------------
def export_imports(model, root, marker):
    folder = _export(model, root / "export")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["imports"] = [PAYLOAD_MODULE]
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder, PAYLOAD_MODULE


def export_pickle_weights(model, root, marker):
    folder = _export(model, root / "export")
    (folder / "model.safetensors").unlink()
    torch.save({"w": _Payload(marker)}, folder / "pytorch_model.bin")
    return folder, "pytorch_model.bin"


def _linked_out(model, root, name: str):
    """An export whose file ``name`` is a symbolic link to a file outside the export folder."""
    folder = _export(model, root / "export")
    outside = root / f"elsewhere-{name}"
    (folder / name).rename(outside)
    (folder / name).symlink_to(outside)
    return folder, name


def export_config_link(model, root, marker):
    return _linked_out(model, root, "config.json")


def export_weights_link(model, root, marker):
    return _linked_out(model, root, "model.safetensors")


def export_tokenizer_link(model, root, marker):
    folder = _export(model, root / "export")
    vocab = next(p for p in (folder / "tokenizer").iterdir() if p.is_file())
    secret = root / "secret.txt"
    secret.write_text("not yours\n")
    vocab.unlink()
    vocab.symlink_to(secret)
    return folder, vocab.name


def export_tampered_shape(model, root, marker):
    from safetensors.torch import load_file, save_file

    folder = _export(model, root / "export")
    tensors = load_file(str(folder / "model.safetensors"))
    key = next(k for k, v in tensors.items() if v.dim() == 2)
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])
    save_file(tensors, str(folder / "model.safetensors"))
    return folder, key


def export_truncated(model, root, marker):
    folder = _export(model, root / "export")
    _truncate(folder / "model.safetensors")
    return folder, "model.safetensors"


def export_empty_weights(model, root, marker):
    folder = _export(model, root / "export")
    (folder / "model.safetensors").write_bytes(b"")
    return folder, "model.safetensors"


def export_config_not_json(model, root, marker):
    folder = _export(model, root / "export")
    (folder / "config.json").write_text("{model: [")
    return folder, "config.json"


def export_config_a_list(model, root, marker):
    folder = _export(model, root / "export")
    (folder / "config.json").write_text("[1, 2]")
    return folder, "config.json"


def ckpt_pickle(model, root, marker):
    return _ckpt(model, root / "run.ckpt", payload=_Payload(marker)), "run.ckpt"


def ckpt_imports(model, root, marker):
    path = _ckpt(model, root / "run.ckpt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["zoo_config"] = {**ckpt["zoo_config"], "imports": [PAYLOAD_MODULE]}
    torch.save(ckpt, path)
    return path, PAYLOAD_MODULE


def ckpt_truncated(model, root, marker):
    path = _ckpt(model, root / "run.ckpt")
    _truncate(path)
    return path, "run.ckpt"


def ckpt_empty(model, root, marker):
    path = root / "run.ckpt"
    path.write_bytes(b"")
    return path, "run.ckpt"


def ckpt_tampered_shape(model, root, marker):
    path = _ckpt(model, root / "run.ckpt")
    ckpt = torch.load(path, weights_only=True)
    key = next(k for k, v in ckpt["state_dict"].items() if v.dim() == 2)
    ckpt["state_dict"][key] = torch.zeros(3, 3)
    torch.save(ckpt, path)
    return path, key[len("model."):]


def ckpt_not_a_checkpoint(model, root, marker):
    path = root / "run.ckpt"
    torch.save([1, 2, 3], path)
    return path, "run.ckpt"


def run_pickle(model, root, marker):
    (root / "run" / "checkpoints").mkdir(parents=True)
    ckpt_path = _ckpt(model, root / "run" / "checkpoints" / "last.ckpt", payload=_Payload(marker))
    return root / "run", ckpt_path.name


def run_truncated(model, root, marker):
    (root / "run" / "checkpoints").mkdir(parents=True)
    ckpt_path = _ckpt(model, root / "run" / "checkpoints" / "last.ckpt")
    _truncate(ckpt_path, 0.3)
    return root / "run", ckpt_path.name


def weights_pickle(model, root, marker):
    path = root / "weights.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "p": _Payload(marker)}, path)
    return path, "weights.pth"


def weights_truncated(model, root, marker):
    from safetensors.torch import save_file

    path = root / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k.startswith("itc.")}, str(path))
    _truncate(path)
    return path, "weights.safetensors"


EXPORTS = [export_imports, export_pickle_weights, export_config_link, export_weights_link, export_tokenizer_link,
           export_tampered_shape, export_truncated, export_empty_weights, export_config_not_json,
           export_config_a_list]
WEIGHT_CASES = [export_pickle_weights, export_weights_link, export_tampered_shape, export_truncated,
                export_empty_weights]
CHECKPOINTS = [ckpt_pickle, ckpt_imports, ckpt_truncated, ckpt_empty, ckpt_tampered_shape, ckpt_not_a_checkpoint]
RUNS = [run_pickle, run_truncated]
WEIGHTS = [weights_pickle, weights_truncated]


def _image(root: Path) -> Path:
    from PIL import Image

    path = root / "img.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path)
    return path


def _cli_fails(capsys, argv, names: str) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (argv, err)
    assert err and err[-1].startswith(f"mmzoo {argv[0]}: error: "), err
    assert names in err[-1], (names, err)
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def _no_payload(marker: Path) -> None:
    assert not marker.exists(), "the payload ran"
    assert PAYLOAD_MODULE not in sys.modules, "the payload module was imported"


# -- the API --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", EXPORTS, ids=lambda c: c.__name__)
def test_hostile_exports_through_the_api(case, model, place):
    root, marker = place
    folder, names = case(model, root, marker)
    loaders = [zoo.from_pretrained, model_from_checkpoint]
    if case in WEIGHT_CASES:  # create_model(pretrained=folder) reads only the weights of the folder, not its config
        loaders.append(lambda s: zoo.create_model("demo-tiny", pretrained=s))
    for load in loaders:
        with pytest.raises(WeightsError, match=names.replace(".", r"\.")):
            load(folder)
        _no_payload(marker)


@pytest.mark.parametrize("case", CHECKPOINTS + RUNS, ids=lambda c: c.__name__)
def test_hostile_checkpoints_through_the_api(case, model, place):
    root, marker = place
    source, names = case(model, root, marker)
    errors = (WeightsError, FileNotFoundError)  # a run folder without a readable checkpoint has nothing to load
    with pytest.raises(errors, match=names.replace(".", r"\.") if case not in RUNS else "checkpoint"):
        model_from_checkpoint(source)
    _no_payload(marker)


@pytest.mark.parametrize("case", WEIGHTS + [ckpt_pickle, ckpt_truncated, ckpt_empty], ids=lambda c: c.__name__)
def test_hostile_weights_files_through_the_api(case, model, place):
    root, marker = place
    path, names = case(model, root, marker)
    with pytest.raises(WeightsError, match=Path(path).name.replace(".", r"\.")):
        load_state_dict(path)
    with pytest.raises(WeightsError, match=Path(path).name.replace(".", r"\.")):
        zoo.create_model("demo-tiny", pretrained=path)
    _no_payload(marker)


def test_imports_of_an_export_need_trust(model, place):
    """The one way to run an export's imports is asking for it; already imported modules need nothing."""
    root, marker = place
    folder, _ = export_imports(model, root, marker)
    with pytest.raises(WeightsError, match=r"imports\[0\].*trust_imports=True"):
        zoo.from_pretrained(folder)
    _no_payload(marker)
    loaded = zoo.from_pretrained(folder, trust_imports=True)
    assert marker.read_text() == "ran" and loaded is not None
    marker.unlink()
    zoo.from_pretrained(folder)  # now imported: nothing to refuse, nothing runs again
    assert not marker.exists()


def test_pkg_paths_import_nothing(place):
    """``pkg:a.b/sub`` finds the folder of an installed package without importing ``a`` (whose __init__ could run
    anything)."""
    from zoo.hub import resolve_path

    root, marker = place
    pkg = root / "mmzoo_hostile_pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    assert resolve_path("pkg:mmzoo_hostile_pkg.sub/vocab.txt") == pkg / "sub" / "vocab.txt"
    assert not marker.exists() and "mmzoo_hostile_pkg" not in sys.modules


# -- the command line -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", EXPORTS + CHECKPOINTS + RUNS, ids=lambda c: c.__name__)
def test_hostile_sources_through_every_command(case, model, place, capsys):
    root, marker = place
    source, names = case(model, root, marker)
    if case in RUNS:
        names = "checkpoint"
    image = _image(root)
    src = str(source)
    for argv in (["predict", src, "--image", str(image), "--question", "what colour?"],
                 ["predict", src, "--generate-image", "a red circle", "--out", str(root / "gen.png")],
                 ["export", src, str(root / "out")],
                 ["export", src, str(root / "out_lm"), "--part", "vision"],
                 ["chat", src],
                 ["eval", src, task_config("vqa-shapes")]):
        _cli_fails(capsys, argv, names)
        _no_payload(marker)
    assert not (root / "out").exists() and not (root / "out_lm").exists()


@pytest.mark.parametrize("case", [ckpt_pickle, ckpt_truncated, weights_pickle], ids=lambda c: c.__name__)
def test_hostile_official_checkpoints_through_convert(case, model, place, capsys):
    root, marker = place
    path, _ = case(model, root, marker)
    for family in ("x2vlm", "cclm", "davinci"):
        _cli_fails(capsys, ["convert", family, str(path), str(root / "converted")], Path(path).name)
        _no_payload(marker)


@pytest.mark.parametrize("case", [run_pickle, run_truncated], ids=lambda c: c.__name__)
def test_hostile_last_checkpoint_through_resume(case, model, place, capsys):
    root, marker = place
    run, _ = case(model, root, marker)
    line = _cli_fails(capsys, ["train", task_config("vqa-shapes"),
                               f"train.output_dir={root}", "train.name=run", "--resume"],
                      "no checkpoint to resume from")
    assert str(run / "checkpoints") in line
    _no_payload(marker)


@pytest.mark.parametrize("case", [weights_pickle, weights_truncated], ids=lambda c: c.__name__)
def test_hostile_pretrained_weights_through_train(case, model, place, capsys):
    root, marker = place
    path, names = case(model, root, marker)
    _cli_fails(capsys, ["train", task_config("vqa-shapes"),
                        f"train.output_dir={root}", "train.name=run", f"model.pretrained={path}"], names)
    _no_payload(marker)
    assert not (root / "run").exists()


def test_the_payload_does_not_run_from_a_fresh_process(model, tmp_path):
    """`python -m zoo.cli predict export` from the folder holding the payload module (the current folder is on
    sys.path in that form): nothing runs, one line names the module and the way to allow it."""
    marker = tmp_path / "PAYLOAD_RAN"
    (tmp_path / f"{PAYLOAD_MODULE}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    folder, _ = export_imports(model, tmp_path, marker)
    image = _image(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_DIR.parent)}
    res = subprocess.run([sys.executable, "-m", "zoo.cli", "predict", "export", "--image", str(image),
                          "--question", "what?"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 2 and not marker.exists()
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("mmzoo predict: error: ") and "--trust-imports" in lines[-1]
    assert "Traceback" not in res.stderr


def test_inert_reading_of_an_official_file_with_pickled_objects_runs_nothing(tmp_path):
    """``load_state_dict(inert_objects=True)`` (what the MultiModal-GPT converter uses for its config object): the
    tensors come back; a pickled payload is an inert placeholder naming the global it would have called, and it did
    not run. Without the switch the file is refused, as every other path refuses it."""
    from zoo.hub import InertObject, load_inert

    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "release.pt"
    torch.save({"model_state_dict": {"module.w": torch.arange(3.0)}, "tuning_config": _Payload(marker)}, path)
    with pytest.raises(WeightsError, match="holds a pickled 'exec'.*refused, never run"):
        load_state_dict(path)
    tensors = load_state_dict(path, inert_objects=True)
    assert list(tensors) == ["w"] and torch.equal(tensors["w"], torch.arange(3.0))
    placeholder = load_inert(path)["tuning_config"]
    assert isinstance(placeholder, InertObject) and placeholder.pickled_as in ("builtins.exec", "__builtin__.exec")
    assert not marker.exists()


def test_inert_reading_of_a_legacy_format_file_runs_nothing(tmp_path):
    """A file that is not a zip is torch's legacy format, whose header objects torch reads with the pickle module's
    ``load``: the inert reader's ``load`` is restricted too, so a payload in the first pickle does not run."""
    import pickle

    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "legacy.pt"
    path.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    with pytest.raises(WeightsError, match=r"legacy\.pt: cannot be read \(Invalid magic number"):
        load_state_dict(path, inert_objects=True)
    assert not marker.exists()
