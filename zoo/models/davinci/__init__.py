"""DaVinci: the model and its text encoder (:mod:`.model`), the ResNet grid vision encoder (:mod:`.resnet_grid`), the
VQ-GAN image tokenizer (:mod:`.vqgan`) and the official-checkpoint converter (:mod:`.convert`)."""

from __future__ import annotations

from zoo.models.davinci.convert import (
    OFFICIAL_DROPPED,
    convert_official_checkpoint,
    convert_official_state_dict,
    describe_official_checkpoint,
)
from zoo.models.davinci.model import (
    DaVinci,
    DaVinciEncoder,
    official_tokenize,
    pretrain_batch_inputs,
    pretrain_text_inputs,
    relative_position_index,
)

__all__ = [
    "DaVinci",
    "DaVinciEncoder",
    "relative_position_index",
    "official_tokenize",
    "pretrain_batch_inputs",
    "pretrain_text_inputs",
    "OFFICIAL_DROPPED",
    "convert_official_state_dict",
    "describe_official_checkpoint",
    "convert_official_checkpoint",
]
