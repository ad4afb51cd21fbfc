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


def test_the_official_equality_check_loads_the_official_weights_and_forces_its_negatives():
    """``mmzoo bench train --official``'s equality check on an official-layout x2vlm-tiny state dict (keys renamed
    back by hand, zengyan-97/X2-VLM names): the losses it computes equal ITC (float64 formula: symmetric
    cross-entropy of the normalised projections over temp) and ITM (the fused CLS of the three pair sets through the
    ITM head) written out here with the official negatives; different negatives change only ITM. Catches the
    official weights left unloaded (the model's own random ones), or the model's own negatives drawn instead."""
    import torch
    import torch.nn.functional as F

    import zoo
    from zoo.registry import MODELS

    official_x2vlm_equality = MODELS.get("x2vlm").official_train_step.check

    torch.manual_seed(7)
    ref = zoo.create_model("x2vlm-tiny", task="retrieval").eval()
    to_official = [("vision.", "vision_encoder."), ("text.", "text_encoder.bert."), ("itc.vision_proj.", "vision_proj."),
                   ("itc.text_proj.", "text_proj."), ("itc.temp", "temp"), ("itm.mlp.", "itm_head.")]
    state = {}
    for key, value in ref.state_dict().items():
        ours, theirs = next((o, t) for o, t in to_official if key.startswith(o))
        state[theirs + key[len(ours):]] = value.clone()
    g = torch.Generator().manual_seed(1)
    b = 4
    images, ids = torch.randn(b, 3, 64, 64, generator=g), torch.randint(5, 90, (b, 12), generator=g)
    mask = torch.ones_like(ids)
    image_neg, text_neg = torch.tensor([1, 0, 3, 2]), torch.tensor([2, 3, 0, 1])
    with torch.no_grad():
        img, txt = ref.encode_image(images), ref.encode_text(ids, mask)
        vf = F.normalize(ref.itc.vision_proj(img.tokens[:, 0]).double(), dim=-1)
        tf = F.normalize(ref.itc.text_proj(txt.tokens[:, 0]).double(), dim=-1)
        logits = vf @ tf.t() / ref.itc.temp.double()
        itc = (F.cross_entropy(logits, torch.arange(b)) + F.cross_entropy(logits.t(), torch.arange(b))) / 2

        def cls(image_idx, text_idx):
            return ref.fuse(txt.tokens[text_idx], mask[text_idx], img.tokens[image_idx], img.mask).tokens[:, 0]

        every = torch.arange(b)
        logits_itm = ref.itm.mlp(torch.cat([cls(every, every), cls(image_neg, every), cls(every, text_neg)]))
        itm = F.cross_entropy(logits_itm, torch.cat([torch.ones(b), torch.zeros(2 * b)]).long())
    saved = {"state_dict": state, "images": images, "input_ids": ids, "attention_mask": mask,
             "image_neg": image_neg, "text_neg": text_neg, "itc": itc.float(), "itm": itm}
    torch.manual_seed(99)  # the checked model starts from other random weights
    eq = official_x2vlm_equality(saved, "x2vlm-tiny")
    assert eq["missing"] == [] and eq["unexpected"] == []
    assert eq["itc"] < 1e-6 and eq["itm"] < 1e-6
    # other negatives (another set of pairs: swapping the two lists would give the same pairs)
    other = official_x2vlm_equality(dict(saved, image_neg=torch.tensor([3, 3, 1, 1]), text_neg=torch.tensor([3, 2, 1, 0])),
                                    "x2vlm-tiny")
    assert other["itc"] < 1e-6 and other["itm"] > 1e-4
    # a family without an official step (CCLM inherits X²-VLM's model class, not its official code)
    from zoo.bench import bench_train_vs_official
    from zoo.spec import ConfigError

    with pytest.raises(ConfigError, match="family 'cclm' declares no official training step"):
        bench_train_vs_official("cclm-tiny", "checkout", "python")
