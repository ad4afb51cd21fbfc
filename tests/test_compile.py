"""``train.compile`` / :func:`zoo.models.base.compile_parts`: parts compiled in place with torch.compile (inductor)
give the eager model's loss and gradients, keep its parameter names, and bad settings are errors naming the key."""

from __future__ import annotations

import copy

import pytest
import torch

import zoo
from zoo.models.base import compile_parts
from zoo.spec import ConfigError
from zoo.tasks import get_task
from zoo.train.run import load_task_config


def _batch(n: int = 4) -> dict:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (n, 12), generator=gen)
    return {"images": torch.randn(n, 3, 64, 64, generator=gen), "input_ids": ids,
            "attention_mask": torch.ones_like(ids), "image_ids": torch.arange(n)}


def test_a_compiled_part_gives_the_eager_loss_and_gradients_under_the_same_names(tmp_path, monkeypatch):
    """x2vlm-tiny's ITC + ITM objective with its text encoder compiled (eval mode: no dropout draws to differ): the
    loss and every parameter's gradient equal the eager copy's to float32 rounding, the state-dict keys are the eager
    ones (checkpoints and exports load either way), and the inductor cache lands under ``$MMZOO_HOME``."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("MMZOO_HOME", str(tmp_path / "home"))
    torch.manual_seed(0)
    eager = zoo.create_model("x2vlm-tiny", task="retrieval").eval()
    compiled = copy.deepcopy(eager)
    assert compile_parts(compiled, ["text"]) == ["text"]
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "home" / "compile-cache")
    # inductor writes its default into the environment when first asked (an import can ask): still ours
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    compile_parts(copy.deepcopy(eager), ["text"])
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "home" / "compile-cache")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's own: kept
    compile_parts(copy.deepcopy(eager), ["text"])
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "home" / "compile-cache"))
    objective = get_task("retrieval").loss_method
    losses = []
    for model in (eager, compiled):
        loss = getattr(model, objective)(_batch(), generator=torch.Generator().manual_seed(0))["loss"]
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    grads = dict(eager.named_parameters())
    checked = 0
    for name, p in compiled.named_parameters():
        if grads[name].grad is not None:
            torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)
            checked += 1
    assert checked > 20 and list(compiled.state_dict()) == list(eager.state_dict())
    assert compiled.text._compiled_call_impl is not None and eager.text._compiled_call_impl is None


def test_a_part_the_model_lacks_or_a_bad_mode_is_named():
    model = zoo.create_model("x2vlm-tiny", task="retrieval", device="meta")
    with pytest.raises(ConfigError, match=r"train.compile: the model has no part 'decoder' to compile; its parts: "
                                          r"vision, text"):
        compile_parts(model, ["vision", "decoder"])
    assert model.vision._compiled_call_impl is None  # nothing compiled before the check
    with pytest.raises(ConfigError, match=r"train.compile.mode: expected one of default, reduce-overhead"):
        compile_parts(model, mode="fast")


def test_the_config_key_takes_true_a_list_or_a_mapping():
    for value in ("true", "[vision,text]", "{parts: [vision], mode: max-autotune, dynamic: false}"):
        assert load_task_config("vqa-shapes", [f"train.compile={value}"])["train"]["compile"] is not None
    with pytest.raises(ConfigError, match=r"train.compile: expected .*a mapping \{parts"):
        load_task_config("vqa-shapes", ["train.compile={mode: fast}"])
