"""UniVL's own parts: the video encoder over clip features, the cross encoder, the caption decoder and the masked
frame head.

Official code: microsoft/UniVL @8db88f3, ``modules/module_visual.py`` (``VisualModel``), ``modules/module_cross.py``
(``CrossModel``), ``modules/module_decoder.py`` (``DecoderModel``), and ``NormalizeVideo`` in ``modules/modeling.py``.

Every layer of the three stacks is a post-LayerNorm BERT layer (self-attention → [cross-attention] → GELU feed-forward,
LayerNorm eps 1e-12), so they are :class:`zoo.modules.layers.TransformerLayer` on the framework's attention op. The
official layers add ``-10000`` to masked attention scores; the op uses the dtype's most negative finite value, which
gives the same probabilities wherever a query has at least one visible key (``exp(-10000)`` is 0 in float32). A
query that sees no key at all (a padded decoder position whose whole prefix is padding) is averaged uniformly here and
by the raw scores in the official code; such positions are padding and carry no label.

Hand-written: the embeddings (a linear projection of features instead of a token table; the cross encoder's position
and token-type embeddings added on top of already encoded states), the poolers, the FT-Align score layer, the decoder
wiring (its word and position tables and its output projection are the text encoder's) and the MFM head whose output
matrix is the video projection.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zoo.modules.kv_cache import KVCache
from zoo.modules.layers import LayerStack, TransformerLayer, init_bert_weights
from zoo.modules.outputs import EncoderOutput
from zoo.registry import FUSIONS, HEADS, VISION_ENCODERS
from zoo.spec import ConfigError

__all__ = ["UniVLCrossEncoder", "UniVLDecoder", "UniVLFrameHead", "UniVLPixelGrid", "UniVLVideoEncoder"]


def _bert_layers(num_layers: int, hidden_size: int, num_heads: int, intermediate_size: int, *, eps: float,
                 attn_drop: float, drop: float, decoder: bool = False) -> LayerStack:
    if hidden_size % num_heads:
        raise ConfigError(f"hidden_size={hidden_size} is not a multiple of num_heads={num_heads}")
    if num_layers < 1:
        raise ConfigError(f"num_layers={num_layers}: at least one layer")
    return LayerStack([
        TransformerLayer(hidden_size, num_heads, intermediate_size, cross_attention=decoder, causal=decoder, eps=eps,
                         attn_drop=attn_drop, drop=drop)
        for _ in range(num_layers)
    ])


class _Pooler(nn.Module):
    """``tanh(dense(states[:, 0]))`` (key ``dense``), BERT's pooler."""

    def __init__(self, width: int):
        super().__init__()
        self.dense = nn.Linear(width, width)

    def forward(self, states: Tensor) -> Tensor:
        return torch.tanh(self.dense(states[:, 0]))


def _check_mask(mask: Tensor | None, shape: tuple[int, int], what: str) -> Tensor | None:
    if mask is not None and tuple(mask.shape) != shape:
        raise ValueError(f"{what} must have shape {shape} (1 = real, 0 = padding); got {tuple(mask.shape)}")
    return mask


# ---------------------------------------------------------------------------------------------------------------------
# video encoder
# ---------------------------------------------------------------------------------------------------------------------
class _Embeddings(nn.Module):
    """``layer`` (a Linear over features or a word table, registered under ``name``) + learned positions 0 .. L-1 →
    LayerNorm → dropout: the official ``VisualEmbeddings`` (projection named ``word_embeddings`` there, ``proj`` here)
    and ``module_decoder.py:DecoderEmbeddings``. ``what`` names the sequence in the too-long error."""

    def __init__(self, name: str, layer: nn.Module, width: int, max_positions: int, eps: float, drop: float,
                 what: str):
        super().__init__()
        self._input_name, self._what = name, what
        setattr(self, name, layer)
        self.position_embeddings = nn.Embedding(max_positions, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.dropout = nn.Dropout(drop)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """``offset``: the position of the first element (decoding with a cache: the cached positions)."""
        n, limit = x.shape[1] + offset, self.position_embeddings.num_embeddings
        if n > limit:
            raise ValueError(f"{n} {self._what[0]} but the {self._what[1]} has {limit} positions")
        positions = self.position_embeddings(torch.arange(offset, n, device=x.device))
        return self.dropout(self.LayerNorm(getattr(self, self._input_name)(x) + positions))


@VISION_ENCODERS.register("univl_video")
class UniVLVideoEncoder(nn.Module):
    """Video encoder over pre-extracted clip features ``(B, T, feature_dim)`` (one S3D vector per second).

    ``norm`` (LayerNorm over the raw features, the official top-level ``normalize_video``) → ``embeddings`` →
    ``num_layers`` bidirectional BERT layers under the frame mask → ``pooler`` (built as in the official
    ``VisualModel``, which never uses it).

    Args:
        feature_dim: width of the input features (1024 for the official S3D features).
        hidden_size, num_layers, num_heads, intermediate_size: the stack (official 768, 6, 12, 3072).
        max_frames: rows of the frame position table (official ``visual-base`` config: 512).
        hidden_dropout, attention_dropout, layer_norm_eps: as BERT.
        initializer_range: std of the normal initialisation (official 0.02).
    """

    #: a video encoder: the model reads videos (clip features, or frames through its frame encoder)
    is_video = True
    #: the side of the frames the model takes when a frame encoder feeds this encoder (set by the model from the
    #: frame encoder; :func:`zoo.models.base.input_resolution` reads it); None: clip features, no images
    image_size: int | None = None

    def __init__(
        self,
        feature_dim: int = 1024,
        hidden_size: int = 768,
        num_layers: int = 6,
        num_heads: int = 12,
        intermediate_size: int = 3072,
        max_frames: int = 512,
        hidden_dropout: float = 0.1,
        attention_dropout: float = 0.1,
        layer_norm_eps: float = 1e-12,
        initializer_range: float = 0.02,
    ):
        super().__init__()
        self.width = hidden_size
        self.feature_dim = feature_dim
        self.norm = nn.LayerNorm(feature_dim, eps=layer_norm_eps)
        self.embeddings = _Embeddings("proj", nn.Linear(feature_dim, hidden_size), hidden_size, max_frames,
                                      layer_norm_eps, hidden_dropout, ("frames", "video encoder (max_frames)"))
        self.encoder = _bert_layers(num_layers, hidden_size, num_heads, intermediate_size, eps=layer_norm_eps,
                                    attn_drop=attention_dropout, drop=hidden_dropout)
        self.pooler = _Pooler(hidden_size)
        init_bert_weights(self, initializer_range)

    def normalize(self, features: Tensor) -> Tensor:
        """The LayerNorm over each frame's raw features (official ``modeling.py:NormalizeVideo.forward``); also the
        targets of the masked frame model."""
        if features.dim() != 3 or features.shape[-1] != self.feature_dim:
            raise ValueError(f"expected features (batch, frames, {self.feature_dim}); got {tuple(features.shape)}")
        return self.norm(features.float() if not features.is_floating_point() else features)

    def forward(self, features: Tensor, mask: Tensor | None = None, *, normalized: bool = False) -> EncoderOutput:
        """``features`` ``(B, T, feature_dim)``, ``mask`` ``(B, T)`` (1 = frame, 0 = padding) → ``EncoderOutput``
        (tokens ``(B, T, width)``, pooled = the pooler's output, mask). ``normalized``: the features went through
        :meth:`normalize` already (official ``module_visual.py:VisualModel.forward`` after ``NormalizeVideo``)."""
        x = features if normalized else self.normalize(features)
        mask = _check_mask(mask, tuple(x.shape[:2]), "the frame mask")
        x, _, _, _ = self.encoder(self.embeddings(x), mask)
        return EncoderOutput(tokens=x, pooled=self.pooler(x), mask=mask)


@VISION_ENCODERS.register("univl_pixel_grid")
class UniVLPixelGrid(nn.Module):
    """A parameter-free frame encoder: each frame average-pooled to ``grid × grid`` cells, the cell colours flattened
    (channel-major) into one vector of ``3 · grid²`` values, its ``pooled`` output (``tokens`` is that one vector).

    A stand-in for the official S3D clip features where no pretrained video tower is available (synthetic data,
    offline tests): it keeps where each colour is at the resolution of a cell, which a frozen randomly initialised
    tower loses — a random ViT or ResNet pools its patch states into a vector that hardly depends on where things
    are (the frame position embedding is small next to the patch embedding at initialisation, convolutions are
    translation-equivariant), so motion cannot be read from it.

    Args:
        grid: cells per side (16: 4-pixel cells at 64 px, 768 values per frame).
        image_size: the side of the frames it is given (the data pipeline resizes to it; any size pools to the grid).
    """

    def __init__(self, grid: int = 16, image_size: int = 64):
        super().__init__()
        if grid < 1 or image_size < grid:
            raise ConfigError(f"grid={grid}, image_size={image_size}: need 1 <= grid <= image_size")
        self.grid, self.image_size = grid, image_size
        self.width = 3 * grid * grid

    def forward(self, images: Tensor) -> EncoderOutput:
        """``images`` ``(B, 3, H, W)`` → pooled ``(B, 3·grid²)`` (tokens: the same as one token)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        pooled = nn.functional.adaptive_avg_pool2d(images, self.grid).flatten(1)
        return EncoderOutput(tokens=pooled[:, None], pooled=pooled)


# ---------------------------------------------------------------------------------------------------------------------
# cross encoder
# ---------------------------------------------------------------------------------------------------------------------
class _CrossEmbeddings(nn.Module):
    """States + position (0 .. L+T-1 over the concatenation) + token type (0 text, 1 video) → LayerNorm → dropout
    (official ``module_cross.py:CrossEmbeddings``)."""

    def __init__(self, width: int, max_positions: int, type_vocab_size: int, eps: float, drop: float):
        super().__init__()
        self.position_embeddings = nn.Embedding(max_positions, width)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.dropout = nn.Dropout(drop)

    def forward(self, states: Tensor, token_types: Tensor) -> Tensor:
        n = states.shape[1]
        if n > self.position_embeddings.num_embeddings:
            raise ValueError(f"{n} text tokens and frames but the cross encoder has "
                             f"{self.position_embeddings.num_embeddings} positions (max_position_embeddings)")
        positions = self.position_embeddings(torch.arange(n, device=states.device))
        return self.dropout(self.LayerNorm(states + positions + self.token_type_embeddings(token_types)))


@FUSIONS.register("univl_cross")
class UniVLCrossEncoder(nn.Module):
    """The cross encoder over ``[text states ; video states]``: position and token-type embeddings, ``num_layers``
    bidirectional BERT layers, BERT's pooler on the first (text CLS) state, and ``similarity_dense`` (Linear
    width → 1), the FT-Align score of a (text, video) pair from the pooled state.

    Args:
        hidden_size, num_layers, num_heads, intermediate_size: the stack (official ``cross-base``: 768, 2 layers as
            the scripts set, 12, 3072).
        max_position_embeddings: positions over text + frames (official 1024).
        type_vocab_size: token types (official 2: 0 text, 1 video).
        hidden_dropout, attention_dropout, layer_norm_eps, initializer_range: as BERT.
    """

    TEXT_TYPE, VIDEO_TYPE = 0, 1

    def __init__(
        self,
        hidden_size: int = 768,
        num_layers: int = 2,
        num_heads: int = 12,
        intermediate_size: int = 3072,
        max_position_embeddings: int = 1024,
        type_vocab_size: int = 2,
        hidden_dropout: float = 0.1,
        attention_dropout: float = 0.1,
        layer_norm_eps: float = 1e-12,
        initializer_range: float = 0.02,
    ):
        super().__init__()
        if type_vocab_size < 2:
            raise ConfigError(f"type_vocab_size={type_vocab_size}: text and video need two token types")
        self.width = hidden_size
        self.embeddings = _CrossEmbeddings(hidden_size, max_position_embeddings, type_vocab_size, layer_norm_eps,
                                           hidden_dropout)
        self.encoder = _bert_layers(num_layers, hidden_size, num_heads, intermediate_size, eps=layer_norm_eps,
                                    attn_drop=attention_dropout, drop=hidden_dropout)
        self.pooler = _Pooler(hidden_size)
        self.similarity_dense = nn.Linear(hidden_size, 1)
        init_bert_weights(self, initializer_range)

    def token_types(self, text_mask: Tensor, video_mask: Tensor) -> Tensor:
        """``(B, L + T)``: 0 over the text positions, 1 over the frames (official ``modeling.py:_get_cross_output``)."""
        return torch.cat([torch.full_like(text_mask, self.TEXT_TYPE, dtype=torch.long),
                          torch.full_like(video_mask, self.VIDEO_TYPE, dtype=torch.long)], dim=1)

    def forward(self, text_states: Tensor, text_mask: Tensor, video_states: Tensor, video_mask: Tensor) -> EncoderOutput:
        """Fused states of the concatenation (official ``modeling.py:UniVL._get_cross_output`` →
        ``module_cross.py:CrossModel.forward``): tokens ``(B, L + T, width)``, pooled ``(B, width)``, mask
        ``(B, L + T)``."""
        if text_states.shape[0] != video_states.shape[0]:
            raise ValueError(f"{text_states.shape[0]} texts but {video_states.shape[0]} videos: the cross encoder "
                             "fuses aligned pairs")
        _check_mask(text_mask, tuple(text_states.shape[:2]), "the text attention mask")
        _check_mask(video_mask, tuple(video_states.shape[:2]), "the frame mask")
        mask = torch.cat([text_mask, video_mask], dim=1)
        x = self.embeddings(torch.cat([text_states, video_states], dim=1), self.token_types(text_mask, video_mask))
        x, _, _, _ = self.encoder(x, mask)
        return EncoderOutput(tokens=x, pooled=self.pooler(x), mask=mask)

    def score(self, pooled: Tensor) -> Tensor:
        """FT-Align logit of each pooled pair state ``(N, width)`` → ``(N,)`` (official ``similarity_dense``)."""
        return self.similarity_dense(pooled).squeeze(-1)


# ---------------------------------------------------------------------------------------------------------------------
# decoder
# ---------------------------------------------------------------------------------------------------------------------
@HEADS.register("univl_decoder")
class UniVLDecoder(nn.Module):
    """The caption decoder: ``num_layers`` layers of causal self-attention → cross-attention to the cross encoder's
    states → FFN, then BERT's LM prediction head (``classifier``, the shared ``mlm`` head).

    The word and position tables and the output matrix are those of the text encoder (:meth:`tie_to`, called by the
    model), as the official ``DecoderModel`` receives BERT's ``word_embeddings`` / ``position_embeddings`` weights.

    Args:
        hidden_size, num_layers, num_heads, intermediate_size: the stack (official ``decoder-base`` with the scripts'
            3 layers: 768, 3, 12, 3072).
        vocab_size: output vocabulary (bert-base-uncased: 30522); max_position_embeddings: the text encoder's (512).
        hidden_dropout, attention_dropout, layer_norm_eps, initializer_range: as BERT.
    """

    def __init__(
        self,
        hidden_size: int = 768,
        num_layers: int = 3,
        num_heads: int = 12,
        intermediate_size: int = 3072,
        vocab_size: int = 30522,
        max_position_embeddings: int = 512,
        hidden_dropout: float = 0.1,
        attention_dropout: float = 0.1,
        layer_norm_eps: float = 1e-12,
        initializer_range: float = 0.02,
    ):
        super().__init__()
        from zoo.heads.mlm import MLMHead

        self.width = hidden_size
        self.vocab_size = vocab_size
        self.embeddings = _Embeddings("word_embeddings", nn.Embedding(vocab_size, hidden_size), hidden_size,
                                      max_position_embeddings, layer_norm_eps, hidden_dropout,
                                      ("caption tokens", "decoder"))
        self.stack = _bert_layers(num_layers, hidden_size, num_heads, intermediate_size, eps=layer_norm_eps,
                                  attn_drop=attention_dropout, drop=hidden_dropout, decoder=True)
        init_bert_weights(self, initializer_range)
        self.classifier = MLMHead(hidden_size, vocab_size, layer_norm_eps, initializer_range=initializer_range)

    def tie_to(self, word_embeddings: nn.Embedding, position_embeddings: nn.Embedding) -> None:
        """Share the text encoder's word and position tables (and the word table as the output matrix)."""
        for mine, theirs, what in ((self.embeddings.word_embeddings, word_embeddings, "word"),
                                   (self.embeddings.position_embeddings, position_embeddings, "position")):
            if tuple(mine.weight.shape) != tuple(theirs.weight.shape):
                raise ConfigError(f"cannot tie the decoder's {what} table {tuple(mine.weight.shape)} to the text "
                                  f"encoder's {tuple(theirs.weight.shape)}: vocab_size / max_position_embeddings / "
                                  "hidden_size differ")
            mine.weight = theirs.weight
        self.classifier.tie_to(word_embeddings)

    def new_cache(self) -> KVCache:
        """An empty key/value cache for decoding step by step (``forward(..., cache=)``)."""
        return KVCache(len(self.stack.layer))

    def forward(self, input_ids: Tensor, input_mask: Tensor | None, encoder_states: Tensor, encoder_mask: Tensor,
                cache: KVCache | None = None) -> Tensor:
        """Teacher-forced logits ``(B, L, vocab)`` of the next token at each caption position (official
        ``module_decoder.py:DecoderModel.forward``: causal self-attention limited to the caption's real tokens,
        cross-attention to the real text tokens and frames).

        ``cache`` (decoding, :mod:`zoo.modules.kv_cache`): ``input_ids`` are the tokens after the cached ones (their
        positions continue from ``cache.length``), unpadded (``input_mask`` None); ``encoder_states`` /
        ``encoder_mask`` are read on the first call, one row per example, the caption rows example-major."""
        if cache is not None:
            if input_mask is not None:
                raise ValueError("decoding with a cache reads unpadded prefixes: pass input_mask=None")
            x = self.embeddings(input_ids, offset=cache.length)
        else:
            _check_mask(input_mask, tuple(input_ids.shape), "the caption mask")
            x = self.embeddings(input_ids)
        x, _, _, _ = self.stack(x, input_mask, encoder_states, encoder_mask, causal=True, cache=cache)
        return self.classifier.logits(x)


# ---------------------------------------------------------------------------------------------------------------------
# masked frame model head
# ---------------------------------------------------------------------------------------------------------------------
class _Transform(nn.Module):
    def __init__(self, width: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.LayerNorm(nn.functional.gelu(self.dense(x)))


@HEADS.register("univl_mfm")
class UniVLFrameHead(nn.Module):
    """The masked frame model head of stage II pre-training: dense → GELU → LayerNorm → ``@ weight + bias`` back to
    the feature width, where ``weight`` ``(width, feature_dim)`` is the video encoder's projection matrix
    (:meth:`tie_to`; official ``module_visual.py:VisualOnlyMLMHead`` on the ``word_embeddings`` Linear's weight).

    Args:
        hidden_size: width of the cross encoder's states; feature_dim: width of the clip features (1024).
        layer_norm_eps, initializer_range: as BERT.
    """

    def __init__(self, hidden_size: int = 768, feature_dim: int = 1024, layer_norm_eps: float = 1e-12,
                 initializer_range: float = 0.02):
        super().__init__()
        self.width = hidden_size
        self.feature_dim = feature_dim
        self.transform = _Transform(hidden_size, layer_norm_eps)
        self.weight = nn.Parameter(torch.empty(hidden_size, feature_dim))
        self.bias = nn.Parameter(torch.zeros(feature_dim))
        init_bert_weights(self, initializer_range)
        nn.init.normal_(self.weight, std=initializer_range)

    def tie_to(self, projection: nn.Linear) -> None:
        """Share the video projection's weight ``(width, feature_dim)`` as the output matrix."""
        if tuple(projection.weight.shape) != tuple(self.weight.shape):
            raise ConfigError(f"cannot tie the frame head {tuple(self.weight.shape)} to the video projection "
                              f"{tuple(projection.weight.shape)}: hidden_size / feature_dim differ")
        self.weight = projection.weight

    def forward(self, states: Tensor) -> Tensor:
        """``(..., width)`` → predicted features ``(..., feature_dim)``."""
        return self.transform(states) @ self.weight + self.bias
