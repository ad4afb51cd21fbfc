"""WebDataset shards (zoo.data.shards): written from a reader of any task, read back as the same samples and items,
shuffled per epoch, split over ranks and loader workers without duplicates, resumable, streamed over http, trained on,
and every bad shard named."""

from __future__ import annotations

import functools
import http.server
import json
import re
import tarfile
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from conftest import task_config

from zoo.data.datasets import DataError, NLVRDataset, RetrievalTrainDataset, VQADataset
from zoo.data.shapes import generate_shapes
from zoo.data.shards import ShardDataset, epoch_plan, expand_braces, shard_task_config, worker_skips, write_shards
from zoo.data.transforms import build_image_transform
from zoo.spec import ConfigError

SIZE = 32


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    # 8 training images: 48 VQA questions, 16 NLVR pairs, 40 captions; 2 videos with 6 questions
    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train_images=8, num_val_images=2,
                           num_test_images=2, image_size=64, num_videos=2, video_frames=4, languages=())


def _options(train: bool = True) -> dict:
    # a deterministic transform: items can be compared tensor for tensor
    return {"image_size": SIZE, "train": train, "transform": build_image_transform(SIZE, False)}


@pytest.fixture(scope="module")
def vqa(shapes):
    return VQADataset(str(shapes / "vqa_train.json"), shapes, **_options())


@pytest.fixture(scope="module")
def written(vqa, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    manifest = write_shards(vqa, out, "train", max_samples=10)
    return out, manifest


def _raw(out: Path, **kwargs) -> ShardDataset:
    return ShardDataset(str(out / "train.shards.json"), raw=True, **kwargs)


def _folder_samples(ds) -> Counter:
    """(position, the record without its media names, the media files' bytes) of every record of a reader."""
    out = Counter()
    for i, (_, _, rec) in enumerate(ds.records):
        paths = ds.media_files(rec)
        out[(i, json.dumps(ds.with_media_names(rec, ["-"] * len(paths)), sort_keys=True),
             tuple(Path(p).read_bytes() for p in paths))] += 1
    return out


def _shard_samples(samples, reader) -> Counter:
    """The same triple of raw shard samples (``reader``: a reader without a media root, naming the members)."""
    out = Counter()
    for s in samples:
        rec, meta = json.loads(s["json"]), json.loads(s["meta.json"])
        names = reader.media_files(rec)
        assert all(n.split(".", 1)[0] == s["__key__"] for n in names)
        out[(meta["index"], json.dumps(reader.with_media_names(rec, ["-"] * len(names)), sort_keys=True),
             tuple(s[n.split(".", 1)[1]] for n in names))] += 1
    return out


def _keys(samples) -> list[str]:
    return [s["__key__"] if isinstance(s, dict) and "__key__" in s else s for s in samples]


def test_layout_is_webdataset_and_the_manifest_counts(vqa, written):
    out, manifest = written
    n = len(vqa)
    assert manifest["total"] == n and manifest["reader"] == "vqa" and manifest["sources"] == ["vqa_train.json"]
    assert [s["name"] for s in manifest["shards"]] == [f"train-{k:06d}.tar" for k in range(-(-n // 10))]
    assert [s["samples"] for s in manifest["shards"]] == [10] * (n // 10) + ([n % 10] if n % 10 else [])
    assert json.loads((out / "train.shards.json").read_text()) == manifest
    assert not list(out.glob(".*.tmp"))  # written to temporary names, renamed when complete
    with tarfile.open(out / "train-000001.tar") as tar:
        names = tar.getnames()
        assert names[:3] == ["000000010.json", "000000010.meta.json", "000000010.png"]
        rec = json.loads(tar.extractfile("000000010.json").read())
        png = tar.extractfile("000000010.png").read()
    # WebDataset's grouping: consecutive members sharing the name up to the first dot
    keys = [re.match(r"^([^.]+)\.", name).group(1) for name in names]
    assert keys == sorted(keys) and len(set(keys)) == 10 and len(names) == 30
    _, _, original = vqa.records[10]
    assert rec == {**original, "image": "000000010.png"}  # every field, the media field naming the member
    assert png == Path(vqa.media_path(original)).read_bytes()  # the bytes as they are on disk
    # a second write with fewer, larger shards leaves no stale shard of the first behind
    again = write_shards(vqa, out / "again", "train", max_samples=10)
    write_shards(vqa, out / "again", "train", max_samples=40)
    assert sorted(p.name for p in (out / "again").glob("*.tar")) == ["train-000000.tar", "train-000001.tar"]
    assert again["total"] == n
    # max_bytes: a new shard when the next sample would not fit
    small = write_shards(vqa, out / "small", "train", max_samples=1000, max_bytes=20_000)
    assert len(small["shards"]) > 3 and all(s["bytes"] <= 20_000 + 2 * 10240 for s in small["shards"])
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("{x,y}-{1..2}") == ["x-1", "x-2", "y-1", "y-2"]


def test_every_sample_once_per_epoch_over_workers_and_ranks(vqa, written):
    out, manifest = written
    folder = _folder_samples(vqa)
    reader = ShardDataset(str(out / "train.shards.json"), **_options()).template
    n = len(vqa)
    assert n % 2 == 0 and len(manifest["shards"]) >= 3
    one = _raw(out)
    assert _shard_samples(one, reader) == folder
    # two DataLoader workers (batches of 4), and two ranks of two workers each: every sample once, none missing
    for epoch in (0, 1):
        ds = _raw(out, batch_size=4)
        ds.set_epoch(epoch)
        batches = list(DataLoader(ds, batch_size=4, num_workers=2, collate_fn=list))
        assert _shard_samples([s for b in batches for s in b], reader) == folder
        assert [len(b) for b in batches] == [4] * (n // 4) + ([n % 4] if n % 4 else [])  # as a map-style loader
        ranks = []
        for rank in (0, 1):
            ds = _raw(out, rank=rank, world_size=2, batch_size=4)
            ds.set_epoch(epoch)
            assert len(ds) == n // 2
            ranks.append([s for b in DataLoader(ds, batch_size=4, num_workers=2, collate_fn=list) for s in b])
        assert not set(_keys(ranks[0])) & set(_keys(ranks[1]))
        assert _shard_samples(ranks[0] + ranks[1], reader) == folder
    # an odd count over two ranks: with even=False each sample once, the first rank one more; with even (the
    # default, as DistributedSampler) both ranks get ceil(N / 2), the extra one the epoch's first sample, read twice
    odd = out / "odd"
    assert write_shards(_Subset(vqa, range(15)), odd, "odd", max_samples=4)["total"] == 15  # shards of 4, 4, 4, 3
    exact = [list(ShardDataset(str(odd / "odd.shards.json"), raw=True, rank=r, world_size=2, even=False, seed=3))
             for r in (0, 1)]
    assert [len(x) for x in exact] == [8, 7] and sorted(_keys(exact[0] + exact[1])) == [f"{i:09d}" for i in range(15)]
    padded = [list(ShardDataset(str(odd / "odd.shards.json"), raw=True, rank=r, world_size=2, seed=3)) for r in (0, 1)]
    keys = Counter(_keys(padded[0] + padded[1]))
    first_shard = epoch_plan([4, 4, 4, 3], seed=3)[0][0][0]
    assert [len(x) for x in padded] == [8, 8] and len(keys) == 15
    assert [k for k, c in keys.items() if c == 2] == [f"{4 * first_shard:09d}"]


class _Subset(torch.utils.data.Dataset):
    """A view of a reader (as the data module's few-shot subset): ``dataset`` and ``indices``."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, list(indices)


def test_a_new_order_each_epoch_and_the_same_for_the_same_seed(written):
    out, _ = written

    def order(epoch, seed=0):
        ds = _raw(out, seed=seed, buffer=16)
        ds.set_epoch(epoch)
        return _keys(ds)

    assert order(0) == order(0) and order(1) == order(1) and order(0, seed=5) == order(0, seed=5)
    assert order(0) != order(1) and order(0) != order(0, seed=5)
    assert sorted(order(0)) == sorted(order(1))
    # the plan alone: the shard order is the seed + epoch permutation, every sample in one worker's runs
    counts = [10, 10, 10, 10, 8]
    runs = [epoch_plan(counts, epoch=2, seed=1, world=2, rank=r, workers=3, worker=w, batch_size=4)[0]
            for r in (0, 1) for w in range(3)]
    covered = Counter((j, p) for worker in runs for j, a, b in worker for p in range(a, b))
    assert sorted(covered) == [(j, p) for j, c in enumerate(counts) for p in range(c)] and set(covered.values()) == {1}
    assert worker_skips(10, [8, 8, 7], 4) == ([4, 4, 2], 2) and worker_skips(12, [8, 4], 4) == ([8, 4], 1)


def test_items_equal_the_folder_readers_items(shapes, vqa, tmp_path):
    """The same dict for the same record: VQA, NLVR's two images, a retrieval pair's dense image index (a value that
    depends on the other records, stored beside the record), and the video QA frames decoded from the shard's bytes."""
    cases = [(vqa, "index"),
             (NLVRDataset(str(shapes / "nlvr_train.json"), shapes, **_options()), "index"),
             (RetrievalTrainDataset(str(shapes / "retrieval_train.json"), shapes, **_options()), None),
             (VQADataset(str(shapes / "video_qa_train.json"), shapes, image_size=SIZE, train=False, num_frames=3,
                         transform=build_image_transform(SIZE, False)), "question_id")]
    for k, (folder, _) in enumerate(cases):
        write_shards(folder, tmp_path / str(k), "s", max_samples=7)
        opts = {"image_size": SIZE, "train": folder.train, "transform": build_image_transform(SIZE, False),
                "num_frames": folder.num_frames}
        shards = ShardDataset(str(tmp_path / str(k) / "s.shards.json"), seed=k, **opts)
        items = list(shards)
        assert len(items) == len(folder)
        seen = set()
        for item in items:
            # find the record: items carry their position (index), question id, or (captions) the caption
            if "index" in item:
                i = item["index"]
            elif "question_id" in item:
                i = next(j for j, (_, _, r) in enumerate(folder.records) if r["question_id"] == item["question_id"])
            else:
                i = next(j for j in range(len(folder)) if j not in seen and folder[j]["caption"] == item["caption"]
                         and folder[j]["image_id"] == item["image_id"])
            seen.add(i)
            ref = folder[i]
            assert ref.keys() == item.keys()
            for key, value in ref.items():
                assert torch.equal(value, item[key]) if torch.is_tensor(value) else value == item[key], key
        assert len(seen) == len(folder)
    assert cases[3][0].video and items[0]["image"].shape == (3, 3, SIZE, SIZE)


def test_resume_yields_the_rest_of_the_epoch(written):
    out, _ = written
    full = _raw(out, seed=2, buffer=8)
    full.set_epoch(1)
    stream = iter(full)
    head = [next(stream) for _ in range(13)]
    state = full.state_dict()
    assert state == {"epoch": 1, "consumed": 13, "seed": 2}
    rest = list(stream)
    resumed = _raw(out, seed=2, buffer=8)
    resumed.load_state_dict(state)
    assert _keys(resumed) == _keys(rest) and _keys(head + rest) == _keys(full)
    # through a DataLoader with two workers: skipping batches already yielded gives the remaining batches
    ds = _raw(out, seed=2, buffer=8, batch_size=4)
    batches = [_keys(b) for b in DataLoader(ds, batch_size=4, num_workers=2, collate_fn=list)]
    ds = _raw(out, seed=2, buffer=8, batch_size=4)
    ds.load_state_dict({"epoch": 0, "consumed": 3 * 4})
    assert [_keys(b) for b in DataLoader(ds, batch_size=4, num_workers=2, collate_fn=list)] == batches[3:]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_shards_stream_from_an_http_server(vqa, written):
    out, _ = written
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(out)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        reader = ShardDataset(str(out / "train.shards.json"), **_options()).template
        by_manifest = ShardDataset(f"{base}/train.shards.json", raw=True)
        assert _shard_samples(by_manifest, reader) == _folder_samples(vqa)
        n = len(by_manifest.urls)
        by_pattern = ShardDataset(f"{base}/train-{{000000..{n - 1:06d}}}.tar", raw=True)  # counted by reading
        assert by_pattern.counts == by_manifest.counts and _keys(by_pattern) == _keys(by_manifest)
        items = list(ShardDataset(f"{base}/train.shards.json", shuffle=False, **_options()))
        assert torch.equal(items[5]["image"], vqa[5]["image"]) and items[5]["question"] == vqa[5]["question"]
        with pytest.raises(DataError, match=r"train-000099\.tar: cannot open the shard: HTTP Error 404"):
            ShardDataset(f"{base}/train-000099.tar", raw=True)
    finally:
        server.shutdown()
        server.server_close()


def _data(shapes, out: Path, **extra) -> dict:
    return {"root": str(shapes), "shards": {"train": str(out / "train.shards.json")}, "answer_list": "answer_list.json",
            "batch_size": 8, "randaugment": False, "crop_scale": [1.0, 1.0], "image_size": SIZE, **extra}


def test_the_data_module_reads_a_split_from_shards(shapes, written, tmp_path):
    """data.shards.train: the data check, the tokenizer texts and the answers come from the shards' records; the
    training loader's batches cover the split once and resume from the trainer's progress."""
    from zoo.train.data import TaskDataModule, data_keys

    out, _ = written
    assert "shards" in data_keys()
    folder = TaskDataModule("vqa", {**_data(shapes, out), "shards": None, "train": "vqa_train.json"}, None)
    dm = TaskDataModule("vqa", _data(shapes, out, num_workers=2), None)
    report = dm.check()
    assert report.records == {"train": 48} and report.shards == {"train": 5} and "(5 shards)" in str(report)
    folder.check()
    assert dm.tokenizer_texts() == folder.tokenizer_texts()
    no_list = {k: v for k, v in _data(shapes, out).items() if k != "answer_list"}
    assert TaskDataModule("vqa", no_list, None).answer_list == \
        TaskDataModule("vqa", {**no_list, "shards": None, "train": "vqa_train.json"}, None).answer_list
    dm.tokenizer = folder.tokenizer = _tokenizer(shapes)
    loader = dm.train_dataloader()
    batches = [b["question_id"] for b in loader]
    assert len(batches) == len(loader) == 6
    expected = sorted(r["question_id"] for _, _, r in folder.dataset("train").records)
    assert sorted(q for b in batches for q in b) == expected
    loader.progress = lambda: (0, 2)  # as the trainer says when it resumes after two batches of epoch 0
    assert [b["question_id"] for b in loader] == batches[2:]
    loader.progress = lambda: (1, 0)
    assert sorted(map(tuple, (b["question_id"] for b in loader))) != sorted(map(tuple, batches))  # a new order


def _tokenizer(shapes):
    from zoo.data.multilingual_tokenizer import build_multilingual_tokenizer
    from zoo.train.data import TaskDataModule

    folder = shapes.parent / "tok"
    if not (folder / "tokenizer.json").is_file():
        data = {"root": str(shapes), "train": "vqa_train.json", "answer_list": "answer_list.json"}
        texts = TaskDataModule("vqa", data, None, image_size=SIZE).tokenizer_texts()
        build_multilingual_tokenizer(texts, folder, model="words")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


class _Killed(RuntimeError):
    pass


def test_training_on_shards_sees_the_samples_of_the_folder_and_resumes(shapes, written, tmp_path, monkeypatch):
    """The tiny VQA model (the packaged vqa-shapes config) trained one epoch on the training split read from shards,
    killed after step 3 and resumed from its step checkpoint: its six batches are the shard loader's epoch, batch for
    batch, and hold each question once, the questions the file reader's training loader gives that epoch."""
    from zoo.train.data import TaskDataModule
    from zoo.train.module import TaskModule
    from zoo.train.run import load_task_config, train

    out, _ = written
    seen = []
    original = TaskModule.training_step

    def spy(self, batch, batch_idx):
        seen.append(list(batch["question_id"]))
        return original(self, batch, batch_idx)

    def kill(self, outputs, batch, batch_idx):
        if self.global_step == 3:
            raise _Killed

    monkeypatch.setattr(TaskModule, "training_step", spy)
    cfg = load_task_config(task_config("vqa-shapes"))
    cfg["data"].update(root=str(shapes), batch_size=8, val=None, test=None, drop_last=False, cache_images=False)
    folder_data = dict(cfg["data"])
    cfg["data"].update(train=None, shards={"train": str(out / "train.shards.json"), "buffer": 16})
    cfg["trainer"].update(max_epochs=1, enable_progress_bar=False)
    cfg["train"].update(output_dir=str(tmp_path), name="shards", export=False, save_every_n_steps=1)
    with monkeypatch.context() as m:
        m.setattr(TaskModule, "on_train_batch_end", kill, raising=False)
        with pytest.raises(_Killed):
            train(cfg)
    assert len(seen) == 3
    results = train(cfg, resume=True)
    assert results["time"]["optimizer_steps"] == 3
    tokenizer = _tokenizer(shapes)
    shard_loader = TaskDataModule("vqa", cfg["data"], tokenizer, image_size=SIZE).train_dataloader()
    epoch = [list(b["question_id"]) for b in shard_loader]
    assert seen == epoch  # the uninterrupted stream, batch for batch
    folder = TaskDataModule("vqa", folder_data, tokenizer, image_size=SIZE).train_dataloader()
    folder_seen = [q for batch in folder for q in batch["question_id"]]
    trained = [q for batch in seen for q in batch]
    assert len(seen) == len(folder) == 6 and len(trained) == len(set(trained)) == 48
    assert sorted(trained) == sorted(folder_seen) and trained != folder_seen  # the same samples, in another order


def _copy_with(src: Path, dst: Path, change) -> None:
    """A copy of the tar ``src`` whose members pass through ``change(name, data)`` (None drops the member)."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin:
            got = change(m.name, tin.extractfile(m).read())
            if got is None:
                continue
            import io

            info = tarfile.TarInfo(m.name)
            info.size = len(got)
            tout.addfile(info, io.BytesIO(got))


def test_bad_shards_are_named_with_the_sample(shapes, written, tmp_path):
    from zoo.train.data import TaskDataModule

    out, _ = written
    first = out / "train-000000.tar"
    # a missing shard: a config error naming the key and the file; at read time a DataError naming it
    with pytest.raises(ConfigError, match=r"data\.shards\.train: shard not found: .*nope-000000\.tar \(and 1 more\)"):
        TaskDataModule("vqa", {**_data(shapes, out), "shards": {"train": str(tmp_path / "nope-{000000..000001}.tar")}},
                       None)
    with pytest.raises(DataError, match=r"nope\.tar: shard not found"):
        ShardDataset(str(tmp_path / "nope.tar"), raw=True)
    # a corrupt tar: garbage, and a shard cut short (the manifest's count and the end-of-archive block)
    (tmp_path / "junk.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(DataError, match=r"junk\.tar: not a readable tar file"):
        ShardDataset(str(tmp_path / "junk.tar"), raw=True)
    data = first.read_bytes()
    (tmp_path / "short.tar").write_bytes(data[:len(data) // 2])
    with pytest.raises(DataError, match=r"short\.tar: the shard is truncated after sample '00000000\d'"):
        ShardDataset(str(tmp_path / "short.tar"), raw=True)
    # a sample without its image, one without its record
    _copy_with(first, tmp_path / "noimage.tar", lambda n, d: None if n == "000000003.png" else d)
    ds = ShardDataset(str(tmp_path / "noimage.tar"), "vqa", shuffle=False, **_options())
    with pytest.raises(DataError, match=r"noimage\.tar: sample '000000003': no member '000000003\.png'"):
        list(ds)
    skipping = ShardDataset(str(tmp_path / "noimage.tar"), "vqa", shuffle=False, on_bad_sample="skip", **_options())
    with pytest.warns(RuntimeWarning, match="skipped a bad sample"):
        items = list(skipping)
    assert items[3] is None and sum(i is None for i in items) == 1 and skipping.skipped[0][0].endswith("noimage.tar")
    _copy_with(first, tmp_path / "norecord.tar", lambda n, d: None if n == "000000004.json" else d)
    with pytest.raises(DataError, match=r"norecord\.tar: sample '000000004': no 000000004\.json member"):
        list(ShardDataset(str(tmp_path / "norecord.tar"), "vqa", shuffle=False, **_options()))
    # an image that is not one
    _copy_with(first, tmp_path / "badpng.tar", lambda n, d: b"nonsense" if n == "000000002.png" else d)
    with pytest.raises(DataError, match=r"badpng\.tar: sample '000000002': cannot read image 000000002\.png"):
        list(ShardDataset(str(tmp_path / "badpng.tar"), "vqa", shuffle=False, **_options()))


def test_config_keys_and_the_shard_command(shapes, written, tmp_path):
    from zoo.train.data import TaskDataModule

    out, _ = written
    with pytest.raises(ConfigError, match=r"data\.shards\.trian: unknown key 'trian'; did you mean 'train'"):
        TaskDataModule("vqa", {**_data(shapes, out), "shards": {"trian": "x.tar"}}, None)
    with pytest.raises(ConfigError, match=r"data\.shards: expected a mapping"):
        TaskDataModule("vqa", {**_data(shapes, out), "shards": {"train": 3}}, None)
    with pytest.raises(ConfigError, match=r"data\.shards\.train: data\.train and data\.shards\.train both"):
        TaskDataModule("vqa", {**_data(shapes, out), "train": "vqa_train.json"}, None)
    with pytest.raises(ConfigError, match=r"data\.few_shot: few-shot records"):
        TaskDataModule("vqa", {**_data(shapes, out), "few_shot": {"de": 2}}, None)
    # mmzoo data shard: a split of a task config → shards and manifest, the records checked first
    written_sets = shard_task_config(task_config("nlvr-shapes"), "val", tmp_path / "cli", shard_size=3,
                                     overrides=[f"data.root={shapes}"])
    ((path, manifest),) = written_sets
    assert path == tmp_path / "cli" / "val.shards.json" and manifest["reader"] == "nlvr"
    assert manifest["total"] == len(json.loads((shapes / "nlvr_val.json").read_text())) and len(manifest["shards"]) >= 2
    with tarfile.open(tmp_path / "cli" / "val-000000.tar") as tar:
        assert tar.getnames()[:4] == ["000000000.json", "000000000.meta.json", "000000000.0.png", "000000000.1.png"]


def test_evaluation_sets_from_shards_index_every_record(shapes, tmp_path):
    """data.shards.val of a retrieval task: the captions, the text↔image index and the items (their positions) are
    the folder's; each image once, in shard order."""
    from zoo.train.data import TaskDataModule

    ((manifest, _),) = shard_task_config(task_config("retrieval-shapes"), "val", tmp_path, shard_size=1,
                                         overrides=[f"data.root={shapes}"])
    base = {"root": str(shapes), "image_size": SIZE, "eval_batch_size": 3, "randaugment": False,
            "crop_scale": [1.0, 1.0]}
    folder = TaskDataModule("retrieval", {**base, "val": "retrieval_val.json"}, _tokenizer(shapes))
    shards = TaskDataModule("retrieval", {**base, "shards": {"val": str(manifest)}}, _tokenizer(shapes))
    assert shards.check().records == {"val": len(folder.dataset("val"))}
    assert shards.eval_texts("val") == folder.eval_texts("val")
    assert shards.eval_text_index("val") == folder.eval_text_index("val")
    got = [b for b in shards.val_dataloader()]
    ref = [b for b in folder.val_dataloader()]
    assert [b["index"].tolist() for b in got] == [b["index"].tolist() for b in ref]
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(got, ref))
