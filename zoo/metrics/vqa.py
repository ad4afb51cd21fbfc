"""VQA accuracy as the official VQAv2 evaluation computes it (``vqaEval.py`` of the VQA API, GT-Vision-Lab/VQA).

Facts taken from the official script (the rules, not its code):

- Predicted answer: newlines and tabs become spaces, the ends are stripped, then ``processPunctuation`` and
  ``processDigitArticle`` run (:func:`normalize_answer`).
- ``processPunctuation``: for each character of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` the character is deleted
  when it touches a space in the *original* text (``p + ' '`` or ``' ' + p`` occurs) or when the text contains a
  digit-comma-digit group anywhere (so ``1,000`` -> ``1000``); otherwise it is replaced by a space. Then every period
  not followed by a digit is deleted (the regex ``(?!<=\\d)(\\.)(?!\\d)``: its first group is a *lookahead* for the
  literal text ``<=`` + digit, a typo for a lookbehind, so only the "not followed by a digit" part acts; and the
  script passes ``re.UNICODE`` as the positional ``count`` argument of ``sub``, so at most 32 periods are removed).
  Apostrophes, colons, periods inside numbers (``3.5``) and ``'s`` survive.
- ``processDigitArticle``: lower-case, split on whitespace, map number words ``none``/``zero``..``ten`` to digits,
  drop the articles ``a``/``an``/``the``, then replace known contractions written without an apostrophe
  (``dont`` -> ``don't``) from the script's table, join with single spaces.
- Ground-truth answers are *not* normalised the same way: only when the 10 answers of a question are not all
  identical, each of them goes through ``processPunctuation`` (no lower-casing, no digit/article mapping). The VQAv2
  annotation files are already normalised, which is why this works there; ``normalize_gt=True`` applies the full
  :func:`normalize_answer` to ground truths instead, for data sets whose answers are raw text.
- Accuracy of a question: for each of the N ground-truth answers, leave it out and score
  ``min(1, #(other answers equal to the prediction) / 3)``; average the N values. (The script excludes the left-out
  answer by dict inequality; VQAv2 answer dicts carry distinct ``answer_id`` s, so this is leave-one-out by position,
  which is what is implemented here.) With 10 answers: 1 match -> 0.3, 2 -> 0.6, 3 -> 0.9, 4 or more -> 1.0.
- Reported numbers: 100 x the mean over questions, overall and grouped by ``answer_type`` and ``question_type``,
  rounded to 2 decimals (``n=2``).

X2-VLM (zengyan-97/X2-VLM, ``VQA.py`` / ``dataset/utils.py``) writes results as a list of
``{"question_id": int, "answer": str}`` (the answer picked from its candidate list) and scores them with this same
VQA API ``VQAEval`` (``n=2``); :func:`vqa_score` accepts that list directly.

Hand-written here: the whole module (plain Python, no torch). The contraction table and the number-word map are
the official script's data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["normalize_answer", "vqa_accuracy", "vqa_score"]

# Data of the official evaluation script.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # the official pattern, typo included
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PERIOD_STRIP_COUNT = 32  # the official script passes re.UNICODE (== 32) as ``count``


def _process_punctuation(text: str) -> str:
    """The official ``processPunctuation``."""
    out = text
    digit_comma = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if digit_comma or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def _process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(s: str) -> str:
    """Normalise a predicted answer as the official evaluation does (whitespace, punctuation, digits, articles)."""
    s = s.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(s))


def _answer_text(a: Any) -> str:
    if isinstance(a, str):
        return a
    if isinstance(a, Mapping) and "answer" in a:
        return a["answer"]
    raise TypeError(f"a ground-truth answer must be a str or a dict with an 'answer' key, got {type(a).__name__}")


def vqa_accuracy(prediction: str, answers: Sequence[Any], normalize_gt: bool = False) -> float:
    """VQA accuracy of one prediction against the ground-truth answers of its question, in [0, 1].

    Args:
        prediction: the predicted answer (raw; normalised here with :func:`normalize_answer`).
        answers: the annotators' answers (usually 10), as strings or official ``{"answer": ...}`` dicts.
        normalize_gt: apply :func:`normalize_answer` to the ground truths too, instead of the official rule
            (punctuation processing only, and only when the answers disagree).
    """
    gts = [_answer_text(a) for a in answers]
    if not gts:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer")
    pred = normalize_answer(prediction)
    if normalize_gt:
        gts = [normalize_answer(a) for a in gts]
    elif len(set(gts)) > 1:
        gts = [_process_punctuation(a) for a in gts]
    matches = sum(a == pred for a in gts)
    total = 0.0
    for a in gts:
        others = matches - (a == pred)  # matches among the answers other than this one
        total += min(1.0, others / 3.0)
    return total / len(gts)


def _predictions_by_id(predictions: Mapping[Any, Any] | Iterable[Any]) -> dict[Any, str]:
    if isinstance(predictions, Mapping):
        out = {}
        for qid, p in predictions.items():
            out[qid] = p if isinstance(p, str) else _answer_text(p)
        return out
    out = {}
    for p in predictions:
        if not isinstance(p, Mapping) or "question_id" not in p or "answer" not in p:
            raise TypeError("a prediction list must hold {'question_id': ..., 'answer': ...} dicts")
        if p["question_id"] in out:
            raise ValueError(f"question {p['question_id']!r} has more than one prediction")
        out[p["question_id"]] = p["answer"]
    return out


def _annotations_by_id(annotations: Mapping[Any, Any] | Iterable[Any]) -> dict[Any, dict[str, Any]]:
    """``{qid: {"answers": [...], "answer_type": ..., "question_type": ...}}`` from the accepted layouts."""
    if isinstance(annotations, Mapping) and isinstance(annotations.get("annotations"), list):
        annotations = annotations["annotations"]  # a whole official annotation file
    out: dict[Any, dict[str, Any]] = {}
    if isinstance(annotations, Mapping):
        for qid, ann in annotations.items():
            if isinstance(ann, Mapping):
                out[qid] = dict(ann)
            else:
                out[qid] = {"answers": list(ann)}
    else:
        for ann in annotations:
            if not isinstance(ann, Mapping) or "question_id" not in ann:
                raise TypeError("an annotation list must hold dicts with a 'question_id' key")
            out[ann["question_id"]] = dict(ann)
    for qid, ann in out.items():
        if "answers" not in ann:
            raise ValueError(f"annotation of question {qid!r} has no 'answers'")
    return out


def _percent(values: list[float], ndigits: int | None) -> float:
    v = 100.0 * sum(values) / len(values)
    return round(v, ndigits) if ndigits is not None else v


def vqa_score(
    predictions: Mapping[Any, Any] | Iterable[Any],
    annotations: Mapping[Any, Any] | Iterable[Any],
    ndigits: int | None = 2,
    normalize_gt: bool = False,
) -> dict[str, Any]:
    """Official-style VQA accuracy over a set of questions, in percent.

    Args:
        predictions: ``{question_id: answer}`` or the official result list ``[{"question_id", "answer"}, ...]``.
        annotations: ``{question_id: [answers]}``, ``{question_id: {"answers": [...], "answer_type": ...,
            "question_type": ...}}``, a list of official annotation dicts (with ``question_id``), or a whole official
            annotation file (a dict with an ``annotations`` list). Answers are strings or ``{"answer": ...}`` dicts.
        ndigits: rounding of the reported percentages (the official script uses 2); ``None`` keeps full precision.
        normalize_gt: see :func:`vqa_accuracy`.

    Returns:
        ``{"overall": float, "perAnswerType": {...}, "perQuestionType": {...}}`` as the official ``accuracy`` dict;
        the per-type entries are present only when the annotations carry ``answer_type`` / ``question_type``.
        Every annotated question must have exactly one prediction (the official ``loadRes`` asserts the same).
    """
    preds = _predictions_by_id(predictions)
    anns = _annotations_by_id(annotations)
    if not anns:
        raise ValueError("vqa_score needs at least one annotated question")
    missing = [q for q in anns if q not in preds]
    extra = [q for q in preds if q not in anns]
    if missing or extra:
        raise ValueError(
            f"predictions do not match the annotated questions: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(extra)} unknown (e.g. {extra[:3]})"
        )
    per_q: list[float] = []
    by_ans: dict[Any, list[float]] = {}
    by_ques: dict[Any, list[float]] = {}
    for qid, ann in anns.items():
        acc = vqa_accuracy(preds[qid], ann["answers"], normalize_gt=normalize_gt)
        per_q.append(acc)
        if ann.get("answer_type") is not None:
            by_ans.setdefault(ann["answer_type"], []).append(acc)
        if ann.get("question_type") is not None:
            by_ques.setdefault(ann["question_type"], []).append(acc)
    result: dict[str, Any] = {"overall": _percent(per_q, ndigits)}
    if by_ques:
        result["perQuestionType"] = {k: _percent(v, ndigits) for k, v in by_ques.items()}
    if by_ans:
        result["perAnswerType"] = {k: _percent(v, ndigits) for k, v in by_ans.items()}
    return result
