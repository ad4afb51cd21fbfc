"""``mmzoo bench model``: what it times and that it says so while it runs (an official-size model takes minutes)."""

from __future__ import annotations

import pytest

from zoo.bench import bench_model


def test_bench_model_times_each_row_and_logs_every_stage():
    lines: list[str] = []
    r = bench_model("x2vlm-tiny", batch=2, tokens=8, repeat=1, dtypes=("float32",), log=lines.append)
    assert [(row["kind"], row["dtype"], row["attention"]) for row in r["rows"]] == [
        ("forward", "float32", "auto"), ("forward", "float32", "math"),
        ("forward+backward", "float32", "auto"), ("forward+backward", "float32", "math")]
    for row in r["rows"]:
        flops = r["forward_flops"] if row["kind"] == "forward" else r["train_flops"]
        assert row["tflops"] == pytest.approx(flops / row["seconds"] / 1e12)
        assert row["of_peak"] == pytest.approx(flops / row["seconds"] / r["peaks"]["float32"])
    assert r["train_flops"] > 2 * r["forward_flops"]  # the backward costs about twice the forward
    stages = [line.split("] ", 1)[1] for line in lines]
    assert stages[:3] == ["building x2vlm-tiny", "counting the FLOPs of a forward and a training step",
                          "measuring the matmul peak (float32)"]
    assert stages[3] == "timing forward, float32, attention auto: 1 runs after one warm-up"
    assert sum(s.startswith("  median ") for s in stages) == 4


def test_bench_train_runs_real_optimiser_steps_and_splits_their_time(monkeypatch):
    """``mmzoo bench train``: each timed step runs the retrieval objective, backward and AdamW (the weights move), the
    fused kernel as training uses it; the phases add up to the step and the rates follow from it."""
    import torch

    from zoo.bench import bench_train

    seen, seen_fused = [], []
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        seen_fused.append(self.defaults["fused"])
        before = [p.detach().clone() for p in self.param_groups[0]["params"][:3]]
        out = original(self, *args, **kwargs)
        seen.append(any(not torch.equal(b, p) for b, p in zip(before, self.param_groups[0]["params"][:3])))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    r = bench_train("x2vlm-tiny", batch=2, steps=2)
    assert seen == [True, True, True]  # warm-up + 2 timed steps, each moving the weights
    assert seen_fused == [True] * 3  # the optimiser training builds on the CPU (optim.fused's default)
    assert r["step_s"] == pytest.approx(sum(r["phases"].values()))
    assert r["samples_per_s"] == pytest.approx(2 / r["step_s"]) and r["image_size"] == 64
    assert r["peak_rss"] > 0
    with pytest.raises(ValueError, match="bench train times retrieval; got task 'vqa'"):
        bench_train("x2vlm-tiny", task="vqa")
