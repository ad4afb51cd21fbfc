"""A full or read-only disk: one line naming the path (exit status 2), and what was there before is kept.

A full disk is a file-size limit (``RLIMIT_FSIZE``, with SIGXFSZ ignored: writes past it fail with EFBIG, as they
fail with ENOSPC on a full disk, through every writer: Python's, safetensors' and torch's). A read-only disk is a
read-only bind mount in a private mount namespace (``unshare -m``; skipped where the system does not allow it).
"""

from __future__ import annotations

import errno
import resource
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import task_config

import zoo
from zoo.cli import main
from zoo.hub import atomic_write
from zoo.train.run import AtomicCheckpointIO

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def _disk_full_after(size: int):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    torch.manual_seed(0)
    old = zoo.create_model("demo-tiny").eval()
    old.save_pretrained(root / "old")
    torch.manual_seed(1)
    zoo.create_model("demo-tiny").save_pretrained(root / "new")
    return root, old


def _same_as(model, folder) -> bool:
    loaded = zoo.from_pretrained(folder).state_dict()
    return all(torch.equal(v, loaded[k]) for k, v in model.state_dict().items())


def test_export_onto_a_full_disk_keeps_the_old_export(exports, tmp_path, capsys):
    root, old = exports
    target = tmp_path / "export"
    shutil.copytree(root / "old", target)
    with _disk_full_after(100_000):
        code = main(["export", str(root / "new"), str(target)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"mmzoo export: error: {target}: File too large"]
    assert _same_as(old, target)  # the old export is whole and loads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary folder left behind


def test_a_checkpoint_onto_a_full_disk_is_an_os_error_naming_it(tmp_path):
    state = {"state_dict": {"w": torch.randn(100_000)}, "global_step": 1}
    with _disk_full_after(50_000), pytest.raises(OSError) as info:
        AtomicCheckpointIO().save_checkpoint(state, tmp_path / "last.ckpt")
    assert info.value.errno == errno.EFBIG and info.value.filename == str(tmp_path / "last.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_a_results_file_onto_a_full_disk(tmp_path):
    (tmp_path / "results.json").write_text('{"old": 1}')
    with _disk_full_after(1_000), pytest.raises(OSError) as info:
        with atomic_write(tmp_path / "results.json", "w") as fh:
            fh.write("x" * 10_000)
            fh.flush()
    assert info.value.errno == errno.EFBIG and info.value.filename == str(tmp_path / "results.json")
    assert (tmp_path / "results.json").read_text() == '{"old": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def _read_only_mounts() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind /tmp /tmp && mount -o remount,ro,bind /tmp"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _read_only_mounts(), reason="needs unshare -m and bind mounts (a private mount namespace)")
def test_a_read_only_disk_is_one_line_naming_the_folder(exports, tmp_path):
    root, old = exports
    ro = tmp_path / "ro"
    ro.mkdir()
    shutil.copytree(root / "old", ro / "export")
    mount = f"mount --bind {ro} {ro} && mount -o remount,ro,bind {ro}"
    cli = f"{sys.executable} -m zoo.cli"
    script = (f"{mount} && {cli} export {root / 'new'} {ro / 'export'}; echo rc=$?; "
              f"{cli} train {task_config('vqa-shapes')} train.output_dir={ro}/runs; echo rc=$?")
    res = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert res.stdout.split().count("rc=2") == 2, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("mmzoo ")]
    assert lines == [f"mmzoo export: error: {ro / 'export'}: Read-only file system",
                     f"mmzoo train: error: {ro}: Read-only file system: the run folder {ro}/runs/vqa-shapes cannot "
                     "be written (train.output_dir)"]
    assert "Traceback" not in res.stderr
    assert _same_as(old, ro / "export")
