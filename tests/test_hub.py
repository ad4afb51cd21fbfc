"""zoo.hub's messages, counts, keys and file contents, value by value: what a user reads in an error, what an export
holds (the safetensors metadata, config.json's key order), the ``module.`` prefix of a DistributedDataParallel save,
the report of ``load_weights_by_part``, a trainable-only export without base weights, ``hf-hub:`` ids, and the atomic
folder swap's handling of the system's answers (errno by errno)."""

from __future__ import annotations

import ctypes
import datetime
import errno
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import demo_inputs
from torch import nn

import zoo
from zoo import hub
from zoo.hub import WeightsError, resolve_path


def _same_outputs(a, b) -> bool:
    images, ids = demo_inputs()
    with torch.no_grad():
        x, y = a(images, ids), b(images, ids)
    return torch.equal(x.fused.tokens, y.fused.tokens) and torch.equal(x.answer_logits, y.answer_logits)


# ---- exports -------------------------------------------------------------------------------------------------------


def test_export_metadata_and_config_key_order(demo, tmp_path):
    from safetensors import safe_open

    demo.save_pretrained(tmp_path / "export")
    with safe_open(str(tmp_path / "export" / "model.safetensors"), "pt") as fh:
        # "format": "pt" is what other readers (transformers) check before loading a safetensors file as torch's
        assert fh.metadata() == {"format": "pt", "mmzoo": "1"}
    text = (tmp_path / "export" / "config.json").read_text(encoding="utf-8")
    # the config in the order it was written (name first, the exported tokenizer's folder last), not sorted;
    # two-space indent, one final newline
    assert list(json.loads(text)) == ["name", "description", "default_resolution", "preprocess", "model", "tokenizer"]
    assert text.startswith('{\n  "name": "demo-tiny",\n') and text.endswith("}\n") and not text.endswith("}\n\n")


def test_a_config_that_is_not_an_object_is_named_with_its_type(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(WeightsError) as info:
        zoo.from_pretrained(tmp_path)
    assert str(info.value) == f"{tmp_path / 'config.json'}: expected a JSON object (an mmzoo export config), got list"


def test_trainable_only_export_without_base_weights(demo, tmp_path):
    """No ``pretrained:`` in the config: every trainable parameter of the rebuilt model must be in the export."""
    demo.save_pretrained(tmp_path / "all", trainable_only=True)  # every parameter of demo-tiny is trainable
    assert json.loads((tmp_path / "all" / "config.json").read_text())["weights"] == "trainable_only"
    assert _same_outputs(zoo.from_pretrained(tmp_path / "all").eval(), demo)

    heads = ("itm.", "vqa.")
    model = zoo.create_model("demo-tiny")
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(heads))
    model.save_pretrained(tmp_path / "heads", trainable_only=True)
    lacking = sorted(n for n, _ in zoo.create_model("demo-tiny").named_parameters() if not n.startswith(heads))
    assert len(lacking) == 131  # 143 parameters, 12 of them in the two heads
    with pytest.raises(WeightsError) as info:
        zoo.from_pretrained(tmp_path / "heads")
    assert str(info.value) == (
        f"{tmp_path / 'heads'}: trainable-only export without base weights (no 'pretrained' in its config) lacks "
        f"131 trainable tensor(s): {', '.join(lacking[:12])}, ... (119 more)")


def _hub_cache(root, repo: str, files: dict) -> str:
    """A Hugging Face cache holding ``repo`` at one commit (huggingface_hub's layout: ``models--ORG--NAME/refs/main``
    names the commit, ``snapshots/COMMIT/`` holds the files); returns the snapshot folder."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        shutil.copy2(source, snapshot / name)
    return str(snapshot)


def test_hf_hub_ids_are_read_through_huggingface_hubs_cache(demo, tmp_path, monkeypatch):
    """``hf-hub:ORG/REPO`` (an export on the Hub) and ``hf-hub:ORG/REPO/FILE`` resolve through huggingface_hub's own
    cache lookup (offline: no request), for ``from_pretrained`` and for any ``pretrained:`` path; a repo the cache
    lacks names the command that fetches it."""
    from huggingface_hub import constants

    demo.save_pretrained(tmp_path / "export")
    cache = tmp_path / "hf"
    snapshot = _hub_cache(cache, "org/demo", {p.name: p for p in (tmp_path / "export").iterdir() if p.is_file()})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_path("hf-hub:org/demo") == Path(snapshot)
    assert resolve_path("hf-hub:org/demo/model.safetensors") == Path(snapshot) / "model.safetensors"
    assert _same_outputs(zoo.from_pretrained("hf-hub:org/demo").eval(), demo)
    # a weights file on the Hub as any model's pretrained path
    again = zoo.create_model("demo-tiny", pretrained="hf-hub:org/demo/model.safetensors").eval()
    assert _same_outputs(again, demo)
    with pytest.raises(WeightsError) as info:
        zoo.from_pretrained("hf-hub:org/other")
    assert str(info.value).startswith("hf-hub:org/other: is not in the local Hugging Face cache (offline) (")
    assert "run `huggingface-cli download org/other` where the hub is reachable" in str(info.value)
    with pytest.raises(WeightsError, match="expected hf-hub:ORG/REPO"):
        resolve_path("hf-hub:org")


# ---- weights files -------------------------------------------------------------------------------------------------


def test_a_folder_without_weights_is_named_with_what_it_looks_for(tmp_path):
    with pytest.raises(WeightsError) as info:
        hub.load_state_dict(tmp_path)
    assert str(info.value) == (f"{tmp_path}: folder holds none of model.safetensors, pytorch_model.bin, model.pth, "
                               "model.pt (sharded checkpoints are not read)")


def test_a_pickled_object_is_named_and_never_loaded(tmp_path):
    torch.save({"weight": torch.ones(1), "saved": datetime.date(2020, 1, 2)}, tmp_path / "dated.pth")
    with pytest.raises(WeightsError) as info:
        hub.load_state_dict(tmp_path / "dated.pth")
    assert str(info.value) == (f"{tmp_path / 'dated.pth'}: cannot be read with torch.load(weights_only=True) (it "
                               "holds a pickled 'datetime.date', not only tensors and containers: refused, never run)")


def test_a_file_without_tensors_lists_its_keys(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1, 7: "seven"}, tmp_path / "opt.pth")
    with pytest.raises(WeightsError) as info:
        hub.load_state_dict(tmp_path / "opt.pth")
    assert str(info.value) == f"{tmp_path / 'opt.pth'}: holds no tensors (keys: epoch, lr, 7)"


def test_the_ddp_prefix_is_removed_only_when_every_key_has_it(tmp_path):
    w, b = torch.ones(2, 2), torch.zeros(2)
    torch.save({"state_dict": {"module.weight": w, "module.bias": b}}, tmp_path / "ddp.pth")
    loaded = hub.load_state_dict(tmp_path / "ddp.pth")
    assert sorted(loaded) == ["bias", "weight"] and torch.equal(loaded["weight"], w)
    torch.save({"module.weight": w, "bias": b}, tmp_path / "mixed.pth")
    assert sorted(hub.load_state_dict(tmp_path / "mixed.pth")) == ["bias", "module.weight"]


def test_weights_saved_on_a_gpu_load_onto_the_cpu(tmp_path):
    """A checkpoint whose tensors were saved on ``cuda:0`` (tagged so with torch's own location tags) loads onto the
    CPU: on a machine without a GPU, and on one with a GPU too."""
    import torch.serialization as ser

    def tag(obj):
        return "cuda:0" if obj.device.type == "cpu" else None

    def restore(obj, location):
        return None

    ser.register_package(0, tag, restore)
    try:
        torch.save({"weight": torch.arange(4.0)}, tmp_path / "gpu.pth")
    finally:
        ser._package_registry[:] = [entry for entry in ser._package_registry if entry[1] is not tag]
    loaded = hub.load_state_dict(tmp_path / "gpu.pth")
    assert loaded["weight"].device == torch.device("cpu") and torch.equal(loaded["weight"], torch.arange(4.0))


def test_load_weights_messages_name_the_state_dict_and_count_the_keys_left_out():
    model = nn.Sequential(*[nn.Linear(1, 1) for _ in range(7)])  # 14 keys: 12 shown, 2 more
    with pytest.raises(WeightsError) as info:
        hub.load_weights(model, {})
    shown = ", ".join(f"{i}.{n}" for i in range(6) for n in ("weight", "bias"))
    assert str(info.value) == f"state dict does not fit Sequential: missing 14 key(s): {shown}, ... (2 more)"
    with pytest.raises(WeightsError) as info:
        hub.load_weights(model, {"0.weight": torch.zeros(2, 2)})
    assert str(info.value) == ("state dict: 1 tensor(s) have the wrong shape (shape mismatch): 0.weight: file (2, 2) "
                               "vs model (1, 1)")


def test_load_weights_by_part_reports_new_and_left_out_parts():
    torch.manual_seed(0)
    model = nn.ModuleDict({"vision": nn.Linear(2, 2), "text": nn.Linear(2, 2), "head": nn.Linear(2, 3)})
    head_before = model["head"].weight.detach().clone()
    state = {"vision.weight": torch.full((2, 2), 2.0), "vision.bias": torch.ones(2),
             "text.weight": torch.full((2, 2), 3.0), "text.bias": torch.zeros(2), "itm.weight": torch.ones(2, 2)}
    assert hub.load_weights_by_part(model, state) == {"new": ["head"], "left_out": ["itm"]}
    assert torch.equal(model["vision"].weight, state["vision.weight"])
    assert torch.equal(model["text"].weight, state["text.weight"])
    assert torch.equal(model["head"].weight, head_before)


def test_unknown_official_keys_are_listed_with_the_family_and_a_count():
    keys = [f"k{i}" for i in range(20)]
    with pytest.raises(WeightsError) as info:
        hub.raise_unknown_keys(keys)
    assert str(info.value) == ("20 official key(s) have no mapping and are not in the dropped list: " + ", ".join(keys))
    with pytest.raises(WeightsError) as info:
        hub.raise_unknown_keys([*keys, "k20", "k21"], "X2-VLM")
    assert str(info.value) == ("22 official X2-VLM key(s) have no mapping and are not in the dropped list: "
                               + ", ".join(keys) + ", ... (2 more)")
    hub.raise_unknown_keys([], "X2-VLM")  # nothing unknown: nothing raised


def test_a_package_path_of_a_missing_package_says_what_to_install():
    with pytest.raises(FileNotFoundError) as info:
        hub.resolve_path("pkg:mmzoo_no_such_package/configs")
    assert str(info.value) == ("pkg:mmzoo_no_such_package/configs: package 'mmzoo_no_such_package' is not installed "
                               "(pip install mmzoo-no-such-package)")


# ---- atomic writes -------------------------------------------------------------------------------------------------


def test_a_writer_error_without_errno_names_the_final_file(tmp_path):
    """A writer that hides the system's error (torch.save's zip writer) on a disk that takes writes: EIO, named by
    the file asked for, not its temporary name."""
    target = tmp_path / "ckpt.pt"
    with pytest.raises(OSError) as info, hub.atomic_path(target):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed\nmore detail")
    exc = info.value
    assert (exc.errno, exc.filename) == (errno.EIO, str(target))
    assert exc.strerror == ("cannot be written ([enforce fail at inline_container.cc:664] . PytorchStreamWriter "
                            "failed writing file data/0: file write failed)")
    assert list(tmp_path.iterdir()) == []


def test_reading_the_umask_leaves_it_alone(monkeypatch):
    """On Linux the mask is read from /proc/self/status: it is never set, even for a moment (a file another thread
    creates meanwhile would get the wrong mode)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            if not any(line.startswith("Umask:") for line in fh):
                pytest.skip("this kernel does not report the umask in /proc/self/status")
    except OSError:
        pytest.skip("no /proc/self/status")
    previous = os.umask(0o027)
    try:
        def umask(mask):
            raise AssertionError(f"os.umask({mask:#o}) called")

        monkeypatch.setattr(os, "umask", umask)
        assert hub._umask() == 0o027
    finally:
        monkeypatch.undo()
        os.umask(previous)


def _has_renameat2() -> bool:
    return sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "renameat2")


needs_renameat2 = pytest.mark.skipif(not _has_renameat2(), reason="renameat2 is Linux (glibc >= 2.28) only")


@needs_renameat2
def test_exchange_swaps_two_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "old.txt").write_text("old")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "new.txt").write_text("new")
    assert hub._exchange(tmp_path / "b", tmp_path / "a") is True
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["new.txt"]
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["old.txt"]


@needs_renameat2
def test_exchange_refused_with_einval_falls_back(tmp_path):
    """EINVAL (here: a folder swapped with its own sub-folder; also what file systems without RENAME_EXCHANGE
    answer) means "cannot swap here": False, so the caller renames in two steps; nothing moved."""
    (tmp_path / "a" / "sub").mkdir(parents=True)
    assert hub._exchange(tmp_path / "a", tmp_path / "a" / "sub") is False
    assert (tmp_path / "a" / "sub").is_dir()


@needs_renameat2
def test_exchange_across_file_systems_falls_back(tmp_path):
    other = Path("/dev/shm")
    if not other.is_dir() or not os.access(other, os.W_OK) or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no writable second file system at /dev/shm")
    (tmp_path / "a").mkdir()
    b = Path(hub.tempfile.mkdtemp(dir=other))
    try:
        assert hub._exchange(tmp_path / "a", b) is False  # EXDEV
        assert (tmp_path / "a").is_dir() and b.is_dir()
    finally:
        os.rmdir(b)


@needs_renameat2
def test_exchange_failure_carries_the_systems_errno(tmp_path):
    (tmp_path / "b").mkdir()
    with pytest.raises(OSError) as info:
        hub._exchange(tmp_path / "missing", tmp_path / "b")
    assert info.value.errno == errno.ENOENT
    assert str(info.value) == f"[Errno 2] cannot swap {tmp_path / 'missing'} and {tmp_path / 'b'}: No such file or directory"
