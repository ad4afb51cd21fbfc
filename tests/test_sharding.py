"""Sharded data parallelism (zoo.train.sharding, torch's fully_shard on a gloo mesh): two CPU processes, each with
half of a batch, end with the gradients of one process on the whole batch — every parameter, the sharded blocks and
parts (gathered from their shards) and the replicated heads (all-reduced) — and the mean of their losses is the
whole batch's loss."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_distributed import _free_port

import zoo


def _model():
    torch.manual_seed(0)
    return zoo.create_model("x2vlm-tiny", task="vqa_cls", **{"vqa.num_classes": 7}).eval()  # eval: no dropout


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 500, (4, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return {"images": torch.randn(4, 3, 64, 64, generator=g), "question_ids": ids, "question_mask": mask,
            "targets": torch.tensor([0, 3, 6, 3])}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.tensor import DTensor

        from zoo.train.sharding import average_replicated_gradients, shard_model

        model = _model()
        shard_model(model)
        half = {k: v[rank * 2:(rank + 1) * 2] for k, v in _batch().items()}
        loss = model.vqa_loss(half)["loss"]
        loss.backward()
        replicated = average_replicated_gradients(model)
        losses = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(losses, loss.detach())
        grads, kinds = {}, {}
        for name, p in model.named_parameters():
            is_shard = isinstance(p, DTensor)
            kinds[name] = is_shard
            grads[name] = p.grad.full_tensor() if is_shard else p.grad.clone()
        if rank == 0:
            torch.save({"losses": torch.stack(losses), "grads": grads, "sharded": kinds, "replicated": replicated},
                       out)
    finally:
        dist.destroy_process_group()


def test_two_sharded_processes_give_the_gradients_of_one_process_on_the_whole_batch(tmp_path):
    out = str(tmp_path / "rank0.pt")
    mp.start_processes(_worker, args=(2, _free_port(), out), nprocs=2, join=True, start_method="spawn")
    result = torch.load(out)
    model = _model()
    loss = model.vqa_loss(_batch())["loss"]
    loss.backward()
    assert float(result["losses"].mean()) == pytest.approx(float(loss), rel=1e-6)
    names = [n for n, _ in model.named_parameters()]
    assert sorted(result["grads"]) == sorted(names)
    sharded = [n for n in names if result["sharded"][n]]
    # the blocks and the encoders' own weights are sharded, the answer classifier is not
    assert any(n.startswith("vision.blocks.") for n in sharded) and any(n.startswith("text.") for n in sharded)
    assert "vision.patch_embed.proj.weight" in sharded and not any(n.startswith("vqa.") for n in sharded)
    assert result["replicated"] == len(names) - len(sharded) > 0
    for name, p in model.named_parameters():
        torch.testing.assert_close(result["grads"][name], p.grad, rtol=1e-4, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")
