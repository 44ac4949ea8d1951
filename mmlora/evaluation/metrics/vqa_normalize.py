"""Answer normalisation of the official VQA evaluation (VQA API ``vqaEval.py``).

Source: GT-Vision-Lab/VQA, ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``
(Agrawal et al., "VQA: Visual Question Answering", ICCV 2015), the script the
VQA v1/v2 challenges, VizWiz, OK-VQA and TextVQA accuracy numbers are computed
with.  It normalises an answer in two steps, reproduced here rule for rule:

``processPunctuation``
    For every character in :data:`PUNCTUATION`: if the *original* text has that
    character next to a space (``"p "`` or ``" p"``), **or** the text contains a
    digit-comma-digit group anywhere (``1,000``), the character is deleted;
    otherwise it is replaced by a space.  Then every ``.`` that is not followed by
    a digit is deleted (so ``3.5`` survives, ``dog.`` loses its period).
``processDigitArticle``
    Lower-case, split on whitespace, map number words to digits
    (:data:`NUMBER_WORDS`), drop the articles ``a``/``an``/``the``, expand
    apostrophe-less contractions (:data:`CONTRACTIONS`), join with one space.

The tables are reproduced as data (facts, not code) from the current version of
the script; the comments note where the original has quirks that we keep on
purpose, because changing them would change the scores.
"""

from __future__ import annotations

import re

__all__ = [
    "ARTICLES",
    "CONTRACTIONS",
    "NUMBER_WORDS",
    "PUNCTUATION",
    "normalize_vqa_answer",
    "process_digit_article",
    "process_punctuation",
]

# ``manualMap`` of the official script.  Only 0-10; "eleven" stays a word.
NUMBER_WORDS: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# ``punct`` of the current official script.  Note what is *not* in it: the
# apostrophe (so "don't" survives), the colon (so "12:30" survives) and the
# period (handled separately by the period rule below).  An older revision of the
# script had ':' and "'" in the list and lacked '-', '!', '{', '}'; every widely
# used copy (VQA challenge server, LAVIS, MMF, lmms-eval) follows this one.
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
    ">", "<", "@", "`", ",", "?", "!",
)

# ``commaStrip``: a comma between two digits.  Its presence *anywhere* in the
# answer switches every punctuation character to "delete" instead of "replace by
# space" (the official test is on the whole string, not per occurrence).
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")

# ``periodStrip`` is written ``(?!<=\d)(\.)(?!\d)`` in the original.  The first
# group was meant to be a look-*behind* but is a negative look-ahead for the
# two characters "<=" followed by a digit, which can never match where the next
# character is "." -- so it is a no-op and the effective rule is "a period not
# followed by a digit".  We write the effective rule directly.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")

# The original passes ``re.UNICODE`` (== 32) as the *positional* ``count``
# argument of ``sub``, so at most 32 periods are removed.  Kept for fidelity (it
# only matters for pathological answers).
_MAX_PERIOD_REMOVALS = 32

# ``contractions`` of the official script: apostrophe-less spellings typed by
# annotators mapped to the canonical form.  Reproduced entry for entry, including
# its oddities: keys with capitals ("Im", "Id've", ...) can never match because
# the lookup happens after lower-casing; "somebody'd" maps *to* "somebodyd"
# (reversed in the original); identity entries ("let's", "she's") are harmless.
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd",
    "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}


def clean_whitespace(text: str) -> str:
    """First step of the official evaluation: newline and tab -> space, then strip."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """``processPunctuation`` of the official VQA evaluation (see module docstring).

    >>> process_punctuation("yes!")
    'yes '
    >>> process_punctuation("1,000 dogs.")
    '1000 dogs'
    """
    # The deciding tests look at the *input* string, not the progressively edited
    # one -- exactly as the original, which tests ``inText`` inside the loop.
    has_digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in PUNCTUATION:
        if has_digit_comma or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_MAX_PERIOD_REMOVALS)


def process_digit_article(text: str) -> str:
    """``processDigitArticle`` of the official VQA evaluation (see module docstring).

    >>> process_digit_article("The Two dogs dont")
    "2 dogs don't"
    """
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    # Contractions are expanded after article removal, as in the original (the
    # order cannot matter for the shipped tables, but we keep it anyway).
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_vqa_answer(text: str) -> str:
    """Normalise an answer exactly like the official VQA evaluation does.

    Whitespace cleanup, then ``processPunctuation``, then ``processDigitArticle``
    (GT-Vision-Lab/VQA ``vqaEval.py``).  Examples: ``"Two dogs."`` -> ``"2 dogs"``,
    ``"the cat"`` -> ``"cat"``, ``"dont"`` -> ``"don't"``, ``"yes!"`` -> ``"yes"``,
    ``"1,000"`` -> ``"1000"``, ``"3.5"`` -> ``"3.5"``.

    Args:
        text: a predicted or reference answer.

    Returns:
        The normalised answer (lower-case, single-spaced, possibly empty).
    """
    return process_digit_article(process_punctuation(clean_whitespace(text)))
