"""Image-captioning metrics as the COCO caption evaluator (``pycocoevalcap``) computes them: BLEU-1..4, CIDEr-D,
ROUGE-L, and a pure-Python stand-in for its PTB tokenisation step.

Facts from ``pycocoevalcap`` (tylin/coco-caption and its pip release; the rules, not the code):

- Inputs are ``{image_id: [caption, ...]}`` dicts of already tokenised, space-separated strings, one candidate per
  image and one or more references; ``gts`` and ``res`` must have the same keys. BLEU and CIDEr split on any
  whitespace (``str.split()``), ROUGE-L on single spaces (``str.split(" ")``); this module does the same, so the
  numbers agree on any input, not only on clean ones.
- BLEU (``Bleu(4)``, ``BleuScorer`` with ``option="closest"``): per image, clipped n-gram matches against the
  maximum count over the references and ``max(0, len - n + 1)`` guesses; the effective reference length is the
  reference length closest to the candidate length (ties -> the shorter). Corpus BLEU-n sums matches, guesses and
  lengths over images, takes ``prod_{k<=n} ((correct_k + 1e-15) / (guess_k + 1e-9))^(1/n)`` (that is the scorer's
  only smoothing) and multiplies by ``exp(1 - ref_len / test_len)`` when ``(test_len + 1e-15) / (ref_len + 1e-9)``
  is below 1. Per-image BLEU uses the same formulas on that image alone.
- CIDEr (``Cider()``, ``CiderScorer``): the scorer shipped as "CIDEr" *is CIDEr-D*: n = 1..4 tf-idf vectors,
  document frequency = number of images whose reference set contains the n-gram (computed over the evaluated set
  itself), idf = ``log(N_images) - log(max(1, df))``; similarity per n of candidate vs each reference is
  ``sum_g min(v_cand[g], v_ref[g]) * v_ref[g] / (|v_cand| |v_ref|)`` (the ``min`` is the clipping that makes it
  CIDEr-D; the norm division is skipped when a norm is zero), times the Gaussian length penalty
  ``exp(-(l_cand - l_ref)^2 / (2 * 6.0^2))``; the score of an image is the mean over n of the sum over references,
  divided by the number of references, times 10; the corpus score is the mean over images. The "length" in the
  penalty is counted as the number of *bigrams* (``len - 1`` for a non-empty caption, 0 for an empty one), exactly
  as the scorer counts it (the difference from word counts only shows when a caption is empty, and then the
  similarity is 0 anyway).
- ROUGE-L (``Rouge()``): per image, LCS with each reference; precision = LCS / len(candidate) and recall =
  LCS / len(reference); the *maxima over references of precision and recall are taken separately*, then
  ``F = (1 + b^2) P R / (R + b^2 P)`` with b = 1.2 (0 when P or R is 0); the corpus score is the mean over images.
- Tokenisation: ``COCOEvalCap`` first runs ``PTBTokenizer`` (Stanford CoreNLP 3.4.1,
  ``edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase``) over all captions and drops the tokens
  ``'' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ;``. The tokenizer lower-cases its output, so the
  bracket tokens come out as ``-lrb-`` etc. and are *not* dropped by that (upper-case) list; the same holds for
  ``-lsb-``/``-rsb-`` and for runs like ``!!`` or ``?!``.

Hand-written here: everything. The metric code follows the formulas above in plain Python (no numpy needed). The
tokenizer :func:`tokenize_caption` is a rule-based Python lexer modelled on the PTB lexer's token classes and
checked against the Java tokenizer on caption-like text. It matches it on ordinary captions: words,
hyphenated words, numbers (``1,000``, ``3.5``, ``10:30``), the clitics ``'s 're 've 'll 'd 'm n't``, ``cannot``,
``gonna``/``wanna``/``gotta``/``gimme``/``lemme``, quotes of all kinds, brackets, dashes, ellipses, ``$ % # & @``,
the PTB abbreviation lists (``mr.``, ``st.``, ``jan.``, ``inc.``, single letters ``b.``, acronyms ``u.s.`` keep their
period, so they survive the punctuation filter; ``no.`` only before a number), fractions (``2 1/2`` becomes one
token joined by a no-break space, as in Java), emoticons (``:)`` -> ``:-rrb-``). This was checked against the Java
tokenizer on a few hundred caption-like lines (tests/test_metrics.py repeats the check when ``java`` is present).
Known differences: (1) the Java lexer looks past the end of a caption into the next one (the wrapper feeds all
captions as one newline-separated file): a caption ending in a one-letter abbreviation (``"... plan b."``) loses
that period in Java when the following caption starts with ``A``/``The``/``It``/..., a context a per-caption
function cannot see; :func:`tokenize_caption` treats every caption as followed by a neutral line. (2) Rare forms:
the Java lexer's full URL/e-mail grammar (only ``http(s)://...``, ``www.``, ``*.com|net|org|edu`` and
``user@host.tld`` are handled, and tokens glued to ``@`` or to a URL without spaces may split differently), SGML
entities other than ``&amp;``, a few words of its apostrophe class (``'tis``), untokenisable control characters,
and Java's locale-specific lower-casing.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["bleu", "caption_scores", "cider_d", "rouge_l", "tokenize_caption"]

# ---------------------------------------------------------------------------------------------------------------------
# PTB-style tokenisation
# ---------------------------------------------------------------------------------------------------------------------

# Tokens dropped by pycocoevalcap's PTBTokenizer wrapper after the Java tokenizer (compared to lower-cased tokens).
_PTB_DROPPED = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# A letter / a letter or digit: Python's \w also takes the "other number" characters (superscripts, vulgar fractions,
# circled numbers), which are not letters for the Java lexer.
_NOT_LETTER = "\u00b2\u00b3\u00b9\u00bc-\u00be\u2070-\u2079\u2080-\u2089\u2150-\u218b\u2460-\u24ff\u2776-\u2793"
_L = rf"[^\W\d_{_NOT_LETTER}]"
_AN = rf"[^\W_{_NOT_LETTER}]"
_APOS = "['\u2019\u0092]"
_APOS_ANY = "['\u2019\u0092\u2018\u0091\u201b]"
_I = re.IGNORECASE

# PTB abbreviation classes (Stanford PTBLexer). (?-i:X) marks letters the lexer matches case-sensitively.
_ABMONTH = r"jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec"
_ABDAYS = r"mon|tues?|wed|thu(?:rs)?|fri"
_ABSTATE = (
    r"ala|ariz|(?-i:A)rk|calif|colo|conn|dak|(?-i:D)el|fla|ga|(?-i:I)ll|ind|kans?|ky|(?-i:L)a|(?-i:M)ass|md|mich|"
    r"minn|(?-i:M)iss|mo|mont|neb|nev|okla|(?-i:O)re|(?-i:P)a|penn|tenn|(?-i:T)ex|va|vt|(?-i:W)ash|wisc?|wyo"
)
_ABCOMP = r"inc|cos?|corp|pp?tys?|ltd|plc|bancorp|dept|bhd|assn|univ|intl|sys"
_ABPTIT = r"jr|sr|bros|(?:ed|ph)\.d|blvd|rd|esq"
_ABNUM = r"ph|tel|est|ext|sq|ft"
_ABTITLE = (
    r"mr|mrs|ms|(?-i:M)iss|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl|pvt|mt|capt|"
    r"ste?|ave|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det"
)
_ABCOMP2 = r"invt|elec|natl|m[ft]g"
_ACRO = r"[A-Za-z](?:\.[A-Za-z])+"
# Capitalised words after which a one-letter abbreviation ("b.") is taken as sentence-final: its period is split off.
_SENT_START = "|".join(
    f"(?-i:{w[0]})(?i:{re.escape(w[1:])})"
    for w in (
        "About According Additionally After An A As At But Earlier He Her Here However If In It Last Many More Mr. "
        "Ms. Now Once One Other Our She Since So Some Such That The Then There These They This We When While What "
        "Yet You"
    ).split()
)
_HTHING = rf"[A-Za-z0-9][A-Za-z0-9.,\u00ad]*(?:-(?:[A-Za-z0-9\u00ad]+|{_ACRO}\.))+"
_THING = rf"(?:[dol]{_APOS_ANY}{_AN})?{_AN}+(?:[-_\u058a\u2010\u2011](?:[dol]{_APOS_ANY}{_AN})?{_AN}+)*"


def _same(t: str) -> list[str]:
    return [t]


def _const(out: str) -> Callable[[str], list[str]]:
    return lambda t: [out]


def _quote(t: str) -> list[str]:
    """PTB "latex quotes" for a closing/neutral quote token."""
    t = re.sub("['\u2019\u0092\u203a]", "'", t)
    t = re.sub("[\u2018\u0091\u201b\u2039]", "`", t)
    t = re.sub("[\u201c\u0093\u00ab]", "``", t)
    t = re.sub("[\u201d\u0094\u00bb]", "''", t)
    return [t.replace('"', "''")]


def _hyphens(t: str) -> list[str]:
    return ["--"] if 3 <= len(t) <= 4 else [t]


def _frac(t: str) -> list[str]:
    return [t.replace(" ", "\u00a0")]


def _phone(t: str) -> list[str]:
    return [t.replace(" ", "\u00a0").replace("(", "-LRB-").replace(")", "-RRB-")]


def _no_soft_hyphen(t: str) -> list[str]:
    return [t.replace("\u00ad", "")]


_CURRENCY = {"\u00a2": "cents", "\u00a3": "#", "\u0080": "$", "\u00a4": "$", "\u20a0": "$", "\u20ac": "$"}
_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3"}

# (pattern, flags, output). A rule's match may include trailing context after the named group ``t`` (the token):
# as in JFlex, the context counts for the longest match but is not consumed. Longest match wins; ties go to the
# earlier rule.
_RULE_SPECS: list[tuple[str, int, Callable[[str], list[str]]]] = [
    (r"(?P<t>can)not", _I, _same),
    (rf"(?P<t>{_APOS}t)is(?!{_L})", _I, _same),
    (r"[a-z]\+\+", _I, _same),
    (rf"(?P<t>(?:gim|lem)(?=me)|(?:gon|wan)(?=na)|got(?=ta))..(?!{_L})", _I, _same),
    (r"</?[A-Za-z!][^>]*>", 0, _same),
    (r"[\u2013\u2014\u2015\u0096\u0097]|&(?:MD|mdash|ndash);", 0, _const("--")),
    (r"&amp;", _I, _const("&")),
    (rf"(?P<t>{_L}+){_APOS}(?:re|ve|ll|[msd])", _I, _no_soft_hyphen),
    (rf"(?P<t>[a-z]*[a-mo-z])n{_APOS_ANY}t", _I, _same),
    (rf"{_L}+", 0, _no_soft_hyphen),
    # APOWORD: apostrophe words kept whole
    (rf"{_APOS}n{_APOS}?", _I, _same),
    (rf"[ldj]{_APOS}", _I, _same),
    (rf"(?:dunkin|somethin|ol){_APOS}", _I, _same),
    (rf"{_APOS}(?:em|[2-9]0s|till?|cause)", _I, _same),
    (r"cont'd\.?|'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l", _I, _same),
    (rf"[A-HJ-XZn]{_APOS_ANY}{_L}{{2,}}", 0, _same),
    (rf"{_L}+[aeiouyAEIOUY]{_APOS_ANY}[aeiouA-Z]{_L}*", 0, _same),
    (rf"(?P<t>y{_APOS}){_L}", _I, _same),
    # URLs and e-mail addresses (common forms only)
    (r"https?://[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-]", _I, _same),
    (
        (
            r"(?:www\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-z]{2,4}|(?:[a-z0-9-]+\.)+(?:com|net|org|edu))"
            r"(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?"
        ),
        _I,
        _same,
    ),
    (r"[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00a0]*@(?:[^ \t\n\f\r\"<>|().\u00a0]+\.)+[a-zA-Z]{2,4}", 0, _same),
    (rf"(?P<t>{_APOS}(?:re|ve|ll|[msd]))[^A-Za-z]", _I, _quote),
    (rf"n{_APOS_ANY}t", _I, _quote),
    (r"\d{1,2}[-/]\d{1,2}[-/]\d{2,4}", 0, _same),
    (r"[-+]?(?:\d*(?:[.:,\u00ad\u066b\u066c]\d+)+|\d+)", 0, _no_soft_hyphen),
    (r"(?:\d{1,4}[- \u00a0])?\d{1,4}(?:\\?/|\u2044)\d{1,4}", 0, _frac),
    (r"[\u00bc\u00bd\u00be\u2153]", 0, lambda t: [_FRACTIONS[t]]),
    (r"-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|C\.D\.s|pro-|anti-|S(?:&|&amp;)P-500|S(?:&|&amp;)Ls|Cap'n|c'est", _I, _same),
    (r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}", 0, _same),
    (r"[A-Z]*\$|#", _I, _same),
    (r"[\u00a2\u00a3\u00a4\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]", 0,
     lambda t: [_CURRENCY.get(t, t)]),
    (rf"(?:{_ABMONTH}|{_ABDAYS}|{_ABSTATE}|{_ABCOMP}|{_ABPTIT}|{_ABNUM}|etc|al|seq)\.", _I, _same),
    (r"(?P<t>(?:nos?|prop|figs?|art|pp|op)\.) ?\d", _I, _same),
    (rf"(?:{_ACRO}|a\.k\.a|[A-Za-z]|{_ABTITLE}|vs|alex|wm|jos|cie|cf|treas|{_ABCOMP2})\.", _I, _same),
    (rf"(?P<t>[A-Za-z])\.[ \t\u00a0]+(?:{_SENT_START})\s", 0, _same),
    (rf"(?P<t>{_ACRO})\s", 0, _same),
    (rf"(?P<t>{_APOS}\d\d)\s", 0, _same),
    (rf"(?P<t>{_L}+\.)[,;:]", 0, _no_soft_hyphen),
    (r"(?:\(\d{3}\)[ \u00a0]?|\d{3}[- \u00a0.])\d{3}[- \u00a0.]\d{4}", 0, _phone),
    (r'(?P<t>"|&quot;)[A-Za-z0-9$]', 0, _const("``")),
    (r'"|&quot;', 0, _const("''")),
    (r"[<>]?[:;=][-o*']?[()DPdpO\\{@|\[\]]", 0, lambda t: [t.replace("(", "-LRB-").replace(")", "-RRB-")]),
    (r"[+%&\u2030\u2031~^|\\=/]", 0, _same),
    (r"[<>]", 0, _same),
    (r"\(", 0, _const("-LRB-")),
    (r"\)", 0, _const("-RRB-")),
    (r"\[", 0, _const("-LSB-")),
    (r"\]", 0, _const("-RSB-")),
    (r"\{", 0, _const("-LCB-")),
    (r"\}", 0, _const("-RCB-")),
    (r"-+", 0, _hyphens),
    (r"\.{3,5}|(?:\.[ \u00a0]){2,4}\.|[\u0085\u2026]", 0, _const("...")),
    (rf"[@#]{_L}\w*", 0, _same),
    (r"@+|#+|_+|\*+", 0, _same),
    (r"[,;:]", 0, _same),
    (r"[?!]+", 0, _same),
    (r"[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa]", 0, _same),
    (rf"(?P<t>{_HTHING}\.)[,;:]", 0, _no_soft_hyphen),
    (_HTHING, 0, _no_soft_hyphen),
    (rf"(?P<t>{_THING}\.)[,;:]", _I, _same),
    (_THING, _I, _same),
    (r"[A-Z]+(?:(?:[+&]|&amp;)[A-Z]+)+", 0, lambda t: [re.sub("(?i)&amp;", "&", t)]),
    (rf"{_L}+(?:\.{_L}+)+", 0, _same),
    (r"(?P<t>')[A-Za-z][^ \t\n\r\u00a0]", 0, _const("`")),
    (rf"{_APOS}(?:re|ve|ll|[msd])", _I, _quote),
    (r"''|[`\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u201f\u0091-\u0094\u2039\u203a\u00ab\u00bb]{1,2}", 0, _quote),
    (_APOS, 0, _quote),
]
_RULES = [(re.compile(p, f), out) for p, f, out in _RULE_SPECS]
_SPACE = re.compile(r"[\s\u00a0\u2000-\u200a\u3000\u200b\u200e\u200f\ufeff\x00]+")
# A plain ASCII word followed by a space or the end: no rule matches longer, so it is a WORD token (fast path). The
# words split by the "cannot"/"gonna" rules are excluded.
_PLAIN_WORD = re.compile(r"[A-Za-z]+(?=\s|$)")
_SPLIT_WORDS = frozenset({"cannot", "gimme", "lemme", "gonna", "wanna", "gotta"})


def _ptb_tokens(line: str) -> list[str]:
    """PTB-style tokens of one line (before lower-casing and the punctuation filter)."""
    tokens: list[str] = []
    pos, n = 0, len(line)
    while pos < n:
        m = _SPACE.match(line, pos)
        if m:
            pos = m.end()
            continue
        m = _PLAIN_WORD.match(line, pos)
        if m and m.group().lower() not in _SPLIT_WORDS:
            tokens.append(m.group())
            pos = m.end()
            continue
        best_len, best = 0, None
        for rx, out in _RULES:
            m = rx.match(line, pos)
            if m is not None and m.end() - pos > best_len:
                best_len, best = m.end() - pos, (m, out)
        if best is None:
            ch = line[pos]
            if unicodedata.category(ch)[0] in "LNPS":
                tokens.append(ch)  # a lone symbol the rules do not name: keep it as its own token
            pos += 1  # control and other untokenisable characters are deleted, as the Java default does
            continue
        m, out = best
        end = m.end("t") if "t" in m.re.groupindex and m.group("t") is not None else m.end()
        tokens.extend(out(line[pos:end]))
        pos = end
    return tokens


def tokenize_caption(s: str) -> str:
    """Tokenise a caption as ``COCOEvalCap`` does (PTB tokenizer, lower-case, punctuation tokens dropped).

    Returns the space-joined tokens, e.g. ``"A dog's toy (red)."`` -> ``"a dog 's toy -lrb- red -rrb-"``. See the
    module docstring for what is reproduced and the known differences from the Java tokenizer.
    """
    # The wrapper joins all captions with newlines, so a line ends with "\n" (context for end-of-word rules).
    line = s.replace("\n", " ").rstrip() + "\n"
    return " ".join(t for t in (tok.lower() for tok in _ptb_tokens(line)) if t not in _PTB_DROPPED)


# ---------------------------------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------------------------------


def _check_inputs(gts: Mapping[Any, Sequence[str]], res: Mapping[Any, Any]) -> list[tuple[Any, str, list[str]]]:
    """``[(image_id, candidate, references)]`` in ``gts`` order, with pycocoevalcap's sanity checks."""
    if set(gts.keys()) != set(res.keys()):
        missing = [k for k in gts if k not in res]
        extra = [k for k in res if k not in gts]
        raise ValueError(f"gts and res must have the same image ids: {len(missing)} without a candidate "
                         f"(e.g. {missing[:3]}), {len(extra)} without references (e.g. {extra[:3]})")
    if not gts:
        raise ValueError("no images to score")
    items = []
    for k, refs in gts.items():
        cand = res[k]
        if isinstance(cand, str):
            cand = [cand]
        if len(cand) != 1:
            raise ValueError(f"image {k!r}: exactly one candidate caption is needed, got {len(cand)}")
        if isinstance(refs, str) or len(refs) < 1:
            raise ValueError(f"image {k!r}: references must be a non-empty list of strings")
        items.append((k, cand[0], list(refs)))
    return items


def _ngrams(words: Sequence[str], n: int) -> Counter:
    c: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            c[tuple(words[i : i + k])] += 1
    return c


# ---------------------------------------------------------------------------------------------------------------------
# BLEU
# ---------------------------------------------------------------------------------------------------------------------

_TINY = 1e-15
_SMALL = 1e-9


def _bleu_from_stats(correct: Sequence[float], guess: Sequence[float], testlen: float, reflen: float) -> list[float]:
    scores, prod = [], 1.0
    for k in range(len(correct)):
        prod *= (correct[k] + _TINY) / (guess[k] + _SMALL)
        scores.append(prod ** (1.0 / (k + 1)))
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    if ratio < 1:
        bp = math.exp(1 - 1 / ratio)
        scores = [s * bp for s in scores]
    return scores


def _bleu_image_stats(cand: str, refs: Sequence[str], n: int) -> tuple[int, int, list[int], list[int]]:
    words = cand.split()
    testlen = len(words)
    ref_lens, max_counts = [], {}
    for r in refs:
        rw = r.split()
        ref_lens.append(len(rw))
        for g, c in _ngrams(rw, n).items():
            if c > max_counts.get(g, 0):
                max_counts[g] = c
    reflen = min(ref_lens, key=lambda length: (abs(length - testlen), length))
    guess = [max(0, testlen - k) for k in range(n)]
    correct = [0] * n
    for g, c in _ngrams(words, n).items():
        correct[len(g) - 1] += min(c, max_counts.get(g, 0))
    return testlen, reflen, guess, correct


def bleu(
    gts: Mapping[Any, Sequence[str]], res: Mapping[Any, Sequence[str]], n: int = 4, return_per_image: bool = False
) -> list[float] | tuple[list[float], dict[Any, list[float]]]:
    """Corpus BLEU-1..n as pycocoevalcap's ``Bleu(n)`` (option "closest"), on tokenised captions.

    Returns ``[BLEU-1, ..., BLEU-n]`` (fractions in [0, 1]); with ``return_per_image`` also
    ``{image_id: [BLEU-1, ..., BLEU-n]}`` (the scorer's per-image scores).
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    items = _check_inputs(gts, res)
    tot_test, tot_ref = 0, 0
    tot_guess, tot_correct = [0] * n, [0] * n
    per_image = {}
    for k, cand, refs in items:
        testlen, reflen, guess, correct = _bleu_image_stats(cand, refs, n)
        tot_test += testlen
        tot_ref += reflen
        for i in range(n):
            tot_guess[i] += guess[i]
            tot_correct[i] += correct[i]
        if return_per_image:
            per_image[k] = _bleu_from_stats(correct, guess, testlen, reflen)
    scores = _bleu_from_stats(tot_correct, tot_guess, tot_test, tot_ref)
    return (scores, per_image) if return_per_image else scores


# ---------------------------------------------------------------------------------------------------------------------
# CIDEr-D
# ---------------------------------------------------------------------------------------------------------------------


def _tfidf(counts: Counter, n: int, log_n_images: float, doc_freq: Mapping[tuple, int]):
    vec: list[dict[tuple, float]] = [{} for _ in range(n)]
    norm = [0.0] * n
    length = 0
    for g, tf in counts.items():
        k = len(g) - 1
        w = float(tf) * (log_n_images - math.log(max(1.0, float(doc_freq.get(g, 0)))))
        vec[k][g] = w
        norm[k] += w * w
        if k == 1:  # the scorer's "length": the number of bigrams
            length += tf
    return vec, [math.sqrt(x) for x in norm], length


def cider_d(
    gts: Mapping[Any, Sequence[str]],
    res: Mapping[Any, Sequence[str]],
    n: int = 4,
    sigma: float = 6.0,
    return_per_image: bool = False,
) -> float | tuple[float, dict[Any, float]]:
    """CIDEr-D as pycocoevalcap's ``Cider()`` (which is CIDEr-D), on tokenised captions.

    Document frequencies come from the references of the images passed in. Returns the mean over images; with
    ``return_per_image`` also ``{image_id: score}``.
    """
    items = _check_inputs(gts, res)
    ref_counts = [[_ngrams(r.split(), n) for r in refs] for _, _, refs in items]
    doc_freq: Counter = Counter()
    for counts in ref_counts:
        doc_freq.update({g for c in counts for g in c})
    log_n_images = math.log(float(len(items)))
    penalty_denom = 2.0 * sigma**2
    per_image = {}
    for (k, cand, refs), counts in zip(items, ref_counts):
        v_c, n_c, l_c = _tfidf(_ngrams(cand.split(), n), n, log_n_images, doc_freq)
        total = [0.0] * n
        for rc in counts:
            v_r, n_r, l_r = _tfidf(rc, n, log_n_images, doc_freq)
            penalty = math.exp(-((l_c - l_r) ** 2) / penalty_denom)
            for i in range(n):
                ref_vec = v_r[i]
                val = sum(min(w, ref_vec.get(g, 0.0)) * ref_vec.get(g, 0.0) for g, w in v_c[i].items())
                if n_c[i] != 0 and n_r[i] != 0:
                    val /= n_c[i] * n_r[i]
                total[i] += val * penalty
        per_image[k] = sum(total) / n / len(refs) * 10.0
    score = sum(per_image.values()) / len(per_image)
    return (score, per_image) if return_per_image else score


# ---------------------------------------------------------------------------------------------------------------------
# ROUGE-L
# ---------------------------------------------------------------------------------------------------------------------

_ROUGE_BETA = 1.2


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _rouge_image(cand: str, refs: Sequence[str]) -> float:
    c = cand.split(" ")
    prec_max = rec_max = 0.0
    for r in refs:
        rt = r.split(" ")
        lcs = _lcs(rt, c)
        prec_max = max(prec_max, lcs / len(c))
        rec_max = max(rec_max, lcs / len(rt))
    if prec_max == 0 or rec_max == 0:
        return 0.0
    b2 = _ROUGE_BETA**2
    return (1 + b2) * prec_max * rec_max / (rec_max + b2 * prec_max)


def rouge_l(
    gts: Mapping[Any, Sequence[str]], res: Mapping[Any, Sequence[str]], return_per_image: bool = False
) -> float | tuple[float, dict[Any, float]]:
    """ROUGE-L (F with beta 1.2) as pycocoevalcap's ``Rouge()``, on tokenised captions; mean over images."""
    per_image = {k: _rouge_image(cand, refs) for k, cand, refs in _check_inputs(gts, res)}
    score = sum(per_image.values()) / len(per_image)
    return (score, per_image) if return_per_image else score


# ---------------------------------------------------------------------------------------------------------------------
# All together
# ---------------------------------------------------------------------------------------------------------------------


def caption_scores(
    gts: Mapping[Any, Sequence[str]], res: Mapping[Any, Sequence[str]], tokenize: bool = False
) -> dict[str, float]:
    """BLEU-1..4, CIDEr(-D) and ROUGE-L with ``COCOEvalCap``'s key names (fractions, not percent).

    Args:
        gts: ``{image_id: [reference, ...]}``.
        res: ``{image_id: [candidate]}`` (a bare string is accepted for the candidate).
        tokenize: run :func:`tokenize_caption` on every caption first (what ``COCOEvalCap`` does with the PTB
            tokenizer); leave ``False`` when the captions are already tokenised.

    METEOR and SPICE (Java tools) are not computed.
    """
    if tokenize:
        gts = {k: [tokenize_caption(c) for c in v] for k, v in gts.items()}
        res = {k: [tokenize_caption(c) for c in ([v] if isinstance(v, str) else v)] for k, v in res.items()}
    b = bleu(gts, res, n=4)
    out = {f"Bleu_{i + 1}": float(s) for i, s in enumerate(b)}
    out["ROUGE_L"] = float(rouge_l(gts, res))
    out["CIDEr"] = float(cider_d(gts, res))
    return out
