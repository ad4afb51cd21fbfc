"""Sharded data parallelism with torch's ``fully_shard`` (FSDP2): the layers that hold most of a model's weights are
sharded across the processes of a device mesh, the rest is replicated and its gradients averaged as
DistributedDataParallel averages them. Runs on CPU (gloo) as on CUDA (nccl).

What is sharded (:func:`shard_model`): every element of every ``nn.ModuleList`` (the transformer blocks of the
encoders, fusion layers and decoders: the bulk of the parameters), and each top-level part the families only call
through its ``forward`` (``vision``, ``text``, ``fusion``, ``lm``, ``decoder``; the embeddings, position tables and
norms around the blocks). A sharded module gathers its parameters in its forward pre-hook and frees them after; its
gradients are reduce-scattered (averaged) in backward. What stays whole: the task heads (their helper methods —
``itc.temperature()``, ``embed_image`` — read parameters outside any forward, which a sharded module would hand out
as shards) and any parameter directly on the model; :func:`average_replicated_gradients` all-reduces their gradients
after backward, as DDP would.

The result equals single-process training on the whole batch when the loss is a mean over samples (the average of
the per-process means): ``tests/test_sharding.py`` checks the gradients of every parameter against a one-process
run of x2vlm-tiny. Objectives that contrast samples across the batch (ITC) need their features gathered across
processes, as the retrieval task does under DDP.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["SHARDED_PARTS", "average_replicated_gradients", "clip_grad_norm", "shard_model", "sharded_modules"]

#: the top-level parts sharded as a whole (each is called through its forward by every family)
SHARDED_PARTS = ("vision", "text", "fusion", "lm", "decoder")


def sharded_modules(model: nn.Module) -> list[nn.Module]:
    """The modules :func:`shard_model` shards, innermost first (``fully_shard``'s order): the elements of every
    ``ModuleList`` that hold parameters, then the parts of :data:`SHARDED_PARTS` the model has."""
    blocks: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            blocks.extend(m for m in module if any(True for _ in m.parameters()))
    parts = [getattr(model, name) for name in SHARDED_PARTS if isinstance(getattr(model, name, None), nn.Module)]
    heads = {id(m) for name, child in model.named_children() if name not in SHARDED_PARTS for m in child.modules()}
    blocks = [b for b in blocks if id(b) not in heads]  # a head's layers stay whole with the head
    return list(dict.fromkeys(blocks + [p for p in parts if any(True for _ in p.parameters())]))


def shard_model(model: nn.Module, mesh=None, reshard_after_forward: bool = True) -> nn.Module:
    """Apply ``fully_shard`` to :func:`sharded_modules` of ``model`` on ``mesh`` (default: a 1-D mesh over every
    process of the default group, on the device type of the model's parameters). Returns the model (in place)."""
    from torch.distributed.device_mesh import init_device_mesh  # noqa: PLC0415
    from torch.distributed.fsdp import fully_shard  # noqa: PLC0415

    if mesh is None:
        import torch.distributed as dist  # noqa: PLC0415

        device = next(model.parameters()).device.type
        mesh = init_device_mesh(device, (dist.get_world_size(),))
    for module in sharded_modules(model):
        fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return model


def replicated_parameters(model: nn.Module) -> Iterable[nn.Parameter]:
    """The parameters ``shard_model`` left whole (plain tensors, not DTensors)."""
    from torch.distributed.tensor import DTensor  # noqa: PLC0415

    return [p for p in model.parameters() if not isinstance(p, DTensor)]


def average_replicated_gradients(model: nn.Module, group=None) -> int:
    """All-reduce (mean) the gradients of the parameters left whole, after backward; returns how many. One flat
    buffer per dtype: one collective call each."""
    import torch.distributed as dist  # noqa: PLC0415

    grads = [p.grad for p in replicated_parameters(model) if p.grad is not None]
    world = dist.get_world_size(group)
    for dtype in {g.dtype for g in grads}:
        same = [g for g in grads if g.dtype == dtype]
        flat = torch.cat([g.reshape(-1) for g in same])
        dist.all_reduce(flat, group=group)
        flat /= world
        offset = 0
        for g in same:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
    return len(grads)


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over a model with sharded and replicated gradients (the former DTensors,
    the latter plain and already averaged): the 2-norm of all of them together, as one process's whole gradients
    would give; every gradient scaled by ``max_norm / norm`` when the norm is larger. Returns the norm."""
    from torch.distributed.tensor import DTensor  # noqa: PLC0415

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    total = torch.zeros((), dtype=torch.float32)
    for g in grads:
        norm = torch.linalg.vector_norm(g, dtype=torch.float32)
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm  # a shard's norm: reduced over the mesh
        total = total + norm.to(total.device) ** 2
    total = total.sqrt()
    coef = float(max_norm) / (float(total) + 1e-6)
    if coef < 1:
        for g in grads:
            g.mul_(coef)
    return total
