"""UniVL (video and language over pre-extracted clip features, or frames through a frozen frame encoder): the model
(:mod:`.model`), its own parts — video encoder, cross encoder, caption decoder, masked frame head, the parameter-free
pixel-grid frame encoder (:mod:`.parts`) —, its similarity losses (:mod:`.losses`),
the stage II input masking (:mod:`.masking`) and the official-checkpoint converter (:mod:`.convert`).

Shared with other families: the ``hf`` text encoder (BERT), the ``mlm`` head and the BERT layers of
:mod:`zoo.modules.layers`."""

from __future__ import annotations

from zoo.models.univl.convert import (
    OFFICIAL_DROPPED,
    convert_official_checkpoint,
    convert_official_state_dict,
    describe_official_checkpoint,
)
from zoo.models.univl.losses import cross_en, max_margin_ranking, mil_nce
from zoo.models.univl.masking import mask_frames, mask_tokens, stage_two_masking
from zoo.models.univl.model import (
    UniVL,
    beam_search,
    features_and_mask,
    mean_pool_text,
    mean_pool_video,
    mean_pooled_similarity,
)
from zoo.models.univl.parts import UniVLCrossEncoder, UniVLDecoder, UniVLFrameHead, UniVLPixelGrid, UniVLVideoEncoder

__all__ = [
    "OFFICIAL_DROPPED",
    "UniVL",
    "UniVLCrossEncoder",
    "UniVLDecoder",
    "UniVLFrameHead",
    "UniVLPixelGrid",
    "UniVLVideoEncoder",
    "beam_search",
    "convert_official_checkpoint",
    "convert_official_state_dict",
    "cross_en",
    "describe_official_checkpoint",
    "features_and_mask",
    "mask_frames",
    "mask_tokens",
    "max_margin_ranking",
    "mean_pool_text",
    "mean_pool_video",
    "mean_pooled_similarity",
    "mil_nce",
    "stage_two_masking",
]
