"""Two CPU processes (gloo): the ITC loss over features gathered from both equals the official contrastive formula on the
full batch, written out here in float64, and the gradients, averaged as DistributedDataParallel averages them, equal
that formula's gradients; both also equal the single-process head's."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_heads_reference import official

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


def _formula_loss(head: ContrastiveHead, img: torch.Tensor, txt: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """X2-VLM's get_contrastive_loss in float64, differentiable, with no call into zoo: projections divided by their L2
    norms, logits image @ text.T / temp, targets the same-id indicator over its row sums, cross-entropy both ways."""
    w_i, b_i = head.vision_proj.weight.double(), head.vision_proj.bias.double()
    w_t, b_t = head.text_proj.weight.double(), head.text_proj.bias.double()
    fi = img.double() @ w_i.t() + b_i
    ft = txt.double() @ w_t.t() + b_t
    fi = fi / fi.pow(2).sum(1, keepdim=True).sqrt()
    ft = ft / ft.pow(2).sum(1, keepdim=True).sqrt()
    logits = fi @ ft.t() / head.temp.double()
    same = (ids[:, None] == ids[None, :]).double()
    targets = same / same.sum(1, keepdim=True)
    i2t = -(torch.log_softmax(logits, 1) * targets).sum(1).mean()
    t2i = -(torch.log_softmax(logits.t(), 1) * targets).sum(1).mean()
    return (i2t + t2i) / 2


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
    assert float(head.temp) == pytest.approx(official("itc_temp"))
    img, txt, ids = _inputs()
    ref = _formula_loss(head, img, txt, ids)
    ref.backward()
    assert float(dist_result["loss"]) == pytest.approx(float(ref), rel=1e-6)
    for name, p in head.named_parameters():
        torch.testing.assert_close(dist_result["grads"][name].double(), p.grad.double(), rtol=1e-4, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")
    head = _head()
    img, txt, ids = _inputs()
    loss = head(img, txt, ids)["loss"]
    loss.backward()
    assert torch.allclose(dist_result["loss"], loss.detach(), atol=1e-6)
    for name, p in head.named_parameters():
        assert torch.allclose(dist_result["grads"][name], p.grad, atol=1e-6), name
