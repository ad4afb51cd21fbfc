"""X²-VLM's official training step for ``mmzoo bench train x2vlm-* --official CHECKOUT --official-python PY``
(:attr:`zoo.models.base.ZooModel.official_train_step`): the official ``XVLMForRetrieval`` step timed under the
official code's own venv (:mod:`zoo.models.x2vlm.official_step`, run by its path), and the equality check of this
model's losses against the official ones on the official initial weights, inputs and hard negatives."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def run(checkout: str, python: str, *, batch: int = 8, image_size: int = 224, tokens: int = 40, steps: int = 3,
        threads: int | None = None, save: str | None = None) -> dict[str, Any]:
    """The official retrieval step timed by ``official_step.py`` under ``python`` (a venv that imports the official
    code at ``checkout``): ``{step_s, steps, first_step_s, phases, parameters, torch, threads}``; ``save`` also writes
    the file :func:`check` reads."""
    script = Path(__file__).with_name("official_step.py")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "step.json"
        cmd = [python, str(script), "--official", checkout, "--batch", str(batch), "--image-size", str(image_size),
               "--tokens", str(tokens), "--steps", str(steps), "--json", str(out)]
        cmd += (["--threads", str(threads)] if threads else []) + (["--save", save] if save else [])
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode or not out.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            print(done.stderr[-3000:], file=sys.stderr)
            raise RuntimeError(f"the official step under {python} failed: {last}")
        return json.loads(out.read_text(encoding="utf-8"))


def check(saved: dict, name: str) -> dict[str, Any]:
    """The retrieval losses of ``name`` with the official model's initial weights (``saved``: what
    ``official_step.py --save`` writes, read with ``torch.load(weights_only=True)``) on its inputs and hard
    negatives, against the official losses: ``{"itc": |Δ|, "itm": |Δ|, "itc_value", "itm_value", "missing",
    "unexpected"}`` (evaluation mode: no dropout)."""
    import torch  # noqa: PLC0415

    import zoo  # noqa: PLC0415
    import zoo.heads.matching as matching  # noqa: PLC0415
    from zoo.models.x2vlm.convert import convert_official_state_dict  # noqa: PLC0415

    model = zoo.create_model(name, task="retrieval").eval()
    state, _ = convert_official_state_dict(saved["state_dict"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    batch = {"images": saved["images"], "input_ids": saved["input_ids"], "attention_mask": saved["attention_mask"],
             "image_ids": torch.arange(saved["images"].shape[0])}
    drawn = (saved["image_neg"].long(), saved["text_neg"].long())
    original = matching.sample_hard_negatives
    matching.sample_hard_negatives = lambda *args, **kwargs: drawn  # the negatives the official sampler drew
    try:
        with torch.no_grad():
            losses = model.retrieval_losses(batch)
    finally:
        matching.sample_hard_negatives = original
    return {"itc": float((losses["itc"] - saved["itc"]).abs()), "itm": float((losses["itm"] - saved["itm"]).abs()),
            "itc_value": float(saved["itc"]), "itm_value": float(saved["itm"]),
            "missing": [k for k in missing if not k.endswith("relative_position_index")], "unexpected": unexpected}
