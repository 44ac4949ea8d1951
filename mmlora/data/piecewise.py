"""The pre-scan's tokeniser: a text encoded piece by piece between added tokens, each distinct
piece once.

A fast tokenizer splits its added tokens (<|im_start|>, <|image_pad|>, ...) off a text before it
normalises or pre-tokenises anything, and then encodes each piece between them on its own: the
text's tokens are the pieces' tokens with the added tokens' ids in between. The pre-scan's texts
are chat renders whose pieces repeat from sample to sample (role headers, the system prompt, a
caption prompt) and whose images are runs of hundreds of one added token, so `PiecewiseEncoder`
remembers each piece's tokens, encodes only the pieces it has not seen (measured: about 15 µs
per call plus 2 µs per character of the pieces, the added tokens' text costing nothing), and
writes a run of added tokens out without looking at each copy.

It is used only when every added token is matched as written (no lstrip / rstrip / single_word,
not normalised) and the result equals the tokenizer's on probe texts (`checked`): a
pre-tokenizer that treats a text's start apart from its later pieces (Metaspace with
prepend_scheme "first") fails the probes, and that tokenizer then encodes whole texts.
"""

from __future__ import annotations

import os
import re

from mmlora.models.plaintext import Tokenized

PIECES_LIMIT = 4096
"""Pieces (and pieces at a place, runs at a place) remembered per worker; cleared when full: the
pieces that repeat (template text) come back at once, and a small memo keeps workers flat in memory."""


class PiecewiseEncoder:
    """Text -> Tokenized (ids, character offsets) as `backend.encode(text, add_special_tokens=False)`."""

    def __init__(self, backend, added: dict[str, int], feature: str):
        self.backend, self.ids, self.pieces, self.placed = backend, added, {}, {}
        # The longest token at the leftmost place, as the tokenizer's own matcher takes it; a run
        # of the visual token as one match, unless another token starts with it (a run could
        # then end in that token).
        self.run = feature if feature in added and not any(t != feature and t.startswith(feature) for t in added) \
            else None
        # Their common start written once before the alternatives (the same matches, in the same
        # order): the regex engine then skips to that literal instead of trying every token at
        # every character (~18 -> 5 µs on a 300-character render).
        tokens = sorted(added, key=len, reverse=True)
        start = os.path.commonprefix(tokens)
        # One capturing group around each match: `split` then gives pieces and matches in turn.
        self.split = re.compile("(" + re.escape(start) + "(?:" + "|".join(
            f"{re.escape(token[len(start):])}(?:{re.escape(token)})*" if token == self.run
            else re.escape(token[len(start):]) for token in tokens) + "))")

    @classmethod
    def checked(cls, backend, reference, feature: str) -> "PiecewiseEncoder | None":
        """An encoder for the Rust tokenizer `backend` when its added tokens allow one and it gives
        `reference(text)` (the processor's tokenize) on probe texts built from those tokens and
        the visual token `feature`; else None."""
        try:
            decoder = backend.get_added_tokens_decoder()
            if not decoder or any(t.lstrip or t.rstrip or t.single_word or t.normalized for t in decoder.values()):
                return None
            encoder = cls(backend, {token.content: index for index, token in decoder.items()}, feature)
            tokens = sorted(encoder.ids)[:8]
            probes = ["a b", " \t über 1234 <tag>", f"x{feature}\n y", f"a{feature * 3} b", f" {feature}{feature}",
                      f"{feature * 7}\n x {feature}y"]
            probes += [f"{token}\n  word {token}x1{feature * 2}{token} über.\n\n{token}{token} y " for token in tokens]
            probes += [text for token in tokens for text in (f" lead {token}trail ", token)]
            if all(encoder(text) == reference(text) for text in probes):
                return encoder
        except Exception:  # noqa: BLE001 - an older tokenizers without these methods, any surprise
            pass
        return None

    def __call__(self, text: str) -> Tokenized:
        ids, offsets, start = [], [], 0
        # The text split in one call (pieces at even places, matches at odd ones), not match by
        # match: the per-match Python work was a fifth of this function.
        for place, part in enumerate(self.split.split(text)):
            if not part:
                continue
            end = start + len(part)
            if not place % 2:
                self._add(part, start, ids, offsets)
            elif part in self.ids:
                ids.append(self.ids[part])
                offsets.append((start, end))
            else:  # a run of the visual token
                run_ids, run_offsets = self._run(start, end)
                ids += run_ids
                offsets += run_offsets
            start = end
        return Tokenized(ids, offsets, text)

    def _run(self, start: int, end: int) -> tuple[list[int], list[tuple[int, int]]]:
        """The ids and offsets of a run of the visual token, remembered by place (runs recur at
        the same place: after the same template text, for images of the same size)."""
        found = self.placed.get((start, end))
        if found is None:
            if len(self.placed) >= PIECES_LIMIT:
                self.placed.clear()
            width = len(self.run)
            found = self.placed[(start, end)] = ([self.ids[self.run]] * ((end - start) // width), list(
                zip(range(start, end, width), range(start + width, end + width, width))))
        return found

    def _add(self, piece: str, shift: int, ids: list, offsets: list) -> None:
        """The tokens of a piece that starts at `shift` in the text: remembered at that place
        (template pieces recur at the same places), else from the piece's own remembered tokens."""
        placed = self.placed.get((piece, shift))
        if placed is None:
            found = self.pieces.get(piece)
            recurs = found is not None
            if not recurs:
                if len(self.pieces) >= PIECES_LIMIT:
                    self.pieces.clear()
                encoding = self.backend.encode(piece, add_special_tokens=False)
                found = self.pieces[piece] = (encoding.ids, encoding.offsets)
            placed = (found[0], [(a + shift, b + shift) for a, b in found[1]])
            # Remembered at this place only once the piece recurs: most pieces are met once (a
            # sample's own text), and their entries would push the recurring ones out of `placed`.
            if recurs:
                if len(self.placed) >= PIECES_LIMIT:
                    self.placed.clear()
                self.placed[(piece, shift)] = placed
        ids += placed[0]
        offsets += placed[1]
