"""UniVL (video and language over pre-extracted clip features): the model (:mod:`.model`), its own parts — video
encoder, cross encoder, caption decoder, masked frame head (:mod:`.parts`) — and the official-checkpoint converter
(:mod:`.convert`).

Shared with other families: the ``hf`` text encoder (BERT), the ``mlm`` head and the BERT layers of
:mod:`zoo.modules.layers`."""

from __future__ import annotations

from zoo.models.univl.convert import (
    OFFICIAL_DROPPED,
    convert_official_checkpoint,
    convert_official_state_dict,
    describe_official_checkpoint,
)
from zoo.models.univl.model import UniVL, mean_pooled_similarity
from zoo.models.univl.parts import UniVLCrossEncoder, UniVLDecoder, UniVLFrameHead, UniVLVideoEncoder

__all__ = [
    "OFFICIAL_DROPPED",
    "UniVL",
    "UniVLCrossEncoder",
    "UniVLDecoder",
    "UniVLFrameHead",
    "UniVLVideoEncoder",
    "convert_official_checkpoint",
    "convert_official_state_dict",
    "describe_official_checkpoint",
    "mean_pooled_similarity",
]
