"""A user's own vision encoder, defined outside the package, used by name in a YAML config (docs/plugins.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import install_plugin

from zoo.catalog import model_config_path

USER_MODULE = textwrap.dedent(
    '''
    import torch
    from torch import nn

    import zoo
    from zoo.modules.outputs import EncoderOutput


    @zoo.register_vision_encoder("tiny_convnet")
    class TinyConvNet(nn.Module):
        """Patchify with one strided convolution; the mean of the patches is the pooled vector."""

        def __init__(self, width: int = 64, patch: int = 16, img_size: int = 64):
            super().__init__()
            self.width, self.image_size = width, img_size
            self.conv = nn.Conv2d(3, width, patch, stride=patch)

        def forward(self, images):
            tokens = self.conv(images).flatten(2).transpose(1, 2)
            return EncoderOutput(tokens=tokens, pooled=tokens.mean(1))
    '''
)


def _config(tmp_path, with_imports: bool) -> str:
    base = model_config_path("demo-tiny")
    imports = "imports: [user_encoders]\n" if with_imports else ""
    cfg = tmp_path / "my-model.yaml"
    cfg.write_text(
        f"_base_: {base}\nname: my-model\n{imports}"
        "model:\n  vision: {_replace_: true, type: tiny_convnet, width: 64}\n"
    )
    return str(cfg)


CHECK = textwrap.dedent(
    '''
    import sys, torch, zoo
    torch.manual_seed(0)
    model = zoo.create_model(sys.argv[1]).eval()
    assert type(model.vision).__name__ == "TinyConvNet", type(model.vision)
    images = torch.randn(2, 3, 64, 64)
    ids = torch.randint(1000, 2000, (2, 6))
    out = model(images, ids)
    assert out.vision.tokens.shape == (2, 16, 64), out.vision.tokens.shape
    assert out.fused.tokens.shape == (2, 6, 64)
    # the encoder is really used: changing the image changes the fused text states
    out2 = model(images.flip(-1), ids)
    assert not torch.allclose(out.fused.tokens, out2.fused.tokens)
    # a loss that depends on the states themselves: the plain sum of layer-normed states is a constant
    (out.fused.tokens * torch.randn_like(out.fused.tokens)).sum().backward()
    assert model.vision.conv.weight.grad is not None and model.vision.conv.weight.grad.abs().sum() > 1e-6
    print("ok", zoo.VISION_ENCODERS.get("tiny_convnet").__module__)
    '''
)


def _run(tmp_path, cfg, extra_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(extra_path), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", CHECK, cfg], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_user_encoder_through_imports_key(tmp_path):
    (tmp_path / "user_encoders.py").write_text(USER_MODULE)
    out = _run(tmp_path, _config(tmp_path, with_imports=True), tmp_path)
    assert "ok user_encoders" in out


def test_imports_finds_a_module_next_to_its_config_file(tmp_path):
    """``imports: [user_encoders]`` with ``user_encoders.py`` beside the YAML file and neither on the import path nor
    in the working folder (as under the ``mmzoo`` entry point, whose ``sys.path[0]`` is its own bin folder): the
    folder of the config file is searched first."""
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "user_encoders.py").write_text(USER_MODULE)
    cfg = _config(folder, with_imports=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", CHECK, cfg], env=env, capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ok user_encoders" in res.stdout


def test_user_encoder_through_entry_point(tmp_path):
    """A separate installed package registers through the ``mmzoo.plugins`` entry-point group."""
    site = install_plugin(tmp_path / "site", "user_encoders", USER_MODULE)
    out = _run(tmp_path, _config(tmp_path, with_imports=False), site)
    assert "ok user_encoders" in out


def test_unregistered_type_without_plugin_is_a_config_error(tmp_path):
    import zoo
    from zoo.spec import ConfigError

    cfg = _config(tmp_path, with_imports=False)
    with pytest.raises(ConfigError) as info:
        zoo.create_model(cfg)
    assert "model.vision.type" in str(info.value) and "unknown vision_encoder 'tiny_convnet'" in str(info.value)
    assert "my-model.yaml" in str(info.value)
