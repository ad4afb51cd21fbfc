"""Tests for zoo.metrics.vqa and zoo.metrics.caption.

VQA: hand-computed leave-one-out values, the official normalisation rules, and a brute-force re-implementation of the
accuracy rule (enumerating the N leave-one-out subsets) on random answer lists. Captioning: our BLEU/CIDEr-D/ROUGE-L
against pycocoevalcap's own scorers (a test dependency; its Java tools are not used except by the optional tokenizer
check, which runs only when ``java`` is on the PATH) on a fixture of 20 images x 5 references and on random corpora,
plus properties (identity, permutation invariance) and tokenizer cases whose expected outputs were produced by the
Java PTBTokenizer 3.4.1 through pycocoevalcap's wrapper.
"""

from __future__ import annotations

import itertools
import random
import shutil
import statistics
import subprocess
import sys

import pytest

from zoo.metrics.caption import bleu, caption_scores, cider_d, rouge_l, tokenize_caption
from zoo.metrics.vqa import normalize_answer, vqa_accuracy, vqa_score

TOL = 1e-6

# ---------------------------------------------------------------------------------------------------------------------
# VQA
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two", "2"),
        ("ten", "10"),
        ("none", "0"),
        ("a dog", "dog"),
        ("The Dog.", "dog"),
        ("an apple", "apple"),
        ("dont", "don't"),
        ("isnt", "isn't"),
        ("don't", "don't"),  # apostrophes are not punctuation for the official script
        ("yes.", "yes"),
        ("  Yes\n", "yes"),
        ("1,000", "1000"),  # digit-comma-digit: every punctuation mark is deleted, not replaced by a space
        ("3.5", "3.5"),  # a period followed by a digit stays
        ("1.5.", "1.5"),
        ("yes, no", "yes no"),  # ", " touches a space: deleted
        ("black/white", "black white"),  # touches no space: replaced by a space
        ("t-shirt", "t shirt"),
        ("a.m.", "am"),
        ("what?!", "what"),
        ("#1", "#1"),
        ("." * 40, "." * 8),  # the script's re.sub(..., re.UNICODE) removes at most 32 periods
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    "n_match, expected",
    [
        # 10 answers, m of them equal to the prediction. Leaving out one of the m matching answers leaves m-1
        # matches; leaving out one of the 10-m others leaves m. acc = (m*min(1,(m-1)/3) + (10-m)*min(1,m/3)) / 10.
        (0, 0.0),
        (1, (1 * 0.0 + 9 * (1 / 3)) / 10),  # 0.3
        (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),  # 0.6
        (3, (3 * (2 / 3) + 7 * 1.0) / 10),  # 0.9: three agreeing annotators give 0.9, not 1.0, after averaging
        (4, (4 * 1.0 + 6 * 1.0) / 10),  # 1.0
        (10, 1.0),
    ],
)
def test_vqa_accuracy_leave_one_out_by_hand(n_match, expected):
    answers = ["cat"] * n_match + ["dog", "bird", "fish", "cow", "pig", "hen", "ant", "bee", "owl", "elk"][n_match:]
    assert len(answers) == 10
    assert vqa_accuracy("cat", answers) == pytest.approx(expected, abs=1e-12)


def test_vqa_accuracy_hand_values_are_the_known_ones():
    other = [f"x{i}" for i in range(10)]
    assert [round(vqa_accuracy("yes", ["yes"] * m + other[m:]), 10) for m in range(6)] == [0, 0.3, 0.6, 0.9, 1, 1]


@pytest.mark.parametrize(
    "pred, gt",
    [
        ("two", "2"),
        ("Two", "2"),
        ("a dog", "dog"),
        ("the dog", "dog"),
        ("dont", "don't"),
        ("yes.", "yes"),
        ("Yes", "yes"),
        ("1,000", "1000"),
    ],
)
def test_vqa_accuracy_normalises_the_prediction(pred, gt):
    assert vqa_accuracy(pred, [gt] * 10) == 1.0
    assert vqa_accuracy(pred, [gt] * 2 + ["other"] * 8) == pytest.approx(0.6)


def test_vqa_ground_truth_rules_of_the_official_script():
    # Ground truths are punctuation-processed only when they disagree ...
    assert vqa_accuracy("yes", ["yes."] * 10) == 0.0
    assert vqa_accuracy("yes", ["yes."] * 5 + ["no"] * 5) == 1.0
    # ... and never lower-cased / digit-mapped / article-stripped.
    assert vqa_accuracy("two", ["two"] * 10) == 0.0
    assert vqa_accuracy("dog", ["a dog"] * 4 + ["cat"] * 6) == 0.0
    # normalize_gt=True applies the full normalisation to the ground truths.
    assert vqa_accuracy("two", ["two"] * 10, normalize_gt=True) == 1.0
    assert vqa_accuracy("dog", ["a dog"] * 4 + ["cat"] * 6, normalize_gt=True) == 1.0


def test_vqa_accuracy_accepts_official_answer_dicts():
    answers = [{"answer": "2", "answer_confidence": "yes", "answer_id": i + 1} for i in range(2)]
    answers += [{"answer": "3", "answer_confidence": "yes", "answer_id": i + 3} for i in range(8)]
    assert vqa_accuracy("two", answers) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        vqa_accuracy("yes", [])


def _brute_force_accuracy(pred: str, answers: list[str]) -> float:
    """Enumerate every subset of N-1 answers (positions), score min(1, matches / 3), average."""
    n = len(answers)
    subsets = list(itertools.combinations(range(n), n - 1))
    return statistics.fmean(min(1.0, sum(answers[j] == pred for j in s) / 3.0) for s in subsets)


def test_vqa_accuracy_matches_brute_force_on_random_answer_lists():
    rng = random.Random(0)
    vocab = ["yes", "no", "2", "red", "blue"]  # already normalised: the official rules leave them unchanged
    for _ in range(500):
        n = rng.choice([10, 10, 10, rng.randint(1, 12)])
        answers = [rng.choice(vocab) for _ in range(n)]
        pred = rng.choice(vocab)
        assert vqa_accuracy(pred, answers) == pytest.approx(_brute_force_accuracy(pred, answers), abs=1e-12)


def _official_annotations():
    def ann(qid, answers, atype, qtype):
        return {
            "question_id": qid,
            "image_id": qid // 10,
            "answer_type": atype,
            "question_type": qtype,
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
        }

    return [
        ann(10, ["yes"] * 10, "yes/no", "is the"),  # prediction "Yes" -> 1.0
        ann(11, ["2"] * 2 + ["3"] * 8, "number", "how many"),  # prediction "two" -> 0.6
        ann(20, ["red"] + ["blue"] * 9, "other", "what color is the"),  # prediction "red" -> 0.3
        ann(21, ["no"] * 7 + ["yes"] * 3, "yes/no", "is the"),  # prediction "yes" -> 0.9
    ]


def test_vqa_score_official_layouts_and_per_type():
    anns = _official_annotations()
    preds = [
        {"question_id": 10, "answer": "Yes"},
        {"question_id": 11, "answer": "two"},
        {"question_id": 20, "answer": "red"},
        {"question_id": 21, "answer": "yes"},
    ]
    out = vqa_score(preds, anns)
    assert out["overall"] == round(100 * (1.0 + 0.6 + 0.3 + 0.9) / 4, 2) == 70.0
    assert out["perAnswerType"] == {"yes/no": 95.0, "number": 60.0, "other": 30.0}
    assert out["perQuestionType"] == {"is the": 95.0, "how many": 60.0, "what color is the": 30.0}
    # the same through the other accepted layouts
    as_dict = {p["question_id"]: p["answer"] for p in preds}
    assert vqa_score(as_dict, {"annotations": anns}) == out
    plain = {a["question_id"]: [x["answer"] for x in a["answers"]] for a in anns}
    assert vqa_score(as_dict, plain) == {"overall": 70.0}
    # rounding: 2 decimals as the official script, or none
    three = {q: plain[q] for q in (10, 11, 20)}
    preds3 = {q: as_dict[q] for q in three}
    assert vqa_score(preds3, three)["overall"] == 63.33
    assert vqa_score(preds3, three, ndigits=None)["overall"] == pytest.approx(100 * 1.9 / 3, abs=1e-12)


def test_vqa_score_requires_one_prediction_per_question():
    anns = _official_annotations()
    with pytest.raises(ValueError, match="missing"):
        vqa_score({10: "yes"}, anns)
    with pytest.raises(ValueError, match=r"^predictions do not match the annotated questions: 0 missing \(e\.g\. "
                                         r"\[\]\), 5 unknown \(e\.g\. \[95, 96, 97\]\)$"):
        vqa_score({10: "yes", 11: "2", 20: "red", 21: "no", 95: "x", 96: "x", 97: "x", 98: "x", 99: "x"}, anns)
    with pytest.raises(ValueError, match=r"^vqa_score needs at least one annotated question$"):
        vqa_score({}, [])
    with pytest.raises(TypeError, match=r"^a prediction list must hold \{'question_id': \.\.\., 'answer': \.\.\.\} "
                                        r"dicts$"):
        vqa_score(["yes"], anns)
    with pytest.raises(ValueError, match="more than one"):
        vqa_score([{"question_id": 10, "answer": "yes"}] * 2, anns[:1])


# ---------------------------------------------------------------------------------------------------------------------
# Captioning: tokenizer
# ---------------------------------------------------------------------------------------------------------------------

# Expected outputs: Java PTBTokenizer (CoreNLP 3.4.1, -preserveLines -lowerCase) + pycocoevalcap's punctuation filter.
PTB_CASES = [
    ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
    ("A dog's toy is on the floor, next to the cat.", "a dog 's toy is on the floor next to the cat"),
    ("The man don't like it; he can't, won't & shouldn't.", "the man do n't like it he ca n't wo n't & should n't"),
    (
        'Two dogs\' bowls (empty) sit on the "kitchen" floor!',
        "two dogs bowls -lrb- empty -rrb- sit on the kitchen floor",
    ),
    (
        "A black-and-white photo of a 1,000 year old tree at 3.5 p.m. in the U.S.",
        "a black-and-white photo of a 1,000 year old tree at 3.5 p.m. in the u.s.",
    ),
    ("A sign that says 'STOP' and/or \"go\" -- really?", "a sign that says stop and/or go really"),
    ("People near a $5 bill and a 50% off sign [sale]", "people near a $ 5 bill and a 50 % off sign -lsb- sale -rsb-"),
    ("A group of people ... standing around", "a group of people standing around"),
    ("I cannot believe we're gonna eat it's food", "i can not believe we 're gon na eat it 's food"),
    ("Mr. Smith and Dr. Who at St. Paul's... wow!!", "mr. smith and dr. who at st. paul 's wow !!"),
    ("A street sign for 5th Ave. and W. 34th St.", "a street sign for 5th ave. and w. 34th st."),
    ("Is it 3:00pm? It's 10:30.", "is it 3:00 pm it 's 10:30"),
    ("There are 2 1/2 pizzas on the table", "there are 2\xa01/2 pizzas on the table"),
    ("Café crème at the naïve bar — nice – ok", "café crème at the naïve bar nice ok"),
    ("Two dogs.Three cats", "two dogs.three cats"),
    ("A sign that says no.", "a sign that says no"),
    ("The \u201cbest\u201d pizza in \u2018town\u2019 isn\u2019t cheap", "the best pizza in town is n't cheap"),
    ("It is 5 o'clock and rock'n'roll y'all", "it is 5 o'clock and rock 'n' roll y' all"),
    ("A 10-year-old's toy, +5 -3 and a hat-", "a 10-year-old 's toy +5 -3 and a hat"),
    ("LOL!!! wow?! ok?", "lol !!! wow ?! ok"),
    ("call (555) 123-4567 now", "call -lrb-555-rrb-\xa0123-4567 now"),  # phone numbers: one token
    ("phone (212) 555 1234 on the wall", "phone -lrb-212-rrb-\xa0555\xa01234 on the wall"),
    ("", ""),
]


@pytest.mark.parametrize("raw, expected", PTB_CASES)
def test_tokenize_caption_matches_ptb_outputs(raw, expected):
    assert tokenize_caption(raw) == expected


# ---------------------------------------------------------------------------------------------------------------------
# Captioning: fixture (20 images x 5 references) and comparison with pycocoevalcap
# ---------------------------------------------------------------------------------------------------------------------

_REFS = [
    ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave in the ocean.",
     "A person on a surfboard riding a wave.", "Surfer in a black wetsuit catching a wave.",
     "A man surfing on a big blue wave."],
    ["A cat laying on a bed next to a laptop.", "A gray cat sleeping beside an open laptop computer.",
     "The cat is lying on the bed near a computer.", "A cat resting on a blanket by a laptop.",
     "Cat curled up on a bed with a notebook computer."],
    ["Two giraffes standing next to each other in a field.", "A pair of giraffes in a grassy field.",
     "Two tall giraffes stand near some trees.", "Giraffes standing together on the savanna.",
     "Two giraffes are eating leaves from a tree."],
    ["A plate of food with broccoli, carrots and rice.", "A dinner plate with rice and vegetables.",
     "Broccoli, carrots, and rice on a white plate.", "A healthy meal of vegetables and rice.",
     "A white plate topped with rice and broccoli."],
    ["A red double-decker bus driving down a city street.", "A double decker bus on a busy street.",
     "A red bus drives past some buildings.", "The big red bus is going down the road.",
     "A tour bus traveling through the city."],
    ["A kitchen with stainless steel appliances.", "A modern kitchen with a refrigerator and an oven.",
     "The kitchen has granite counters and steel appliances.", "A clean kitchen with wooden cabinets.",
     "A large kitchen with a stove and a fridge."],
    ["A young boy swinging a baseball bat.", "A child in a baseball uniform swings at a pitch.",
     "A little league player hitting a ball.", "A boy at bat during a baseball game.",
     "The kid swings the bat at the ball."],
    ["A bathroom with a toilet, sink, and shower.", "A small white bathroom with a toilet.",
     "The bathroom has a sink next to the toilet.", "A clean bathroom with a shower stall.",
     "White toilet and sink in a tiled bathroom."],
    ["A dog catching a frisbee in a park.", "A brown dog jumps to catch a frisbee.",
     "The dog is playing frisbee on the grass.", "A dog leaping into the air for a disc.",
     "A dog with a frisbee in its mouth."],
    ["A stop sign on a street corner.", "A red stop sign next to a road.",
     "The stop sign has graffiti on it.", "A stop sign in front of some trees.",
     "A street corner with a stop sign and a pole."],
    ["A man and woman cutting a wedding cake.", "A bride and groom cut their cake.",
     "A couple slicing a white wedding cake.", "Newlyweds cutting a tiered cake together.",
     "A wedding couple cuts the cake at the reception."],
    ["A clock tower in the middle of a town.", "A tall clock tower against a blue sky.",
     "An old building with a clock on top.", "The clock tower shows the time.",
     "A brick clock tower near some buildings."],
    ["Elephants walking through tall grass.", "A herd of elephants in a field.",
     "Three elephants walk across the grassland.", "A group of elephants walking in a line.",
     "Elephants moving together through the savanna."],
    ["A pizza with pepperoni and cheese.", "A large pizza on a wooden table.",
     "A pepperoni pizza cut into slices.", "A cheese pizza sitting on a pan.",
     "A freshly baked pizza with toppings."],
    ["A train traveling down the tracks.", "A passenger train pulling into a station.",
     "A long train on a railway near trees.", "The train is moving along the track.",
     "A red and white train on the rails."],
    ["A woman holding an umbrella in the rain.", "A person walking with an umbrella.",
     "A lady with a black umbrella on a rainy street.", "Woman under an umbrella on a wet sidewalk.",
     "Someone carrying an umbrella during a storm."],
    ["A laptop computer sitting on a desk.", "A desk with a laptop and a mouse.",
     "An open laptop on a wooden table.", "A computer on a desk next to a lamp.",
     "A laptop and a cup of coffee on a desk."],
    ["Sheep grazing in a green field.", "A flock of sheep on a hillside.",
     "Several sheep eating grass in a pasture.", "White sheep standing in the grass.",
     "A group of sheep in a meadow."],
    ["A skateboarder doing a trick on a ramp.", "A man riding a skateboard in a skate park.",
     "A skater jumps in the air with his board.", "A young man skateboarding down a ramp.",
     "A person performs a trick on a skateboard."],
    ["A bowl of fruit on a table.", "Apples and oranges in a bowl.",
     "A fruit bowl with bananas and apples.", "A wooden bowl full of fresh fruit.",
     "Fruit sitting in a bowl on the counter."],
]
_CANDIDATES = [
    "A man riding a wave on top of a surfboard.",  # identical to a reference
    "A cat on a bed.",  # shorter than every reference
    "Two giraffes giraffes giraffes standing standing in a field field.",  # repeated n-grams
    "Xyzzy plugh quux.",  # no overlap with anything
    "Bus",  # one-word candidate
    "A kitchen.",  # very short
    "A boy swinging a bat at a baseball game in the park on a sunny day with his friends.",  # longer than all
    "A bathroom with a toilet and a sink.",
    "A dog (brown) catching a frisbee!",  # brackets survive tokenisation as -lrb- / -rrb-
    "A stop sign.",
    "A bride and groom cutting their wedding cake.",
    "A clock",
    "A herd of elephants walking through tall grass.",
    "Pizza",
    "A train on the tracks near a station.",
    "A woman with an umbrella.",
    "A laptop on a desk.",
    "Sheep sheep sheep.",  # repeated unigram, fewer bigrams
    "A skateboarder doing a trick.",
    "A a a a a a a a.",  # degenerate repetition
]


def _fixture(tokenized: bool = True):
    tok = tokenize_caption if tokenized else (lambda s: s)
    gts = {f"img{i:02d}": [tok(r) for r in refs] for i, refs in enumerate(_REFS)}
    res = {f"img{i:02d}": [tok(c)] for i, c in enumerate(_CANDIDATES)}
    return gts, res


def test_fixture_shape():
    gts, res = _fixture()
    assert len(gts) == len(res) == 20 and all(len(v) == 5 for v in gts.values())
    # the edge cases are what the fixture claims
    assert all(len(res["img01"][0].split()) < len(r.split()) for r in gts["img01"])
    assert res["img04"][0] == "bus" and res["img03"][0] == "xyzzy plugh quux"


pycoco_bleu = pytest.importorskip("pycocoevalcap.bleu.bleu")
pycoco_cider = pytest.importorskip("pycocoevalcap.cider.cider")
pycoco_rouge = pytest.importorskip("pycocoevalcap.rouge.rouge")


def _reference_scores(gts, res):
    b, b_img = pycoco_bleu.Bleu(4).compute_score(gts, res, verbose=0)
    c, c_img = pycoco_cider.Cider().compute_score(gts, res)
    r, r_img = pycoco_rouge.Rouge().compute_score(gts, res)
    return b, b_img, float(c), [float(x) for x in c_img], float(r), [float(x) for x in r_img]


def _assert_same_as_pycocoevalcap(gts, res):
    b_ref, b_img_ref, c_ref, c_img_ref, r_ref, r_img_ref = _reference_scores(gts, res)
    keys = list(gts)

    b, b_img = bleu(gts, res, n=4, return_per_image=True)
    assert max(abs(x - y) for x, y in zip(b, b_ref)) < TOL
    for n in range(4):
        assert max(abs(b_img[k][n] - b_img_ref[n][i]) for i, k in enumerate(keys)) < TOL

    c, c_img = cider_d(gts, res, return_per_image=True)
    assert abs(c - c_ref) < TOL
    assert max(abs(c_img[k] - c_img_ref[i]) for i, k in enumerate(keys)) < TOL

    r, r_img = rouge_l(gts, res, return_per_image=True)
    assert abs(r - r_ref) < TOL
    assert max(abs(r_img[k] - r_img_ref[i]) for i, k in enumerate(keys)) < TOL

    scores = caption_scores(gts, res)
    assert set(scores) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr", "ROUGE_L"}
    assert [scores[f"Bleu_{n}"] for n in range(1, 5)] == pytest.approx(b_ref, abs=TOL)
    assert scores["CIDEr"] == pytest.approx(c_ref, abs=TOL)
    assert scores["ROUGE_L"] == pytest.approx(r_ref, abs=TOL)
    return scores


def test_fixture_scores_equal_pycocoevalcap():
    gts, res = _fixture()
    scores = _assert_same_as_pycocoevalcap(gts, res)
    # sanity: a non-trivial operating point (neither 0 nor perfect)
    assert 0.2 < scores["Bleu_1"] < 0.9 and 0.0 < scores["Bleu_4"] < scores["Bleu_1"]
    assert 0.1 < scores["CIDEr"] < 5.0 and 0.1 < scores["ROUGE_L"] < 0.9


def test_fixture_edge_images_equal_pycocoevalcap_alone():
    gts, res = _fixture()
    for key in ("img01", "img03", "img04", "img19"):  # short, no overlap, one word, degenerate
        _assert_same_as_pycocoevalcap({key: gts[key]}, {key: res[key]})
    # two images, so that CIDEr-D idf is not identically 0
    _assert_same_as_pycocoevalcap({k: gts[k] for k in ("img02", "img17")}, {k: res[k] for k in ("img02", "img17")})


def test_random_corpora_equal_pycocoevalcap():
    rng = random.Random(1)
    vocab = "a the man dog cat sitting on table with red blue two of in near street car bus".split()
    for _ in range(15):
        gts, res = {}, {}
        for i in range(rng.randint(1, 12)):
            gts[i] = [" ".join(rng.choices(vocab, k=rng.randint(1, 12))) for _ in range(rng.randint(1, 5))]
            res[i] = [" ".join(rng.choices(vocab, k=rng.randint(0, 12)))]  # k=0: an empty candidate
        _assert_same_as_pycocoevalcap(gts, res)


def test_untokenized_whitespace_handling_equals_pycocoevalcap():
    # BLEU/CIDEr split on any whitespace, ROUGE-L on single spaces: double spaces change ROUGE-L, as in pycocoevalcap
    gts = {1: ["a  dog on a mat", "the dog\tsits"], 2: ["two cats", "cats  on a  sofa"]}
    res = {1: ["a dog  sits"], 2: [" two cats"]}
    _assert_same_as_pycocoevalcap(gts, res)


def test_tokenize_option_of_caption_scores():
    gts_raw, res_raw = _fixture(tokenized=False)
    gts, res = _fixture(tokenized=True)
    assert caption_scores(gts_raw, res_raw, tokenize=True) == caption_scores(gts, res)
    # a bare string is accepted as the candidate
    assert caption_scores(gts, {k: v[0] for k, v in res.items()}) == caption_scores(gts, res)


def test_input_checks():
    gts, res = _fixture()
    with pytest.raises(ValueError, match="same image ids"):
        bleu(gts, {k: res[k] for k in list(res)[:5]})
    with pytest.raises(ValueError, match="exactly one candidate"):
        cider_d({1: ["a b"]}, {1: ["a", "b"]})
    with pytest.raises(ValueError, match="non-empty"):
        rouge_l({1: []}, {1: ["a"]})


# ---------------------------------------------------------------------------------------------------------------------
# Captioning: properties
# ---------------------------------------------------------------------------------------------------------------------


def test_identical_candidate_and_references_give_perfect_scores():
    caps = ["a man riding a wave on a surfboard", "two dogs play with a red ball in the park",
            "a plate of rice and green broccoli", "an old clock tower under a cloudy sky"]
    gts = {i: [c] * 5 for i, c in enumerate(caps)}
    res = {i: [c] for i, c in enumerate(caps)}
    assert bleu(gts, res) == pytest.approx([1.0] * 4, abs=TOL)
    assert rouge_l(gts, res) == pytest.approx(1.0, abs=TOL)
    # disjoint vocabularies -> every n-gram has idf log(4) > 0 -> cosine 1 for each n, no length penalty -> 10
    assert cider_d(gts, res) == pytest.approx(10.0, abs=TOL)


def test_scores_invariant_under_image_permutation():
    gts, res = _fixture()
    keys = list(gts)
    base = caption_scores(gts, res)
    _, base_img = cider_d(gts, res, return_per_image=True)
    rng = random.Random(3)
    for _ in range(3):
        rng.shuffle(keys)
        g2 = {k: gts[k] for k in keys}
        r2 = {k: res[k] for k in reversed(keys)}  # a different order again for res
        assert caption_scores(g2, r2) == pytest.approx(base, abs=1e-12)
        _, img = cider_d(g2, r2, return_per_image=True)
        assert img == pytest.approx(base_img, abs=1e-12)


def test_cider_d_clips_repeated_ngrams():
    # Repeating the matching words must not raise CIDEr-D (the min() clipping) and costs the length penalty.
    gts = {0: ["a dog runs"] * 2, 1: ["a cat sleeps"] * 2, 2: ["two birds fly"] * 2}
    one = {0: ["a dog runs"], 1: ["a cat sleeps"], 2: ["two birds fly"]}
    rep = {0: ["dog dog dog dog dog dog runs"], 1: ["a cat sleeps"], 2: ["two birds fly"]}
    _, s_one = cider_d(gts, one, return_per_image=True)
    _, s_rep = cider_d(gts, rep, return_per_image=True)
    assert s_rep[0] < s_one[0]


# ---------------------------------------------------------------------------------------------------------------------
# Optional: the Java PTB tokenizer itself (skipped without java)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("java") is None, reason="java is not installed")
def test_tokenizer_matches_java_ptbtokenizer_on_fixture():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    captions = [c for refs in _REFS for c in refs] + _CANDIDATES + [raw for raw, _ in PTB_CASES if raw]
    # The Java lexer looks past the end of a line: a caption ending in a one-letter abbreviation ("... a.") loses
    # the period when the *next* caption starts with "A ", "The ", ... . tokenize_caption works on one caption, as
    # if the next line were neutral; a neutral line after each caption makes the Java run per-caption too.
    data = {i: [{"caption": c}, {"caption": "x"}] for i, c in enumerate(captions)}
    try:
        java = PTBTokenizer().tokenize(data)
    except (OSError, subprocess.SubprocessError) as exc:  # pragma: no cover - broken java install
        pytest.skip(f"PTBTokenizer failed: {exc}")
    mismatches = {c: (java[i][0], tokenize_caption(c)) for i, c in enumerate(captions)
                  if tokenize_caption(c) != java[i][0]}
    assert not mismatches


def test_import_zoo_metrics_is_light():
    code = (
        "import sys, zoo.metrics as m; m.vqa_accuracy; m.caption_scores; m.tokenize_caption; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_vqa_score_keeps_the_official_ground_truth_rule_by_default():
    """By default the ground truths are compared as the official script compares them (not normalised like the
    prediction): an unnormalised annotation "Two" does not match the prediction "2"; normalize_gt=True makes it."""
    anns = [{"question_id": 1, "answers": [{"answer": "Two"}] * 10}]
    assert vqa_score({1: "2"}, anns)["overall"] == 0.0
    assert vqa_score({1: "2"}, anns, normalize_gt=True)["overall"] == 100.0


def test_lazy_names_of_zoo_metrics_resolve_to_the_functions():
    import zoo.metrics as M
    from zoo.metrics import caption, retrieval, vqa

    assert M.vqa_score is vqa.vqa_score and M.cider_d is caption.cider_d
    assert M.retrieval_ranks is retrieval.retrieval_ranks
    with pytest.raises(AttributeError, match=r"^module 'zoo.metrics' has no attribute 'nope'$"):
        M.nope  # noqa: B018
