"""Official weights by name (zoo.weights, ``mmzoo pull``, ``mmzoo list --pretrained``), end to end against an HTTP
server on 127.0.0.1 that serves an official-layout X²-VLM checkpoint made from random weights: download, resume after
a dropped connection, wrong size, wrong hash, conversion, the cache, offline use."""

from __future__ import annotations

import hashlib
import inspect
import http.server
import io
import json
import re
import threading
from contextlib import redirect_stdout

import pytest
import torch
import yaml

import zoo
from zoo.catalog import add_config_dir, remove_config_dir
from zoo.hub import WeightsError
from zoo.models.base import input_resolution
from zoo.spec import ConfigError
from zoo.weights import (
    SOURCE_NAME,
    download,
    download_path,
    export_path,
    find_entry,
    pretrained_export,
    pretrained_table,
)

# our prefix -> the official one (zengyan-97/X2-VLM names; the converter's rules read backwards)
_TO_OFFICIAL = [("vision.", "vision_encoder."), ("text.", "text_encoder.bert."),
                ("caption.cls.", "text_encoder.cls."), ("itc.vision_proj.", "vision_proj."),
                ("itc.text_proj.", "text_proj."), ("itc.temp", "temp"), ("itm.mlp.", "itm_head.")]


class _Server:
    """Serves ``files`` (path -> bytes) with HTTP range requests; ``cut[path] = n`` sends the full Content-Length
    and then only the first n bytes of the next response (a dropped connection); ``requests`` logs (path, Range)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the standard library's name
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)) if rng else 0
                if start >= len(data):
                    self.send_error(416)
                    return
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if self.path in server.cut:
                    body = body[:server.cut.pop(self.path)]
                    self.close_connection = True
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def official():
    """An official-layout captioning checkpoint of x2vlm-tiny (random weights), its bytes and the model it came
    from."""
    torch.manual_seed(5)
    model = zoo.create_model("x2vlm-tiny", task="captioning").eval()
    state = {}
    for key, value in model.state_dict().items():
        ours, theirs = next((o, t) for o, t in _TO_OFFICIAL if key.startswith(o))
        state[theirs + key[len(ours):]] = value.clone()
    buf = io.BytesIO()
    torch.save({"model": state}, buf)
    return buf.getvalue(), model


@pytest.fixture()
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MMZOO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MMZOO_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hub's switch: the official links are still fetched
    return tmp_path / "home"


@pytest.fixture()
def model_file(tmp_path, server, official):
    """A registered model ``x2vlm-tiny-pub`` (x2vlm-tiny) whose ``pretrained:`` table points at the server."""
    data, _ = official
    server.files["/ckpt/x2vlm_tiny_caption.th"] = data
    folder = tmp_path / "models"
    folder.mkdir()

    def write(**changes):
        entry = {"task": "captioning", "resolution": 64, "url": f"{server.url}/ckpt/x2vlm_tiny_caption.th",
                 "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "licence": "BSD-3-Clause",
                 "scores": {"CIDEr": 1.0}, **changes}
        entry = {k: v for k, v in entry.items() if v != "-"}
        doc = {"_base_": "x2vlm-tiny.yaml", "name": "x2vlm-tiny-pub", "pretrained": {"caption-shapes": entry}}
        (folder / "x2vlm-tiny-pub.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")

    write()
    add_config_dir(folder)
    yield write
    remove_config_dir(folder)


def _equal_state(model, reference) -> bool:
    ours, ref = model.state_dict(), reference.state_dict()
    return ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)


def test_official_by_name_downloads_verifies_converts_once_and_reuses_the_cache(home, server, model_file, official):
    """``create_model(NAME, task, pretrained="official")``: one GET, the file checked and converted into
    ``$MMZOO_HOME/weights/NAME/TAG`` (source.json beside the export), the model's tensors those of the checkpoint;
    a second call makes no request; the tag alone fixes the task."""
    _, reference = official
    model = zoo.create_model("x2vlm-tiny-pub", task="captioning", pretrained="official")
    assert _equal_state(model, reference)
    assert model.zoo_config["task"] == "captioning" and input_resolution(model) == 64
    assert server.requests == [("/ckpt/x2vlm_tiny_caption.th", None)]
    entry = find_entry("x2vlm-tiny-pub", "official", "captioning")
    assert download_path(entry) == home / "downloads" / "x2vlm-tiny-pub" / "caption-shapes" / "x2vlm_tiny_caption.th"
    source = json.loads((export_path(entry) / SOURCE_NAME).read_text())
    assert source["sha256"] == entry.sha256 and source["size"] == entry.size and source["task"] == "captioning"
    again = zoo.create_model("x2vlm-tiny-pub", pretrained="caption-shapes")  # the tag fixes the task
    assert again.zoo_config["task"] == "captioning" and _equal_state(again, reference)
    assert len(server.requests) == 1  # from the cache
    with pytest.raises(ConfigError, match="no official weights for task 'retrieval'.*task captioning"):
        zoo.create_model("x2vlm-tiny-pub", task="retrieval", pretrained="official")
    with pytest.raises(ConfigError, match="holds the captioning model, not task 'retrieval'"):
        zoo.create_model("x2vlm-tiny-pub", task="retrieval", pretrained="caption-shapes")
    with pytest.raises(ConfigError, match="no checkpoint tagged 'vqa'; tags: official, caption-shapes"):
        pretrained_export("x2vlm-tiny-pub", "vqa")
    # part by part, a tag starts another task (the vision and text parts of the captioning weights)
    retrieval = zoo.create_model("x2vlm-tiny-pub", task="retrieval", pretrained="caption-shapes",
                                 pretrained_parts=["vision", "text"])
    assert torch.equal(retrieval.state_dict()["vision.patch_embed.proj.weight"],
                       reference.state_dict()["vision.patch_embed.proj.weight"])


def test_a_dropped_connection_resumes_with_a_range_request(home, server, model_file, official):
    """The server drops the first response after a third of the file: the download continues from the bytes kept
    (``Range: bytes=N-``) and the whole file passes the sha256 check."""
    data, reference = official
    server.cut["/ckpt/x2vlm_tiny_caption.th"] = len(data) // 3
    model = zoo.create_model("x2vlm-tiny-pub", pretrained="official", task="captioning")
    assert _equal_state(model, reference)
    assert server.requests == [("/ckpt/x2vlm_tiny_caption.th", None),
                               ("/ckpt/x2vlm_tiny_caption.th", f"bytes={len(data) // 3}-")]


def test_an_interrupted_download_keeps_its_part_and_the_next_call_resumes(home, server, official, tmp_path):
    data, _ = official
    server.files["/f.th"] = data
    dest = tmp_path / "dl" / "f.th"
    server.cut["/f.th"] = 1000
    with pytest.raises(WeightsError, match=r"cannot download .*/f\.th .*1,000 bytes kept in .*f\.th\.part"):
        download(f"{server.url}/f.th", dest, retries=0, progress=False)
    assert not dest.exists() and (tmp_path / "dl" / "f.th.part").stat().st_size == 1000
    download(f"{server.url}/f.th", dest, size=len(data), sha256=hashlib.sha256(data).hexdigest(), progress=False)
    assert dest.read_bytes() == data and not (tmp_path / "dl" / "f.th.part").exists()
    assert server.requests[-1] == ("/f.th", "bytes=1000-")


def test_wrong_size_or_hash_is_refused_and_nothing_is_kept(home, server, model_file, official):
    data, _ = official
    model_file(size=len(data) + 1)
    with pytest.raises(WeightsError, match=f"the server has {len(data):,} bytes, the table says {len(data) + 1:,}"):
        zoo.create_model("x2vlm-tiny-pub", pretrained="official", task="captioning")
    model_file(sha256="0" * 64)
    with pytest.raises(WeightsError, match=f"sha256 {hashlib.sha256(data).hexdigest()} differs from the table's "
                                           f"{'0' * 64}; the file was removed"):
        zoo.create_model("x2vlm-tiny-pub", pretrained="official", task="captioning")
    folder = home / "downloads" / "x2vlm-tiny-pub" / "caption-shapes"
    assert list(folder.iterdir()) == []  # neither the file nor a part
    assert not (home / "weights").exists()


def test_the_tag_fixes_the_resolution(home, server, model_file):
    model_file(resolution=128)
    with pytest.raises(WeightsError, match="takes 64 px images, the table says 128"):
        pretrained_export("x2vlm-tiny-pub", "caption-shapes")
    assert not (home / "weights" / "x2vlm-tiny-pub" / "caption-shapes" / SOURCE_NAME).exists()


def test_offline_names_the_file_and_the_place_then_uses_a_placed_file(home, server, model_file, official,
                                                                      monkeypatch):
    data, reference = official
    monkeypatch.setenv("MMZOO_OFFLINE", "1")
    entry = find_entry("x2vlm-tiny-pub", "official", "captioning")
    with pytest.raises(WeightsError) as info:
        zoo.create_model("x2vlm-tiny-pub", pretrained="official", task="captioning")
    message = info.value.message
    assert f"download {entry.url}, {len(data):,} bytes elsewhere and place it at {download_path(entry)}" in message
    assert server.requests == []
    download_path(entry).parent.mkdir(parents=True)
    download_path(entry).write_bytes(data)
    assert _equal_state(zoo.create_model("x2vlm-tiny-pub", pretrained="official", task="captioning"), reference)
    assert server.requests == []
    # no server at all (not offline): the same advice, after the retries
    monkeypatch.delenv("MMZOO_OFFLINE")
    model_file(url="http://127.0.0.1:9/none.th", size="-", sha256="-")
    with pytest.raises(WeightsError, match=r"cannot download http://127\.0\.0\.1:9/none\.th .*place it at"):
        pretrained_export("x2vlm-tiny-pub", "caption-shapes")


def test_table_is_checked_and_not_inherited(tmp_path, model_file):
    table = pretrained_table("x2vlm-tiny-pub")
    assert list(table) == ["caption-shapes"] and table["caption-shapes"].file == "x2vlm_tiny_caption.th"
    assert pretrained_table("x2vlm-tiny") == {}
    folder = tmp_path / "models"
    (folder / "child.yaml").write_text("_base_: x2vlm-tiny-pub.yaml\nname: child\n", encoding="utf-8")
    assert pretrained_table(str(folder / "child.yaml")) == {}  # a derived model is not the published one
    model_file(sizes=3)
    with pytest.raises(ConfigError, match="unknown key 'sizes'") as info:
        pretrained_table("x2vlm-tiny-pub")
    assert info.value.path == "pretrained.caption-shapes.sizes"
    model_file(sha256="abc")
    with pytest.raises(ConfigError, match="expected 64 hexadecimal digits"):
        pretrained_table("x2vlm-tiny-pub")
    model_file(hub="org/repo")
    with pytest.raises(ConfigError, match="exactly one of 'url'"):
        pretrained_table("x2vlm-tiny-pub")


def test_cli_pull_and_list_pretrained(home, server, model_file, capsys):
    from zoo.cli import main

    assert main(["list", "x2vlm-tiny-pub", "--pretrained"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"x2vlm-tiny-pub\s+caption-shapes\s+captioning\s+64\s+\S+ MiB\s+no\s+CIDEr 1.0", out)
    assert main(["pull", "x2vlm-tiny-pub", "--task", "captioning", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"x2vlm-tiny-pub caption-shapes (task captioning, 64 px): {home / 'weights'}" in out
    assert main(["list", "x2vlm-tiny-pub", "--pretrained"]) == 0
    assert re.search(r"caption-shapes\s+captioning\s+64\s+\S+ MiB\s+yes", capsys.readouterr().out)
    assert main(["pull", "x2vlm-tiny-pub", "--tag", "vqa"]) == 2
    assert "mmzoo pull: error: " in capsys.readouterr().err
    with redirect_stdout(io.StringIO()):
        assert main(["list", "x2vlm-tiny", "--pretrained"]) == 1


def test_a_page_entry_says_where_to_download_by_hand_and_place_the_file(home, server, model_file, official):
    data, reference = official
    model_file(url="-", size="-", sha256="-", page="https://drive.example/file/d/abc/view", file="tiny.th")
    entry = find_entry("x2vlm-tiny-pub", "caption-shapes")
    with pytest.raises(WeightsError, match=re.escape(f"download it from https://drive.example/file/d/abc/view and "
                                                     f"place it at {download_path(entry)}")):
        pretrained_export("x2vlm-tiny-pub", "caption-shapes")
    download_path(entry).parent.mkdir(parents=True)
    download_path(entry).write_bytes(data)
    assert _equal_state(zoo.create_model("x2vlm-tiny-pub", pretrained="caption-shapes"), reference)
    assert server.requests == []


@pytest.mark.parametrize("name", [n for n in zoo.list_models() if pretrained_table(n)])
def test_shipped_tables_name_real_tasks_at_the_resolution_the_task_builds(name):
    """Every shipped entry: an https link, a task the model file declares, and the resolution the table states is
    the one the task variant builds (the official fine-tuning config's): the converted checkpoint loads strictly into
    it. One default per task at most."""
    table = pretrained_table(name)
    defaults = [e.task for e in table.values() if e.default]
    assert len(defaults) == len(set(defaults))
    for entry in table.values():
        assert (entry.url or entry.page).startswith("https://")
        model = zoo.create_model(name, task=entry.task, device="meta")  # the task must exist
        if entry.resolution is not None:
            assert input_resolution(model) == entry.resolution, entry.tag
        for dotted in entry.parts or {}:  # each frozen-part source names an argument of that part (or of the model)
            *path, last = dotted.split(".")
            part = model
            for step in path:
                part = getattr(part, step)
            assert last in inspect.signature(type(part)).parameters, (entry.tag, dotted)


def test_a_task_config_names_official_weights(home, server, model_file, official, monkeypatch, capsys):
    """``model.pretrained: official`` in a task config goes through the same fetch (here offline: the one-line error
    names the task config's key and where to put the file), before any data is read or a run folder made."""
    from zoo.cli import main

    monkeypatch.setenv("MMZOO_OFFLINE", "1")
    entry = find_entry("x2vlm-tiny-pub", "official", "captioning")
    out = home / "runs"
    assert main(["train", "caption-shapes", "model.name=x2vlm-tiny-pub", "model.pretrained=official",
                 "~model.overrides", f"train.output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmzoo train: error: ") and "model.pretrained" in err
    assert f"place it at {download_path(entry)}" in err
    assert not out.exists()


# -- adapter-only checkpoints (eP-ALM, MultiModal-GPT): the trained tensors in the file, the frozen parts by `parts` --
def _adapter_model_file(folder, name, base, entry):
    doc = {"_base_": base, "name": name, "pretrained": {"official-tag": entry}}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


@pytest.fixture()
def adapter_models(tmp_path):
    folder = tmp_path / "adapter-models"
    folder.mkdir()
    add_config_dir(folder)
    yield folder
    remove_config_dir(folder)


def _frozen_parts(model, folder) -> dict:
    """The tiny model's frozen LM as a transformers folder and its ViT as timm's file: what ``parts`` points at."""
    return {"lm.pretrained": str(model.lm.export_pretrained(folder / "lm")),
            "vision.pretrained": str(model.vision.export_pretrained(folder / "vit"))}


def _trainable(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_an_epalm_checkpoint_holds_the_connectors_and_prompt_and_the_frozen_parts_come_from_parts(
        home, server, adapter_models, tmp_path):
    """An official-layout eP-ALM file (``{"model": connectors + prompt, "optimizer": ..., "config": ...}``) becomes a
    trainable-only export whose frozen OPT and ViT load from the table's ``parts``: the model built from the tag has
    every tensor of the model the file and the parts were written from."""
    torch.manual_seed(11)
    reference = zoo.create_model("epalm-tiny", task="vqa").eval()
    trained = _trainable(reference)
    official = {re.sub(r"^connector\.(\d+)\.proj\.", r"connector.\1.", k): v for k, v in trained.items()}
    assert official.keys() != trained.keys() and len(official) == len(trained)
    buf = io.BytesIO()
    torch.save({"model": official, "optimizer": {"state": {}, "param_groups": [{"lr": 2e-5, "params": [0]}]},
                "config": {"prompt_len": 1, "start_layer_idx": 1}, "epoch": 7}, buf)
    server.files["/s/abc/download"] = buf.getvalue()
    parts = _frozen_parts(reference, tmp_path / "frozen")
    _adapter_model_file(adapter_models, "epalm-tiny-pub", "epalm-tiny.yaml",
                        {"task": "vqa", "resolution": 32, "url": f"{server.url}/s/abc/download",
                         "file": "epalm_vqa.pth", "parts": parts})
    model = zoo.create_model("epalm-tiny-pub", task="vqa", pretrained="official")
    assert _equal_state(model, reference)
    folder = export_path(find_entry("epalm-tiny-pub", "official", "vqa"))
    config = json.loads((folder / "config.json").read_text())
    assert config["weights"] == "trainable_only" and config["task"] == "vqa"
    assert config["model"]["lm"]["pretrained"] == parts["lm.pretrained"]
    assert config["model"]["vision"]["pretrained"] == parts["vision.pretrained"]
    from safetensors.torch import load_file

    assert load_file(str(folder / "model.safetensors")).keys() == trained.keys()  # the trained tensors only
    assert json.loads((folder / SOURCE_NAME).read_text())["parts"] == parts


def test_an_epalm_checkpoint_missing_a_connector_is_refused_naming_it(home, server, adapter_models, tmp_path):
    torch.manual_seed(11)
    reference = zoo.create_model("epalm-tiny", task="vqa")
    official = {re.sub(r"^connector\.(\d+)\.proj\.", r"connector.\1.", k): v
                for k, v in _trainable(reference).items() if k != "connector.1.proj.bias"}
    buf = io.BytesIO()
    torch.save({"model": official}, buf)
    server.files["/e.pth"] = buf.getvalue()
    _adapter_model_file(adapter_models, "epalm-tiny-pub", "epalm-tiny.yaml",
                        {"task": "vqa", "url": f"{server.url}/e.pth"})
    with pytest.raises(WeightsError, match=r"does not hold the trained tensors of epalm-tiny-pub; missing 1: "
                                           r"connector\.1\.proj\.bias"):
        pretrained_export("epalm-tiny-pub", task="vqa")
    assert not (export_path(find_entry("epalm-tiny-pub", task="vqa")) / SOURCE_NAME).exists()


def test_a_multimodal_gpt_checkpoint_with_a_pickled_config_object_loads_its_lora_without_importing_it(
        home, server, adapter_models, tmp_path, monkeypatch):
    """The official LoRA file pickles the training script's mmengine config object beside ``model_state_dict``
    (``module.``-prefixed OpenFlamingo names): the object's module is never imported (it does not exist here), the
    LoRA tensors convert, and the frozen parts — the OpenFlamingo checkpoint (perceiver, cross-attention blocks,
    embeddings), the LLaMA folder and the ViT — come from ``parts``: every tensor equals the reference model's."""
    import sys
    import types

    torch.manual_seed(12)
    reference = zoo.create_model("mmgpt-tiny").eval()
    for name, p in reference.named_parameters():  # LoRA B starts at zero: give it values a wrong load would miss
        if "lora_B" in name:
            p.data.normal_()
    state = reference.state_dict()
    lora, flamingo = {}, {}
    for key, value in state.items():
        m = re.match(r"lm\.model\.model\.layers\.(\d+)\.(.+)$", key)
        i = re.match(r"lm\.inserted\.(\d+)\.(.+)$", key)
        if "lora_" in key:
            key = key.replace(".default.weight", ".weight")
            if m:
                lora[f"module.lang_encoder.base_model.model.model.layers.{m[1]}.decoder_layer.{m[2]}"] = value
            else:
                lora[f"module.lang_encoder.base_model.model.model.layers.{i[1]}.gated_cross_attn_layer."
                     f"{i[2].replace('.default.weight', '.weight')}"] = value
        elif key.startswith("perceiver."):
            flamingo[key] = value
        elif i:  # OpenFlamingo's names come from before LoRA wrapped the linears
            flamingo[f"lang_encoder.gated_cross_attn_layers.{i[1]}.{i[2].replace('.base_layer.', '.')}"] = value
        elif key.startswith(("lm.model.model.embed_tokens.", "lm.model.lm_head.")):
            flamingo["lang_encoder." + key[len("lm.model."):]] = value
    assert len(lora) == sum(p.requires_grad for p in reference.parameters())
    torch.save(flamingo, tmp_path / "checkpoint.pt")
    # the tuning config: an object of a class whose module exists only while the file is written
    config_module = types.ModuleType("mmengine_stand_in.config")
    config_class = type("Config", (dict,), {"__module__": "mmengine_stand_in.config"})
    config_module.Config = config_class
    monkeypatch.setitem(sys.modules, "mmengine_stand_in", types.ModuleType("mmengine_stand_in"))
    monkeypatch.setitem(sys.modules, "mmengine_stand_in.config", config_module)
    buf = io.BytesIO()
    torch.save({"model_state_dict": lora, "tuning_config": config_class(lora_r=4, unfrozen=[])}, buf)
    monkeypatch.delitem(sys.modules, "mmengine_stand_in.config")
    monkeypatch.delitem(sys.modules, "mmengine_stand_in")
    server.files["/mmgpt/v0/mmgpt-lora-v0-release.pt"] = buf.getvalue()
    # the LLaMA folder has the language model's own vocabulary: the rows of the added tokens are OpenFlamingo's
    import copy

    plain_lm = copy.deepcopy(reference.lm)
    for name, p in plain_lm.named_parameters():  # the base weights: the LoRA product is not merged into them
        if "lora_B" in name:
            p.data.zero_()
    plain_lm.model.resize_token_embeddings(30522)
    parts = {"lm.pretrained": str(plain_lm.export_pretrained(tmp_path / "frozen" / "lm")),
             "vision.pretrained": str(reference.vision.export_pretrained(tmp_path / "frozen" / "vit")),
             "flamingo_pretrained": str(tmp_path / "checkpoint.pt")}
    _adapter_model_file(adapter_models, "mmgpt-tiny-pub", "mmgpt-tiny.yaml",
                        {"task": None, "url": f"{server.url}/mmgpt/v0/mmgpt-lora-v0-release.pt", "parts": parts})
    model = zoo.create_model("mmgpt-tiny-pub", pretrained="official")
    assert "mmengine_stand_in.config" not in sys.modules
    assert _equal_state(model, reference)
