"""Shared test fixtures: offline mode and the official reference layouts in tests/reference/."""

from __future__ import annotations

import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"

# The zoo under test: the checkout's (./run pytest) or an installed copy (tools/test_installed.sh runs a copy of this
# folder with only the installed wheel importable). Found without importing it.
PACKAGE_DIR = Path(importlib.util.find_spec("zoo").origin).resolve().parent
CONFIGS_DIR = PACKAGE_DIR / "configs"
CHECKOUT = Path(__file__).resolve().parents[1]
IN_CHECKOUT = PACKAGE_DIR == CHECKOUT / "zoo"
# A test that reads files of the repository checkout beyond the package and tests/ (docs/, tools/, the sources a
# wheel is built from) cannot run against an installed copy, which has none of them.
requires_checkout = pytest.mark.skipif(
    not IN_CHECKOUT, reason="reads the repository checkout (docs/, tools/ or the sources), not the installed package")


def task_config(name: str) -> str:
    """The file of the packaged task config ``name`` (``zoo/configs/tasks/NAME.yaml`` of the zoo under test)."""
    return str(CONFIGS_DIR / "tasks" / f"{name}.yaml")


@lru_cache(maxsize=None)
def load_reference(name: str) -> dict:
    """An official reference layout (see tests/reference/README.md); ``name`` with or without ``.json``."""
    path = REFERENCE_DIR / (name if name.endswith(".json") else f"{name}.json")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def official_default(key: str):
    """A value of the official-defaults table (tests/reference/official_defaults.json), asserting that it names the
    official source it was read from."""
    entry = load_reference("official_defaults")["values"][key]
    assert entry["source"], key
    return entry["value"]


def reference_shapes(name: str, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """``{key without prefix: shape}`` for the state-dict entries of a reference layout that start with ``prefix``."""
    return {k[len(prefix):]: tuple(s) for k, s in load_reference(name)["state_dict"] if k.startswith(prefix)}


def fit_steps(loss_fn, params, steps: int, lr: float, optimizer=None) -> list[float]:
    """Take ``steps`` optimiser steps on ``loss_fn()`` (a scalar tensor) over ``params``; returns the loss before each
    step (AdamW unless ``optimizer`` names another torch optimiser class)."""
    import torch

    opt = (optimizer or torch.optim.AdamW)(list(params), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def check_record_keys(entries, keys: dict[str, type], name: str) -> None:
    """``entries`` is a non-empty list of records with exactly ``keys``, each value of its type (no bool for int)."""
    assert isinstance(entries, list) and entries, f"{name}: expected a non-empty JSON list"
    for e in entries:
        assert set(e) == set(keys), f"{name}: keys {sorted(e)} != {sorted(keys)}"
        for k, t in keys.items():
            assert isinstance(e[k], t) and not isinstance(e[k], bool), f"{name}: {k}={e[k]!r} is not {t.__name__}"


def load_json(root, name: str):
    """The JSON file ``root / name`` (UTF-8)."""
    with open(Path(root) / name, encoding="utf-8") as fh:
        return json.load(fh)


def dead_pid() -> int:
    """The id of a process that has just ended (a forked child reaped at once): what a killed writer's pid becomes."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def object_counts(root) -> dict[str, int]:
    """``{image path: number of shapes}`` of a generated shapes folder (its ``scenes.json``)."""
    return {s["image"]: len(s["objects"]) for s in load_json(root, "scenes.json")}


def shapes_subset(folder, kind: str, tag: str, keep, splits=("train", "test"), **generate) -> Path:
    """Generate a shapes dataset into ``folder`` (``generate``: :func:`generate_shapes` arguments) and write, for each
    split, ``{kind}_{split}_{tag}.json`` with the records of ``{kind}_{split}.json`` for which ``keep(record, counts)``
    is true (``counts``: shapes per image, :func:`object_counts`). Returns the dataset's root."""
    from zoo.data.shapes import generate_shapes

    root = generate_shapes(folder, **generate)
    counts = object_counts(root)
    for split in splits:
        write_subset(root, f"{kind}_{split}.json", f"{kind}_{split}_{tag}.json", lambda r: keep(r, counts))
    return root


def predicted_answers(source, root, records, model, media: str = "image") -> tuple[list[str], float]:
    """Each record's question answered one at a time through :func:`zoo.predict.predict` (the ``media`` file under
    ``root``), and the VQA accuracy in percent of those answers against the records' annotations."""
    from zoo.metrics.vqa import vqa_accuracy
    from zoo.predict import predict

    answers = [predict(source, str(Path(root) / r[media]), question=r["question"], model=model)["answer"]
               for r in records]
    return answers, 100.0 * sum(vqa_accuracy(a, r["answer"]) for a, r in zip(answers, records)) / len(records)


def write_subset(root, name: str, out_name: str, keep) -> int:
    """Write the records of the JSON list ``root / name`` for which ``keep(record)`` is true to ``root / out_name``
    (in their order); returns how many were kept."""
    records = [r for r in load_json(root, name) if keep(r)]
    with open(Path(root) / out_name, "w", encoding="utf-8") as fh:
        json.dump(records, fh)
    return len(records)


def install_plugin(site, module: str, source: str) -> Path:
    """A plug-in package as pip would leave it in ``site``: ``{module}.py`` holding ``source`` and a distribution whose
    ``mmzoo.plugins`` entry point names the module (put ``site`` on ``PYTHONPATH`` to have it found). Returns ``site``."""
    site = Path(site)
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source, encoding="utf-8")
    dist = site / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[mmzoo.plugins]\n{module} = {module}\n")
    return site


@pytest.fixture(scope="module")
def demo():
    """demo-tiny with seeded random weights, in eval mode (one per test module)."""
    import torch

    import zoo

    torch.manual_seed(0)
    return zoo.create_model("demo-tiny").eval()


def demo_inputs():
    """Two seeded 64 px images and two 6-token id rows for :func:`demo`."""
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 64, 64, generator=g), torch.randint(1000, 2000, (2, 6), generator=g)
