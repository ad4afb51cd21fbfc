"""Optimiser groups, the warm-up/decay schedule, freezing, and the non-finite-loss stop."""

from __future__ import annotations

import pytest
import torch

import zoo
from zoo.train.optim import apply_freeze, linear_warmup_decay, param_groups, part_of, warmup_steps_for


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return zoo.create_model("x2vlm-tiny", task="vqa")


def test_parts_follow_the_split_stack(model):
    start = model.text.fusion_start
    assert part_of(model, "vision.blocks.0.attn.qkv.weight") == "vision"
    assert part_of(model, "text.embeddings.word_embeddings.weight") == "text"
    assert part_of(model, f"text.encoder.layer.{start - 1}.output.dense.weight") == "text"
    assert part_of(model, f"text.encoder.layer.{start}.crossattention.self.key.weight") == "fusion"
    assert part_of(model, "vqa.decoder.bert.encoder.layer.0.output.dense.weight") == "other"


def test_param_groups_lrs_decay_and_coverage(model):
    groups = param_groups(model, lr=1e-4, weight_decay=0.02, vision_lr=2e-5, text_lr=5e-5, fusion_lr=3e-5,
                          new_params=["vqa.*"], new_param_lr_mult=2.0)
    by_name = {g["name"]: g for g in groups}
    assert by_name["vision"]["lr"] == 2e-5 and by_name["text"]["lr"] == 5e-5 and by_name["fusion"]["lr"] == 3e-5
    assert by_name["other_new"]["lr"] == 2e-4  # new parameters: lr × 2
    for g in groups:
        dims = {p.ndim for p in g["params"]}
        if g["name"].endswith("_no_decay"):
            assert g["weight_decay"] == 0.0 and dims <= {0, 1}
        else:
            assert g["weight_decay"] == 0.02 and min(dims) >= 2
    # every trainable parameter exactly once (tied tensors once)
    grouped = [id(p) for g in groups for p in g["params"]]
    unique = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(grouped) == len(set(grouped)) == len(unique)
    assert all(n.startswith("vqa.") for n in by_name["other_new"]["param_names"])


def test_schedule_is_linear_warmup_then_linear_decay():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = linear_warmup_decay(opt, total_steps=10, warmup_steps=4)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [(s + 1) / 4 if s < 4 else (10 - s) / 6 for s in range(10)]
    assert lrs == pytest.approx(expected)
    assert warmup_steps_for(100, 0.1) == 10 and warmup_steps_for(100, 7) == 7


def test_freeze_patterns(model):
    m = zoo.create_model("x2vlm-tiny", task="vqa")
    frozen = apply_freeze(m, ["vision.*"])
    assert frozen and all(n.startswith("vision.") for n in frozen)
    assert not any(p.requires_grad for p in m.vision.parameters())
    assert all(p.requires_grad for p in m.text.parameters())
    groups = param_groups(m, lr=1e-4)
    assert not any(g["name"].startswith("vision") for g in groups)
    with pytest.raises(ValueError, match="match no parameter"):
        apply_freeze(m, ["visoin.*"])


def test_non_finite_loss_stops_with_the_step(model):
    from zoo.train.module import NonFiniteLossError, TaskModule

    class Broken(torch.nn.Module):
        task_heads = {"vqa": ()}  # a model that declares VQA (zoo.tasks) and returns a NaN loss

        def vqa_loss(self, batch):
            return {"loss": torch.tensor(float("nan")), "vqa": torch.tensor(float("nan"))}

        def vqa_predict(self, images, question_ids, question_mask, *args, **kwargs):
            raise NotImplementedError

    module = TaskModule(Broken(), "vqa")
    with pytest.raises(NonFiniteLossError, match="training loss is nan at global step 0 .* batch 3"):
        module.training_step({"images": torch.zeros(2, 3, 4, 4)}, 3)


def test_training_logs_each_loss_at_the_batch_size_and_the_epochs_skipped_samples(capsys):
    """Every scalar loss is logged as train/NAME with the batch's number of images as its batch size (not a size
    Lightning guesses from the first tensor it finds: here the flattened answers, 5 rows); the samples the batches
    dropped are logged once at the epoch's end as train/skipped_samples, then counted afresh."""
    from types import SimpleNamespace
    from typing import ClassVar

    from zoo.train.module import TaskModule

    class Fixed(torch.nn.Module):
        task_heads: ClassVar[dict] = {"vqa": ()}

        def vqa_loss(self, batch):
            return {"loss": torch.tensor(0.5), "vqa": torch.tensor(0.5), "per_sample": torch.ones(3)}

        def vqa_predict(self, images, question_ids, question_mask, *args, **kwargs):
            raise NotImplementedError

    module = TaskModule(Fixed(), "vqa")
    logged = []
    module.log = lambda name, value, **kwargs: logged.append((name, float(value), kwargs.get("batch_size")))
    batch = {"answer_ids": torch.zeros(5, 4, dtype=torch.long), "images": torch.zeros(3, 3, 4, 4), "num_skipped": 2}
    module.training_step(batch, 0)
    assert logged == [("train/loss", 0.5, 3), ("train/vqa", 0.5, 3)]
    logged.clear()
    module._trainer = SimpleNamespace(is_global_zero=True, current_epoch=0, progress_bar_callback=None)
    module.on_train_epoch_end()
    assert logged == [("train/skipped_samples", 2.0, None)] and module.skipped == 0
    assert "epoch 0: skipped 2 bad sample(s) (data.on_bad_sample=skip)" in capsys.readouterr().out


def test_fused_adamw_is_chosen_on_cpu_and_updates_as_the_loop_does(model):
    """optim.fused: auto → torch's fused AdamW (CPU floating-point parameters); the update equals the per-tensor
    loop's; false turns it off; anything else is a config error naming the key."""
    from types import SimpleNamespace

    from zoo.spec import ConfigError
    from zoo.train.module import TaskModule

    def optimizer(precision="32-true", **optim):
        module = TaskModule(model, "vqa", {"lr": 1e-3, **optim})
        module.trainer = SimpleNamespace(estimated_stepping_batches=10, precision=precision)
        return module.configure_optimizers()["optimizer"]

    assert optimizer().defaults["fused"] is True
    assert not optimizer("bf16-mixed").defaults["fused"]  # Lightning's AMP plugin clips only unfused optimizers
    assert not optimizer(fused=False).defaults["fused"]
    with pytest.raises(ConfigError, match="optim.fused"):
        optimizer(fused="yes")
    params = [torch.nn.Parameter(torch.randn(50, 8, generator=torch.Generator().manual_seed(i))) for i in range(3)]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fused = torch.optim.AdamW(params, lr=1e-2, fused=True)
    loop = torch.optim.AdamW(copies, lr=1e-2, foreach=False)
    for step in range(5):
        for ps, opt in ((params, fused), (copies, loop)):
            for i, p in enumerate(ps):
                p.grad = torch.full_like(p, 0.1 * (step + 1)) + torch.arange(p.numel()).view_as(p) * 1e-3 * (i + 1)
            opt.step()
    for a, b in zip(params, copies):
        assert torch.allclose(a, b, atol=1e-6)
