"""Text from data and prompts stays text: it never becomes a special token.

A question, answer, caption or prompt may contain the very strings the tokenizer turns into
control tokens (`<|im_end|>`, `</s>`, `<eos>`, `<|image_pad|>`, LLaVA's `<image>` ...). Tokenised
as they are, they would forge a turn boundary, cut the trained answer, add image slots or train a
real end of text. mmlora tokenises them as the plain characters they are, so the decoded text is
exactly the data (the model learns to write `<|endoftext|>` as text if the data says so).

How, in two steps that keep every character offset valid:

1. `escape` (called by the processor's `render` on every text part before the chat template
   sees it) replaces each protected string with a run of the same length of one private-use
   character (one per string). The rendered text then holds no forged marker: placeholder
   counts, placeholder expansion and the search for each answer's turn-end token see only
   what the template wrote, and every position equals the position in the real text.
2. `tokenize` restores the strings and tokenises the text segments that held them (segments:
   the text between the template's own added tokens) in pieces cut one character into each
   protected string, so the tokenizer cannot match it; every other segment keeps exactly the
   tokens it has in a plain call. Pieces that continue a segment are tokenised without the
   start-of-text space that Metaspace (Llama, Mistral) tokenizers prepend, so the decoded text
   gets no added space.

Protected strings: the tokenizer's special added tokens and the family's image, visual-feature
and turn-end tokens. Non-special added tokens (Qwen3's `<think>`) keep their meaning.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from mmlora.errors import MmloraError

SENTINEL_BASE = 0xF0000
"""First code point of Unicode's Supplementary Private Use Area-A, which no text in a dataset
is expected to use; data that does is refused rather than misread."""
SENTINELS = re.compile("[\U000F0000-\U000FFFFD]+")


def has_sentinel(text: str) -> bool:
    """Whether `text` holds a sentinel character; an ASCII text (known without reading it: Python
    records it) has none, which spares the search through long chat renders."""
    return not text.isascii() and SENTINELS.search(text) is not None


@dataclass
class Tokenized:
    input_ids: list[int]
    offsets: list[tuple[int, int]]
    """Character span of each token in `text`."""
    text: str
    """The real text (protected strings restored)."""


def protected_strings(tokenizer, family) -> list[str]:
    """The strings that must never come from data as tokens, in a fixed order."""
    special = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    special |= {t for t in getattr(tokenizer, "all_special_tokens", []) if isinstance(t, str)}
    special |= {family.image_token, family.feature_token, family.turn_end}
    return sorted(s for s in special if len(s) > 1)


def _without_prefix_space(tokenizer_json: dict, continuation: bool) -> bool:
    """Switch off, in a tokenizer.json dict, the space Metaspace tokenizers prepend to a text
    that starts at offset 0 (prepend_scheme `first`); with `continuation` also the space they
    prepend to every segment (`always`, legacy `add_prefix_space`, the `Prepend("▁")`
    normalizer). True when anything changed."""
    changed = False

    def visit(node):
        nonlocal changed
        if isinstance(node, list):
            for child in node:
                visit(child)
            return
        if not isinstance(node, dict):
            return
        if node.get("type") == "Metaspace":
            scheme = node.get("prepend_scheme")
            if scheme == "first" or (continuation and scheme == "always"):
                node["prepend_scheme"], changed = "never", True
            if continuation and node.get("add_prefix_space"):
                node["add_prefix_space"], changed = False, True
        for key, child in list(node.items()):
            if continuation and isinstance(child, list):
                kept = [c for c in child if not (isinstance(c, dict) and c.get("type") == "Prepend")]
                if len(kept) != len(child):
                    node[key], changed = kept, True
            visit(node[key])

    normalizer = tokenizer_json.get("normalizer")
    if continuation and isinstance(normalizer, dict) and normalizer.get("type") == "Prepend":
        tokenizer_json["normalizer"], changed = None, True
    visit(tokenizer_json.get("normalizer"))
    visit(tokenizer_json.get("pre_tokenizer"))
    return changed


def _variants(backend) -> tuple:
    """Copies of the tokenizer for the pieces of a segment: (at offset 0, at a segment's start
    after a template token, continuing a segment). Copies, because the tokenizer object may
    carry truncation or padding settings that transformers only switches off per call."""
    from tokenizers import Tokenizer

    data = json.loads(backend.to_str())
    data["truncation"] = data["padding"] = None
    plain = Tokenizer.from_str(json.dumps(data))
    out = [plain]
    for continuation in (False, True):
        copy = json.loads(json.dumps(data))
        out.append(Tokenizer.from_str(json.dumps(copy)) if _without_prefix_space(copy, continuation) else plain)
    return tuple(out)


class PlainText:
    """Escapes protected strings in data text and tokenises them as plain text (module docstring)."""

    def __init__(self, tokenizer, family):
        self.tokenizer = tokenizer
        self.strings = protected_strings(tokenizer, family)
        self.index = {s: i for i, s in enumerate(self.strings)}
        by_length = sorted(self.strings, key=len, reverse=True)  # leftmost-longest, as the tokenizer matches
        self.pattern = re.compile("|".join(map(re.escape, by_length))) if by_length else None
        self.first_chars = {s[0] for s in self.strings}
        self.added_ids = set(tokenizer.added_tokens_decoder)
        self._variants = None

    def __getstate__(self):  # tokenizer variants are rebuilt on demand in DataLoader workers
        return {**self.__dict__, "_variants": None}

    def escape(self, text: str) -> str:
        """`text` with every protected string replaced by a same-length sentinel run."""
        if has_sentinel(text):
            raise MmloraError(
                "The text contains characters of Unicode's Supplementary Private Use Area-A "
                "(U+F0000..U+FFFFD), which mmlora reserves to keep special-token strings in data "
                "plain text; remove them from the data."
            )
        if self.pattern is None or not any(c in text for c in self.first_chars):
            return text
        return self.pattern.sub(lambda m: chr(SENTINEL_BASE + self.index[m.group()]) * len(m.group()), text)

    def unescape(self, text: str) -> tuple[str, list[tuple[int, int]]]:
        """The real text and the spans of the protected strings that came from data."""
        pieces, spans, last = [], [], 0
        for run in SENTINELS.finditer(text):
            pieces.append(text[last:run.start()])
            position = run.start()
            for group in re.finditer(r"(.)\1*", run.group(), flags=re.S):
                index = ord(group.group(1)) - SENTINEL_BASE
                string = self.strings[index] if index < len(self.strings) else None
                if string is None or len(group.group()) % len(string):
                    raise MmloraError("The chat template changed the text it was given (a special-token "
                                      "string from the data was altered); mmlora cannot tokenise it safely.")
                for _ in range(len(group.group()) // len(string)):
                    spans.append((position, position + len(string)))
                    pieces.append(string)
                    position += len(string)
            last = run.end()
        pieces.append(text[last:])
        return "".join(pieces), spans

    def tokenize(self, text: str) -> Tokenized:
        """Tokenise rendered (escaped) text; protected strings from data become plain text."""
        real, spans = self.unescape(text)
        tokens = self.tokenizer(text, add_special_tokens=False,
                                return_offsets_mapping=True, return_attention_mask=False)
        ids, offsets = list(tokens["input_ids"]), [tuple(span) for span in tokens["offset_mapping"]]
        if not spans:
            return Tokenized(ids, offsets, real)
        out_ids, out_offsets, i = [], [], 0
        while i < len(ids):
            if self._is_template_token(ids[i], offsets[i], spans):
                out_ids.append(ids[i])
                out_offsets.append(offsets[i])
                i += 1
                continue
            j = i
            while j < len(ids) and not self._is_template_token(ids[j], offsets[j], spans):
                j += 1
            start = offsets[i - 1][1] if i > 0 else 0
            end = offsets[j][0] if j < len(ids) else len(real)
            inside = [(a, b) for a, b in spans if start <= a < end]
            if inside:
                seg_ids, seg_offsets = self._plain_segment(real, start, end, inside)
            else:
                seg_ids, seg_offsets = ids[i:j], offsets[i:j]
            out_ids += seg_ids
            out_offsets += seg_offsets
            i = j
        return Tokenized(out_ids, out_offsets, real)

    def _is_template_token(self, token_id: int, offset: tuple[int, int], spans) -> bool:
        """An added token the template wrote (not one standing in for escaped data, e.g. <unk>)."""
        return token_id in self.added_ids and not any(a < offset[1] and offset[0] < b for a, b in spans)

    def _plain_segment(self, real: str, start: int, end: int, spans) -> tuple[list[int], list]:
        """Tokens of real[start:end], cut one character into each protected string."""
        if self._variants is None:
            self._variants = _variants(self.tokenizer.backend_tokenizer)
        at_zero, after_template_token, continuing = self._variants
        cuts = [start] + [a + 1 for a, _ in spans] + [end]
        ids, offsets = [], []
        for k, (a, b) in enumerate(zip(cuts, cuts[1:])):
            if a >= b:
                continue
            if k == 0:  # the segment's own start: as in a plain call (a space prepended at 0 only)
                backend = at_zero if a == 0 else after_template_token
            else:
                backend = continuing
            encoding = backend.encode(real[a:b], add_special_tokens=False)
            ids += encoding.ids
            offsets += [(a + s, a + e) for s, e in encoding.offsets]
        return ids, offsets
