"""Two CPU processes (gloo): the ITC loss over features gathered from both equals the single-process loss on the full
batch, and the gradients, averaged as DistributedDataParallel averages them, equal the full-batch gradients."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zoo.heads.contrastive import ContrastiveHead


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 16, generator=g), torch.randn(8, 12, generator=g), torch.tensor([0, 1, 1, 2, 3, 4, 4, 5])


def _head():
    torch.manual_seed(0)
    return ContrastiveHead(vision_width=16, text_width=12, embed_dim=8)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        head = _head()
        img, txt, ids = _inputs()
        part = slice(rank * 4, (rank + 1) * 4)
        loss = head(img[part], txt[part], ids[part])["loss"]
        loss.backward()
        grads = {n: p.grad.clone() for n, p in head.named_parameters()}
        for g in grads.values():  # what DistributedDataParallel does with parameter gradients
            dist.all_reduce(g)
            g /= world
        if rank == 0:
            torch.save({"loss": loss.detach(), "grads": grads}, out)
    finally:
        dist.destroy_process_group()


def test_gathered_itc_equals_single_process_full_batch(tmp_path):
    out = str(tmp_path / "rank0.pt")
    mp.start_processes(_worker, args=(2, _free_port(), out), nprocs=2, join=True, start_method="spawn")
    dist_result = torch.load(out)
    head = _head()
    img, txt, ids = _inputs()
    loss = head(img, txt, ids)["loss"]
    loss.backward()
    assert torch.allclose(dist_result["loss"], loss.detach(), atol=1e-6)
    for name, p in head.named_parameters():
        assert torch.allclose(dist_result["grads"][name], p.grad, atol=1e-6), name
