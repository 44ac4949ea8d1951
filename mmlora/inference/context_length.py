"""Whether a request fits the model's context: its prompt as the model sees it (chat template,
text and every visual token) plus the longest answer asked for, against the positions the text
model was built for. Past them a model answers garbage (and a huge prompt holds its batch for
minutes), so the engine refuses it (`InferenceEngine.check_context`, run by every `generate`,
`answer` and `stream` call) with a `ContextLengthError`, which the commands word for their
users: `mmlora serve` a 400, `mmlora infer` a one-line error, or a counted skip of its line in
a batch, and `mmlora chat` says so and lets the user start over.

The context is the text model's `max_position_embeddings` (`config.get_text_config()`: the
`text_config` of every supported family), the limit vLLM derives its default `max_model_len`
from. Qwen-VL's multimodal rotary positions advance less than one per visual token, so for
them the count is the stricter side: a prompt within it always fits.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmlora.data.samples import RowError


@dataclass(frozen=True)
class ContextOverflow:
    """A request that does not fit: its prompt tokens and answer budget, and the context."""

    prompt_tokens: int
    max_new_tokens: int
    context: int

    def describe(self, answer_budget: str, what: str = "the prompt") -> str:
        """`the prompt takes N tokens (...) and <answer_budget> is K: more than the model's
        context of C tokens`, naming the caller's flag or field for the answer budget."""
        return (f"{what} takes {self.prompt_tokens} tokens (chat template and visual tokens included) and "
                f"{answer_budget} is {self.max_new_tokens}: more than the model's context of {self.context} tokens")


def model_context(config) -> int | None:
    """The positions the model's text decoder was built for (`max_position_embeddings` of its
    text config); None when the config does not say."""
    limit = getattr(config.get_text_config(decoder=True), "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None


def context_overflow(prompt_tokens: int, max_new_tokens: int, context: int | None) -> ContextOverflow | None:
    """The overflow of a prompt of `prompt_tokens` with an answer of up to `max_new_tokens`, or
    None when it fits `context` (or the model states no context: None)."""
    if context is not None and prompt_tokens + max_new_tokens > context:
        return ContextOverflow(prompt_tokens, max_new_tokens, context)
    return None


class ContextLengthError(RowError):
    """A request past the model's context, located at the request's `where`; `overflow` holds the
    counts, for a caller that words the error in its own flags (infer, chat, serve)."""

    def __init__(self, overflow: ContextOverflow, where: str):
        super().__init__("too_long", f"{overflow.describe('max_new_tokens')}; shorten the prompt, lower "
                                     "max_new_tokens or give smaller images", where)
        self.overflow = overflow
