"""Time the official X²-VLM retrieval training step (``XVLMForRetrieval``: ITC + ITM with hard negatives, backward,
AdamW) on random weights and inputs; run with the Python of a venv that can import the official code.

    OFFICIAL_PY zoo/models/x2vlm/official_step.py --official CHECKOUT [--batch 8] [--image-size 224] [--tokens 40]
                                             [--steps 3] [--threads 2] [--save FILE] [--json FILE]

``mmzoo bench train x2vlm-base --official CHECKOUT --official-python OFFICIAL_PY`` runs this file by its path,
interleaved with its own steps, and checks that the two models agree on the file ``--save`` writes. Nothing from mmzoo
is imported here (the file only rides in the package; the step loop, ``zoo/steptimer.py``, is loaded by its path):
the official code runs as published, in its own environment (timm, transformers of its era). Two of its modules are
stood in for because the step does not use them: ``dataset`` (its tokenizer builder, which needs a downloaded BERT
vocabulary: only the pad id 0 of bert-base-uncased is read) and ``utils`` (its ``read_json``; the package also pulls in
the caption metrics); transformers' docstring decorator is made a no-op (its later releases fail on the official
docstrings at import). The text tower's ``config.json`` is bert-base-uncased's, written into a temporary folder; the
vision tower is BEiT-v2 base (``configs/config_beit2_base.json``); 18 text layers with the cross-attention from layer
12, embed_dim 256, temp 0.07 (``configs/pretrain/x2vlm_base_4m.yaml``). A one-process gloo group serves the official
``allgather``.

Each step: forward (vision, text, ITC, hard negatives, ITM), backward, ``AdamW.step`` (lr 1e-5, weight decay 0.01,
torch's default implementation as the official optimizer builder creates it), timed per phase. ``--save FILE`` writes
the initial state dict, the inputs, the hard negatives the official sampler drew and the two losses of one forward
(before any step), for the equality check.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import types

BERT_BASE_UNCASED = {
    "architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
    "num_hidden_layers": 12, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 30522,
}


def _stand_ins() -> None:
    dataset = types.ModuleType("dataset")
    dataset.build_tokenizer = lambda path: types.SimpleNamespace(pad_token_id=0)
    utils = types.ModuleType("utils")

    def read_json(path):
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)

    utils.read_json = read_json
    sys.modules.setdefault("dataset", dataset)
    sys.modules.setdefault("utils", utils)
    # the docstring decorator of later transformers releases cannot parse the official files' model docstrings
    # (an error at import); docstrings do not change what runs
    import transformers.file_utils
    import transformers.utils

    def no_docstrings(*args, **kwargs):
        return lambda fn: fn

    for module in (transformers.file_utils, transformers.utils):
        module.add_code_sample_docstrings = no_docstrings


def _timed_steps():
    """``zoo/steptimer.py``'s loop, loaded by its path (zoo itself is not importable in the official venv)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "steptimer.py")
    spec = importlib.util.spec_from_file_location("_mmzoo_steptimer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.timed_steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", required=True, help="a checkout of the official X2-VLM repository")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", default=None, help="write weights, inputs, negatives and losses here (torch.save)")
    ap.add_argument("--json", default=None, help="write the timings here (default: print them)")
    args = ap.parse_args(argv)

    import torch
    import torch.distributed as dist

    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, os.path.abspath(args.official))
    _stand_ins()
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        dist.init_process_group("gloo", rank=0, world_size=1)
    from models.model_retrieval import XVLMForRetrieval

    with tempfile.TemporaryDirectory() as tmp:
        text_dir = os.path.join(tmp, "bert-base-uncased")
        os.makedirs(text_dir)
        with open(os.path.join(text_dir, "config.json"), "w", encoding="utf-8") as fh:
            json.dump(BERT_BASE_UNCASED, fh)
        config = {"use_beit_v2": True, "vision_config": os.path.join(args.official, "configs/config_beit2_base.json"),
                  "image_res": args.image_size, "patch_size": 16, "local_attn_depth": -1, "text_encoder": text_dir,
                  "text_num_hidden_layers": 18, "text_fusion_start_at": 12, "embed_dim": 256, "temp": 0.07,
                  "max_tokens": args.tokens}
        torch.manual_seed(args.seed)
        model = XVLMForRetrieval(config=config).train()

    gen = torch.Generator().manual_seed(args.seed + 1)

    def make_batch():
        ids = torch.randint(1000, 2000, (args.batch, args.tokens), generator=gen)
        return torch.randn(args.batch, 3, args.image_size, args.image_size, generator=gen), ids, torch.ones_like(ids)

    if args.save:  # one forward on the initial weights, before any step; dropout off so that the losses are exact
        image, ids, atts = make_batch()
        drawn = {}
        sample = model.get_hard_negatives

        def recording(*a, **k):
            drawn["image_neg"], drawn["text_neg"] = sample(*a, **k)
            return drawn["image_neg"], drawn["text_neg"]

        model.get_hard_negatives = recording
        model.eval()
        with torch.no_grad():
            itc, itm = model(image, ids, atts, idx=torch.arange(args.batch))
        model.train()
        del model.get_hard_negatives
        torch.save({"state_dict": model.state_dict(), "images": image, "input_ids": ids, "attention_mask": atts,
                    "image_neg": torch.tensor(drawn["image_neg"]), "text_neg": torch.tensor(drawn["text_neg"]),
                    "itc": itc, "itm": itm}, args.save)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
    def forward(batch, step):
        image, ids, atts = batch
        itc, itm = model(image, ids, atts, idx=torch.arange(args.batch))
        return itc + itm

    phases, first = _timed_steps()(make_batch, forward, optimizer, args.steps)
    steps = [sum(p) for p in zip(*phases.values())]
    out = {"step_s": statistics.median(steps), "steps": steps, "first_step_s": first,
           "phases": {k: statistics.median(v) for k, v in phases.items()},
           "parameters": sum(p.numel() for p in model.parameters()), "torch": torch.__version__,
           "threads": torch.get_num_threads()}
    text = json.dumps(out)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
