"""CCLM (cross-lingual X²-VLM): the model (:mod:`.model`), its parallel-sentence side stream (:mod:`.data`) and its
official-checkpoint converter for both official layouts (:mod:`.convert`)."""

from __future__ import annotations

from zoo.models.cclm.convert import (
    OFFICIAL_DROPPED,
    Layout,
    convert_official_checkpoint,
    convert_official_state_dict,
    describe_official_checkpoint,
    detect_official_layout,
)
from zoo.models.cclm.model import CCLM, XVNLI_LABELS

__all__ = [
    "CCLM",
    "XVNLI_LABELS",
    "OFFICIAL_DROPPED",
    "Layout",
    "detect_official_layout",
    "convert_official_state_dict",
    "describe_official_checkpoint",
    "convert_official_checkpoint",
]
