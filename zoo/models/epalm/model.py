"""eP-ALM (Shukor et al., 2023): a frozen vision encoder and a frozen OPT, joined by linear connectors and a prompt.

Follows the official code (mshukor/eP-ALM @9ecfeb9: ``models/epalm.py``, ``models/opt.py``, ``models/connector.py``,
``float32/vqa.py``, ``float32/caption.py``, ``configs/image/ePALM_vqa.yaml``):

- vision: a frozen timm ViT (part ``timm``). The CLS token of each of the last ``num_vision_layers`` blocks, after the
  ViT's final norm (official ``all_hidden_states += (self.norm(x),)``), is collected by forward hooks on timm's blocks
  (timm's model is not modified).
- connectors: one ``Linear(vision_width, lm_width)`` per collected block (the ``linear`` adapter), or one shared
  (``shared_connector``, the large variant). Connector ``j`` maps the ``j``-th of the collected blocks, oldest first
  (official ``image_feat[-i] = connector[-i](image_feat[-i][:, 0])``).
- injection into the frozen LM (part ``hf_causal_lm``, :class:`zoo.modules.lm.causal_lm.Injection`): at layer
  ``start_layer`` the visual token is prepended to the hidden states, layers ``start_layer < l < end_layer`` overwrite
  position 0 with token ``(l - start_layer) // step``, ``step = (end_layer - start_layer) // num_vision_layers``
  (official: layers 19–30 of OPT-2.7B, 6 tokens, step 2). No position embedding on the visual token.
- soft prompt (``prompt_len`` tokens; official configs 10, the paper 1), prepended to the word embeddings, with the
  optional reparameterisation ``Embedding → Linear → Tanh → Linear`` (official ``InputPrompts``, ``mlp=True`` by
  default; width = the LM's word-embedding width). Keys ``prompt_module.prefix_embedding.*`` as official.
- everything but the connectors and the prompt is frozen (official checkpoints hold only ``connector.*`` and
  ``prompt_module.*``; :func:`zoo.models.epalm.convert.convert_official_state_dict` maps them to these names).
- VQA as generation: ``question + '?' + '</a>' + answer + eos`` (``</a>`` added to the tokenizer); the answer is
  sampled per question with probability ∝ its score (official ``dataset/vqa.py``); evaluation generates
  (``num_beams`` 3 official) and keeps the text before the next ``</a>`` / eos.
- captioning: ``caption + eos`` (optional ``caption_prompt`` before it, as the official ``task_prompt``), generation
  from BOS (+ prompt).
- video: frames ``(B, F, C, H, W)`` go through the image ViT frame by frame; each block's CLS is averaged over the
  frames (``video_pool="mean"``, the analogue of TimeSformer's frame-averaged CLS used by the official video models)
  or kept per frame (``"concat"``: F injected tokens).

Differences from the official code, on purpose:

- the official prompt has no position embedding and the text keeps positions from 0; here the prompt is an ordinary
  prefix of the sequence (positions 0..P-1, text from P), which is what lets transformers' ``generate`` and its cache
  run unmodified;
- the official prepended visual token attends to every position (its mask row is padded with zeros), so for the
  layers after ``end_layer`` its state has seen the whole text, future tokens included (in training), and decoding
  with and without the cache would disagree; here it attends only to itself (causal position 0);
- ``vqa_loss_on="answer"`` (default) puts the loss on the answer and eos only; the official labels every non-pad
  token, question included (``vqa_loss_on="text"``). The official loss is the per-sample token sum averaged over the
  batch times ``lm_loss_weight`` (0.1 in the official configs): ``loss_weight`` here, same reduction.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

from zoo.data.collate import decode_texts
from zoo.models.base import CLIP_PREPROCESS, ZooModel
from zoo.modules.adapters.linear import LinearAdapter
from zoo.modules.lm.causal_lm import Injection
from zoo.modules.lm.processing import TextBatchProcessor, batch_text_answers
from zoo.registry import MODELS
from zoo.spec import ConfigError, Part

__all__ = ["EPALM", "PromptModule"]


class PromptModule(nn.Module):
    """The soft prompt: ``prefix_embedding`` = ``Embedding(prompt_len, dim)`` [``→ Linear(dim, mid) → Tanh →
    Linear(mid, dim)``] applied to ``0..prompt_len-1`` (official ``InputPrompts``, keys alike)."""

    def __init__(self, prompt_len: int, dim: int, mid_dim: int | None = None, reparam: bool = True):
        super().__init__()
        mid = mid_dim or dim
        layers: list[nn.Module] = [nn.Embedding(prompt_len, dim)]
        if reparam:
            layers += [nn.Linear(dim, mid), nn.Tanh(), nn.Linear(mid, dim)]
        self.prefix_embedding = nn.Sequential(*layers)
        self.prompt_len = prompt_len
        self.register_buffer("prefix_tokens", torch.arange(prompt_len), persistent=False)

    def forward(self, batch: int) -> Tensor:
        """``(batch, prompt_len, dim)``."""
        return self.prefix_embedding(self.prefix_tokens.unsqueeze(0).expand(batch, -1))


@MODELS.register("epalm")
class EPALM(ZooModel):
    """eP-ALM: frozen ViT + frozen causal LM, trained connectors and soft prompt.

    Args:
        vision: a ``timm`` ViT part (frozen when ``freeze_vision``); its last ``num_vision_layers`` blocks' CLS tokens.
        lm: an ``hf_causal_lm`` part (frozen by its own ``freeze`` option).
        num_vision_layers: how many of the last ViT blocks give a token (official ``injected_hidden_states`` 6).
        start_layer, end_layer: LM layers ``start_layer .. end_layer-1`` receive the visual tokens (official 19, 31).
        shared_connector: one connector for every block (official large variant) instead of one each.
        prompt_len: soft-prompt length (0: none; official configs 10).
        prompt_reparam: the ``Embedding → Linear → Tanh → Linear`` reparameterisation (official ``mlp``, default on).
        prompt_mid_dim: hidden width of the reparameterisation (default: the embedding width, as official).
        freeze_vision: freeze the vision part (run it without gradients).
        answer_token: the separator between question and answer, added to the tokenizer (official ``</a>``).
        vqa_loss_on: ``answer`` (answer + eos) or ``text`` (every non-pad token, the official labels).
        answer_sampling: ``sample`` one answer per question ∝ its weight (official) or use ``all`` answers, each
            sequence's loss weighted by its answer weight.
        loss_weight: multiplies the losses (official ``lm_loss_weight`` 0.1).
        num_beams: beams at evaluation (official 3).
        max_answer_tokens, max_caption_tokens: new-token limits for VQA answers and captions.
        caption_prompt: text before the caption (official ``task_prompt``, none by default).
        video_pool: frames → tokens: ``mean`` of the per-frame CLS, or ``concat`` (one token per frame).
        language_only: ignore the images (no visual tokens): the LM with its prompt alone, on this model's own text
            format. With ``lm.freeze: false`` this is the language pre-training stage of a from-scratch LM
            (``mmzoo export RUN OUT --part lm`` then writes it as a transformers folder for ``lm.pretrained``).
    """

    generative_vqa = True  # VQA batches carry answer ids (the training module's generative path)
    open_ended_vqa = True  # answers are generated: the answer list the training module passes is not used
    causal_captioning = True  # captioning batches need raw captions, no [MASK] inputs (CaptionTrainCollator)
    processor_class = TextBatchProcessor  # text batches: questions, answers and captions as strings
    tokenizer_part = "lm"  # the language model's tokenizer
    tokenizer_fields: ClassVar[Mapping[str, str]] = {"lm.config.vocab_size": "rows", "lm.config.pad_token_id": "pad",
                        "lm.config.bos_token_id": "bos", "lm.config.eos_token_id": "eos"}

    @classmethod
    def tokenizer_added_tokens(cls, model_cfg: Mapping[str, Any]) -> list[str]:
        return [cls.config_value(model_cfg, "answer_token")]  # added when built (official </a>)
    #: the official recipe: CLIP's mean / std, bicubic square resize (eP-ALM ``dataset/__init__.py``)
    preprocess_defaults = CLIP_PREPROCESS
    task_heads = {"vqa": (), "captioning": ()}  # the language model answers and captions

    def __init__(
        self,
        vision: Part["vision_encoder"],
        lm: Part["language_model"],
        num_vision_layers: int = 6,
        start_layer: int = 19,
        end_layer: int = 31,
        shared_connector: bool = False,
        prompt_len: int = 10,
        prompt_reparam: bool = True,
        prompt_mid_dim: int | None = None,
        freeze_vision: bool = True,
        answer_token: str = "</a>",
        vqa_loss_on: Literal["answer", "text"] = "answer",
        answer_sampling: Literal["sample", "all"] = "sample",
        loss_weight: float = 1.0,
        num_beams: int = 3,
        max_answer_tokens: int = 10,
        max_caption_tokens: int = 30,
        caption_prompt: str | None = None,
        video_pool: Literal["mean", "concat"] = "mean",
        language_only: bool = False,
    ):
        super().__init__()
        blocks = getattr(getattr(vision, "model", None), "blocks", None)
        if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or not hasattr(vision.model, "norm"):
            raise ConfigError(f"vision must be a timm ViT part (type: timm, a vit_* model with .blocks and .norm), got "
                              f"{type(vision).__name__} / {type(getattr(vision, 'model', None)).__name__}")
        for name in ("width", "num_layers", "embed_width", "add_special_tokens", "generate"):
            if not hasattr(lm, name):
                raise ConfigError(f"lm must be a causal language model part such as 'hf_causal_lm', got "
                                  f"{type(lm).__name__} (no {name!r})")
        if not 1 <= num_vision_layers <= len(blocks):
            raise ConfigError(f"num_vision_layers={num_vision_layers}: the ViT has {len(blocks)} blocks")
        if not 1 <= start_layer < end_layer <= lm.num_layers:
            raise ConfigError(f"start_layer={start_layer}, end_layer={end_layer}: need 1 <= start_layer < end_layer "
                              f"<= {lm.num_layers} (the LM's layers)")
        for key, value, allowed in (("vqa_loss_on", vqa_loss_on, ("answer", "text")),
                                    ("answer_sampling", answer_sampling, ("sample", "all")),
                                    ("video_pool", video_pool, ("mean", "concat"))):
            if value not in allowed:
                raise ConfigError(f"{key}={value!r}: expected one of {', '.join(allowed)}")
        if prompt_len < 0:
            raise ConfigError(f"prompt_len={prompt_len}: must be >= 0")
        self.vision, self.lm = vision, lm
        self.num_vision_layers, self.start_layer, self.end_layer = num_vision_layers, start_layer, end_layer
        self.shared_connector = shared_connector
        n_conn = 1 if shared_connector else num_vision_layers
        self.connector = nn.ModuleList([LinearAdapter(vision.width, lm.width) for _ in range(n_conn)])
        self.prompt_module = (PromptModule(prompt_len, lm.embed_width, prompt_mid_dim, prompt_reparam)
                              if prompt_len else None)
        self.freeze_vision = freeze_vision
        if freeze_vision:
            for p in vision.parameters():
                p.requires_grad_(False)
        self.answer_token = answer_token
        lm.add_special_tokens([answer_token])
        self.vqa_loss_on, self.answer_sampling, self.loss_weight = vqa_loss_on, answer_sampling, loss_weight
        self.num_beams, self.max_answer_tokens, self.max_caption_tokens = num_beams, max_answer_tokens, \
            max_caption_tokens
        self.caption_prompt, self.video_pool = caption_prompt, video_pool
        self.language_only = language_only
        self._collected: list[Tensor] | None = None
        for block in list(blocks)[-num_vision_layers:]:
            block.register_forward_hook(self._collect_cls)

    @staticmethod
    def official_converter(checkpoint: str, out_dir: str, model: str | None = None, task: str | None = None,
                           parts: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """eP-ALM checkpoints (mshukor/eP-ALM: connectors and soft prompt only) → a trainable-only export; ``parts``
        names where the frozen ViT and OPT load from. See :func:`zoo.models.epalm.convert.convert_official_checkpoint`."""
        from zoo.models.epalm.convert import convert_official_checkpoint  # noqa: PLC0415

        return convert_official_checkpoint(checkpoint, out_dir, model=model, task=task, parts=parts)

    # -- parts the framework looks for ---------------------------------------------------------------------------
    @property
    def text(self) -> nn.Module:
        """The LM, under the name the training and prediction paths use for the tokenizer (``model.text``)."""
        return self.lm

    def tokenizer(self) -> Any:
        return self.lm.get_tokenizer()

    # -- vision → injected tokens --------------------------------------------------------------------------------
    def _collect_cls(self, module: nn.Module, args: Any, output: Tensor) -> None:
        if self._collected is not None:
            self._collected.append(output[:, 0])

    def visual_tokens(self, images: Tensor) -> list[Tensor]:
        """Images ``(B, C, H, W)`` or frames ``(B, F, C, H, W)`` → ``num_vision_layers`` connector outputs
        ``(B, k, lm_width)`` (k = 1, or F with ``video_pool="concat"``), oldest block first."""
        frames = None
        if images.dim() == 5:
            frames = images.shape[1]
            images = images.flatten(0, 1)
        elif images.dim() != 4:
            raise ValueError(f"eP-ALM takes images (B, C, H, W) or frames (B, F, C, H, W), got {tuple(images.shape)}")
        self._collected = []
        try:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_vision):
                self.vision(images)
                cls = [self.vision.model.norm(c) for c in self._collected]  # the ViT's final norm, per block
        finally:
            collected, self._collected = self._collected, None
        if len(collected) != self.num_vision_layers:
            raise RuntimeError(f"collected {len(collected)} CLS tokens from the ViT, expected {self.num_vision_layers}")
        out = []
        for j, c in enumerate(cls):
            c = c.unsqueeze(1)  # (B*, 1, D)
            if frames is not None:
                c = c.view(-1, frames, c.shape[-1])
                if self.video_pool == "mean":
                    c = c.mean(1, keepdim=True)
            conn = self.connector[0 if self.shared_connector else j]
            out.append(conn(c))
        return out

    def injection(self, images: Tensor | None) -> Injection | None:
        """The visual tokens' injection into the LM; None without images or with ``language_only``."""
        if images is None or self.language_only:
            return None
        return Injection(self.visual_tokens(images), self.start_layer, self.end_layer)

    def prompt(self, batch: int) -> Tensor | None:
        return None if self.prompt_module is None else self.prompt_module(batch)

    # -- text ----------------------------------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return self.lm.get_tokenizer()(text, add_special_tokens=False)["input_ids"] if text else []

    def encode_texts(self, before: Sequence[str], targets: Sequence[str] | None = None, *, eos: bool = True,
                     label_all: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """``[bos] before target [eos]`` per row, right-padded: ``(input_ids, attention_mask, labels)``; labels are
        the target and eos (everything but padding with ``label_all``), -100 elsewhere; None without targets."""
        bos, eos_id, pad = self.lm.bos_token_id, self.lm.eos_token_id, self.lm.pad_token_id
        if eos and eos_id is None:
            raise ConfigError("the LM config has no eos_token_id; set lm.config.eos_token_id")
        rows, labels = [], []
        for i, text in enumerate(before):
            head = ([bos] if bos is not None else []) + self._ids(text)
            tail = [] if targets is None else self._ids(targets[i]) + ([eos_id] if eos else [])
            rows.append(head + tail)
            labels.append(head + tail if label_all else [-100] * len(head) + tail)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        lab = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (r, l) in enumerate(zip(rows, labels)):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
            lab[i, :len(l)] = torch.tensor(l)
        return ids, mask, (lab if targets is not None else None)

    def _decode_batch(self, ids: Tensor, mask: Tensor | None = None) -> list[str]:
        return decode_texts(self.lm.get_tokenizer(), ids, mask, self.lm.pad_token_id)

    def _vqa_prompt(self, question: str) -> str:
        return question + "?" + self.answer_token

    def _answer_text(self, ids: Sequence[int]) -> str:
        """Generated ids → the answer: up to the first eos, before any further ``</a>``, without special tokens."""
        tok = self.lm.get_tokenizer()
        ids = list(ids)
        eos = self.lm.eos_token_id
        if eos is not None and eos in ids:
            ids = ids[:ids.index(eos)]
        text = tok.decode(ids, skip_special_tokens=False).split(self.answer_token)[0]
        for special in tok.all_special_tokens:
            text = text.replace(special, "")
        return re.sub(r"\s+", " ", text).strip()

    # -- the LM with the visual conditioning ----------------------------------------------------------------------
    def forward(self, images: Tensor | None, input_ids: Tensor, attention_mask: Tensor | None = None,
                labels: Tensor | None = None, reduction: str = "per_sample"):
        """The LM on ``input_ids`` with the prompt and (``images`` not None) the visual injection: an
        :class:`~zoo.modules.lm.causal_lm.LMOutput` with logits aligned to ``input_ids``."""
        injection = self.injection(images)
        return self.lm(input_ids, attention_mask, prefix=self.prompt(input_ids.shape[0]), injection=injection,
                       labels=labels, reduction=reduction)

    def _lm_loss(self, images: Tensor, ids: Tensor, mask: Tensor, labels: Tensor, repeat: Tensor | None = None,
                 weights: Tensor | None = None) -> Tensor:
        dev = images.device
        ids, mask, labels = ids.to(dev), mask.to(dev), labels.to(dev)
        injection = self.injection(images)
        if repeat is not None and injection is not None:  # several sequences per image
            injection = Injection([t.repeat_interleave(repeat.to(dev), 0) for t in injection.tokens],
                                  injection.start, injection.end)
        out = self.lm(ids, mask, prefix=self.prompt(ids.shape[0]), injection=injection, labels=labels,
                      reduction="per_sample")
        per_sample = out.loss if weights is None else out.loss * weights.to(out.loss)
        return per_sample.sum() / images.shape[0] * self.loss_weight

    # -- VQA -----------------------------------------------------------------------------------------------------
    def vqa_loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """VQA loss on a text batch (:class:`zoo.modules.lm.processing.TextVQACollator`): ``images``, ``questions``
        and ``answers`` (one string per question, or its distinct answers) with their ``weights``."""
        questions, per_q, weights = batch_text_answers(batch, "eP-ALM vqa_loss")
        label_all = self.vqa_loss_on == "text"
        if self.answer_sampling == "sample":
            chosen = []
            for answers, w in zip(per_q, weights):
                probs = torch.tensor(w, dtype=torch.float64).clamp(min=0)
                idx = int(torch.multinomial(probs, 1)) if probs.sum() > 0 and len(answers) > 1 else 0
                chosen.append(answers[idx])
            ids, mask, labels = self.encode_texts([self._vqa_prompt(q) for q in questions], chosen, label_all=label_all)
            loss = self._lm_loss(batch["images"], ids, mask, labels)
        else:
            before = [self._vqa_prompt(q) for q, answers in zip(questions, per_q) for _ in answers]
            ids, mask, labels = self.encode_texts(before, [a for answers in per_q for a in answers],
                                                  label_all=label_all)
            repeat = torch.tensor([len(a) for a in per_q])
            wt = torch.tensor([x for w in weights for x in w], dtype=torch.float32)
            loss = self._lm_loss(batch["images"], ids, mask, labels, repeat=repeat, weights=wt)
        return {"loss": loss}

    @torch.no_grad()
    def vqa_predict(self, images: Tensor, question_ids: Tensor | None = None, question_mask: Tensor | None = None,
                    answer_ids: Tensor | None = None, answer_mask: Tensor | None = None, k: int | None = None,
                    answers: list[str] | None = None, *, questions: Sequence[str] | None = None,
                    num_beams: int | None = None, max_new_tokens: int | None = None) -> dict[str, Any]:
        """Open-ended answers by generation (``num_beams`` default 3): ``{"answer": [str], "prob": (B,)}`` where
        ``prob`` is the probability of the generated answer tokens. The ``questions`` are text (what the training
        module passes); ``question_ids`` / ``question_mask`` made with this model's tokenizer are decoded instead when
        no text is given. ``answer_ids`` / ``answer_mask`` / ``k`` / ``answers`` (an answer list to rank) are
        accepted for a generative-VQA call and unused."""
        if questions is None:
            if question_ids is None:
                raise ValueError("eP-ALM vqa_predict needs the questions (text) or their ids")
            questions = self._decode_batch(question_ids, question_mask)
        ids, mask, _ = self.encode_texts([self._vqa_prompt(q) for q in questions], eos=False)
        return self._generate_text(images, ids, mask, num_beams, max_new_tokens or self.max_answer_tokens)

    def _generate_text(self, images: Tensor, ids: Tensor, mask: Tensor, num_beams: int | None,
                       max_new_tokens: int, min_new_tokens: int | None = None) -> dict[str, Any]:
        dev = images.device
        ids, mask = ids.to(dev), mask.to(dev)
        beams = num_beams or self.num_beams
        kwargs: dict[str, Any] = {"num_beams": beams, "max_new_tokens": max_new_tokens, "do_sample": False,
                                  "return_dict_in_generate": True, "output_scores": True}
        if min_new_tokens:
            kwargs["min_new_tokens"] = min_new_tokens
        out = self.lm.generate(ids, mask, prefix=self.prompt(ids.shape[0]), injection=self.injection(images),
                               **kwargs)
        scores = self.lm.model.compute_transition_scores(out.sequences, out.scores,
                                                         getattr(out, "beam_indices", None), normalize_logits=True)
        new = out.sequences[:, -scores.shape[1]:]
        keep = torch.ones_like(new, dtype=torch.bool)
        eos = self.lm.eos_token_id
        if eos is not None:  # tokens after the first eos are padding
            seen = (new == eos).long().cumsum(1)
            keep = (seen == 0) | ((seen == 1) & (new == eos))
        logp = scores.masked_fill(~keep | ~torch.isfinite(scores), 0).sum(1)
        texts = [self._answer_text(row) for row in new.tolist()]
        return {"answer": texts, "prob": logp.exp().float().cpu(), "ids": new}

    # -- captioning ----------------------------------------------------------------------------------------------
    def caption_loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Captioning LM loss on ``images`` and raw captions: ``captions`` (one string per image, or a list per image
        whose first entry is used) or ``caption``. The X²-VLM caption collator's masked-LM inputs are not used."""
        caps = batch.get("captions", batch.get("caption"))
        if caps is None:
            raise ValueError("eP-ALM caption_loss needs the raw caption strings in the batch ('captions' or "
                             "'caption'); the X²-VLM captioning collator (masked-LM inputs) does not provide them")
        caps = [c if isinstance(c, str) else c[0] for c in caps]
        prompt = (self.caption_prompt + " ") if self.caption_prompt else ""
        ids, mask, labels = self.encode_texts([prompt] * len(caps), caps)
        return {"loss": self._lm_loss(batch["images"], ids, mask, labels)}

    @torch.no_grad()
    def generate_captions(self, images: Tensor, num_beams: int | None = None, max_length: int | None = None,
                          min_length: int | None = None, prompt: str | None = None) -> list[str]:
        """Captions by generation from BOS (+ ``caption_prompt``); ``max_length`` / ``min_length`` count new
        tokens (default ``max_caption_tokens``)."""
        prompt = self.caption_prompt if prompt is None else prompt
        before = [(prompt + " ") if prompt else ""] * images.shape[0]
        ids, mask, _ = self.encode_texts(before, eos=False)
        out = self._generate_text(images, ids, mask, num_beams, max_length or self.max_caption_tokens, min_length)
        return out["answer"]
