"""Parts and models that return :class:`zoo.modules.outputs.EncoderOutput` go through ``torch.export`` (the output
dataclasses are pytree nodes), and the exported program computes what the eager module computes."""

from __future__ import annotations

import pytest
import torch

import zoo
from zoo.modules.outputs import EncoderOutput


def _close(a, b) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("name", ["x2vlm-tiny", "cclm-tiny", "demo-tiny"])
def test_a_vision_encoder_exports_and_computes_the_same(name):
    torch.manual_seed(0)
    model = zoo.create_model(name).eval()
    size = model.zoo_config.get("default_resolution") or 64
    images = torch.randn(2, 3, size, size)
    program = torch.export.export(model.vision, (images,))
    with torch.no_grad():
        got, want = program.module()(images), model.vision(images)
    assert isinstance(got, EncoderOutput)
    assert _close(got.tokens, want.tokens) < 1e-5 and _close(got.pooled, want.pooled) < 1e-5


def test_a_whole_model_forward_exports_with_its_outputs():
    """demo-tiny's forward returns a dataclass of EncoderOutputs and head outputs: every tensor of it equal."""
    torch.manual_seed(0)
    model = zoo.create_model("demo-tiny").eval()
    args = (torch.randn(2, 3, 64, 64), torch.randint(1000, 2000, (2, 7)), torch.ones(2, 7, dtype=torch.long))
    program = torch.export.export(model, args)
    with torch.no_grad():
        got, want = program.module()(*args), model(*args)
    assert _close(got.fused.tokens, want.fused.tokens) < 1e-5
    assert _close(got.similarity, want.similarity) < 1e-5 and _close(got.answer_logits, want.answer_logits) < 1e-5
