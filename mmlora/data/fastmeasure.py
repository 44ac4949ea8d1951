"""The pre-scan's measuring processor: the same answers as the real one, computed faster.

The scan measures a sample by rendering its chat template several times (the whole chat, then
every prefix up to each answer, see collate.assistant_char_spans) and tokenising the text with
every image expanded to its visual tokens. Profiled on 5k rows, rendering took ~60% of the scan
and tokenising ~20%, most of the latter in runs of hundreds of identical image tokens.
`MeasuringProcessor` wraps an ImageTextProcessor for collate's own functions (so the labels,
lengths and cuts are computed by the same code as before) and changes only how two answers
are found:

- `render` remembers its results: a sample's full chat is rendered once instead of three
  times, and prompts that repeat across rows (the caption prompt, common questions) once per
  worker;
- `tokenize` tokenises the text with each run of the visual token collapsed to one token, then
  writes the run back out (ids and character offsets). This is exact because that token is an
  added special token, which the tokenizer splits off before anything else: each copy is one
  token whatever stands around it. It is checked per text (the collapsed token must come back
  as exactly one token with the visual id, else the text is tokenised whole), and against the
  whole-text result on probe texts when the wrapper is built (else it never collapses).
"""

from __future__ import annotations

import re
from bisect import bisect_left

from mmlora.models.plaintext import SENTINELS, Tokenized

MEMO_LIMIT = 8192
"""Rendered texts kept per worker; cleared when full (prompts that repeat come back quickly)."""


class MeasuringProcessor:
    """An ImageTextProcessor whose `render` and `tokenize` are faster with the same results."""

    def __init__(self, processor):
        self.processor, self.rendered = processor, {}
        self.feature = processor.family.feature_token
        self.feature_id = processor.image_token_id
        self.runs = re.compile(f"(?:{re.escape(self.feature)})+")
        self.collapse = self._collapse_matches()

    def __getattr__(self, name):  # everything else is the real processor's
        return getattr(self.processor, name)

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        key = (repr(messages), add_generation_prompt)  # equal reprs: equal messages
        text = self.rendered.get(key)
        if text is None:
            if len(self.rendered) >= MEMO_LIMIT:
                self.rendered.clear()
            text = self.rendered[key] = self.processor.render(messages, add_generation_prompt)
        return text

    def tokenize(self, text: str) -> Tokenized:
        if self.collapse and not SENTINELS.search(text):
            collapsed = self._collapsed(text)
            if collapsed is not None:
                return collapsed
        return self.processor.tokenize(text)

    def _collapsed(self, text: str) -> Tokenized | None:
        """`text` tokenised with every visual-token run as one token, written back out; None when
        a run did not come back as exactly one visual token."""
        runs = list(self.runs.finditer(text))
        if not runs:
            return None
        width = len(self.feature)
        pieces, starts, last, shift = [], [], 0, 0
        for run in runs:  # where each run's single token lands in the collapsed text
            pieces.append(text[last:run.start()])
            starts.append(run.start() - shift)
            pieces.append(self.feature)
            shift += run.end() - run.start() - width
            last = run.end()
        pieces.append(text[last:])
        short = self.processor.tokenize("".join(pieces))
        token_starts = [start for start, _ in short.offsets]
        ids, offsets, done, shift = [], [], 0, 0
        for run, start in zip(runs, starts):
            at = bisect_left(token_starts, start, done)  # the run's single token
            if at == len(token_starts) or short.input_ids[at] != self.feature_id or \
                    short.offsets[at] != (start, start + width):
                return None
            ids += short.input_ids[done:at]
            offsets += [(a + shift, b + shift) for a, b in short.offsets[done:at]]
            copies = (run.end() - run.start()) // width
            ids += [self.feature_id] * copies
            offsets += [(run.start() + i * width, run.start() + (i + 1) * width) for i in range(copies)]
            shift += (copies - 1) * width
            done = at + 1
        ids += short.input_ids[done:]
        offsets += [(a + shift, b + shift) for a, b in short.offsets[done:]]
        return Tokenized(ids, offsets, text)

    def _collapse_matches(self) -> bool:
        """Collapsing gives the whole-text result on probe texts (else this tokenizer never collapses)."""
        if not self.feature or self.feature_id is None:
            return False
        self.collapse = True
        probes = [f"a{self.feature * 3} b", f"{self.feature * 7}\n x {self.feature}y", f" {self.feature}{self.feature}"]
        try:
            return all(self._collapsed(text) == self.processor.tokenize(text) for text in probes)
        except Exception:  # noqa: BLE001 - any surprise: tokenise whole texts
            return False
