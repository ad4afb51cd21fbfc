"""The small typed outputs every part returns, so that an assembly never reaches into a part's insides."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterator

from torch import Tensor

__all__ = ["EncoderOutput", "register_output"]


@dataclass
class EncoderOutput:
    """What vision encoders, text encoders and fusion blocks return.

    tokens: ``(B, N, D)`` sequence of output states.
    pooled: ``(B, D)`` one vector per example (CLS state, mean of patches, ... as the part defines it).
    mask: ``(B, N)`` 1 = real token, 0 = padding; None when every token is real (images).
    hidden_states: the input of the first layer and the output of every layer, when requested.
    attentions: per-layer attention probabilities ``(B, H, N, M)``, when requested (math backend).
    frame_tokens: ``(B, T, P, D)`` per-frame patch tokens of a video encoder, before anything combines the frames
        (only when the encoder's temporal self-supervision is on: :mod:`zoo.modules.temporal`).
    """

    tokens: Tensor
    pooled: Tensor | None = None
    mask: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    frame_tokens: Tensor | None = None

    def __iter__(self) -> Iterator[Tensor | None]:
        return (getattr(self, f.name) for f in fields(self))


def register_output(cls: type) -> type:
    """Make an output dataclass a pytree node, so that ``torch.export`` (and the exporters built on it: ONNX's
    dynamo path, AOTInductor) take a part or model that returns it: its fields are the node's children."""
    import torch  # noqa: PLC0415

    torch.export.register_dataclass(cls, serialized_type_name=f"{cls.__module__}.{cls.__qualname__}")
    return cls


register_output(EncoderOutput)
