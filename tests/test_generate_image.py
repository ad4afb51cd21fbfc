"""``mmzoo predict SOURCE --generate-image TEXT``: DaVinci text → image sampling written as PNG files (tiny config).

References: the VQGAN's own resolution (grid × downsampling), ``model.generate_image`` with the same seeded generator,
an independent uint8 formula (numpy ``rint(clip(x, 0, 1) · 255)`` in float32), and a greedy decoding loop written here
from ``decoder_logits`` (argmax over the code slice of the vocabulary) for ``top_k=1``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo.cli import main
from zoo.predict import generate_images, to_uint8
from zoo.train.run import model_from_checkpoint

TEXT = "a red circle"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """An export of davinci-tiny with task text_to_image, and one without an image tokenizer (captioning)."""
    root = tmp_path_factory.mktemp("generate_image")
    torch.manual_seed(0)
    t2i = zoo.create_model("davinci-tiny", task="text_to_image").eval()
    t2i.save_pretrained(root / "t2i")
    cap = zoo.create_model("davinci-tiny", task="captioning", image_tokenizer=None).eval()
    cap.save_pretrained(root / "cap")
    return root / "t2i", root / "cap"


@pytest.fixture(scope="module")
def model(exports):
    return model_from_checkpoint(exports[0]).eval()


def _read(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img).copy()


def _uint8_reference(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] → (B, H, W, 3) uint8, computed with numpy alone."""
    x = images.detach().cpu().numpy().astype(np.float32)
    return np.rint(np.clip(x, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8).transpose(0, 2, 3, 1)


def test_png_has_the_vqgan_resolution_and_three_channels(exports, model, tmp_path):
    out = tmp_path / "sub" / "image.png"
    paths = generate_images(exports[0], TEXT, out=out)
    assert paths == [out] and out.is_file()
    vq = model.image_tokenizer
    side = 64  # davinci-tiny.yaml: image_tokenizer resolution 64, 4 downsamplings (ch_mult of 5 levels) → 4×4 codes
    assert vq.grid == (4, 4) and side // 2 ** 4 == vq.grid[0]
    with Image.open(out) as img:
        assert img.size == (side, side) and img.mode == "RGB" and len(img.getbands()) == 3
    assert sorted(p.name for p in out.parent.iterdir()) == ["image.png"]  # the temporary file was renamed away


def test_same_seed_same_file_other_seed_other_pixels(exports, tmp_path):
    a = generate_images(exports[0], TEXT, out=tmp_path / "a.png", seed=7)[0]
    b = generate_images(exports[0], TEXT, out=tmp_path / "b.png", seed=7)[0]
    c = generate_images(exports[0], TEXT, out=tmp_path / "c.png", seed=8)[0]
    assert a.read_bytes() == b.read_bytes()
    assert not np.array_equal(_read(a), _read(c))


def test_written_pixels_equal_generate_image(exports, model, tmp_path):
    paths = generate_images(exports[0], TEXT, out=tmp_path / "img.png", num_images=2, seed=3, top_k=50, top_p=0.95,
                            temperature=1.3)
    assert paths == [tmp_path / "img_0.png", tmp_path / "img_1.png"]
    with torch.no_grad():
        ref = model.generate_image([TEXT, TEXT], top_k=50, top_p=0.95, temperature=1.3,
                                   generator=torch.Generator().manual_seed(3))
    expected = _uint8_reference(ref)
    assert np.array_equal(to_uint8(ref), expected)
    for path, want in zip(paths, expected):
        assert np.array_equal(_read(path), want)
    assert not np.array_equal(expected[0], expected[1])  # two samples, not one image twice
    # the config defaults (image_top_k / image_top_p) apply when no option is given
    default = generate_images(exports[0], TEXT, out=tmp_path / "d.png", seed=4)[0]
    with torch.no_grad():
        ref = model.generate_image([TEXT], top_k=model.image_top_k, top_p=model.image_top_p,
                                   generator=torch.Generator().manual_seed(4))
    assert np.array_equal(_read(default), _uint8_reference(ref)[0])


def test_top_k_1_is_greedy_whatever_the_seed(exports, model, tmp_path):
    a = _read(generate_images(exports[0], TEXT, out=tmp_path / "a.png", seed=0, top_k=1)[0])
    b = _read(generate_images(exports[0], TEXT, out=tmp_path / "b.png", seed=123, top_k=1)[0])
    assert np.array_equal(a, b)
    # greedy decoding written out here: argmax over the image-code slice of the decoder's vocabulary, step by step
    from zoo.models.davinci import official_tokenize

    with torch.no_grad():
        ids, mask = official_tokenize(model.tokenizer(), [TEXT], model.max_tokens)
        states, smask = model.encode(None, ids, mask)
        lo, n = model.text_vocab_size, model.text.visual_vocab_size
        tokens = torch.tensor([[model.image_bos_token_id]])
        rows, cols = model.image_tokenizer.grid
        for _ in range(rows * cols):
            code = model.decoder_logits(tokens, None, states, smask)[:, -1, lo: lo + n].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, code + lo], dim=1)
        greedy = model.image_tokenizer.decode_codes((tokens[:, 1:] - lo).view(1, rows, cols))
    assert np.array_equal(a, _uint8_reference(greedy)[0])


def test_out_names_and_bad_options(exports, tmp_path):
    paths = generate_images(exports[0], TEXT, out=tmp_path / "many", num_images=3, top_k=1)
    assert [p.name for p in paths] == ["many_0.png", "many_1.png", "many_2.png"] and all(p.is_file() for p in paths)
    for kwargs, match in [({"out": tmp_path / "x.jpg"}, "png"), ({"num_images": 0}, "--num-images"),
                          ({"top_p": 0.0}, "--top-p"), ({"temperature": 0.0}, "--temperature"),
                          ({"top_k": -1}, "--top-k")]:
        with pytest.raises(ValueError, match=match):
            generate_images(exports[0], TEXT, **{"out": tmp_path / "x.png", **kwargs})
    with pytest.raises(ValueError, match="non-empty"):
        generate_images(exports[0], "  ", out=tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.jpg").exists()


def test_cli_writes_the_file_and_prints_its_path(exports, tmp_path, capsys):
    out = tmp_path / "cli.png"
    assert main(["predict", str(exports[0]), "--generate-image", TEXT, "--out", str(out), "--seed", "5",
                 "--top-k", "20"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    ref = generate_images(exports[0], TEXT, out=tmp_path / "ref.png", seed=5, top_k=20)[0]
    assert np.array_equal(_read(out), _read(ref))
    assert main(["predict", str(exports[0]), "--generate-image", TEXT, "--out", str(tmp_path / "j.png"),
                 "--num-images", "2", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"text": TEXT, "images": [str(tmp_path / "j_0.png"), str(tmp_path / "j_1.png")]}
    assert all((tmp_path / f"j_{i}.png").is_file() for i in range(2))


def test_model_without_image_tokenizer_is_refused(exports, tmp_path, capsys):
    cap = exports[1]
    with pytest.raises(ValueError, match="text_to_image") as info:
        generate_images(cap, TEXT, out=tmp_path / "no.png")
    assert str(cap) in str(info.value)
    assert main(["predict", str(cap), "--generate-image", TEXT, "--out", str(tmp_path / "no.png")]) == 2
    err = capsys.readouterr().err
    assert str(cap) in err and "text_to_image" in err
    assert not (tmp_path / "no.png").exists()


def test_generate_image_with_another_mode_is_refused(exports, tmp_path, capsys):
    out = tmp_path / "q.png"
    assert main(["predict", str(exports[0]), "--generate-image", TEXT, "--question", "what?", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--generate-image" in err and "--question" in err
    assert not out.exists()
    # sampling options without --generate-image, and the other modes still need --image
    assert main(["predict", str(exports[0]), "--image", "x.png", "--caption", "--seed", "3"]) == 2
    assert "--seed" in capsys.readouterr().err
    assert main(["predict", str(exports[0]), "--caption"]) == 2
    assert "--image" in capsys.readouterr().err
