"""A small XLM-R-compatible SentencePiece tokenizer built from sentences, for toy multilingual models (``cclm-tiny``).

XLM-R's tokenizer folder (``xlm-roberta-base`` on the Hugging Face hub) holds ``tokenizer.json`` (a ``tokenizers``
Unigram model with a Metaspace pre-tokenizer and ``<s> $A </s>`` / ``<s> $A </s> </s> $B </s>`` templates),
``tokenizer_config.json`` (``tokenizer_class: XLMRobertaTokenizer``) and ``special_tokens_map.json``. Its special ids
are ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3 and ``<mask>`` the LAST id (250001), with ``lstrip`` so that
``"a <mask>"`` masks the word piece ``"▁x"`` position.

:func:`build_multilingual_tokenizer` trains the same kind of model with the ``tokenizers`` library (Unigram, the
SentencePiece algorithm; or BPE) on the given sentences and writes a folder of that format, so
``transformers.AutoTokenizer.from_pretrained(folder)`` — the path real XLM-R files take in the framework
(:func:`zoo.modules.text.hf.load_tokenizer`) — loads it as an XLM-R tokenizer with the same special ids.

Reused: ``tokenizers`` (models, trainers, WhitespaceSplit + Metaspace, template post-processor). Differences from the
real files: no normaliser (XLM-R ships SentencePiece's precompiled NFKC character map, which needs the original
``.model`` file), and no ``sentencepiece.bpe.model``. The pre-tokenizer is the one transformers 5's
``XLMRobertaTokenizer`` rebuilds around a Unigram vocabulary, so ``tokenizers.Tokenizer.from_file`` and
``AutoTokenizer`` split text identically. transformers' XLM-R class is Unigram-only: a BPE folder names the generic
fast class (``PreTrainedTokenizerFast``) instead, with the same special tokens and ids.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

__all__ = ["SPECIAL_TOKENS", "build_multilingual_tokenizer"]

#: XLM-R's special tokens in id order; ``<mask>`` is appended after the learnt pieces (the last id)
SPECIAL_TOKENS: tuple[str, ...] = ("<s>", "<pad>", "</s>", "<unk>")
MASK_TOKEN = "<mask>"


def _train(sentences: list[str], vocab_size: int | None, model: str):
    from tokenizers import Tokenizer, decoders, models, trainers  # noqa: PLC0415

    if model == "words":
        return _word_unigram(sentences, vocab_size)
    if model == "unigram":
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), unk_token="<unk>", show_progress=False,
        )
    elif model == "bpe":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    else:
        raise ValueError(f"model={model!r}: expected 'unigram', 'words' or 'bpe'")
    # the pipeline transformers' XLMRobertaTokenizer (v5) rebuilds around the vocabulary: no normaliser here (XLM-R's
    # precompiled NFKC map needs the SentencePiece .model file), whitespace split, then Metaspace with a prefix "▁"
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(sentences, trainer=trainer)
    return tok


def _pre_tokenizer():
    from tokenizers import pre_tokenizers  # noqa: PLC0415

    return pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
    ])


def _word_unigram(sentences: list[str], vocab_size: int | None):
    """A Unigram model whose pieces are the corpus's words (``▁word``, most frequent first) and every character it
    uses (words scored by log relative frequency, characters below every word): built, not trained, so each word the vocabulary holds is one token (the
    Unigram trainer, on a corpus of a few hundred words in three languages, keeps few whole words) and one corpus
    gives the same file every time. Words beyond the budget (``vocab_size``; None: no budget) fall back to
    characters; nothing is ``<unk>``."""
    from collections import Counter  # noqa: PLC0415

    from tokenizers import Tokenizer, decoders, models  # noqa: PLC0415

    pre = _pre_tokenizer()
    words: Counter[str] = Counter()
    chars: Counter[str] = Counter()
    for sentence in sentences:
        for piece, _ in pre.pre_tokenize_str(sentence):
            words[piece] += 1
            chars.update(piece)
    budget = vocab_size - len(SPECIAL_TOKENS) if vocab_size is not None else len(chars) + len(words)
    if len(chars) > budget:
        raise ValueError(f"vocab_size={vocab_size}: the corpus uses {len(chars)} characters, more than the "
                         f"{budget} pieces after the special tokens")
    kept = sorted((w for w in words if len(w) > 1 and w not in chars), key=lambda w: (-words[w], w))
    kept = kept[: budget - len(chars)]
    total = sum(words[w] for w in kept) or 1
    scored = [(w, round(math.log(words[w] / total), 4)) for w in kept]
    # characters score below every word, so a word the vocabulary holds is never spelled out
    floor = min((score for _, score in scored), default=0.0) - 2.0
    vocab = [(t, 0.0) for t in SPECIAL_TOKENS] + scored
    vocab += [(c, round(floor - i * 1e-3, 4)) for i, c in enumerate(sorted(chars, key=lambda c: (-chars[c], c)))]
    tok = Tokenizer(models.Unigram(vocab, unk_id=SPECIAL_TOKENS.index("<unk>"), byte_fallback=False))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return tok


def build_multilingual_tokenizer(
    sentences: Iterable[str],
    out_dir: str | os.PathLike,
    vocab_size: int | None = 512,
    model: Literal["unigram", "words", "bpe"] = "unigram",
    model_max_length: int = 512,
) -> Path:
    """Train a tokenizer on ``sentences`` and save it as an XLM-R tokenizer folder; returns the folder.

    Args:
        sentences: training text (any languages); at least one non-empty sentence.
        out_dir: folder to write (created; existing tokenizer files are replaced).
        vocab_size: size of the learnt vocabulary INCLUDING the four leading special tokens; ``<mask>`` comes on top,
            so ``len(tokenizer) <= vocab_size + 1`` (a tiny corpus may yield fewer pieces). A model's ``vocab_size``
            must be at least ``len(tokenizer)``. None (``model="words"`` only): every word of the corpus, no cap.
        model: ``"unigram"`` (SentencePiece Unigram trained as XLM-R's), ``"words"`` (a Unigram vocabulary of the
            corpus's whole words and characters, built directly: for small closed-vocabulary corpora) or ``"bpe"``.
        model_max_length: written to ``tokenizer_config.json`` (XLM-R: 512).
    """
    from tokenizers import AddedToken, processors  # noqa: PLC0415

    texts = [s for s in sentences if isinstance(s, str) and s.strip()]
    if not texts:
        raise ValueError("build_multilingual_tokenizer needs at least one non-empty sentence")
    if vocab_size is None and model != "words":
        raise ValueError(f"vocab_size=None: only model='words' has a natural size, got model={model!r}")
    if vocab_size is not None and vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size={vocab_size}: must exceed the {len(SPECIAL_TOKENS)} special tokens")
    tok = _train(texts, vocab_size, model)
    for i, token in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(token) != i:
            raise RuntimeError(f"trainer put {token} at id {tok.token_to_id(token)}, expected {i}")
    tok.add_special_tokens([AddedToken(MASK_TOKEN, lstrip=True, rstrip=False, normalized=False, special=True)])
    bos, eos = ("<s>", 0), ("</s>", 2)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[bos, eos],
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    mask_id = tok.token_to_id(MASK_TOKEN)

    def added(content: str, lstrip: bool = False) -> dict:
        return {"content": content, "lstrip": lstrip, "normalized": False, "rstrip": False, "single_word": False,
                "special": True}

    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
               "pad_token": "<pad>", "cls_token": "<s>", "mask_token": MASK_TOKEN}
    config = {
        # transformers' XLM-R tokenizer class is Unigram-only; a BPE model loads through the generic fast class
        "tokenizer_class": "XLMRobertaTokenizer" if model != "bpe" else "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": model != "bpe",  # as XLM-R; transformers refuses the clean-up for BPE
        "added_tokens_decoder": {
            str(i): added(t) for i, t in enumerate(SPECIAL_TOKENS)
        } | {str(mask_id): added(MASK_TOKEN, lstrip=True)},
        **special,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2, ensure_ascii=False) + "\n",
                                                 encoding="utf-8")
    return out
