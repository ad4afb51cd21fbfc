"""Deployable exports (zoo.deploy, ``mmzoo export --format``), the model card and ``push_to_hub``: every graph file
loaded back by its own runtime (onnxruntime, torch.jit, torch.export) computes what the eager model computes on
inputs of another batch size."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import zoo
from zoo.deploy import DeployError, example_inputs, export_graphs
from zoo.models.base import count_parameters


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return zoo.create_model("x2vlm-tiny", task="retrieval").eval()


def test_vision_graphs_in_every_format_compute_the_eager_encoder(tiny, tmp_path):
    """The ONNX file run by onnxruntime, the TorchScript file and the .pt2 program, each on 4 fresh images (the
    files were made from 2): tokens and pooled vector equal the eager ``encode_image`` (SDPA backend) to 1e-4.
    Catches a batch-specialised graph, outputs in another order, or a graph of another function."""
    import onnxruntime

    manifest = export_graphs(tiny, tmp_path, graphs=["vision"])
    files = manifest["graphs"]["vision"]["files"]
    assert manifest["graphs"]["vision"]["outputs"] == ["tokens", "pooled"]
    assert all(f["dynamic_batch"] for f in files.values())
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        want = tiny.encode_image(images)
    session = onnxruntime.InferenceSession(str(tmp_path / "vision.onnx"), providers=["CPUExecutionProvider"])
    onnx_tokens, onnx_pooled = session.run(None, {"images": images.numpy()})
    assert np.abs(onnx_tokens - want.tokens.numpy()).max() < 1e-4
    assert np.abs(onnx_pooled - want.pooled.numpy()).max() < 1e-4
    for module in (torch.jit.load(str(tmp_path / "vision.torchscript.pt")),
                   torch.export.load(str(tmp_path / "vision.pt2")).module()):
        with torch.no_grad():
            tokens, pooled = module(images)
        assert float((tokens - want.tokens).abs().max()) < 1e-4
        assert float((pooled - want.pooled).abs().max()) < 1e-4


def test_the_whole_forward_pass_as_onnx_names_its_outputs(tiny, tmp_path):
    """``model``: images + text through encoders, fusion and heads; the outputs named from the forward's dict and
    equal to it under onnxruntime (the contrastive features and matching logits included)."""
    import onnxruntime

    manifest = export_graphs(tiny, tmp_path, formats=["onnx"], graphs=["model"])
    names = manifest["graphs"]["model"]["outputs"]
    assert {"image_feat", "text_feat", "itm_logits", "fused_tokens"} <= set(names)
    inputs = example_inputs(tiny, 3, seed=4)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    got = dict(zip(names, session.run(None, {k: v.numpy() for k, v in inputs.items()})))
    with torch.no_grad():
        want = tiny(inputs["images"], inputs["input_ids"], inputs["attention_mask"])
    assert np.abs(got["itm_logits"] - want["itm_logits"].numpy()).max() < 1e-4
    assert np.abs(got["text_feat"] - want["text_feat"].numpy()).max() < 1e-4


def test_a_graph_that_disagrees_with_the_eager_model_is_an_error(tiny, tmp_path):
    with pytest.raises(DeployError, match=r"vision\.onnx: max abs difference .* to the eager model \(tolerance 0\)"):
        export_graphs(tiny, tmp_path, formats=["onnx"], graphs=["vision"], tolerance=0.0)
    with pytest.raises(DeployError, match="unknown format tflite"):
        export_graphs(tiny, tmp_path, formats=["tflite"])


def test_cli_export_with_formats_and_the_model_card(tiny, tmp_path, capsys):
    from zoo.cli import main

    run = {"task": "retrieval", "val": {"r_mean": 91.25}, "test": {"r_mean": 90.5},
           "config": {"data": {"root": "shapes"}}, "config_file": "retrieval.yaml"}
    tiny.save_pretrained(tmp_path / "src", run=run)
    card = (tmp_path / "src" / "README.md").read_text()
    assert f"{count_parameters(tiny):,} parameters" in card
    assert f"| vision | {count_parameters(tiny.vision):,} |" in card
    assert "| test | r_mean 90.5 |" in card and "- data: `shapes`" in card and "library_name: mmzoo" in card
    assert main(["export", str(tmp_path / "src"), str(tmp_path / "out"), "--format", "torchscript",
                 "--graphs", "text"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^text\s+torchscript\s+text\.torchscript\.pt\s+yes\s+0$", out, re.MULTILINE)
    assert (tmp_path / "out" / "graphs" / "text.torchscript.pt").is_file()
    assert (tmp_path / "out" / "README.md").is_file() and (tmp_path / "out" / "model.safetensors").is_file()
    assert main(["export", str(tmp_path / "src"), str(tmp_path / "bad"), "--format", "tflite"]) == 2
    assert "unknown tflite; --format takes safetensors, onnx, torchscript, exported" in capsys.readouterr().err


def test_push_to_hub_uploads_the_export_through_huggingface_hub(tiny, monkeypatch):
    """The Hub is unreachable here: HfApi's two calls are recorded, and the folder handed to upload_folder is the
    export (config, weights, model card) that from_pretrained loads back with the same weights."""
    import huggingface_hub

    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs)
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        from pathlib import Path

        calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
        calls["reloaded"] = zoo.from_pretrained(folder_path).state_dict()
        return f"https://huggingface.co/{repo_id}/commit/1"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    assert tiny.push_to_hub("org/tiny", private=True) == "https://huggingface.co/org/tiny/commit/1"
    assert calls["create"] == ("org/tiny", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert {"README.md", "config.json", "model.safetensors"} <= set(calls["files"])
    assert all(torch.equal(calls["reloaded"][k], v) for k, v in tiny.state_dict().items())


def test_a_users_own_readme_beside_an_export_is_kept_and_a_card_is_renewed(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "a")
    card = (tmp_path / "a" / "README.md").read_text()
    tiny.save_pretrained(tmp_path / "a", run={"test": {"r_mean": 50.0}})  # a card of ours is rewritten
    renewed = (tmp_path / "a" / "README.md").read_text()
    assert renewed != card and "r_mean 50" in renewed
    (tmp_path / "a" / "README.md").write_text("my notes")
    tiny.save_pretrained(tmp_path / "a", run={"test": {"r_mean": 60.0}})
    assert (tmp_path / "a" / "README.md").read_text() == "my notes"
