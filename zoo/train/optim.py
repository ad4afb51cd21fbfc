"""Optimiser parameter groups and the learning-rate schedule of the official fine-tuning recipes.

AdamW over groups keyed by part and decay: vision / text / fusion / other, each with its own learning rate (the
official ``vision_lr``, ``text_lr``, ``cross_lr``), a multiplier for newly initialised parameters (the official
``lr_mult`` 2 for heads that the checkpoint does not provide), and no weight decay on one-dimensional parameters
(biases, LayerNorm weights, layer-scale, temperatures). Which part a parameter belongs to is the model's answer
(:meth:`zoo.models.base.ZooModel.param_part`); a module that is not a ``ZooModel`` gets the generic rule by
top-level name. The schedule is linear warm-up then linear decay to zero, stepped every optimiser step.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from typing import Iterable, Sequence

import torch
from torch import nn

from zoo.models.base import PARAM_PARTS, ZooModel, generic_param_part

__all__ = ["part_of", "param_groups", "linear_warmup_decay", "apply_freeze", "matches", "check_patterns",
           "pattern_problem", "warmup_steps_for"]


def part_of(model: nn.Module, name: str) -> str:
    """``vision``, ``text``, ``fusion`` or ``other`` for the parameter ``name`` of ``model``: the model's own
    :meth:`~zoo.models.base.ZooModel.param_part`, or for a plain module the generic rule by top-level name
    (:func:`~zoo.models.base.generic_param_part`)."""
    if not isinstance(model, ZooModel):
        return generic_param_part(name)
    part = model.param_part(name)
    if part not in PARAM_PARTS:
        raise ValueError(f"{type(model).__name__}.param_part({name!r}) returned {part!r}; expected one of "
                         f"{', '.join(PARAM_PARTS)}")
    return part


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether the parameter ``name`` matches a glob pattern of ``patterns``; a pattern naming a module (``vision``,
    ``text.encoder.layer.0``) matches every parameter under it."""
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*") for p in patterns)


def pattern_problem(names: Sequence[str], pattern: str) -> str | None:
    """Why ``pattern`` selects none of the parameter ``names`` (naming the model's parts and the closest module
    name); None when it selects some."""
    if any(matches(n, [pattern]) for n in names):
        return None
    parts = sorted({n.split(".", 1)[0] for n in names})
    stem = pattern[:-2] if pattern.endswith(".*") else pattern.rstrip("*")
    depth = stem.count(".") + 1
    modules = sorted({".".join(n.split(".")[:depth]) for n in names if n.count(".") >= depth})
    close = difflib.get_close_matches(stem, modules or parts, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0] + pattern[len(stem):]!r}? The" if close else "; the"
    return (f"pattern {pattern!r} would match no parameter name{hint} model's parts: {', '.join(parts)} (a part or "
            "module name selects all of it; globs such as 'text.embeddings.*' select within)")


def check_patterns(model: nn.Module, patterns: Sequence[str], key: str, file: str | None = None) -> None:
    """Raise a :class:`zoo.spec.ConfigError` at ``key`` for the first of ``patterns`` that names no parameter of
    ``model`` (a misspelt ``train.freeze`` or ``optim.new_params`` entry would otherwise do nothing, silently)."""
    names = [n for n, _ in model.named_parameters()]
    for pattern in patterns:
        problem = pattern_problem(names, pattern)
        if problem is not None:
            from zoo.spec import ConfigError  # noqa: PLC0415

            raise ConfigError(problem, key, file)


def apply_freeze(model: nn.Module, patterns: Sequence[str], file: str | None = None) -> list[str]:
    """Set ``requires_grad=False`` on parameters whose names match a pattern (:func:`matches`); returns the names
    frozen. A pattern that matches nothing is a :class:`zoo.spec.ConfigError` at ``train.freeze``."""
    check_patterns(model, patterns, "train.freeze", file)
    frozen = []
    for name, p in model.named_parameters():
        if matches(name, patterns):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.01,
    *,
    vision_lr: float | None = None,
    text_lr: float | None = None,
    fusion_lr: float | None = None,
    new_params: Iterable[str] = (),
    new_param_lr_mult: float = 1.0,
) -> list[dict]:
    """AdamW parameter groups; each group carries ``name`` and ``lr`` (its base learning rate)."""
    new_params = list(new_params)
    base = {"vision": vision_lr or lr, "text": text_lr or lr, "fusion": fusion_lr or lr, "other": lr}
    groups: dict[tuple[str, bool, bool], dict] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        part = part_of(model, name)
        new = matches(name, new_params)
        decay = p.ndim > 1
        key = (part, new, decay)
        if key not in groups:
            group_lr = base[part] * (new_param_lr_mult if new else 1.0)
            groups[key] = {"name": f"{part}{'_new' if new else ''}{'' if decay else '_no_decay'}", "params": [],
                           "lr": group_lr, "weight_decay": weight_decay if decay else 0.0, "param_names": []}
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    return list(groups.values())


def linear_warmup_decay(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    """LambdaLR: 0 → 1 linearly over ``warmup_steps``, then linearly to 0 at ``total_steps``."""
    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_steps_for(total_steps: int, warmup: float) -> int:
    """``warmup`` < 1 is a fraction of the total steps, ≥ 1 a number of steps (``optim.warmup``; the config check
    refuses a negative value and a non-integer ≥ 1)."""
    return int(math.ceil(warmup * total_steps)) if warmup < 1 else int(warmup)
