"""Deployable graphs of a model: ONNX, TorchScript and ``torch.export`` programs of its towers and of its whole
inference pass, each checked against the eager model (``mmzoo export SRC OUT --format onnx,torchscript,exported``).

Graphs, where the model has them:

- ``vision``: images ``(B, 3, R, R)`` (frames ``(B, T, 3, R, R)`` for a video model) → the vision tokens and pooled
  vector (``model.encode_image``, else ``model.vision``);
- ``text``: ``input_ids``, ``attention_mask`` ``(B, L)`` → the text tokens and pooled vector (``model.encode_text``);
- ``model``: ``images``, ``input_ids``, ``attention_mask`` → every tensor ``model.forward`` returns (encoders, fusion,
  the contrastive / matching heads present), flattened in pytree order; their names are in ``graphs.json``.

Outputs are plain tuples at the boundary (the output dataclasses are pytree nodes, :mod:`zoo.modules.outputs`); the
batch dimension is dynamic where the exporter keeps it so (``graphs.json`` says which). Attention runs on the
framework's ``math`` backend while exporting: the same function as SDPA (``tests/test_attention.py``), written as
matmul + softmax, which every exporter lowers (ONNX's decomposition of SDPA fails on the strided output that
``scaled_dot_product_attention`` returns under a symbolic batch).

Each file is loaded back (``onnxruntime`` for ONNX, ``torch.jit.load``, ``torch.export.load``) and run on fresh
inputs of another batch size; the largest absolute difference to the eager model goes into ``graphs.json``, and a
difference above ``tolerance`` is an error. A graph a format cannot express is reported (``graphs.json`` ``error``)
and the others are still written.
"""

from __future__ import annotations

import json
import logging
import re
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["FORMATS", "GRAPHS", "DeployError", "example_inputs", "export_graphs"]

FORMATS = ("onnx", "torchscript", "exported")
GRAPHS = ("vision", "text", "model")
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "exported": ".pt2"}
GRAPHS_NAME = "graphs.json"


class DeployError(ValueError):
    """A graph whose saved file computes something else than the eager model (or a request that cannot be met)."""


class _Flat(nn.Module):
    """``fn(*inputs)`` with its output flattened to a tuple of tensors (pytree order; None leaves dropped)."""

    def __init__(self, owner: nn.Module, fn: Callable[..., Any]):
        super().__init__()
        self.owner = owner  # registers the parameters
        self.fn = fn

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        leaves = torch.utils._pytree.tree_leaves(self.fn(*inputs))
        return tuple(x for x in leaves if isinstance(x, Tensor))


def _output_names(fn: Callable[..., Any], inputs: Sequence[Tensor]) -> list[str]:
    with torch.no_grad():
        pairs, _ = torch.utils._pytree.tree_flatten_with_path(fn(*inputs))
    names = []
    for path, leaf in pairs:
        if isinstance(leaf, Tensor):
            key = torch.utils._pytree.keystr(path)
            names.append(re.sub(r"_+", "_", "".join(c if c.isalnum() else "_" for c in key)).strip("_") or "output")
    return names


def _vocab_rows(part: nn.Module) -> int:
    for module in part.modules():
        if isinstance(module, nn.Embedding):
            return module.num_embeddings
    return 1000


def example_inputs(model: nn.Module, batch: int, seq_len: int = 16, seed: int = 0) -> dict[str, Tensor]:
    """Random inputs of the model's shapes: ``images`` at its input resolution (frames for a video model),
    ``input_ids`` below its vocabulary size and an ``attention_mask`` with the last row padded."""
    from zoo.models.base import input_resolution  # noqa: PLC0415

    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    size = input_resolution(model)
    vision = getattr(model, "vision", None)
    if size and vision is not None:
        shape = (batch, 3, size, size)
        if getattr(vision, "is_video", False):
            shape = (batch, vision.num_frames, 3, size, size)
        out["images"] = torch.randn(*shape, generator=gen)
    text = getattr(model, "text", None)
    if text is not None:
        rows = min(_vocab_rows(text), 1000)
        out["input_ids"] = torch.randint(5, max(rows, 6), (batch, seq_len), generator=gen)
        mask = torch.ones(batch, seq_len, dtype=torch.long)
        mask[-1, seq_len // 2:] = 0
        out["attention_mask"] = mask
    return out


def _graphs(model: nn.Module, wanted: Sequence[str]) -> dict[str, tuple[Callable[..., Any], list[str]]]:
    """graph name → (function, its input names), for the graphs the model has."""
    found: dict[str, tuple[Callable[..., Any], list[str]]] = {}
    probe = example_inputs(model, 1)
    if "vision" in wanted and "images" in probe:
        found["vision"] = (getattr(model, "encode_image", None) or model.vision, ["images"])
    if "text" in wanted and "input_ids" in probe and callable(getattr(model, "encode_text", None)):
        found["text"] = (model.encode_text, ["input_ids", "attention_mask"])
    if "model" in wanted and "images" in probe and "input_ids" in probe:
        found["model"] = (model.forward, ["images", "input_ids", "attention_mask"])
    return found


def _save(fmt: str, module: nn.Module, inputs: tuple[Tensor, ...], names: list[str], outputs: list[str],
          path: Path) -> bool:
    """Write one graph; returns whether its batch dimension is dynamic."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = {n: {0: batch} for n in names}
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation warnings; the check below is what counts
            traced = torch.jit.trace(module, inputs, check_trace=False)
        torch.jit.save(traced, str(path))
        return True  # checked on another batch size below: a batch-specialised trace fails the check
    if fmt == "exported":
        try:
            program = torch.export.export(module, inputs, dynamic_shapes=(tuple(dynamic[n] for n in names),))
        except Exception:  # noqa: BLE001 - a graph that specialises on the batch: export it at this batch
            program, dynamic = torch.export.export(module, inputs), None
        torch.export.save(program, str(path))
        return dynamic is not None
    quiet = logging.getLogger("onnxscript")  # its constant folding logs what it could not fold: not our concern
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, inputs, str(path), dynamo=True, input_names=names, output_names=outputs,
                              dynamic_shapes=(tuple(dynamic[n] for n in names),), verbose=False)
        except Exception:  # noqa: BLE001
            torch.onnx.export(module, inputs, str(path), dynamo=True, input_names=names, output_names=outputs,
                              verbose=False)
            return False
        finally:
            quiet.setLevel(level)
    return True


def _run_saved(fmt: str, path: Path, inputs: tuple[Tensor, ...], names: list[str]) -> list[Tensor]:
    if fmt == "onnx":
        import onnxruntime  # noqa: PLC0415

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {n: x.numpy() for n, x in zip(names, inputs)}
        return [torch.from_numpy(y) for y in session.run(None, feed)]
    module = torch.jit.load(str(path)) if fmt == "torchscript" else torch.export.load(str(path)).module()
    with torch.no_grad():
        return list(module(*inputs))


def export_graphs(model: nn.Module, out_dir: str | Path, formats: Sequence[str] = FORMATS,
                  graphs: Sequence[str] = GRAPHS, tolerance: float = 1e-4) -> dict[str, Any]:
    """Write ``out_dir/GRAPH.SUFFIX`` for every graph and format, each checked against the eager model, and
    ``graphs.json`` (inputs, outputs, dynamic batch, max abs difference, seconds, or the error). Returns that
    manifest; raises :class:`DeployError` when a written file disagrees with the eager model beyond ``tolerance``."""
    from zoo.hub import atomic_write  # noqa: PLC0415
    from zoo.modules.attention import force_backend  # noqa: PLC0415

    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise DeployError(f"unknown format {', '.join(bad) or '(none)'}; expected {', '.join(FORMATS)}")
    unknown = [g for g in graphs if g not in GRAPHS]
    if unknown:
        raise DeployError(f"unknown graph {', '.join(unknown)}; expected {', '.join(GRAPHS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    found = _graphs(model, graphs)
    if not found:
        raise DeployError(f"{type(model).__name__} has none of the graphs {', '.join(graphs)} (no image input, no "
                          "encode_text, or no forward over images and text)")
    build, check = example_inputs(model, 2, seed=0), example_inputs(model, 3, seed=1)
    manifest: dict[str, Any] = {"attention": "math", "tolerance": tolerance, "graphs": {}}
    failures = []
    with force_backend("math"):
        for name, (fn, names) in found.items():
            module = _Flat(model, fn).eval()
            inputs, fresh = tuple(build[n] for n in names), tuple(check[n] for n in names)
            outputs = _output_names(fn, inputs)
            with torch.no_grad():
                want = module(*fresh)
            entry: dict[str, Any] = {"inputs": {n: {"shape": list(build[n].shape), "dtype": str(build[n].dtype)
                                                    .replace("torch.", "")} for n in names},
                                     "outputs": outputs, "files": {}}
            for fmt in formats:
                path = out_dir / f"{name}{SUFFIX[fmt]}"
                began = time.perf_counter()
                try:
                    with torch.no_grad():
                        dynamic = _save(fmt, module, inputs, names, outputs, path)
                    got = _run_saved(fmt, path, fresh if dynamic else inputs, names)
                except Exception as exc:  # noqa: BLE001 - reported, the other graphs still written
                    entry["files"][fmt] = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"}
                    path.unlink(missing_ok=True)
                    continue
                with torch.no_grad():
                    ref = want if dynamic else module(*inputs)
                diff = max(float((g.to(r.dtype) - r).abs().max()) for g, r in zip(got, ref)) if ref else 0.0
                entry["files"][fmt] = {"file": path.name, "dynamic_batch": dynamic, "max_abs_diff": diff,
                                       "seconds": round(time.perf_counter() - began, 2)}
                if len(got) != len(ref) or diff > tolerance:
                    failures.append(f"{path.name}: max abs difference {diff:.3g} to the eager model "
                                    f"(tolerance {tolerance:g})")
            manifest["graphs"][name] = entry
    with atomic_write(out_dir / GRAPHS_NAME, "w") as fh:
        json.dump(manifest, fh, indent=2)
    if failures:
        raise DeployError("; ".join(failures))
    return manifest
