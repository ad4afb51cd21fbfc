"""X²-VLM (Zeng et al., 2022): BEiT-v2 vision, one BERT stack whose last layers fuse vision, and task heads.

Parts (all from registries, so any of them can be swapped in a config):

- ``vision``: ``beit_v2`` (or ``video`` wrapping it: frames → frame position embedding → average over frames);
  token 0 is the mean of the patch tokens, used for contrastive features and box prediction.
- ``text``: ``split_bert`` — layers ``0 .. fusion_start-1`` text only (``mode="text"``), the rest self → cross → FFN
  (``mode="fusion"``); bidirectional.
- heads: ``itc`` (vision_proj / text_proj / temp), ``itm``, ``bbox``, ``mlm`` (decoder tied to the word embeddings),
  and the task heads ``vqa`` (generative decoder or classifier), ``nlvr``.

Which heads exist is the config's choice: the base model file builds the pre-training model (ITC, ITM, MLM, box; the
official ``XVLM`` class, 254,758,401 parameters for base); ``tasks:`` in the model file remove or add heads for VQA,
retrieval, captioning, NLVR2 (the official fine-tuning classes).

Objectives follow the official code (models/xvlm.py in zengyan-97/X2-VLM): ITC over features gathered from every
process with soft targets for repeated images; ITM on the positive pair plus one hard negative image and one hard
negative text per pair, sampled from softmax(similarity) in the local batch (positives excluded); MLM through the full
stack with the image, predicted at the masked positions; box L1 + GIoU from the fused CLS of region texts.

Temporal self-supervision (:mod:`zoo.modules.temporal`, "Time Is MattEr"): with a ``video`` vision part built with
``temporal_ssl: {enabled: true}``, ``vqa_loss`` in training adds the frame-order, flow and de-bias terms to the VQA
loss (the de-bias forward reruns the question on the shuffled clip); evaluation and prediction are unchanged.

The checkpoint converter from the official layout is :mod:`zoo.models.x2vlm.convert`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.heads.matching import hard_negative_matching_loss, sample_hard_negatives
from zoo.models.base import CLIP_PREPROCESS, ZooModel
from zoo.models.x2vlm import benchmark
from zoo.modules.outputs import EncoderOutput
from zoo.modules.temporal import LOSS_NAMES, temporal_ssl_loss
from zoo.registry import MODELS
from zoo.spec import ConfigError, Part, check_width

__all__ = [
    "X2VLM",
    "sample_hard_negatives",
]


# ---------------------------------------------------------------------------------------------------------------------
# objectives
# ---------------------------------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------------------------
@MODELS.register("x2vlm")
class X2VLM(ZooModel):
    """X²-VLM with the heads its config names (see the module docstring)."""

    #: the official recipe: CLIP's mean / std, bicubic square resize (X2-VLM ``dataset/__init__.py``)
    preprocess_defaults = CLIP_PREPROCESS
    # a data-built tokenizer (`text.tokenizer: data`) sizes the text stack and every head that reads or writes its ids
    tokenizer_fields: ClassVar[Mapping[str, str]] = {"text.vocab_size": "rows", "text.pad_token_id": "pad", "mlm.vocab_size": "rows",
                        "vqa.vocab_size": "rows", "vqa.pad_token_id": "pad", "vqa.bos_token_id": "bos",
                        "vqa.eos_token_id": "eos", "caption.vocab_size": "rows", "caption.mask_token_id": "mask",
                        "caption.eos_token_id": "eos"}
    task_heads = {"vqa": ("vqa",), "retrieval": ("itc", "itm"), "captioning": ("caption",), "nlvr": ("nlvr",),
                  "pretrain": ("itc", "itm")}

    def __init__(
        self,
        vision: Part["vision_encoder"],
        text: Part["text_encoder"],
        itc: Part["head"] | None = None,
        itm: Part["head"] | None = None,
        bbox: Part["head"] | None = None,
        mlm: Part["head"] | None = None,
        vqa: Part["head"] | None = None,
        nlvr: Part["head"] | None = None,
        caption: Part["head"] | None = None,
        caption_prompt: str = "a picture of ",
    ):
        super().__init__()
        if not hasattr(text, "fusion_start"):
            raise ConfigError(f"text must be a split text/fusion stack such as 'split_bert', got {type(text).__name__}")
        check_width(text, "encoder_width", text.encoder_width, vision, vision.width)
        if itc is not None:
            check_width(itc, "vision_width", itc.vision_width, vision, vision.width)
            check_width(itc, "text_width", itc.text_width, text, text.width)
        for head in (itm, bbox, mlm, caption, nlvr):
            if head is not None:
                check_width(head, "width", head.width, text, text.width)
        if vqa is not None:  # the answer decoder cross-attends to the fused states; the classifier reads their CLS
            arg = "encoder_width" if hasattr(vqa, "encoder_width") else "width"
            check_width(vqa, arg, getattr(vqa, arg), text, text.width)
        self.vision, self.text = vision, text
        self.itc, self.itm, self.bbox, self.mlm = itc, itm, bbox, mlm
        self.vqa, self.nlvr, self.caption = vqa, nlvr, caption
        self.caption_prompt = caption_prompt
        for head in (mlm, caption):  # the LM prediction heads share the word embeddings, as the official BertForMaskedLM
            if head is not None:
                head.tie_to(text.embeddings.word_embeddings)
        self._check_temporal_ssl()

    def _check_temporal_ssl(self) -> None:
        """Temporal self-supervision trains in ``vqa_loss``: it needs a VQA head, and the de-bias term a classifier
        (its target is the uniform distribution over the answer classes, ``train.py:174-179``)."""
        ssl = getattr(self.vision, "temporal_ssl", None)
        if ssl is None or not ssl.enabled:
            return
        if self.vqa is None:
            raise ConfigError("X²-VLM trains the temporal objectives in vqa_loss only; this model has no vqa head "
                              "(build it for the vqa task, or leave temporal_ssl off)", "vision.temporal_ssl.enabled")
        if self.generative_vqa and ssl.weights["debias"]:
            raise ConfigError("the de-bias term needs answer-class logits (a classifier VQA head); the generative head "
                              "trains order and flow only: set it to 0", "vision.temporal_ssl.weights.debias")

    # -- the model contract (zoo.models.base.ZooModel) ------------------------------------------------------------
    def param_part(self, name: str) -> str:
        """The split stack: ``text.encoder.layer.N`` is ``fusion`` from ``text.fusion_start`` on (the official
        ``cross_lr`` applies to those layers), ``text`` before it; every other name as the generic rule."""
        start = getattr(self.text, "fusion_start", None)
        prefix = "text.encoder.layer."
        if start is not None and name.startswith(prefix):
            return "fusion" if int(name[len(prefix):].split(".", 1)[0]) >= start else "text"
        return super().param_part(name)

    #: the official ``XVLMForRetrieval`` step for ``mmzoo bench train --official`` (:mod:`zoo.models.x2vlm.benchmark`)
    official_train_step = benchmark

    @staticmethod
    def official_converter(checkpoint: str, out_dir: str, model: str | None = None,
                           task: str | None = None) -> dict[str, Any]:
        """X²-VLM image and video checkpoints (zengyan-97/X2-VLM), pre-training or fine-tuned.

        The registered model, task, resolution and a video model's frame count are told from the keys and shapes
        (``model`` / ``task`` name them instead); see :func:`zoo.models.x2vlm.convert.convert_official_checkpoint`."""
        from zoo.models.x2vlm.convert import convert_official_checkpoint  # noqa: PLC0415

        return convert_official_checkpoint(checkpoint, out_dir, model=model, task=task)

    # -- encoders ------------------------------------------------------------------------------------------------
    def encode_image(self, images: Tensor) -> EncoderOutput:
        """Images ``(B, C, H, W)`` or, with a video vision part, frames ``(B, T, C, H, W)`` → tokens (token 0 = mean)."""
        if images.dim() == 5 and not getattr(self.vision, "is_video", False):
            raise ValueError(f"got frames {tuple(images.shape)} but the vision part is an image encoder; "
                             "use a video model (vision: {type: video, ...})")
        return self.vision(images)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> EncoderOutput:
        return self.text(input_ids, attention_mask, mode="text")

    def fuse(self, text_states: Tensor, attention_mask: Tensor, image_tokens: Tensor,
             image_mask: Tensor | None = None) -> EncoderOutput:
        return self.text(hidden_states=text_states, attention_mask=attention_mask, mode="fusion",
                         vision_tokens=image_tokens, vision_mask=image_mask)

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor | None = None) -> dict[str, Any]:
        """Encode, fuse, and apply the contrastive / matching heads present: a general-purpose inference pass."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        image = self.encode_image(images)
        text = self.encode_text(input_ids, attention_mask)
        fused = self.fuse(text.tokens, attention_mask, image.tokens, image.mask)
        out: dict[str, Any] = {"image": image, "text": text, "fused": fused}
        if self.itc is not None:
            out["image_feat"] = self.itc.embed_image(image.tokens[:, 0])
            out["text_feat"] = self.itc.embed_text(text.tokens[:, 0])
        if self.itm is not None:
            out["itm_logits"] = self.itm(fused.tokens[:, 0])["logits"]
        return out

    # -- pre-training / retrieval objectives ---------------------------------------------------------------------
    def contrastive_and_matching(
        self, image: EncoderOutput, text: EncoderOutput, attention_mask: Tensor, image_ids: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """ITC and ITM (with in-batch hard negatives) from already encoded images and texts."""
        self._require(itc=self.itc, itm=self.itm)
        itc = self.itc(image.tokens[:, 0], text.tokens[:, 0], image_ids)
        itm = hard_negative_matching_loss(self.itm, self.fuse, image, text.tokens, attention_mask, itc["image_feat"],
                                          itc["text_feat"], self.itc.temperature(), image_ids, generator)
        return {"itc": itc["loss"], "itm": itm}

    def mlm_loss(self, image: EncoderOutput, input_ids_masked: Tensor, attention_mask: Tensor, masked_pos: Tensor,
                 masked_ids: Tensor) -> Tensor:
        """Image-conditioned MLM: the masked text through all layers, predicted at ``masked_pos`` (-100 = padding)."""
        self._require(mlm=self.mlm)
        states = self.text(input_ids_masked, attention_mask, mode="full", vision_tokens=image.tokens,
                           vision_mask=image.mask).tokens
        return self.mlm(states, labels=masked_ids, masked_pos=masked_pos)["loss"]

    def bbox_losses(self, image: EncoderOutput, text: EncoderOutput, attention_mask: Tensor, target_bbox: Tensor,
                    is_image: Tensor | None = None) -> dict[str, Tensor]:
        """Box regression (L1 + GIoU) from the fused CLS of each (image, region text) pair."""
        self._require(bbox=self.bbox)
        cls = self.fuse(text.tokens, attention_mask, image.tokens, image.mask).tokens[:, 0]
        pred = self.bbox(cls)
        l1, giou = self.bbox.loss(pred, target_bbox, is_image)
        return {"bbox_l1": l1, "bbox_giou": giou}

    @staticmethod
    def region_view(image: EncoderOutput, image_index: Tensor, region_mask: Tensor) -> tuple[EncoderOutput, EncoderOutput]:
        """Per-text views of encoded images for region–text pairs (the official ``idx_to_group_img`` branch).

        ``image_index`` ``(T,)`` says which image each text describes; ``region_mask`` ``(T, N)`` marks the tokens of
        its region (token 0 included). Returns (region view: token 0 replaced by the mean of the region's patch tokens,
        attention limited to the region; full view: the whole image, for the box head).
        """
        tokens = image.tokens[image_index]
        keep = region_mask.to(tokens.dtype)
        patches = keep[:, 1:, None]
        mean = (tokens[:, 1:] * patches).sum(1) / patches.sum(1).clamp_min(1)
        region = EncoderOutput(tokens=torch.cat([mean[:, None], tokens[:, 1:]], 1), pooled=mean,
                               mask=region_mask.long())
        return region, EncoderOutput(tokens=tokens, pooled=tokens[:, 0], mask=None)

    def pretrain_losses(self, batch: Mapping[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The pre-training losses for a batch with ``images``, ``input_ids``, ``attention_mask`` and, when present,
        ``image_ids``, MLM inputs (``input_ids_masked``, ``masked_pos``, ``masked_ids``), boxes (``target_bbox``,
        ``is_image``) and region–text pairs (``image_index``, ``region_mask``: see :meth:`region_view`; ITC, ITM
        and MLM then see the region, the box head the whole image). Returns each loss and their sum under ``loss``."""
        image = full = self.encode_image(batch["images"])
        if "region_mask" in batch:
            image, full = self.region_view(image, batch["image_index"], batch["region_mask"])
        text = self.encode_text(batch["input_ids"], batch["attention_mask"])
        losses = self.contrastive_and_matching(image, text, batch["attention_mask"], batch.get("image_ids"), generator)
        if self.mlm is not None and "input_ids_masked" in batch:
            losses["mlm"] = self.mlm_loss(image, batch["input_ids_masked"], batch["attention_mask"],
                                          batch["masked_pos"], batch["masked_ids"])
        if self.bbox is not None and "target_bbox" in batch:
            losses.update(self.bbox_losses(full, text, batch["attention_mask"], batch["target_bbox"],
                                           batch.get("is_image")))
        losses["loss"] = sum(losses.values())
        return losses

    # -- VQA -----------------------------------------------------------------------------------------------------
    def encode_question(self, images: Tensor, question_ids: Tensor, question_mask: Tensor) -> Tensor:
        """Fused question states (the text stack over the question, attending to the image)."""
        return self._question_states(self.encode_image(images), question_ids, question_mask)

    def _question_states(self, image: EncoderOutput, question_ids: Tensor, question_mask: Tensor) -> Tensor:
        return self.text(question_ids, question_mask, mode="full", vision_tokens=image.tokens,
                         vision_mask=image.mask).tokens

    @property
    def generative_vqa(self) -> bool:
        return self.vqa is not None and hasattr(self.vqa, "rank_answers")

    def vqa_loss(self, batch: Mapping[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """VQA loss on ``images``, ``question_ids``, ``question_mask`` and

        - generative head: ``answer_ids``, ``answer_mask``, ``weights`` (one per answer), ``answers_per_question`` (k);
        - classifier head (answer vocabulary, also video QA): ``targets`` — soft scores ``(B, num_answers)`` or class
          indices ``(B,)`` — on the fused CLS state.

        With temporal self-supervision on (video vision part, ``temporal_ssl.enabled``) and the model in training
        mode, :func:`zoo.modules.temporal.temporal_ssl_loss` adds its terms: ``loss`` = the VQA loss (under
        ``task``) + ``temporal`` (the weighted sum of ``order``, ``flow``, ``debias``, each reported unweighted). The
        de-bias forward encodes the question again on ``images[:, perm]`` and takes the classifier's logits;
        ``generator`` draws ``perm``; ``batch["flow_labels"]``, when a pipeline gives it, replaces the labels computed
        from the frames.
        """
        self._require(vqa=self.vqa)
        images, ids, mask = batch["images"], batch["question_ids"], batch["question_mask"]
        image = self.encode_image(images)
        states = self._question_states(image, ids, mask)
        if self.generative_vqa:
            out = self.vqa(states, mask, batch["answer_ids"], batch["answer_mask"],
                           weights=batch.get("weights"), k=batch.get("answers_per_question"))
        else:
            out = self.vqa(states[:, 0], batch["targets"])
        if not (self.training and image.frame_tokens is not None):
            return out

        def classify_shuffled(perm: Tensor) -> Tensor:
            return self.vqa(self.encode_question(images[:, perm], ids, mask)[:, 0])["logits"]

        pre = self.preprocess_config()
        terms = temporal_ssl_loss(self.vision, images, image.frame_tokens,
                                  None if self.generative_vqa else classify_shuffled, pre.mean, pre.std,
                                  generator=generator, flow_labels=batch.get("flow_labels"))
        extra = {name: terms[name] for name in LOSS_NAMES if name in terms}
        return {**out, **extra, "task": out["loss"], "temporal": terms["temporal"],
                "loss": out["loss"] + terms["temporal"]}

    @torch.no_grad()
    def vqa_predict(self, images: Tensor, question_ids: Tensor, question_mask: Tensor, answer_ids: Tensor | None = None,
                    answer_mask: Tensor | None = None, k: int | None = None,
                    answers: list[str] | None = None) -> dict[str, Any]:
        """The answer per question: ranking a fixed answer list (generative head: first-token top-k, then
        full-sequence re-ranking) or the classifier's best class. ``{"index", "prob", "answer"}``."""
        self._require(vqa=self.vqa)
        states = self.encode_question(images, question_ids, question_mask)
        if self.generative_vqa:
            if answer_ids is None:
                raise ValueError("the generative VQA head ranks a fixed answer list: pass answer_ids and answer_mask")
            return self.vqa.predict(states, question_mask, answer_ids, answer_mask, k=k, answers=answers)
        prob, index = self.vqa.predict(states[:, 0], k=1)
        labels = answers or getattr(self.vqa, "labels", None)
        return {"index": index[:, 0], "prob": prob[:, 0],
                "answer": [labels[i] for i in index[:, 0].tolist()] if labels else None}

    # -- captioning ----------------------------------------------------------------------------------------------
    def caption_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """"MLM as generation" training: ``images`` plus the collated caption inputs of
        :func:`zoo.heads.caption.build_caption_inputs` (masked ids, per-example attention mask, position ids, masked
        positions, targets, weights); label-smoothed loss at the masked positions."""
        self._require(caption=self.caption)
        image = self.encode_image(batch["images"])
        return {"loss": self.caption.loss(self.text, image.tokens, image.mask, batch)}

    @torch.no_grad()
    def generate_captions(self, images: Tensor, tokenizer: Any = None, prompt: str | None = None,
                          **decoding: Any) -> list[str] | list[list[int]]:
        """Captions by beam search (prompt ``caption_prompt``; the head's defaults: 3 beams, min 5, max 50, 3-gram
        blocking; ``decoding`` overrides them). Strings when a tokenizer is given (default: the text encoder's),
        else token ids."""
        from zoo.heads.caption import prompt_token_ids  # noqa: PLC0415

        self._require(caption=self.caption)
        tokenizer = tokenizer if tokenizer is not None else self.text.get_tokenizer()
        prompt_ids = prompt_token_ids(tokenizer, self.caption_prompt if prompt is None else prompt)
        image = self.encode_image(images)
        out = self.caption.generate(self.text, image.tokens, image.mask, prompt_ids, **decoding)
        return [tokenizer.decode(seq, skip_special_tokens=True) for seq in out.sequences]

    # -- NLVR2 ---------------------------------------------------------------------------------------------------
    def nlvr_logits(self, images_a: Tensor, images_b: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Each image fused with the sentence separately; the two fused CLS states concatenated → 2-way MLP."""
        self._require(nlvr=self.nlvr)
        b = images_a.shape[0]
        image = self.encode_image(torch.cat([images_a, images_b]))
        text = self.encode_text(input_ids, attention_mask)
        cls = self.fuse(text.tokens.repeat(2, 1, 1), attention_mask.repeat(2, 1), image.tokens,
                        image.mask).tokens[:, 0]
        return self.nlvr(cls[:b], cls[b:])["logits"]

    def nlvr_loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        logits = self.nlvr_logits(batch["images_a"], batch["images_b"], batch["input_ids"], batch["attention_mask"])
        return {"loss": F.cross_entropy(logits, batch["labels"].long()), "logits": logits}

    # -- retrieval -----------------------------------------------------------------------------------------------
    def retrieval_losses(self, batch: Mapping[str, Tensor], generator: torch.Generator | None = None) -> dict:
        """Fine-tuning for retrieval: ITC + ITM with hard negatives (``image_ids`` mark repeated images)."""
        image = self.encode_image(batch["images"])
        text = self.encode_text(batch["input_ids"], batch["attention_mask"])
        losses = self.contrastive_and_matching(image, text, batch["attention_mask"], batch.get("image_ids"), generator)
        losses["loss"] = losses["itc"] + losses["itm"]
        return losses

    @torch.no_grad()
    def itm_scores(self, image_tokens: Tensor, text_states: Tensor, attention_mask: Tensor) -> Tensor:
        """ITM positive logit for aligned (image, text) pairs — what the retrieval re-ranking scores with."""
        self._require(itm=self.itm)
        cls = self.fuse(text_states, attention_mask, image_tokens).tokens[:, 0]
        return self.itm(cls)["logits"][:, 1]

    @torch.no_grad()
    def retrieval_scores(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor, k: int = 128,
                         batch_size: int = 64) -> tuple[Tensor, Tensor]:
        """The official two-stage evaluation: ITC similarity picks the top ``k`` candidates per query, the ITM
        positive logit re-scores them (others −100). Returns (image→text, text→image) score matrices for
        :func:`zoo.metrics.retrieval.retrieval_recall`."""
        from zoo.metrics.retrieval import rerank_scores  # noqa: PLC0415

        self._require(itc=self.itc, itm=self.itm)
        image_tokens = torch.cat([self.encode_image(x).tokens for x in images.split(batch_size)])
        text_states = torch.cat([self.encode_text(i, m).tokens
                                 for i, m in zip(input_ids.split(batch_size), attention_mask.split(batch_size))])
        sim = self.itc.embed_image(image_tokens[:, 0]) @ self.itc.embed_text(text_states[:, 0]).t()

        def itm(image_idx: Tensor, text_idx: Tensor) -> Tensor:
            return self.itm_scores(image_tokens[image_idx], text_states[text_idx], attention_mask[text_idx])

        return rerank_scores(sim, None, k, itm, batch_size=batch_size)
