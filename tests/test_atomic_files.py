"""Writes that lose nothing: an export written over an older one is swapped in whole (killed at any step, the folder
loads as the old export or as the new one), temporary files of killed writers are cleaned up, and files get the
user's umask mode instead of mkstemp's 0600."""

from __future__ import annotations

import builtins
import io
import os
import shutil
import stat
import tempfile

import pytest
import torch
from conftest import dead_pid

import zoo
from zoo import hub


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    old = zoo.create_model("demo-tiny").eval()
    torch.manual_seed(1)
    new = zoo.create_model("demo-tiny").eval()
    return old, new


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# the file-system calls a writer makes; the child process is killed (os._exit, no clean-up runs) right before the
# k-th of them, for every k until the writer finishes
_KILL_POINTS = [(os, "replace"), (os, "rename"), (os, "fsync"), (os, "chmod"), (os, "unlink"), (os, "mkdir"),
                (shutil, "rmtree"), (shutil, "copy2"), (shutil, "copytree"), (tempfile, "mkdtemp"),
                (tempfile, "mkstemp"), (hub, "_exchange"), (builtins, "open"), (io, "open")]


def _write_killed_at(k: int, model, target) -> int:
    """Fork; in the child, count the calls above and die at the k-th (exit code 9), else finish (exit 0)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            calls = [0]

            def wrap(fn):
                def inner(*args, **kwargs):
                    calls[0] += 1
                    if calls[0] == k:
                        os._exit(9)
                    return fn(*args, **kwargs)
                return inner

            originals = {(mod, name): getattr(mod, name) for mod, name in _KILL_POINTS}
            for (mod, name), fn in originals.items():
                setattr(mod, name, wrap(fn))
            hub.save_pretrained(model, target)
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_an_export_killed_at_every_step_loads_as_the_old_or_the_new(models, tmp_path):
    old, new = models
    target = tmp_path / "export"
    (tmp_path / "notes.txt").write_text("mine")
    pristine = tmp_path.parent / f"{tmp_path.name}-pristine"
    old.save_pretrained(pristine)
    (pristine / "README.md").write_text("my notes on this export")  # a user's file beside the export
    outcomes = {"old": 0, "new": 0}
    k = 1
    while True:
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(pristine, target)
        code = _write_killed_at(k, new, target)
        assert code in (0, 9), f"writer failed with exit code {code} at kill point {k}"
        loaded = zoo.from_pretrained(target)
        if _same(loaded, old):
            outcomes["old"] += 1
        else:
            assert _same(loaded, new), f"kill point {k}: the export is neither the old nor the new"
            outcomes["new"] += 1
        assert (target / "README.md").read_text() == "my notes on this export"
        if code == 0:
            break
        k += 1
    assert k > 20  # the writer did go through many steps (tokenizer files, weights, config, fsyncs, the swap)
    assert outcomes["old"] >= 1 and outcomes["new"] >= 2  # killed after the swap, before removing the old folder
    # what the killed writers left beside the export is cleared by the next write
    old.save_pretrained(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "notes.txt"]


def test_a_non_export_folder_is_never_replaced(models, tmp_path):
    old, _ = models
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match="mine: folder holds files and is not an mmzoo export"):
        old.save_pretrained(tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_orphans_of_dead_writers_go_and_live_ones_stay(tmp_path):
    dead = dead_pid()
    orphan = tmp_path / f".results.json.{dead}.abc123.tmp"
    orphan.write_text("half")
    live = tmp_path / f".results.json.{os.getppid()}.xyz789.tmp"
    live.write_text("being written")
    other = tmp_path / f".other.json.{dead}.abc123.tmp"
    other.write_text("half")
    with hub.atomic_write(tmp_path / "results.json", "w") as fh:
        fh.write("{}")
    assert not orphan.exists() and live.exists() and other.exists()  # only this name's, only dead writers'
    assert hub.remove_orphans(tmp_path) == [other]


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_files_and_folders_follow_the_umask(models, tmp_path, mask):
    old, _ = models
    previous = os.umask(mask)
    try:
        old.save_pretrained(tmp_path / "export")
        with hub.atomic_write(tmp_path / "results.json", "w") as fh:
            fh.write("{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "export").stat().st_mode) == 0o777 & ~mask
    for name in ("config.json", "model.safetensors", "preprocessor.json"):
        assert stat.S_IMODE((tmp_path / "export" / name).stat().st_mode) == 0o666 & ~mask, name
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == 0o666 & ~mask
