"""The model card of an export: ``README.md`` beside ``config.json`` (what the model is, its parts and parameter
counts, the task, the data and scores of the run that made it, its preprocessing and how to load it), written by
:func:`zoo.hub.save_pretrained`; the YAML header is the Hugging Face Hub's model-card metadata."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["CARD_NAME", "is_model_card", "model_card"]

CARD_NAME = "README.md"
_MARK = "library_name: mmzoo"


def is_model_card(path) -> bool:
    """Whether the file at ``path`` is a card :func:`model_card` wrote (its metadata header names mmzoo), not a
    user's own README."""
    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.read(200)
    except (OSError, UnicodeDecodeError):
        return False
    return head.startswith("---\n") and _MARK in head


def _params(model) -> list[tuple[str, int, int]]:
    from zoo.models.base import count_parameters  # noqa: PLC0415

    rows = [(name, count_parameters(part), count_parameters(part, trainable_only=True))
            for name, part in model.named_children()]
    return [r for r in rows if r[1]]


def _scores(run: Mapping[str, Any]) -> list[str]:
    lines = []
    for split in ("val", "test"):
        metrics = run.get(split) or {}
        shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if shown:
            lines.append(f"| {split} | " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(shown.items())) + " |")
    return lines


def model_card(model, config: Mapping[str, Any], run: Mapping[str, Any] | None = None,
               preprocess: Mapping[str, Any] | None = None) -> str:
    """Markdown for ``README.md``. ``run``: the training run's results (``results.json``: task, val / test metrics,
    config file, data root, time) when the export comes from one."""
    from zoo import __version__  # noqa: PLC0415
    from zoo.models.base import count_parameters  # noqa: PLC0415

    name = config.get("name") or type(model).__name__
    task = config.get("task")
    run = run or {}
    data = ((run.get("config") or {}).get("data") or {}).get("root")
    tags = ["mmzoo", "multimodal", str((config.get("model") or {}).get("type", "model"))] + ([task] if task else [])
    head = ["---", _MARK, "tags:"] + [f"- {t}" for t in dict.fromkeys(tags)] + ["---", ""]
    body = [f"# {name}" + (f" ({task})" if task else ""), ""]
    if config.get("description"):
        body += [str(config["description"]), ""]
    total, trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    body += [f"An mmzoo export: `{type(model).__name__}`, {total:,} parameters ({trainable:,} trainable).", "",
             "| part | parameters | trainable |", "|---|---:|---:|"]
    body += [f"| {n} | {p:,} | {t:,} |" for n, p, t in _params(model)]
    body.append("")
    if run:
        body += ["## Training", ""]
        if run.get("config_file"):
            body.append(f"- config: `{run['config_file']}`")
        if data:
            body.append(f"- data: `{data}`")
        took = (run.get("time") or {}).get("total_s")
        if took:
            body.append(f"- time: {took / 60:.1f} min")
        scores = _scores(run)
        if scores:
            body += ["", "| split | scores |", "|---|---|", *scores]
        body.append("")
    if preprocess:
        body += ["## Preprocessing", "", "```json", json.dumps(dict(preprocess), indent=2), "```", ""]
    body += ["## Use", "", "```python", "import zoo", 'model = zoo.from_pretrained("PATH_OR_hf-hub:ORG/REPO")',
             *([f'pipe = zoo.pipeline("{task}", model)'] if task in ("vqa", "captioning", "retrieval", "ve", "nlvr")
               else []),
             "```", "", (f"Written by mmzoo {__version__}; `config.json` holds the full model config, "
                         "`model.safetensors` the weights, `preprocessor.json` and `tokenizer/` the inputs' "
                         "processing."), ""]
    return "\n".join(head + body)
