"""X²-VLM (image and video): the model (:mod:`.model`) and its official-checkpoint converter (:mod:`.convert`).

Shared with CCLM, which builds on this family: the ``split_bert`` text stack and the ``beit_v2`` / ``swin`` vision
encoders (:mod:`zoo.modules`)."""

from __future__ import annotations

from zoo.models.x2vlm.convert import (
    OFFICIAL_DROPPED,
    convert_official_checkpoint,
    convert_official_state_dict,
    describe_official_checkpoint,
)
from zoo.models.x2vlm.model import X2VLM, sample_hard_negatives

__all__ = [
    "X2VLM",
    "sample_hard_negatives",
    "OFFICIAL_DROPPED",
    "convert_official_state_dict",
    "describe_official_checkpoint",
    "convert_official_checkpoint",
]
