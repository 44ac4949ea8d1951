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
- `render` runs the Jinja template once per conversation *shape* (roles, parts, every text
  replaced by a marker), not per sample: the template's output split at the markers is a
  skeleton, and a sample's text is the skeleton with its (escaped) texts put in. Templates that
  change a text (trim it, test what it says) would break that, so a shape is used only after its
  skeleton rebuilt the real render of the sample that made it and of a probe with whitespace
  and markers of its own at both ends of each text; otherwise that shape is rendered whole;
- `tokenize` encodes the text piece by piece between added tokens, each distinct piece once
  (piecewise.PiecewiseEncoder, where the tokenizer passes its checks); otherwise it tokenises
  the text with each run of the visual token collapsed to one token, then
  writes the run back out (ids and character offsets), calling the Rust tokenizer directly
  (transformers' call wrapper cost as much as the tokenisation). This is exact because that token is an
  added special token, which the tokenizer splits off before anything else: each copy is one
  token whatever stands around it. It is checked per text (the collapsed token must come back
  as exactly one token with the visual id, else the text is tokenised whole), and against the
  whole-text result on probe texts when the wrapper is built (else it never collapses).
"""

from __future__ import annotations

import re
from bisect import bisect_left

from mmlora.data.piecewise import PiecewiseEncoder
from mmlora.models.processor import expand_placeholders
from mmlora.models.plaintext import Tokenized, has_sentinel

MEMO_LIMIT = 8192
"""Rendered texts kept per worker; cleared when full (prompts that repeat come back quickly)."""


class MeasuringProcessor:
    """An ImageTextProcessor whose `render` and `tokenize` are faster with the same results."""

    def __init__(self, processor):
        self.processor, self.rendered, self.skeletons, self.escaped = processor, {}, {}, {}
        # ids of the messages -> (the messages, their shape key, their renders): collate renders one
        # sample's messages three times over (tokens, answer spans, image end) and its prefixes
        # (new lists of the same message objects), and the scan never changes a sample's messages
        # once built. An entry holds its messages, so their ids cannot stand for other objects
        # meanwhile; a few recent entries are kept.
        self.recent, self.message_keys, self.expanded = {}, {}, {}
        self.placeholder = processor.family.image_token
        self.feature = processor.family.feature_token
        # An attribute, not the processor's property: collate.answer_labels reads it per sample,
        # and the property asks the tokenizer each time.
        self.image_token_id = processor.image_token_id
        self.runs = re.compile(f"(?:{re.escape(self.feature)})+")
        self.encode = self._direct_encoder()
        backend = getattr(processor.tokenizer, "backend_tokenizer", None)
        self.piecewise = PiecewiseEncoder.checked(backend, processor.tokenize, self.feature) \
            if self.encode is not processor.tokenize else None  # the Rust tokenizer gives the processor's answers
        self.collapse = self.piecewise is None and self._collapse_matches()

    def __getattr__(self, name):  # everything else is the real processor's
        return getattr(self.processor, name)

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        ids = tuple(map(id, messages))
        recent = self.recent.get(ids)
        if recent is None:  # see `recent` in __init__
            if len(self.recent) >= 64:
                self.recent.clear()
            recent = self.recent[ids] = (list(messages), _shape_key(messages, self._message_key), {})
        _, keyed, texts = recent
        text = texts.get(add_generation_prompt)
        if text is not None:
            return text
        # equal keys: equal messages (the shape's key and the texts themselves)
        key = (keyed[0], tuple(keyed[1]), add_generation_prompt) if keyed else (repr(messages), add_generation_prompt)
        text = self.rendered.get(key)
        if text is None:
            if len(self.rendered) >= MEMO_LIMIT:
                self.rendered.clear()
            text = self.rendered[key] = self._render(messages, keyed, add_generation_prompt)
        texts[add_generation_prompt] = text
        return text

    def render_expanded(self, messages: list[dict], counts: list[int], add_generation_prompt: bool = False) -> str:
        """The real processor's `render_expanded`, remembered a short while: collate expands a
        sample's whole chat three times over (tokens, its answer spans, the last prefix)."""
        text = self.render(messages, add_generation_prompt)
        # Keyed by the counts list itself (one sample's calls share it), which the entry holds, so
        # that its id cannot stand for another list meanwhile.
        key = (text, id(counts))
        found = self.expanded.get(key)
        if found is None:
            if len(self.expanded) >= 64:
                self.expanded.clear()
            found = self.expanded[key] = (counts, expand_placeholders(text, self.placeholder, counts))
        return found[1]

    def _message_key(self, message) -> tuple[list, list[str]] | None:
        """`_message_key`, remembered for the message object a short while (a sample's prefix
        renders are new lists of the same messages; see `recent`)."""
        found = self.message_keys.get(id(message))
        if found is None or found[0] is not message:
            if len(self.message_keys) >= 64:
                self.message_keys.clear()
            found = self.message_keys[id(message)] = (message, _message_key(message))
        return found[1]

    def _render(self, messages: list[dict], keyed, add_generation_prompt: bool) -> str:
        """The real render's text, from the shape's skeleton when it has a checked one (module docstring)."""
        if keyed is None:
            return self.processor.render(messages, add_generation_prompt)
        shape_key, texts = keyed
        key = (shape_key, add_generation_prompt)
        skeleton = self.skeletons.get(key)
        if skeleton is None:
            text = self.processor.render(messages, add_generation_prompt)
            self.skeletons[key] = self._checked_skeleton(_shape(messages), texts, text, add_generation_prompt)
            return text
        if skeleton is False:
            return self.processor.render(messages, add_generation_prompt)
        return self._fill(skeleton, texts)

    def _fill(self, skeleton: list[str], texts: list[str]) -> str:
        return skeleton[0] + "".join(self._escape(text) + rest for text, rest in zip(texts, skeleton[1:]))

    def _escape(self, text: str) -> str:
        """The real render's escape of a text part, remembered (a sample's texts recur in its
        prefix renders)."""
        escaped = self.escaped.get(text)
        if escaped is None:
            if len(self.escaped) >= MEMO_LIMIT:
                self.escaped.clear()
            escaped = self.escaped[text] = self.processor.plain_text.escape(text)
        return escaped

    def _checked_skeleton(self, shape: list[dict], texts: list[str], real: str, add_generation_prompt: bool):
        """The shape's skeleton when it rebuilds `real` and a whitespace probe's render; else False."""
        marks = [MARK.format(k) for k in range(len(texts))]
        try:
            marked = self.processor.render(_filled(shape, marks), add_generation_prompt)
            pieces = re.split("|".join(map(re.escape, marks)), marked)
            if len(pieces) != len(marks) + 1 or [m for m in re.findall(MARK_PATTERN, marked)] != marks:
                return False
            probes = [f" \n{MARK.format('a')}{text[:8]}\t{MARK.format('b')} " for text in texts]
            probe_real = self.processor.render(_filled(shape, probes), add_generation_prompt)
            if self._fill(pieces, texts) != real or self._fill(pieces, probes) != probe_real:
                return False
        except Exception:  # noqa: BLE001 - the template refuses markers: render this shape whole
            return False
        return pieces

    def tokenize(self, text: str) -> Tokenized:
        if self.piecewise is not None and not has_sentinel(text):
            return self.piecewise(text)
        if self.collapse and not has_sentinel(text):
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
        short = self.encode("".join(pieces))
        token_starts = [start for start, _ in short.offsets]
        ids, offsets, done, shift = [], [], 0, 0
        for run, start in zip(runs, starts):
            at = bisect_left(token_starts, start, done)  # the run's single token
            if at == len(token_starts) or short.input_ids[at] != self.image_token_id or \
                    short.offsets[at] != (start, start + width):
                return None
            ids += short.input_ids[done:at]
            offsets += [(a + shift, b + shift) for a, b in short.offsets[done:at]]
            copies = (run.end() - run.start()) // width
            ids += [self.image_token_id] * copies
            offsets += zip(range(run.start(), run.end(), width), range(run.start() + width, run.end() + width, width))
            shift += (copies - 1) * width
            done = at + 1
        ids += short.input_ids[done:]
        offsets += [(a + shift, b + shift) for a, b in short.offsets[done:]]
        return Tokenized(ids, offsets, text)

    def _direct_encoder(self):
        """Text -> Tokenized through the Rust tokenizer itself when that gives what the
        processor's tokenize gives (no truncation or padding set on it); else the processor's."""
        backend = getattr(self.processor.tokenizer, "backend_tokenizer", None)

        def direct(text: str) -> Tokenized:
            encoding = backend.encode(text, add_special_tokens=False)
            return Tokenized(encoding.ids, encoding.offsets, text)

        probes = ["a b", f"x{self.feature}\n y", " \t über 1234 <tag>"]
        try:
            if backend is not None and backend.truncation is None and backend.padding is None and \
                    all(direct(text) == self.processor.tokenize(text) for text in probes):
                return direct
        except Exception:  # noqa: BLE001 - another tokenizer: the processor's own tokenize
            pass
        return self.processor.tokenize

    def _collapse_matches(self) -> bool:
        """Collapsing gives the whole-text result on probe texts (else this tokenizer never collapses)."""
        if not self.feature or self.image_token_id is None:
            return False
        self.collapse = True
        probes = [f"a{self.feature * 3} b", f"{self.feature * 7}\n x {self.feature}y", f" {self.feature}{self.feature}"]
        try:
            return all(self._collapsed(text) == self.processor.tokenize(text) for text in probes)
        except Exception:  # noqa: BLE001 - any surprise: tokenise whole texts
            return False


MARK = "\ue000{}\ue001"
"""A text part's marker in a skeleton render (Private Use Area characters, never escaped)."""
MARK_PATTERN = "\ue000[^\ue001]*\ue001"


def _shape_key(messages: list[dict], message_key=None) -> tuple[tuple, list[str]] | None:
    """(a key of everything in `messages` but the texts of text parts, those texts in order);
    None when a message is not a role/content mapping with text parts the shape can hold.
    `message_key`: `_message_key` or a function giving the same (one that remembers)."""
    key, texts = [], []
    for message in messages:
        part = (message_key or _message_key)(message)
        if part is None:
            return None
        key += part[0]
        texts += part[1]
    return tuple(key), texts


def _message_key(message) -> tuple[list, list[str]] | None:
    """One message's part of `_shape_key`."""
    if type(message) is not dict or "content" not in message:
        return None
    role = message.get("role")
    key = [("role", role) if len(message) == 2 and type(role) is str else
           ("message", repr({k: v for k, v in message.items() if k != "content"}))]
    content = message["content"]
    if type(content) is str:
        return key + ["text"], [content]
    if type(content) is not list:
        return None
    texts = []
    for part in content:
        if type(part) is not dict:
            return None
        if part.get("type") != "text":
            key.append(("part", repr(part)))
            continue
        if type(part.get("text")) is not str:
            return None
        key.append("text" if len(part) == 2 else ("text part", repr({k: v for k, v in part.items() if k != "text"})))
        texts.append(part["text"])
    key.append(None)  # the message's end
    return key, texts


def _shape(messages: list[dict]) -> list[dict]:
    """`messages` (that _shape_key accepted) with every text part's text taken out."""
    return [{**message, "content": [{**part, "text": None} if part.get("type") == "text" else part
                                    for part in _parts(message["content"])]} for message in messages]


def _parts(content) -> list:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _filled(shape: list[dict], texts: list[str]) -> list[dict]:
    """`shape` with its text parts' texts set to `texts`, in order."""
    it = iter(texts)
    return [{**message, "content": [{**part, "text": next(it)} if part.get("type") == "text" else part
                                    for part in message["content"]]} for message in shape]
