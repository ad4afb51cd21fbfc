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
pre-training, ``--do_pretrain --stage_two``: 199,535,989); ``vqa`` (not in the official code) adds the cross encoder
and an answer classifier (the framework's ``classifier`` head) on its pooled state.

Input: features ``(B, T, 1024)`` (one vector per second; at most 48 frames in fine-tuning, 64 in pre-training) with a
frame mask ``(B, T)`` for ragged lengths, and WordPiece text with its attention mask; the objectives on such inputs are
methods: :meth:`UniVL.pretrain_loss` (stage I / II, inputs masked by
:func:`zoo.models.univl.masking.stage_two_masking`), :meth:`UniVL.retrieval_loss` (FT-Joint / FT-Align) and
:meth:`UniVL.decoder_loss` (captioning); the similarity losses are in :mod:`zoo.models.univl.losses`.

The framework's tasks (``task_heads``): ``retrieval`` (every variant: FT-Joint, or FT-Align with a cross encoder),
``captioning`` (a variant with the cross encoder and the decoder) and ``vqa`` (the ``vqa`` variant: video QA
classified over an answer vocabulary). Their ``images`` are turned into features and a frame mask by
:meth:`UniVL.video_inputs`: clip features ``(B, T, D)`` zero-padded as the official loaders pad them (mask: the rows
that are not all zero), or raw frames ``(B, T, 3, H, W)`` through an optional **frozen frame encoder** (part
``frame_encoder``: any registered vision encoder — timm, open_clip, beit_v2, or ``univl_pixel_grid`` — whose pooled
output per frame is the feature; no gradient, evaluation mode, not in the optimiser's groups; the video encoder's
``feature_dim`` must equal its width). Texts are padded to ``max_words`` before encoding, as the official loaders pad
every text, so that frames keep their cross-encoder positions whatever the batch (:meth:`UniVL.text_inputs`).
The task methods follow the official fine-tuning: :meth:`UniVL.retrieval_losses` / :meth:`UniVL.retrieval_scores`
(``main_task_retrieval.py``: the max-margin loss; every pair scored at evaluation), :meth:`UniVL.caption_loss` /
:meth:`UniVL.generate_captions` (``main_task_caption.py``: the text encoder reads each clip's ``transcript`` when the
records have one, the YouCookII setting, else ``[CLS] [SEP]``; the decoder loss alone; the official beam search,
:func:`beam_search`), :meth:`UniVL.vqa_loss` /
:meth:`UniVL.vqa_predict`.

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

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.models.base import ZooModel
from zoo.models.univl.losses import cross_en, max_margin_ranking, mil_nce
from zoo.modules.outputs import EncoderOutput
from zoo.registry import MODELS
from zoo.spec import ConfigError, Part, check_width

__all__ = ["UniVL", "beam_search", "features_and_mask", "mean_pool_text", "mean_pool_video", "mean_pooled_similarity"]

#: the label the official decoder and MLM losses ignore (``CrossEntropyLoss(ignore_index=-1)``)
IGNORE_INDEX = -1


def _caption_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of ``(B, L, vocab)`` logits against ``(B, L)`` labels, ``-1`` ignored."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).long(),
                           ignore_index=IGNORE_INDEX)


def mean_pool_text(text_states: Tensor, text_mask: Tensor) -> Tensor:
    """``(B, D)``: the mean of each text's token states under the attention mask, the first token (CLS) left out
    (official ``modules/modeling.py:UniVL._mean_pooling_for_similarity``, text half)."""
    weight = text_mask.to(text_states.dtype).unsqueeze(-1).clone()
    weight[:, 0] = 0
    return (text_states * weight).sum(1) / weight.sum(1)


def mean_pool_video(video_states: Tensor, video_mask: Tensor) -> Tensor:
    """``(B, D)``: the mean of each video's frame states under the frame mask (a video without any frame divides by
    1; official ``_mean_pooling_for_similarity``, video half)."""
    weight = video_mask.to(video_states.dtype).unsqueeze(-1)
    count = weight.sum(1)
    return (video_states * weight).sum(1) / count.masked_fill(count == 0, 1)


def mean_pooled_similarity(text_states: Tensor, text_mask: Tensor, video_states: Tensor, video_mask: Tensor,
                           normalize: bool = True) -> Tensor:
    """FT-Joint similarity ``(texts, videos)`` of encoded texts and videos (official
    ``modules/modeling.py:UniVL._mean_pooling_for_similarity`` and ``get_similarity_logits``).

    The text vector is :func:`mean_pool_text` (CLS left out), the video vector :func:`mean_pool_video`. With
    ``normalize`` (the official fine-tuning, ``use_mil`` off) both are L2-normalised before the dot product.
    """
    text, video = mean_pool_text(text_states, text_mask), mean_pool_video(video_states, video_mask)
    if normalize:
        text, video = F.normalize(text, dim=-1), F.normalize(video, dim=-1)
    return text @ video.t()


def features_and_mask(features: Tensor) -> tuple[Tensor, Tensor]:
    """Pre-extracted clip features ``(B, T, D)`` zero-padded to a fixed ``T`` → ``(features, video_mask)``, the mask 1
    on every frame whose row is not all zero.

    The official loaders pad with zeros (``dataloader_msrvtt_retrieval.py:_get_video``: ``video = np.zeros((n,
    max_frames, feature_size))``, the real frames copied in front, ``video_mask`` 1 on the first ``len`` frames), and
    a real S3D feature row is never exactly zero (an average of post-ReLU activations over a second of video), so the
    zero rows are exactly the padding: the mask the official loader builds from the real length is recovered without
    it."""
    if features.dim() != 3:
        raise ValueError(f"expected clip features (B, T, D), got {tuple(features.shape)}")
    return features, (features != 0).any(-1).long()


def beam_search(step: Any, batch_size: int, num_beams: int, max_length: int, bos: int, eos: int,
                min_length: int = 0, device: torch.device | str | None = None) -> list[list[int]]:
    """The official caption beam search (``modules/beam.py:Beam`` driven by ``main_task_caption.py:eval_epoch``),
    batched: per instance ``num_beams`` hypotheses started from ``bos``, scored by the SUM of their tokens' log
    probabilities (no length penalty, no n-gram blocking); the first step expands only beam 0 (all beams are the same
    ``bos``); every later step keeps the ``num_beams`` best of ``beams × vocabulary``. An instance stops when its best
    hypothesis ends with ``eos`` (a lower beam that emitted ``eos`` is extended further, as officially), or after
    ``max_length`` tokens (official ``--max_words``, 20 by default). Returns the best hypothesis of each instance cut
    before its first ``eos`` (the official decoding cuts at ``[SEP]``).

    ``step(prefix, rows)``: the next-token log probabilities ``(len(rows), vocab)`` of the hypotheses ``prefix``
    ``(len(rows), t)`` (``bos`` first) of the instances ``rows``, both on ``device`` (where the search runs).
    ``min_length`` (not official; 0 = off): ``eos`` is refused until a hypothesis has that many tokens.
    A step with a key/value cache (:class:`zoo.generation.CachedStep`) has a ``reorder(origin, examples)`` method:
    before each call but the first it is told the row of the previous call that each row continues (``origin``) and
    which of the previous call's instances are still decoded (``examples``, positions among them).
    """
    if num_beams < 1 or max_length < 1:
        raise ValueError(f"num_beams={num_beams}, max_length={max_length}: both must be >= 1")
    scores: Tensor | None = None  # (B, n)
    seqs: Tensor | None = None  # (B, n, t)
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    reorder = getattr(step, "reorder", None)
    for t in range(max_length):
        active = (~done).nonzero().flatten()
        if active.numel() == 0:
            break
        first = seqs is None
        beams = 1 if first else num_beams
        rows = active.repeat_interleave(beams)
        start = torch.full((rows.numel(), 1), bos, dtype=torch.long, device=device)
        prefix = start if first else torch.cat([start, seqs[active].flatten(0, 1)], dim=1)
        logp = step(prefix, rows).float()
        if t < min_length:
            logp[:, eos] = float("-inf")
        vocab = logp.shape[-1]
        if num_beams > vocab:
            raise ValueError(f"num_beams={num_beams} exceeds the vocabulary ({vocab})")
        if first:
            best, index = logp.topk(num_beams, dim=-1)  # (B, n): the first token of each beam
            scores, seqs = best, index[:, :, None]
            prev = torch.zeros_like(index)  # every beam continues the instance's single row
        else:
            total = (logp.view(active.numel(), num_beams, vocab) + scores[active][:, :, None]).flatten(1)
            best, index = total.topk(num_beams, dim=-1)
            prev, token = index // vocab, index % vocab
            kept = torch.gather(seqs[active], 1, prev[:, :, None].expand(-1, -1, seqs.shape[-1]))
            new = seqs.new_zeros(batch_size, num_beams, seqs.shape[-1] + 1)
            new[:, :, :-1] = seqs
            new[active] = torch.cat([kept, token[:, :, None]], dim=-1)
            seqs = new
            scores = scores.clone()
            scores[active] = best
        # an instance whose best hypothesis just ended with eos stops (official Beam.advance: next_ys[-1][0] == EOS)
        done[active] = seqs[active, 0, -1] == eos
        if reorder is not None and t + 1 < max_length:
            kept = (~done[active]).nonzero().flatten()  # positions, among this call's instances, of the next ones
            if kept.numel():
                reorder((kept[:, None] * beams + prev[kept]).flatten(), kept)
    out = []
    for b in range(batch_size):
        hyp = seqs[b, int(scores[b].argmax())].tolist()
        out.append(hyp[:hyp.index(eos)] if eos in hyp else hyp)
    return out


#: the normalisation of frames when neither the frame encoder nor the model file gives one: ImageNet's (official
#: UniVL reads S3D features and has none; most vision towers were trained with this one)
_IMAGENET_PREPROCESS: Mapping[str, Any] = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


@MODELS.register("univl")
class UniVL(ZooModel):
    """UniVL with the parts its config names (see the module docstring)."""

    #: retrieval needs only the encoders (FT-Joint; with a cross encoder FT-Align); captioning the cross encoder and
    #: the decoder; video QA the cross encoder and the answer classifier
    task_heads: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "retrieval": (), "captioning": ("fusion", "decoder"), "vqa": ("fusion", "vqa")}
    #: captioning batches are caption ids (the decoder is causal; no [MASK] inputs)
    causal_captioning: ClassVar[bool] = True
    #: video QA classifies over the data's answer vocabulary
    generative_vqa: ClassVar[bool] = False
    # a data-built tokenizer (`text.tokenizer: data`) sizes the word table and every part tied to it
    tokenizer_fields: ClassVar[Mapping[str, str]] = {
        "text.config.vocab_size": "rows", "text.config.pad_token_id": "pad", "decoder.vocab_size": "rows",
        "mlm.vocab_size": "rows"}
    preprocess_defaults: ClassVar[Mapping[str, Any]] = _IMAGENET_PREPROCESS

    def __init__(
        self,
        text: Part["text_encoder"],
        vision: Part["vision_encoder"],
        fusion: Part["fusion"] | None = None,
        decoder: Part["head"] | None = None,
        mlm: Part["head"] | None = None,
        mfm: Part["head"] | None = None,
        normalize_similarity: bool = True,
        vqa: Part["head"] | None = None,
        frame_encoder: Part["vision_encoder"] | None = None,
        max_words: int | None = None,
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
        if vqa is not None:
            if fusion is None:
                raise ConfigError("the video QA classifier reads the cross encoder's pooled state: add fusion (type "
                                  "univl_cross)", "fusion")
            check_width(vqa, "width", getattr(vqa, "width", None), fusion, fusion.width)
        if frame_encoder is not None:
            if not isinstance(getattr(frame_encoder, "width", None), int):
                raise ConfigError(f"frame_encoder must be a vision encoder with a pooled output of known width, got "
                                  f"{type(frame_encoder).__name__}", "frame_encoder")
            # its pooled output per frame is the feature the video encoder reads
            check_width(vision, "feature_dim", vision.feature_dim, frame_encoder, frame_encoder.width)
            frame_encoder.requires_grad_(False)  # frozen: no gradient, left out of the optimiser's groups
            frame_encoder.eval()
            vision.image_size = getattr(frame_encoder, "image_size", None)
        if max_words is not None and max_words < 2:
            raise ConfigError(f"max_words={max_words}: a text holds at least [CLS] and [SEP]", "max_words")
        self.text, self.vision, self.fusion = text, vision, fusion
        self.decoder, self.mlm, self.mfm, self.vqa = decoder, mlm, mfm, vqa
        self.frame_encoder = frame_encoder
        self.normalize_similarity = normalize_similarity
        self.max_words = max_words
        self._tokenizer: tuple[Any, Any] | None = None  # (the text part's tokenizer setting, the tokenizer)
        words = text.get_input_embeddings()
        if decoder is not None:  # official DecoderModel(decoder_config, bert word / position embedding weights)
            decoder.tie_to(words, self._text_positions())
        if mlm is not None:  # official BertOnlyMLMHead(bert_config, bert word embedding weight)
            mlm.tie_to(words)
        if mfm is not None:  # official VisualOnlyMLMHead(visual_config, visual word_embeddings weight)
            mfm.tie_to(vision.embeddings.proj)

    def train(self, mode: bool = True) -> UniVL:
        """As :meth:`torch.nn.Module.train`, but the frozen frame encoder stays in evaluation mode (its dropout,
        stochastic depth and batch statistics, if any, never change what it extracts)."""
        super().train(mode)
        if self.frame_encoder is not None:
            self.frame_encoder.eval()
        return self

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
        """With a frame encoder: the frames' preprocessing at the frame encoder's side, layered as the generic
        :meth:`~zoo.models.base.ZooModel.preprocess_config` with the frame encoder in the vision part's place (its
        own ``preprocess_defaults()`` over the family's fallback, ImageNet's mean / std; the model file's
        ``preprocess:`` last). Without one the model reads pre-extracted clip features, not images: a ConfigError
        (which an export takes as "nothing to record")."""
        from zoo.models.base import input_resolution
        from zoo.processing import resolve_preprocess

        cfg = self.zoo_config or {}
        if self.frame_encoder is None:
            raise ConfigError(f"{cfg.get('name') or 'UniVL'} reads pre-extracted clip features, not images: it has "
                              "no image preprocessing (add a frame_encoder to read frames)", "preprocess")
        size = input_resolution(self)
        if not size:
            raise ConfigError(f"the frame encoder ({type(self.frame_encoder).__name__}) names no image_size: give "
                              "the model file a default_resolution", "default_resolution")
        own = getattr(self.frame_encoder, "preprocess_defaults", None)
        return resolve_preprocess(size, [(type(self).__name__, dict(self.preprocess_defaults)),
                                         ("frame_encoder", own() if callable(own) else None),
                                         ("preprocess", cfg.get("preprocess"))], model=cfg.get("name"))

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

    # -- the framework's tasks: inputs -----------------------------------------------------------------------------
    def video_inputs(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """What a task gives as ``images`` → ``(features (B, T, feature_dim), video_mask (B, T))``.

        - ``(B, T, D)``: pre-extracted clip features, zero-padded to a fixed ``T`` as the official loaders pad them;
          the mask is 1 on every frame whose row is not all zero (:func:`features_and_mask`).
        - ``(B, T, 3, H, W)``: raw frames, each through the frozen ``frame_encoder`` (in evaluation mode, without
          gradient); its pooled output per frame is the feature. Every frame is real: the mask is all ones.
        """
        if images.dim() == 3:
            return features_and_mask(images)
        if images.dim() != 5:
            raise ValueError(f"UniVL reads videos: clip features (B, T, D) or frames (B, T, 3, H, W); got "
                             f"{tuple(images.shape)}")
        if self.frame_encoder is None:
            raise ValueError(f"got frames {tuple(images.shape)} but this UniVL has no frame_encoder: give it one "
                             "(any vision encoder; its pooled output per frame is the feature), or feed clip "
                             "features (B, T, D)")
        b, t = images.shape[:2]
        with torch.no_grad():
            pooled = self.frame_encoder(images.flatten(0, 1)).pooled
        features = pooled.reshape(b, t, -1)
        return features, torch.ones(b, t, dtype=torch.long, device=features.device)

    def text_inputs(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Texts padded with masked positions to ``max_words`` tokens (None: as batched), as the official loaders
        pad every text to ``--max_words``: frame ``j`` then always sits at position ``max_words + j`` of the cross
        encoder, whatever the longest text of a batch (otherwise training batches and the evaluation would place the
        frames differently). Padded positions are masked: they change no pooled text, cross state or score."""
        n = input_ids.shape[1]
        if self.max_words is None or n == self.max_words:
            return input_ids, attention_mask
        if n > self.max_words:
            raise ValueError(f"texts of {n} tokens but this UniVL pads texts to max_words={self.max_words}: cut the "
                             f"texts to at most {self.max_words} tokens (data.max_tokens), or raise max_words")
        pad = (0, self.max_words - n)
        return F.pad(input_ids, pad, value=0), F.pad(attention_mask, pad, value=0)

    def tokenizer(self) -> Any:
        """The text part's tokenizer (loaded once, again when the text part's ``tokenizer`` setting changes)."""
        setting = getattr(self.text, "tokenizer", None)
        if self._tokenizer is None or self._tokenizer[0] != setting:
            self._tokenizer = (setting, self.text.get_tokenizer())
        return self._tokenizer[1]

    def special_ids(self) -> dict[str, int]:
        """``cls`` (the decoder's start token and a text's first), ``sep`` (a text's and a caption's end) and ``pad``
        of the tokenizer: ``[CLS]`` / ``[SEP]`` / ``[PAD]`` for BERT's, ``<s>`` / ``</s>`` / ``<pad>`` for an
        XLM-R-format one such as the data's (their ``cls`` / ``sep`` tokens; ``bos`` / ``eos`` when they have none)."""
        tok = self.tokenizer()
        ids = {"cls": tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id,
               "sep": tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id,
               "pad": tok.pad_token_id if tok.pad_token_id is not None else 0}
        if ids["cls"] is None or ids["sep"] is None:
            raise ValueError(f"the tokenizer ({type(tok).__name__}) has neither cls/sep nor bos/eos tokens: the "
                             "decoder starts from one and stops at the other")
        return ids

    def empty_text(self, batch_size: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """The text input of the official caption task without a transcript: ``[CLS] [SEP]`` (the MSR-VTT caption
        loader's ``words = []`` → ``["[CLS]", "[SEP]"]``, padded to ``max_words`` with mask 0)."""
        ids = self.special_ids()
        input_ids = torch.tensor([[ids["cls"], ids["sep"]]] * batch_size, dtype=torch.long, device=device)
        return self.text_inputs(input_ids, torch.ones_like(input_ids))

    def transcript_inputs(self, transcripts: Sequence[str], device: torch.device | None = None
                          ) -> tuple[Tensor, Tensor]:
        """The text input of the official caption task with a transcript (``dataloader_youcook_caption.py``): each
        transcript's tokens after ``[CLS]``, cut to ``max_words - 1`` tokens, then ``[SEP]``; padded with masked
        positions (:meth:`text_inputs`). An empty transcript gives :meth:`empty_text`'s ``[CLS] [SEP]``."""
        ids = self.special_ids()
        tok = self.tokenizer()
        limit = (self.max_words or 512) - 1
        rows = [([ids["cls"]] + tok(t, add_special_tokens=False)["input_ids"])[:limit] + [ids["sep"]]
                for t in transcripts]
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([r + [ids["pad"]] * (width - len(r)) for r in rows], dtype=torch.long,
                                 device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long, device=device)
        return self.text_inputs(input_ids, mask)

    def _caption_text(self, transcripts: Sequence[str] | None, batch_size: int, device: torch.device | None
                      ) -> tuple[Tensor, Tensor]:
        if transcripts is None:
            return self.empty_text(batch_size, device)
        if len(transcripts) != batch_size:
            raise ValueError(f"{len(transcripts)} transcripts for {batch_size} videos: give one per video (an empty "
                             "string for a video without one)")
        return self.transcript_inputs(transcripts, device)

    def _encode_videos(self, images: Tensor) -> EncoderOutput:
        features, video_mask = self.video_inputs(images)
        return self.encode_video(features, video_mask)

    # -- task: retrieval -----------------------------------------------------------------------------------------
    def retrieval_losses(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Retrieval fine-tuning on :class:`~zoo.data.collate.RetrievalCollator` batches (``images``,
        ``input_ids``, ``attention_mask``, ``image_ids``): :meth:`retrieval_loss` — the max-margin loss of the
        FT-Joint matrix, or with a cross encoder of the FT-Align matrix. Two captions of one video in a batch (same
        ``image_ids``) are negatives of each other, as in the official training, whose sentence-level MSR-VTT loader
        (``unfold_sentences``) batches them alike: the max-margin loss takes no positive mask. Returns ``{"loss",
        "sim"}``."""
        features, video_mask = self.video_inputs(batch["images"])
        ids, mask = self.text_inputs(batch["input_ids"], batch["attention_mask"])
        return self.retrieval_loss({"input_ids": ids, "attention_mask": mask, "video": features,
                                    "video_mask": video_mask})

    @torch.no_grad()
    def retrieval_scores(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor, k: int = 128,
                         batch_size: int = 64) -> tuple[Tensor, Tensor]:
        """``(score_i2t (V, N), score_t2i (N, V))`` of every video against every text of an evaluation set, as the
        official evaluation (``main_task_retrieval.py:eval_epoch``) scores them: FT-Joint, the mean-pooled
        similarity (videos and texts encoded ``batch_size`` at a time and pooled at once, so only ``(N + V)``
        vectors are kept); FT-Align (a cross encoder), the cross encoder's score of every pair, ``batch_size`` pairs
        at a time. ``k`` is not used: the official FT-Align evaluation scores every pair, and a top-k of the FT-Joint
        similarity would rank with a similarity that FT-Align fine-tuning does not train."""
        ids, mask = self.text_inputs(input_ids, attention_mask)
        if self.fusion is None:
            videos = torch.cat([mean_pool_video(out.tokens, out.mask) for out in
                                (self._encode_videos(x) for x in images.split(batch_size))])
            texts = torch.cat([mean_pool_text(self.encode_text(i, m).tokens, m)
                               for i, m in zip(ids.split(batch_size), mask.split(batch_size))])
            if self.normalize_similarity:
                texts, videos = F.normalize(texts, dim=-1), F.normalize(videos, dim=-1)
            sim = texts @ videos.t()
        else:
            frames = [self._encode_videos(x) for x in images.split(batch_size)]
            video_states, video_mask = torch.cat([f.tokens for f in frames]), torch.cat([f.mask for f in frames])
            text_states = torch.cat([self.encode_text(i, m).tokens
                                     for i, m in zip(ids.split(batch_size), mask.split(batch_size))])
            sim = self.align_scores(text_states, mask, video_states, video_mask, batch_size=batch_size)
        return sim.t(), sim

    # -- task: captioning ----------------------------------------------------------------------------------------
    def caption_loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Caption fine-tuning (official ``main_task_caption.py``: ``--stage_two``, the decoder loss alone) on
        :class:`~zoo.data.collate.CaptionTrainCollator` batches with ``causal=True`` (``images``, ``input_ids``,
        ``attention_mask`` of ``[CLS] caption [SEP]``, optional ``transcripts``): the text encoder reads the
        transcripts (:meth:`transcript_inputs`, the official caption task with transcript) or else the empty text
        (:meth:`empty_text`, without), the decoder reads ``[CLS] caption`` and is trained on
        ``caption [SEP]`` by :meth:`decoder_loss`. Padding is ignored (-1): the official loaders pad the targets with
        0 = ``[PAD]`` and so also train the padded positions to predict ``[PAD]`` (see :meth:`decoder_loss`), which
        here would be a token of the data's vocabulary. Returns ``{"loss", "logits"}``."""
        self._require(fusion=self.fusion, decoder=self.decoder)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        features, video_mask = self.video_inputs(batch["images"])
        text_ids, text_mask = self._caption_text(batch.get("transcripts"), ids.shape[0], ids.device)
        return self.decoder_loss({
            "input_ids": text_ids, "attention_mask": text_mask, "video": features, "video_mask": video_mask,
            "input_caption_ids": ids[:, :-1], "decoder_mask": mask[:, 1:],
            "output_caption_ids": ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)})

    @torch.no_grad()
    def generate_caption_ids(self, images: Tensor, num_beams: int = 5, max_length: int = 20,
                             min_length: int = 0, transcripts: Sequence[str] | None = None,
                             use_cache: bool = True) -> list[list[int]]:
        """Token ids of one caption per video by :func:`beam_search` (the official: 5 beams, summed log
        probabilities, stop when the best beam ends with ``[SEP]``, at most ``--max_words`` (20) tokens), the
        decoder reading the cross encoder over the text input — each video's transcript (one string per video) or
        the empty text — and the video, computed once per video. Each caption is cut before its ``[SEP]`` and
        before a ``[PAD]`` (the official decoding cuts at both).

        ``use_cache`` (default): the decoder keeps a key/value cache (:mod:`zoo.modules.kv_cache`) — per layer the
        self-attention keys/values of the tokens already written, the cross encoder states' keys/values projected
        once per video — and runs only the newest token each step; ``False`` reruns the whole prefix (the official
        decoding; same captions up to float rounding)."""
        self._require(fusion=self.fusion, decoder=self.decoder)
        special = self.special_ids()
        fused = self.caption_context(images, transcripts)
        out = beam_search(self.caption_step(fused, use_cache=use_cache), images.shape[0], num_beams, max_length,
                          special["cls"], special["sep"], min_length, device=fused.tokens.device)
        return [ids[:ids.index(special["pad"])] if special["pad"] in ids else ids for ids in out]

    def caption_context(self, images: Tensor, transcripts: Sequence[str] | None = None) -> EncoderOutput:
        """What the caption decoder cross-attends to: the cross encoder over each video's transcript (or the empty
        text) and the video, one row per video."""
        self._require(fusion=self.fusion, decoder=self.decoder)
        frames = self._encode_videos(images)
        text_ids, text_mask = self._caption_text(transcripts, images.shape[0], frames.tokens.device)
        return self.cross(self.encode_text(text_ids, text_mask).tokens, text_mask, frames.tokens, frames.mask)

    def caption_step(self, context: EncoderOutput, use_cache: bool = True) -> Any:
        """The step of :func:`beam_search`: next-token log probabilities of each prefix row given ``rows`` (the
        video of each row) — the decoder rerun over the whole prefix, or (``use_cache``) a
        :class:`~zoo.generation.CachedStep` over the newest tokens that follows the search's ``reorder`` calls."""
        self._require(decoder=self.decoder)

        def rerun(prefix: Tensor, rows: Tensor) -> Tensor:
            logits = self.decoder(prefix, torch.ones_like(prefix), context.tokens[rows], context.mask[rows])
            return F.log_softmax(logits[:, -1].float(), dim=-1)

        if not use_cache:
            return rerun
        from zoo.generation import CachedStep

        cache = self.decoder.new_cache()

        def cached(prefix: Tensor, rows: Tensor) -> Tensor:
            logits = self.decoder(prefix[:, cache.length:], None, context.tokens, context.mask, cache=cache)
            return F.log_softmax(logits[:, -1].float(), dim=-1)

        return CachedStep(cached, cache)

    @torch.no_grad()
    def generate_captions(self, images: Tensor, num_beams: int = 5, max_length: int = 20, min_length: int = 0,
                          tokenizer: Any = None, transcripts: Sequence[str] | None = None,
                          use_cache: bool = True) -> list[str]:
        """Captions of ``images`` (frames or clip features), with each video's transcript when given:
        :meth:`generate_caption_ids` decoded with ``tokenizer`` (default: the text part's), special tokens
        dropped."""
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer()
        ids = self.generate_caption_ids(images, num_beams=num_beams, max_length=max_length, min_length=min_length,
                                        transcripts=transcripts, use_cache=use_cache)
        return [tokenizer.decode(seq, skip_special_tokens=True).strip() for seq in ids]

    # -- task: video QA ------------------------------------------------------------------------------------------
    def vqa_logits(self, images: Tensor, question_ids: Tensor, question_mask: Tensor) -> Tensor:
        """The cross encoder over ``[question ; video]`` → its pooled state ``(B, width)``, what the classifier
        reads (MSRVTT-QA style: the answer classified from the fused pair)."""
        self._require(fusion=self.fusion, vqa=self.vqa)
        ids, mask = self.text_inputs(question_ids, question_mask)
        frames = self._encode_videos(images)
        return self.cross(self.encode_text(ids, mask).tokens, mask, frames.tokens, frames.mask).pooled

    def vqa_loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Video QA as classification on :class:`~zoo.data.collate.VQACollator` batches (``images``,
        ``question_ids``, ``question_mask``, ``targets``: soft scores ``(B, num_answers)`` or class indices
        ``(B,)``): the classifier head's loss on the pooled cross state (binary cross-entropy summed over answers
        for soft scores, cross-entropy for indices). Returns ``{"loss", "logits"}``."""
        pooled = self.vqa_logits(batch["images"], batch["question_ids"], batch["question_mask"])
        return self.vqa(pooled, batch["targets"])

    @torch.no_grad()
    def vqa_predict(self, images: Tensor, question_ids: Tensor, question_mask: Tensor,
                    answers: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        """The classifier's best answer per question: ``{"index", "prob", "answer"}`` (``answer`` named from
        ``answers``, else the head's labels; None without either)."""
        prob, index = self.vqa.predict(self.vqa_logits(images, question_ids, question_mask), k=1)
        labels = answers or getattr(self.vqa, "labels", None)
        return {"index": index[:, 0], "prob": prob[:, 0],
                "answer": [labels[i] for i in index[:, 0].tolist()] if labels else None}
