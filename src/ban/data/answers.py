"""Answer normalisation and soft scores, exactly as the official VQA evaluation and the reference pipeline.

The official evaluation (``vqaEval.py`` of the VQA API) normalises an answer in two stages:

1. :func:`process_punctuation` — for each character of :data:`PUNCTUATION`: if the ORIGINAL text has it next
   to a space (``"p "`` or ``" p"``), or the original text contains a digit-comma-digit (``10,000``), the
   character is deleted, otherwise it is replaced by a space. Then periods that are not followed by a digit
   are deleted (see :data:`_PERIOD_STRIP` for the exact rule and its two quirks).
2. :func:`process_digit_article` — lower-case, split on whitespace, number words → digits (``none`` → ``0``),
   drop the articles ``a``/``an``/``the``, restore contractions (``dont`` → ``don't``), join with one space.

:func:`normalize_answer` is what the official evaluation does to a predicted answer: tabs and newlines become
spaces, the text is stripped, then both stages run. The reference training pipeline ran the two stages without
the clean-up (:func:`preprocess_answer`) and then deleted commas — a no-op, as stage 1 leaves no comma.
Ground-truth answers get stage 1 only, and only when the annotators disagree — see :mod:`ban.metrics.vqa`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

# Characters handled by stage 1, in the official order (the order matters: each decision looks at the
# original text, but replacements accumulate). Not in the list, so kept: the apostrophe, colon, ``*``, ``#``,
# ``$``, ``%``, ``&`` (periods have their own rule).
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)

# Number words the official evaluation turns into digits.
NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}

ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# The official contraction map, entry for entry. Two oddities are kept on purpose so scores stay identical:
# ``"somebody'd"`` maps to ``"somebodyd"`` (reversed in the original), and the capitalised keys (``Id've``,
# ``I'dve``, ``Im``, ``Ive``) can never match because stage 2 lower-cases first.
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}

_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a negative LOOKAHEAD for the literal "<="
# followed by a digit (not the lookbehind it looks like), which never fails in front of a period. So the rule
# really is: delete every period that is not followed by a digit ("5." loses its period, ".5" keeps it).
_PERIOD_STRIP = re.compile(r"\.(?!\d)")
# The official call passes re.UNICODE (= 32) in the position of ``count``: at most 32 periods are deleted.
_PERIOD_STRIP_COUNT = int(re.UNICODE)

# Soft target by number of annotators (of 10) who gave an answer: 0, 1, 2, 3, ≥4.
_SOFT_SCORES = (0.0, 0.3, 0.6, 0.9, 1.0)


def process_punctuation(text: str) -> str:
    """Stage 1 of the official normalisation (see the module docstring).

    >>> process_punctuation("10,000")
    '10000'
    >>> process_punctuation("t-shirt.")
    't shirt'
    """
    out = text
    present = [mark for mark in PUNCTUATION if mark in text]  # replacing one mark never creates another
    if present:
        delete_all = "," in present and _DIGIT_COMMA_DIGIT.search(text) is not None
        for mark in present:
            if delete_all or mark + " " in text or " " + mark in text:
                out = out.replace(mark, "")
            else:
                out = out.replace(mark, " ")
    if "." in out:
        out = _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)
    return out


def process_digit_article(text: str) -> str:
    """Stage 2 of the official normalisation: lower-case, number words → digits, drop articles, restore
    contractions, single spaces.

    >>> process_digit_article("The Two dogs dont")
    "2 dogs don't"
    """
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def clean_whitespace(text: str) -> str:
    """Tabs and newlines → spaces, then strip: the official evaluation's first step on a predicted answer."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
    """The full official normalisation of an answer (whitespace clean-up, stage 1, stage 2).

    >>> normalize_answer("  A Dog!\\n")
    'dog'
    >>> normalize_answer("none")
    '0'
    """
    return preprocess_answer(clean_whitespace(text))


def preprocess_answer(text: str) -> str:
    """Stages 1 and 2 without the whitespace clean-up: what the reference training pipeline applied to
    ``multiple_choice_answer`` (candidates) and to Visual Genome answers. It differs from
    :func:`normalize_answer` only when leading/trailing whitespace touches a punctuation mark.

    >>> preprocess_answer(" -x-y"), normalize_answer(" -x-y")
    ('xy', 'x y')
    """
    return process_digit_article(process_punctuation(text))


def soft_score(count: int) -> float:
    """Soft target of an answer given by ``count`` of the 10 annotators: 0→0, 1→0.3, 2→0.6, 3→0.9, ≥4→1.0.

    >>> [soft_score(n) for n in range(6)]
    [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
    """
    if count < 0:
        raise ValueError(f"an answer count cannot be negative, got {count}")
    return _SOFT_SCORES[min(count, len(_SOFT_SCORES) - 1)]


def select_candidates(answers: Iterable[str], min_count: int) -> list[str]:
    """The candidate answers (the classifier's labels), in label order.

    ``answers`` holds one answer per question (the reference uses each question's ``multiple_choice_answer``
    over train+val); each is normalised with :func:`preprocess_answer` (as the reference) and counted. Kept:
    answers occurring at least ``min_count`` times (the reference uses 9, giving 3,129 answers on VQA 2.0).

    Label order: descending count, ties broken alphabetically (by Python string order). The reference used the
    iteration order of a Python 2 dict, which is not reproducible; this order is deterministic and puts
    frequent answers first. (An official checkpoint needs the reference's own label list, its
    ``trainval_label2ans.pkl``; this order is for new models.)

    >>> select_candidates(["Yes", "yes", "no", "No", "two", "2", "2", "cat"], min_count=2)
    ['2', 'no', 'yes']
    """
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, got {min_count}")
    counts = Counter(preprocess_answer(answer) for answer in answers)
    kept = [(answer, count) for answer, count in counts.items() if count >= min_count]
    kept.sort(key=lambda item: (-item[1], item[0]))
    return [answer for answer, _ in kept]
