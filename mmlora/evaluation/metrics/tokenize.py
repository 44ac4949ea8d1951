"""Pure-Python stand-in for the COCO caption evaluation's tokenisation step.

pycocoevalcap (tylin/coco-caption, ``tokenizer/ptbtokenizer.py``) tokenises every
candidate and reference caption with Stanford CoreNLP 3.4.1's Java
``PTBTokenizer -preserveLines -lowerCase`` and then drops the tokens in
:data:`COCO_PUNCTUATIONS`.  BLEU, ROUGE-L and CIDEr-D are computed on the
result.  :func:`coco_tokenize` reimplements the PTB rules that matter for
captions with regular expressions, so no Java is needed.

Reproduced (checked against the Java tokenizer on caption-like text):

* lower-casing; ``"`` -> `````` / ``''`` and single quotes split off (then removed);
* clitics split off: ``don't`` -> ``do n't``, ``can't`` -> ``ca n't``,
  ``won't`` -> ``wo n't``, ``it's`` -> ``it 's``, ``'re 've 'll 'd 'm``, and the
  splits ``cannot gonna gotta wanna gimme lemme 'tis 'twas`` -> ``can not`` ...;
  curly apostrophes and quotes are treated as straight ones;
* ``, ; : ? ! ... -- . % $ # & + = < >`` split off, but numbers keep their
  ``, . :`` (``1,000`` ``3.5`` ``12:30``), hyphenated words (``t-shirt``),
  slashes (``red/blue``) and e-mail-like tokens stay whole; runs such as ``?!``
  stay one token (and, as in the original, are therefore *not* removed);
* sentence periods split off, except after CoreNLP abbreviations (``mr.``,
  ``st.``, ``u.s.``, single letters ``a.``) which keep their period;
* brackets become ``-lrb- -rrb- -lsb- -rsb- -lcb- -rcb-``.  Note the COCO
  punctuation list spells them in upper case while the tokenizer ran with
  ``-lowerCase``, so in the original they are **not** removed; we keep them too.

Known differences (rare in captions): CoreNLP's full abbreviation list is larger
than :data:`_ABBREVIATIONS`; SGML-like ``<tag>`` tokens, URLs, emoticons, ``a=b``
(CoreNLP: ``a =b``) and American-English-specific splits such as ``'n'`` may
tokenize differently; CoreNLP's handling of non-ASCII symbols is not reproduced.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["COCO_PUNCTUATIONS", "coco_tokenize", "ptb_tokenize"]

# ``PUNCTUATIONS`` of pycocoevalcap's ptbtokenizer.py, removed after tokenising.
COCO_PUNCTUATIONS: frozenset[str] = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
     ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# Words CoreNLP 3.4.1 splits in two ("assimilations"), keyed by the lower-cased word.
_SPLIT_WORDS = {
    "cannot": ("can", "not"),
    "gonna": ("gon", "na"),
    "gotta": ("got", "ta"),
    "wanna": ("wan", "na"),
    "gimme": ("gim", "me"),
    "lemme": ("lem", "me"),
    "'tis": ("'t", "is"),
    "'twas": ("'t", "was"),
    "y'all": ("y'", "all"),
}

# Abbreviations that keep their final period (a subset of CoreNLP's list; each
# was checked against the Java tokenizer).  "no", "approx", "fig", "ca", "hwy"
# are deliberately absent: CoreNLP splits their period.
_ABBREVIATIONS = frozenset(
    """mr mrs ms dr st etc vs inc co ltd jr sr ave mt ft jan feb mar apr jun jul
    aug sep sept oct nov dec prof gen lt col sgt rd blvd est dept cf al rev capt
    gov sen rep pres""".split()
)

_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
# Clitics and PTB words that legitimately start with an apostrophe.
_APOSTROPHE_WORD = re.compile(r"^'(s|re|ve|ll|d|m|t|em|n'?|\d+s?)$")
_INITIALS = re.compile(r"^(?:[a-z]\.)+$")  # u.s. e.g. a.m. a.

# Tokens produced by the rules below are written as private-use placeholder
# characters while the later rules run, so that e.g. the hyphen rule cannot cut
# "-lrb-" or "--" apart and the apostrophe rules cannot touch "''".
_PLACEHOLDERS = {
    "``": "\ue000", "''": "\ue001", "...": "\ue002", "--": "\ue003", "`": "\ue004",
    "-lrb-": "\ue005", "-rrb-": "\ue006", "-lsb-": "\ue007", "-rsb-": "\ue008",
    "-lcb-": "\ue009", "-rcb-": "\ue00a",
}
_FROM_PLACEHOLDER = str.maketrans({v: k for k, v in _PLACEHOLDERS.items()})
# Input normalisation: typographic quotes/apostrophes become ASCII (as CoreNLP's
# default options do), and stray placeholder characters become spaces.
_INPUT_TABLE = str.maketrans(
    {
        "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
        **{placeholder: " " for placeholder in _PLACEHOLDERS.values()},
    }
)
_BRACKETS = {
    "(": _PLACEHOLDERS["-lrb-"], ")": _PLACEHOLDERS["-rrb-"],
    "[": _PLACEHOLDERS["-lsb-"], "]": _PLACEHOLDERS["-rsb-"],
    "{": _PLACEHOLDERS["-lcb-"], "}": _PLACEHOLDERS["-rcb-"],
}

def _is_abbreviation(token: str) -> bool:
    """Whether ``token`` (ending with its period) keeps the period in CoreNLP."""
    return token[:-1] in _ABBREVIATIONS or _INITIALS.match(token) is not None


def _split_ellipsis(word: str) -> str:
    """``word`` followed by 3+ periods: an abbreviation keeps one ("st. ...")."""
    if word and _is_abbreviation(word + "."):
        return f"{word}. {_PLACEHOLDERS['...']} "
    return f"{word} {_PLACEHOLDERS['...']} "


# Text-level splitting rules, applied in order.  Each replacement surrounds the
# separated token with spaces; the result is finally split on whitespace.
_RULES: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    # A double quote at the start or after whitespace/an opening bracket opens.
    (re.compile(r'(?:^|(?<=[\s(\[{]))"'), f" {_PLACEHOLDERS['``']} "),
    (re.compile(r'"'), " " + _PLACEHOLDERS["''"] + " "),  # any other one closes
    (re.compile(r"''"), " " + _PLACEHOLDERS["''"] + " "),  # typed as two apostrophes
    (re.compile(r"`"), f" {_PLACEHOLDERS['`']} "),
    (re.compile(r"([\w.]*?)(\.{3,})"), lambda m: _split_ellipsis(m.group(1))),
    (re.compile(r"--+"), f" {_PLACEHOLDERS['--']} "),
    (re.compile(r"[()\[\]{}]"), lambda m: f" {_BRACKETS[m.group(0)]} "),
    (re.compile(r",(?!\d)|(?<!\d),"), " , "),  # keep 1,000
    (re.compile(r":(?!\d)|(?<!\d):"), " : "),  # keep 12:30
    (re.compile(r";"), " ; "),
    (re.compile(r"[?!]+"), lambda m: f" {m.group(0)} "),  # "?!" stays one token
    (re.compile(r"[%$&+=<>]"), lambda m: f" {m.group(0)} "),
    (re.compile(r"#(?=\d)"), " # "),
    (re.compile(r"(?<=\w)'n'(?=\w)"), " 'n' "),  # rock'n'roll
    # A hyphen dangling at a word edge is its own token.
    (re.compile(r"(?:(?<=\s)|^)-(?=\S)|(?<=\S)-(?=\s|$)"), " - "),
]


def _split_periods(token: str) -> list[str]:
    """Split a sentence period off ``token`` unless it is an abbreviation."""
    if not token.endswith(".") or token == "." or token == "...":
        return [token]
    if _is_abbreviation(token):
        return [token]
    stem = token[:-1]
    return [*_split_periods(stem), "."] if stem else ["."]


def _split_apostrophes(token: str) -> list[str]:
    """Split clitics and quote apostrophes off ``token``."""
    if token in _SPLIT_WORDS:
        return list(_SPLIT_WORDS[token])
    if "'" not in token:
        return [token]
    if token == "'" or _APOSTROPHE_WORD.match(token):
        return [token]
    if token.startswith("'"):  # an opening single quote
        return ["`", *_split_apostrophes(token[1:])]
    if token.endswith("'"):  # closing quote or plural possessive ("dogs'")
        return [*_split_apostrophes(token[:-1]), "'"]
    match = _CLITIC.match(token)
    if match:
        return [*_split_apostrophes(match.group(1)), match.group(2)]
    return [token]  # o'clock, o'neil, ma'am


def ptb_tokenize(text: str) -> list[str]:
    """PTB-style tokenisation (lower-cased) without removing punctuation.

    An approximation of CoreNLP's ``PTBTokenizer -lowerCase``; see the module
    docstring for what is and is not reproduced.
    """
    text = text.lower().translate(_INPUT_TABLE)
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    tokens: list[str] = []
    chunks = text.split()
    for i, chunk in enumerate(chunks):
        # "no." is an abbreviation for CoreNLP only before a number ("no. 5").
        if chunk == "no." and i + 1 < len(chunks) and chunks[i + 1][:1].isdigit():
            tokens.append(chunk)
            continue
        for piece in _split_periods(chunk):
            tokens.extend(_split_apostrophes(piece))
    return [t.translate(_FROM_PLACEHOLDER) for t in tokens]


def coco_tokenize(text: str) -> list[str]:
    """Tokenise a caption the way the COCO caption evaluation does (approximately).

    Lower-cases, applies PTB tokenisation (:func:`ptb_tokenize`), then removes the
    tokens in pycocoevalcap's ``PUNCTUATIONS`` list (:data:`COCO_PUNCTUATIONS`).
    The original runs Stanford CoreNLP's Java ``PTBTokenizer``; the differences of
    this pure-Python version are listed in the module docstring.  Example:
    ``"A man's dog doesn't run."`` -> ``["a", "man", "'s", "dog", "does", "n't", "run"]``.
    """
    # pycocoevalcap replaces newlines by spaces (one caption per line for Java).
    tokens = ptb_tokenize(text.replace("\n", " "))
    return [t for t in tokens if t not in COCO_PUNCTUATIONS]
