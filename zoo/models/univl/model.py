"""UniVL (Luo et al., 2020): a text encoder and a video encoder over pre-extracted clip features, a cross encoder over
both and a caption decoder; retrieval by mean-pooled similarity (FT-Joint) or by the cross encoder (FT-Align).

Official code: microsoft/UniVL @8db88f3 (``modules/modeling.py``, class ``UniVL``). Parts, each from a registry:

- ``text``: BERT-base (``hf``: transformers' ``BertModel`` with its pooler, on the framework's attention op);
- ``vision``: ``univl_video`` — LayerNorm over the 1024-d S3D features, Linear 1024 → 768, learned frame positions,
  6 BERT layers (:mod:`zoo.models.univl.parts`);
- ``fusion``: ``univl_cross`` — 2 BERT layers over ``[text ; video]`` with token types 0 / 1, pooler, and the
  FT-Align score layer ``similarity_dense`` (Linear 768 → 1);
- ``decoder``: ``univl_decoder`` — 3 layers of causal self-attention and cross-attention; its word / position tables
  and output matrix are the text encoder's;
- ``mlm`` (the shared ``mlm`` head, tied to the word embeddings) and ``mfm`` (``univl_mfm``, tied to the video
  projection): the stage II pre-training heads.

Which parts exist is the model file's choice, as the official flags choose (``UniVL.__init__``): without a task the
stage I model (text + video: 153,784,064 parameters for base); ``retrieval`` the same with L2-normalised similarity
(FT-Joint); ``retrieval_align`` adds the cross encoder (FT-Align, ``--train_sim_after_cross``: 169,340,673);
``captioning`` adds the decoder (``--stage_two``: 198,320,187); ``pretrain`` adds the MLM / MFM heads (stage II
pre-training, ``--do_pretrain --stage_two``: 199,535,989).

Input: features ``(B, T, 1024)`` (one vector per second; at most 48 frames in fine-tuning, 64 in pre-training) with a
frame mask ``(B, T)`` for ragged lengths, and WordPiece text with its attention mask. The framework's tasks read
pixels, not clip features, so this family declares no task (``task_heads`` is empty); its objectives are methods:
:meth:`UniVL.pretrain_loss` (stage I / II, inputs masked by :func:`zoo.models.univl.masking.stage_two_masking`),
:meth:`UniVL.retrieval_loss` (FT-Joint / FT-Align) and :meth:`UniVL.decoder_loss` (captioning); the similarity losses
are in :mod:`zoo.models.univl.losses`.

Optimiser groups: the official ``prep_optimizer`` (``main_pretrain.py:173-195``, the same in the fine-tuning scripts)
gives parameters whose name contains ``"bert."`` the learning rate ``lr × coef_lr`` (``--coef_lr`` 0.1, but 1.0
whenever ``--init_model`` is given: ``main_pretrain.py:383-385``) and every other one ``lr``. Here those are the
``text`` part (:meth:`~zoo.models.base.ZooModel.param_part`'s generic rule; the word and position tables the decoder
and the MLM head share are named under ``text`` first, as under ``bert`` officially), so a config writes
``optim: {lr: 1.0e-4, text_lr: 1.0e-5}``. Weight decay: officially 0.01 except on names containing ``bias`` or
``LayerNorm``; here every one-dimensional parameter is exempt, which differs only on ``vision.norm.weight`` (the
official ``normalize_video.visual_norm2d.weight``, decayed there).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.models.base import ZooModel
from zoo.models.univl.losses import cross_en, max_margin_ranking, mil_nce
from zoo.modules.outputs import EncoderOutput
from zoo.registry import MODELS
from zoo.spec import ConfigError, Part, check_width

__all__ = ["UniVL", "mean_pooled_similarity"]

#: the label the official decoder and MLM losses ignore (``CrossEntropyLoss(ignore_index=-1)``)
IGNORE_INDEX = -1


def _caption_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of ``(B, L, vocab)`` logits against ``(B, L)`` labels, ``-1`` ignored."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).long(),
                           ignore_index=IGNORE_INDEX)


def mean_pooled_similarity(text_states: Tensor, text_mask: Tensor, video_states: Tensor, video_mask: Tensor,
                           normalize: bool = True) -> Tensor:
    """FT-Joint similarity ``(texts, videos)`` of encoded texts and videos (official
    ``modules/modeling.py:UniVL._mean_pooling_for_similarity`` and ``get_similarity_logits``).

    The text vector is the mean of its token states under the attention mask with the first token (CLS) left out; the
    video vector the mean of its frame states under the frame mask (a video without any frame divides by 1). With
    ``normalize`` (the official fine-tuning, ``use_mil`` off) both are L2-normalised before the dot product.
    """
    text_weight = text_mask.to(text_states.dtype).unsqueeze(-1).clone()
    text_weight[:, 0] = 0
    text = (text_states * text_weight).sum(1) / text_weight.sum(1)
    video_weight = video_mask.to(video_states.dtype).unsqueeze(-1)
    count = video_weight.sum(1)
    video = (video_states * video_weight).sum(1) / count.masked_fill(count == 0, 1)
    if normalize:
        text, video = F.normalize(text, dim=-1), F.normalize(video, dim=-1)
    return text @ video.t()


@MODELS.register("univl")
class UniVL(ZooModel):
    """UniVL with the parts its config names (see the module docstring)."""

    # the framework's tasks feed images or frames; this family reads pre-extracted clip features
    task_heads: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    def __init__(
        self,
        text: Part["text_encoder"],
        vision: Part["vision_encoder"],
        fusion: Part["fusion"] | None = None,
        decoder: Part["head"] | None = None,
        mlm: Part["head"] | None = None,
        mfm: Part["head"] | None = None,
        normalize_similarity: bool = True,
    ):
        super().__init__()
        if not hasattr(vision, "normalize"):
            raise ConfigError(f"vision must be a clip-feature encoder such as 'univl_video', got "
                              f"{type(vision).__name__}")
        check_width(vision, "hidden_size", vision.width, text, text.width)
        for part in (fusion, decoder, mlm):
            if part is not None:
                check_width(part, "hidden_size", part.width, text, text.width)
        if (decoder is not None or mlm is not None or mfm is not None) and fusion is None:
            raise ConfigError("the decoder and the MLM / MFM heads read the cross encoder's states: add fusion "
                              "(type univl_cross)", "fusion")
        if mfm is not None:
            check_width(mfm, "hidden_size", mfm.width, vision, vision.width)
        self.text, self.vision, self.fusion = text, vision, fusion
        self.decoder, self.mlm, self.mfm = decoder, mlm, mfm
        self.normalize_similarity = normalize_similarity
        words = text.get_input_embeddings()
        if decoder is not None:  # official DecoderModel(decoder_config, bert word / position embedding weights)
            decoder.tie_to(words, self._text_positions())
        if mlm is not None:  # official BertOnlyMLMHead(bert_config, bert word embedding weight)
            mlm.tie_to(words)
        if mfm is not None:  # official VisualOnlyMLMHead(visual_config, visual word_embeddings weight)
            mfm.tie_to(vision.embeddings.proj)

    def _text_positions(self) -> Any:
        positions = getattr(getattr(getattr(self.text, "model", None), "embeddings", None), "position_embeddings", None)
        if positions is None:
            positions = getattr(getattr(self.text, "embeddings", None), "position_embeddings", None)
        if positions is None:
            raise ConfigError(f"the decoder shares the text encoder's position table, but "
                              f"{type(self.text).__name__} exposes none (embeddings.position_embeddings)", "text")
        return positions

    @staticmethod
    def official_converter(checkpoint: str, out_dir: str, model: str | None = None,
                           task: str | None = None) -> dict[str, Any]:
        """UniVL checkpoints (microsoft/UniVL pytorch_model.bin: stage I / II pre-training, retrieval, captioning).

        The variant is told from the parts the checkpoint holds (``task`` names it instead); see
        :func:`zoo.models.univl.convert.convert_official_checkpoint`."""
        from zoo.models.univl.convert import convert_official_checkpoint

        return convert_official_checkpoint(checkpoint, out_dir, model=model, task=task)

    def preprocess_config(self) -> Any:
        """None: the model reads pre-extracted clip features, not images (a ConfigError, which an export takes as
        "nothing to record")."""
        raise ConfigError(f"{(self.zoo_config or {}).get('name') or 'UniVL'} reads pre-extracted clip features, "
                          "not images: it has no image preprocessing", "preprocess")

    def _require(self, **parts: Any) -> None:
        missing = [name for name, part in parts.items() if part is None]
        if missing:
            raise RuntimeError(f"this UniVL was built without {', '.join(missing)}; use the model variant that has "
                               "it (retrieval_align: fusion; captioning: fusion + decoder; pretrain: all)")

    # -- encoders ------------------------------------------------------------------------------------------------
    def encode_text(self, input_ids: Tensor, attention_mask: Tensor,
                    token_type_ids: Tensor | None = None) -> EncoderOutput:
        """BERT over the WordPiece ids (official ``modeling.py:UniVL.get_sequence_visual_output``, text half):
        tokens ``(B, L, 768)``; ``token_type_ids`` default 0 (the official segment ids)."""
        return self.text(input_ids, attention_mask, token_type_ids=token_type_ids)

    def encode_video(self, features: Tensor, video_mask: Tensor | None = None) -> EncoderOutput:
        """Clip features ``(B, T, feature_dim)`` and the frame mask ``(B, T)`` (1 = frame, 0 = padding; None: all
        frames real) → frame states ``(B, T, 768)`` (official ``modeling.py:NormalizeVideo`` then
        ``get_sequence_visual_output``, video half)."""
        if video_mask is None:
            video_mask = torch.ones(features.shape[:2], dtype=torch.long, device=features.device)
        return self.vision(features, video_mask)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, video: Tensor,
                video_mask: Tensor | None = None) -> dict[str, Any]:
        """Both encoders and the FT-Joint similarity ``(texts, videos)``; with a cross encoder also the FT-Align
        scores of every (text, video) pair."""
        text = self.encode_text(input_ids, attention_mask)
        frames = self.encode_video(video, video_mask)
        out: dict[str, Any] = {"text": text, "video": frames,
                               "similarity": self.joint_similarity(text.tokens, attention_mask, frames.tokens,
                                                                   frames.mask)}
        if self.fusion is not None:
            out["align_scores"] = self.align_scores(text.tokens, attention_mask, frames.tokens, frames.mask)
        return out

    # -- retrieval -----------------------------------------------------------------------------------------------
    def joint_similarity(self, text_states: Tensor, attention_mask: Tensor, video_states: Tensor,
                         video_mask: Tensor) -> Tensor:
        """FT-Joint logits ``(texts, videos)`` (official ``modeling.py:UniVL.get_similarity_logits``, mean-pooling
        branch: :func:`mean_pooled_similarity`; L2-normalised when ``normalize_similarity``, i.e. ``use_mil`` off)."""
        return mean_pooled_similarity(text_states, attention_mask, video_states, video_mask,
                                      normalize=self.normalize_similarity)

    def cross(self, text_states: Tensor, attention_mask: Tensor, video_states: Tensor,
              video_mask: Tensor) -> EncoderOutput:
        """The cross encoder over aligned pairs (official ``modeling.py:UniVL._get_cross_output``)."""
        self._require(fusion=self.fusion)
        return self.fusion(text_states, attention_mask, video_states, video_mask)

    def align_pair_scores(self, text_states: Tensor, attention_mask: Tensor, video_states: Tensor,
                          video_mask: Tensor) -> Tensor:
        """FT-Align logit of each aligned (text i, video i) pair ``(B,)``: ``similarity_dense`` on the cross
        encoder's pooled state."""
        return self.fusion.score(self.cross(text_states, attention_mask, video_states, video_mask).pooled)

    def align_scores(self, text_states: Tensor, attention_mask: Tensor, video_states: Tensor, video_mask: Tensor,
                     batch_size: int = 64) -> Tensor:
        """FT-Align logits ``(texts, videos)``: every text fused with every video (official
        ``modeling.py:UniVL._cross_similarity``, which fuses 5 texts at a time; here ``batch_size`` pairs)."""
        self._require(fusion=self.fusion)
        n_text, n_video = text_states.shape[0], video_states.shape[0]
        t_idx = torch.arange(n_text, device=text_states.device).repeat_interleave(n_video)
        v_idx = torch.arange(n_video, device=video_states.device).repeat(n_text)
        scores = [self.align_pair_scores(text_states[t], attention_mask[t], video_states[v], video_mask[v])
                  for t, v in zip(t_idx.split(batch_size), v_idx.split(batch_size))]
        return torch.cat(scores).view(n_text, n_video)

    # -- captioning ----------------------------------------------------------------------------------------------
    def decoder_logits(self, text_states: Tensor, attention_mask: Tensor, video_states: Tensor, video_mask: Tensor,
                       caption_ids: Tensor, caption_mask: Tensor) -> Tensor:
        """Teacher-forced next-token logits ``(B, L, vocab)`` over the cross encoder's states of each pair (official
        ``modeling.py:UniVL._get_decoder_score``)."""
        self._require(fusion=self.fusion, decoder=self.decoder)
        fused = self.cross(text_states, attention_mask, video_states, video_mask)
        return self.decoder(caption_ids, caption_mask, fused.tokens, fused.mask)

    def decoder_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Caption loss: the mean cross-entropy of the teacher-forced logits against ``output_caption_ids``
        (``-1`` = ignored, the official ``decoder_loss_fct = CrossEntropyLoss(ignore_index=-1)``, modeling.py:168 and
        :253). The official loaders pad ``output_caption_ids`` with 0, not -1 (``dataloader_howto100m.py:212-215``,
        ``dataloader_youcook_caption.py:152-155``), so padded positions are trained to predict id 0 ([PAD]); a data
        pipeline that pads with 0 reproduces that, one that pads with -1 leaves them out. ``batch``: ``input_ids``,
        ``attention_mask`` (the transcript or the text input), ``video``, ``video_mask``, ``input_caption_ids``,
        ``decoder_mask``, ``output_caption_ids``; optional ``token_type_ids``. Returns ``{"loss", "logits"}``."""
        text = self.encode_text(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        frames = self.encode_video(batch["video"], batch.get("video_mask"))
        logits = self.decoder_logits(text.tokens, batch["attention_mask"], frames.tokens, frames.mask,
                                     batch["input_caption_ids"], batch["decoder_mask"])
        return {"loss": _caption_nll(logits, batch["output_caption_ids"]), "logits": logits}

    # -- stage II pre-training heads -----------------------------------------------------------------------------
    def mlm_loss(self, text_cross_states: Tensor, token_labels: Tensor) -> Tensor:
        """Masked language model on the cross encoder's text states (official
        ``modeling.py:UniVL._calculate_mlm_loss``): the mean cross-entropy at the labelled tokens (``-1`` =
        ignored). A batch without any labelled token gives 0 (officially NaN, the mean of nothing; it happens when
        every text of a small batch is emptied by the video-modality enhancement)."""
        self._require(mlm=self.mlm)
        logits = self.mlm.logits(text_cross_states)
        labels = token_labels.reshape(-1).long()
        total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels, ignore_index=IGNORE_INDEX,
                                reduction="sum")
        return total / (labels != IGNORE_INDEX).sum().clamp(min=1)

    def mfm_loss(self, video_cross_states: Tensor, normalized_video: Tensor, video_mask: Tensor,
                 video_labels_index: Tensor) -> Tensor:
        """Masked frame model, NCE over every real frame of the batch (official
        ``modeling.py:UniVL._calculate_mfm_loss``): each predicted frame scores every normalised frame of the
        batch by dot product (pairs with a padded frame excluded); the loss is ``-log softmax`` of its own frame,
        averaged over the masked frames (``video_labels_index != -1``; none masked gives 0, officially NaN)."""
        self._require(mfm=self.mfm)
        pred = self.mfm(video_cross_states).reshape(-1, normalized_video.shape[-1])
        target = normalized_video.reshape(-1, normalized_video.shape[-1])
        logits = pred @ target.t()
        real = video_mask.reshape(-1).to(logits.dtype)
        logits = logits + (1.0 - real[:, None] * real[None, :]) * -1e8
        nll = -torch.diagonal(F.log_softmax(logits, dim=-1))
        masked = video_labels_index.reshape(-1) != IGNORE_INDEX
        return nll[masked].sum() / masked.sum().clamp(min=1)

    # -- training objectives -------------------------------------------------------------------------------------
    def similarity_loss(self, sim: Tensor, n_pair: int = 1, *, margin: float = 0.1, hard_negative_rate: float = 0.5,
                        negative_weighting: bool = True) -> Tensor:
        """The official loss of a square (texts, videos) similarity matrix outside stage II's cross encoder:
        MIL-NCE with ``use_mil`` and the max-margin ranking loss without (``modeling.py:172-184``). ``use_mil`` also
        turns the L2 normalisation of the mean-pooled similarity off (``modeling.py:386-388``), so here it is
        ``not normalize_similarity``: the pre-training models (not normalised) take MIL-NCE as the published scripts
        (``--sampled_use_mil``), the retrieval variants (normalised) the max-margin loss as the fine-tuning scripts.
        Defaults: ``main_pretrain.py:50-52`` (margin 0.1, hard-negative rate 0.5, negative weighting on)."""
        if not self.normalize_similarity:
            return mil_nce(sim, n_pair)
        return max_margin_ranking(sim, margin, n_pair, hard_negative_rate, negative_weighting)

    @staticmethod
    def _pairs(batch: Mapping[str, Any], n_pair: int | None) -> tuple[dict[str, Any], int]:
        """``batch`` with ``(B, n_pair, ...)`` tensors flattened to ``(B·n_pair, ...)`` video-major (the official
        ``view(-1, ...)``, ``modeling.py:192-196``), and ``n_pair``."""
        ids = batch["input_ids"]
        if ids.dim() == 3:
            if n_pair not in (None, ids.shape[1]):
                raise ValueError(f"n_pair={n_pair} but input_ids has {ids.shape[1]} clips per example")
            flat = {k: v.flatten(0, 1) if torch.is_tensor(v) else v for k, v in batch.items()}
            return flat, ids.shape[1]
        return dict(batch), n_pair or 1

    def retrieval_loss(self, batch: Mapping[str, Tensor], *, margin: float = 0.1) -> dict[str, Tensor]:
        """Retrieval fine-tuning (``main_task_retrieval.py``, ``modeling.py:207-211``): :meth:`similarity_loss` of the
        FT-Joint matrix, or with a cross encoder (``--train_sim_after_cross``) of the FT-Align matrix — every text
        fused with every video. One clip per example (``n_pair`` 1, the scripts' default). ``batch``: ``input_ids``,
        ``attention_mask``, ``video``, ``video_mask``; optional ``token_type_ids``. Returns ``{"loss", "sim"}``."""
        text = self.encode_text(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        frames = self.encode_video(batch["video"], batch.get("video_mask"))
        score = self.align_scores if self.fusion is not None else self.joint_similarity
        sim = score(text.tokens, batch["attention_mask"], frames.tokens, frames.mask)
        return {"loss": self.similarity_loss(sim, margin=margin), "sim": sim}

    def pretrain_loss(self, batch: Mapping[str, Tensor], *, n_pair: int | None = None, margin: float = 0.1,
                      hard_negative_rate: float = 0.5, negative_weighting: bool = True) -> dict[str, Tensor]:
        """The official pre-training loss (``modeling.py:205-269``), every term with weight 1.

        Stage I (a model without the cross encoder): ``joint`` — :meth:`similarity_loss` of the mean-pooled
        similarity. Stage II (the ``pretrain`` variant), in the official order of the sum:

        - ``mlm``: :meth:`mlm_loss` on the text half of the cross encoder over the masked text and masked video;
        - ``mfm``: :meth:`mfm_loss` on the video half of that pass, against the LayerNorm'd unmasked features;
        - ``joint``: :meth:`similarity_loss` of the mean-pooled similarity of the unmasked text and video;
        - ``decoder``: the caption loss of the decoder over the cross encoder of the masked pair (the masked
          ``input_caption_ids`` in, ``output_caption_ids`` out);
        - ``align``: :func:`~zoo.models.univl.losses.cross_en` of the FT-Align matrix of the masked texts and videos
          (every text fused with every video).

        ``batch``: ``input_ids``, ``attention_mask``, ``video``, ``video_mask`` (optional ``token_type_ids``), each
        ``(B, [n_pair,] ...)``; stage II adds what :func:`~zoo.models.univl.masking.stage_two_masking` returns
        (``masked_input_ids``, ``token_labels``, ``masked_video``, ``video_labels_index``, the masked
        ``input_caption_ids``) and ``decoder_mask``, ``output_caption_ids``. ``n_pair``: clips per video, read from a
        ``(B, n_pair, L)`` ``input_ids`` (the official ``--n_pair``, 3 in the published scripts). Returns the terms
        and their sum under ``loss``.
        """
        batch, n_pair = self._pairs(batch, n_pair)
        mask, types = batch["attention_mask"], batch.get("token_type_ids")
        text = self.encode_text(batch["input_ids"], mask, types)
        frames = self.encode_video(batch["video"], batch.get("video_mask"))
        vmask = frames.mask
        joint = self.similarity_loss(self.joint_similarity(text.tokens, mask, frames.tokens, vmask), n_pair,
                                     margin=margin, hard_negative_rate=hard_negative_rate,
                                     negative_weighting=negative_weighting)
        if self.fusion is None:
            return {"loss": joint, "joint": joint}
        self._require(decoder=self.decoder, mlm=self.mlm, mfm=self.mfm)
        masked_text = self.encode_text(batch["masked_input_ids"], mask, types).tokens
        masked_frames = self.encode_video(batch["masked_video"], vmask).tokens
        fused = self.cross(masked_text, mask, masked_frames, vmask).tokens
        n_tokens = mask.shape[1]
        terms = {
            "mlm": self.mlm_loss(fused[:, :n_tokens], batch["token_labels"]),
            "mfm": self.mfm_loss(fused[:, n_tokens:], self.vision.normalize(batch["video"]), vmask,
                                 batch["video_labels_index"]),
            "joint": joint,
            "decoder": _caption_nll(self.decoder_logits(masked_text, mask, masked_frames, vmask,
                                                        batch["input_caption_ids"], batch["decoder_mask"]),
                                    batch["output_caption_ids"]),
            "align": cross_en(self.align_scores(masked_text, mask, masked_frames, vmask)),
        }
        total = terms["mlm"]
        for name in ("mfm", "joint", "decoder", "align"):
            total = total + terms[name]
        return {"loss": total, **terms}
